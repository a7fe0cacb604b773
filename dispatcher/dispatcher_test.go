package dispatcher

import (
	"context"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pampa-go/pampa/internal/leaktest"
	"github.com/pampa-go/pampa/internal/pgtest"
)

func TestMain(m *testing.M) { os.Exit(leaktest.Check(pgtest.RunMain(m))) }

// env is a schema with the seed's numbers table and Pampa set up.
type env struct {
	t    *testing.T
	url  string
	pool *pgxpool.Pool
	job  Job
}

func numbersJob() Job {
	return Job{
		Name: "search_odd_numbers", Table: "numbers",
		Fields:          FieldsFor("odd_checking", "value"),
		MaxPendingTasks: 10, MaxAssignedWorkers: 5, QueueSize: 5,
		Step: Step{SQL: "update numbers set is_odd = (value % 2 = 1) where value = $1"},
	}.WithDefaults()
}

func newEnv(t *testing.T, rows int, edit ...func(*Job)) *env {
	t.Helper()
	pool, url := pgtest.Pool(t)
	ctx := context.Background()
	mustExec(t, pool, `create table numbers (value bigint primary key, is_odd boolean)`)
	mustExec(t, pool, `insert into numbers (value) select generate_series(1, $1::int)`, rows)
	j := numbersJob()
	for _, e := range edit {
		e(&j)
	}
	if err := j.Validate(); err != nil {
		t.Fatal(err)
	}
	if err := Setup(ctx, pool, Postgres, []Job{j}); err != nil {
		t.Fatal(err)
	}
	return &env{t: t, url: url, pool: pool, job: j}
}

func mustExec(t testing.TB, pool *pgxpool.Pool, sql string, args ...any) int64 {
	t.Helper()
	tag, err := pool.Exec(context.Background(), sql, args...)
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return tag.RowsAffected()
}

func count(t testing.TB, pool *pgxpool.Pool, sql string, args ...any) int64 {
	t.Helper()
	var n int64
	if err := pool.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

func (e *env) dispatcher(edit ...func(*Config)) *Dispatcher {
	e.t.Helper()
	cfg := Config{DatabaseURL: e.url, Jobs: []Job{e.job}, Delay: time.Millisecond, HeartbeatTimeout: 30 * time.Second}
	for _, f := range edit {
		f(&cfg)
	}
	d, err := New(cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := d.connect(context.Background()); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(d.close)
	return d
}

func (e *env) cycle(d *Dispatcher) Stats {
	e.t.Helper()
	d.lastFull = time.Time{} // every test cycle is a full one
	stats, err := d.Cycle(context.Background())
	if err != nil {
		e.t.Fatal(err)
	}
	return stats[e.job.Name]
}

func (e *env) register(ids ...string) {
	e.t.Helper()
	for _, id := range ids {
		if err := RegisterWorker(context.Background(), e.pool, WorkerInfo{ID: id, Node: strings.Split(id, ".")[0]}, []*Queries{NewQueries(e.job)}); err != nil {
			e.t.Fatal(err)
		}
	}
}

func (e *env) queued(id string) int64 {
	return count(e.t, e.pool, `select count(*) from numbers where odd_checking_reservation_id = $1 and odd_checking_start_time is null`, id)
}

func (e *env) assigned() map[string]string {
	e.t.Helper()
	rows, err := e.pool.Query(context.Background(), `select id, coalesce(job, '') from pampa_workers order by id`)
	if err != nil {
		e.t.Fatal(err)
	}
	out := map[string]string{}
	for rows.Next() {
		var id, job string
		if err := rows.Scan(&id, &job); err != nil {
			e.t.Fatal(err)
		}
		out[id] = job
	}
	return out
}

// work simulates a worker process through the same statements a worker runs.
func (e *env) work(id string, n int, success bool) int {
	e.t.Helper()
	q := NewQueries(e.job)
	ctx := context.Background()
	rows, err := e.pool.Query(ctx, q.StartChunk, id, n)
	if err != nil {
		e.t.Fatal(err)
	}
	var keys []int64
	for rows.Next() {
		var k, queued int64
		var kt string
		var attempt int
		if err := rows.Scan(&k, &kt, &attempt, &queued); err != nil {
			e.t.Fatal(err)
		}
		keys = append(keys, k)
	}
	if err := rows.Err(); err != nil {
		e.t.Fatal(err)
	}
	for _, k := range keys {
		if success {
			mustExec(e.t, e.pool, q.EndOne, id, k)
		} else {
			mustExec(e.t, e.pool, q.FailOne, id, k, "boom")
		}
	}
	return len(keys)
}

func TestSetupIsIdempotentAndKeepsData(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 100)
	mustExec(t, e.pool, `update numbers set is_odd = true where value = 7`)
	for range 2 {
		if err := Setup(context.Background(), e.pool, Postgres, []Job{e.job}); err != nil {
			t.Fatal(err)
		}
	}
	if n := count(t, e.pool, `select count(*) from numbers where is_odd`); n != 1 {
		t.Fatalf("user data changed by setup: %d rows with is_odd", n)
	}
	if err := Check(context.Background(), e.pool, []Job{e.job}); err != nil {
		t.Fatal(err)
	}
}

func TestCheckNamesMissingTableAndColumns(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 1)
	ctx := context.Background()
	missing := e.job
	missing.Table = "no_such_table"
	err := Check(ctx, e.pool, []Job{missing})
	if err == nil || !strings.Contains(err.Error(), "no_such_table") {
		t.Fatalf("want an error naming the table, got %v", err)
	}
	badPK := e.job
	badPK.Fields.PrimaryKey = "nope"
	err = Check(ctx, e.pool, []Job{badPK})
	if err == nil || !strings.Contains(err.Error(), `field_primary_key = "nope"`) {
		t.Fatalf("want an error naming field_primary_key, got %v", err)
	}
	other := numbersJob()
	other.Fields = FieldsFor("never_set_up", "value")
	err = Check(ctx, e.pool, []Job{other})
	if err == nil || !strings.Contains(err.Error(), "pampactl db setup") {
		t.Fatalf("want a hint to run db setup, got %v", err)
	}
}

// An empty database is "not set up" (a reason to stop); a database that
// cannot be reached is not (a reason to retry).
func TestCheckTellsNotSetUpFromUnreachable(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, url := pgtest.Pool(t)
	if err := Check(ctx, pool, []Job{numbersJob()}); !errors.Is(err, ErrNotSetUp) {
		t.Fatalf("empty schema: want ErrNotSetUp, got %v", err)
	}
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)
	err = Check(ctx, conn, []Job{numbersJob()})
	if err == nil || errors.Is(err, ErrNotSetUp) {
		t.Fatalf("closed connection: want an error other than ErrNotSetUp, got %v", err)
	}
}

func TestReserveFillsQueuesInKeyOrder(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 100)
	e.register("n1.1", "n1.2")
	d := e.dispatcher()
	s := e.cycle(d)
	// 100 pending rows / 10 per worker wants 10 workers, capped by the 2 alive.
	if s.Assigned != 2 || s.Reserved != 10 {
		t.Fatalf("stats %+v: want 2 assigned and 10 reserved", s)
	}
	if q := e.queued("n1.1"); q != 5 {
		t.Fatalf("n1.1 has %d queued, want queue_size 5", q)
	}
	if n := count(t, e.pool, `select count(*) from numbers where odd_checking_reservation_id = 'n1.1' and value <= 5`); n != 5 {
		t.Fatalf("first worker should get keys 1..5 by default order, got %d of them", n)
	}
	// A full queue is not topped up again.
	if s := e.cycle(d); s.Reserved != 0 {
		t.Fatalf("reserved %d more for full queues", s.Reserved)
	}
	e.work("n1.1", 3, true)
	if s := e.cycle(d); s.Reserved != 3 {
		t.Fatalf("want the 3 started rows replaced, reserved %d", s.Reserved)
	}
}

func TestReserveResumesAfterLastKeyAndFindsRowsFreedBelow(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 30)
	e.register("n1.1")
	d := e.dispatcher(func(c *Config) { c.Delay = time.Hour })
	e.cycle(d) // full: assigns the worker, reserves 1..5
	quick := func() Stats {
		t.Helper()
		d.lastFull = time.Now() // not a full cycle: the cursor stays
		stats, err := d.Cycle(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		return stats[e.job.Name]
	}
	e.work("n1.1", 5, true)
	// Key 3 becomes free again behind the cursor (as a hand edit would).
	mustExec(t, e.pool, `update numbers set odd_checking_reservation_id = null, odd_checking_start_time = null,
  odd_checking_end_time = null, odd_checking_success = null where value = 3`)
	if s := quick(); s.Reserved != 5 {
		t.Fatalf("reserved %d, want 5", s.Reserved)
	}
	if n := count(t, e.pool, `select count(*) from numbers where odd_checking_reservation_id = 'n1.1' and odd_checking_start_time is null and value between 6 and 10`); n != 5 {
		t.Fatalf("want keys 6..10 reserved after the cursor, got %d of them", n)
	}
	e.work("n1.1", 5, true)
	mustExec(t, e.pool, `update numbers set odd_checking_end_time = now(), odd_checking_success = true where value > 10`)
	// Nothing is left after the cursor: the short round walks from the start.
	if s := quick(); s.Reserved != 1 {
		t.Fatalf("reserved %d, want the freed key 3", s.Reserved)
	}
	if n := count(t, e.pool, `select count(*) from numbers where odd_checking_reservation_id = 'n1.1' and odd_checking_start_time is null and value = 3`); n != 1 {
		t.Fatal("key 3 was not reserved")
	}
}

// A worker's request between full cycles is served by one statement that
// counts its queue itself: it fills that queue to queue_size and no more,
// leaves the others alone, and walks from the first key when the resumed
// walk comes up short.
func TestTopUpServesTheWorkerThatAsked(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 30)
	e.register("n1.1", "n1.2")
	d := e.dispatcher(func(c *Config) { c.Delay = time.Hour })
	e.cycle(d) // full: both assigned, 1..5 and 6..10 reserved
	ask := func(ids ...string) Stats {
		t.Helper()
		req := requests{workers: map[string]bool{}}
		for _, id := range ids {
			req.workers[id] = true
		}
		if !d.canTopUp(req.workers) {
			t.Fatalf("cannot top up %v", ids)
		}
		d.lastFull = time.Now()
		stats, err := d.cycle(context.Background(), req)
		if err != nil {
			t.Fatal(err)
		}
		return stats[e.job.Name]
	}
	e.work("n1.1", 3, true)
	if s := ask("n1.1"); s.Reserved != 3 || e.queued("n1.1") != 5 || e.queued("n1.2") != 5 {
		t.Fatalf("reserved %d; queues %d and %d, want 3 and 5, 5", s.Reserved, e.queued("n1.1"), e.queued("n1.2"))
	}
	if s := ask("n1.1", "n1.2"); s.Reserved != 0 {
		t.Fatalf("full queues got %d more rows", s.Reserved)
	}
	e.work("n1.1", 5, true)
	mustExec(t, e.pool, `update numbers set odd_checking_reservation_id = null, odd_checking_start_time = null,
  odd_checking_end_time = null, odd_checking_success = null where value = 2`)
	mustExec(t, e.pool, `update numbers set odd_checking_end_time = now(), odd_checking_success = true
where value > 13 and odd_checking_reservation_id is null`)
	if s := ask("n1.1"); s.Reserved != 1 {
		t.Fatalf("reserved %d, want the freed key 2 found by the walk from the start", s.Reserved)
	}
	if n := count(t, e.pool, `select count(*) from numbers where odd_checking_reservation_id = 'n1.1' and odd_checking_start_time is null and value = 2`); n != 1 {
		t.Fatal("key 2 was not reserved")
	}
	if d.canTopUp(map[string]bool{"n9.9": true}) {
		t.Fatal("a worker unknown to the last cycle must get a normal cycle")
	}
}

func TestConcurrentReservationNeverDoubleAssigns(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 2000)
	q := NewQueries(e.job)
	ctx := context.Background()
	var wg sync.WaitGroup
	const workers = 16
	for i := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 40 {
				// Every form the dispatcher uses, against each other.
				sql, args := q.Reserve, []any{10, fmt.Sprintf("n.%d", i), e.job.MaxTryTimes}
				switch i % 4 {
				case 1:
					sql, args = q.ReserveAndWake, append(args, "pampa_test", "x")
				case 2:
					sql, args = q.ReserveAfterAndWake, append(args, "pampa_test", "x", int64(i))
				case 3:
					sql, args = q.TopUp, append(args, "pampa_test", "x")
				}
				if _, err := e.pool.Exec(ctx, sql, args...); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	// 16×40×10 = 6400 requested for 2000 rows: every row reserved exactly once.
	if n := count(t, e.pool, `select count(*) from numbers where odd_checking_reservation_id is null`); n != 0 {
		t.Fatalf("%d rows never reserved", n)
	}
	var updates int64
	for i := range workers {
		updates += count(t, e.pool, `select count(*) from numbers where odd_checking_reservation_id = $1`, fmt.Sprintf("n.%d", i))
	}
	if updates != 2000 {
		t.Fatalf("rows reserved %d times in total, want 2000", updates)
	}
}

func TestTwoDispatchersOneLeader(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 50)
	e.register("n1.1")
	a := e.dispatcher(func(c *Config) { c.Holder = "a" })
	b := e.dispatcher(func(c *Config) { c.Holder = "b" })
	if s := e.cycle(a); s.Reserved != 5 {
		t.Fatalf("leader reserved %d", s.Reserved)
	}
	e.work("n1.1", 5, true)
	if s := e.cycle(b); s != (Stats{}) || b.leader {
		t.Fatalf("standby dispatcher acted: %+v", s)
	}
	a.resign()
	if e.cycle(b); !b.leader {
		t.Fatal("standby did not take over after the leader resigned")
	}
}

func TestRelaunchFailedUntilMaxTries(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 1, func(j *Job) { j.MaxTryTimes = 3 })
	e.register("n1.1")
	d := e.dispatcher()
	for attempt := 1; attempt <= 3; attempt++ {
		e.cycle(d)
		if n := e.work("n1.1", 5, false); n != 1 {
			t.Fatalf("attempt %d: worker started %d rows, want 1", attempt, n)
		}
	}
	e.cycle(d)
	if n := e.work("n1.1", 5, false); n != 0 {
		t.Fatalf("row was relaunched past max_try_times")
	}
	var times int
	var success bool
	var errDesc string
	err := e.pool.QueryRow(context.Background(), `select odd_checking_reservation_times, odd_checking_success,
odd_checking_error_description from numbers`).Scan(&times, &success, &errDesc)
	if err != nil {
		t.Fatal(err)
	}
	if times != 3 || success || errDesc != "boom" {
		t.Fatalf("final row: times=%d success=%v error=%q; want 3, false, boom", times, success, errDesc)
	}
	st, err := Report(context.Background(), e.pool, []Job{e.job})
	if err != nil {
		t.Fatal(err)
	}
	if st[0].Failed != 1 || st[0].Pending != 0 {
		t.Fatalf("report %+v: want the row failed for good", st[0])
	}
}

func TestRelaunchLateFromStartNotReservation(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 2, func(j *Job) { j.MaxTryTimes = 2; j.MaxJobDuration = 15 * time.Minute })
	e.register("n1.1")
	d := e.dispatcher()
	e.cycle(d)
	e.work("n1.1", 0, true) // nothing started yet
	q := NewQueries(e.job)
	mustExec(t, e.pool, q.StartChunk, "n1.1", 2)
	// Reserved long ago but started just now: not late.
	mustExec(t, e.pool, `update numbers set odd_checking_reservation_time = now() - interval '1 hour'`)
	if s := e.cycle(d); s.Relaunched != 0 {
		t.Fatalf("relaunched %d rows measured from reservation", s.Relaunched)
	}
	mustExec(t, e.pool, `update numbers set odd_checking_start_time = now() - interval '16 minutes' where value = 1`)
	if s := e.cycle(d); s.Relaunched != 1 {
		t.Fatalf("want the late row relaunched, stats %+v", s)
	}
	// Second attempt also late: out of tries, failed with a reason.
	e.cycle(d)
	mustExec(t, e.pool, q.StartChunk, "n1.1", 5)
	mustExec(t, e.pool, `update numbers set odd_checking_start_time = now() - interval '16 minutes' where value = 1`)
	if s := e.cycle(d); s.Failed != 1 {
		t.Fatalf("want the row failed at max tries, stats %+v", s)
	}
	var desc string
	if err := e.pool.QueryRow(context.Background(), `select odd_checking_error_description from numbers where value = 1 and odd_checking_success = false and odd_checking_end_time is not null`).Scan(&desc); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(desc, "max_job_duration") {
		t.Fatalf("error description %q does not say why", desc)
	}
}

func TestDeadWorkerRowsReturnAtOnce(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 20)
	e.register("n1.1", "n2.1")
	d := e.dispatcher()
	e.cycle(d)
	mustExec(t, e.pool, NewQueries(e.job).StartChunk, "n1.1", 1)
	mustExec(t, e.pool, `update pampa_workers set heartbeat_at = now() - interval '1 hour' where id = 'n1.1'`)
	s := e.cycle(d)
	if s.Released != 4 || s.Relaunched != 1 {
		t.Fatalf("stats %+v: want 4 queued rows released and the running one relaunched", s)
	}
	if q := e.queued("n1.1"); q != 0 {
		t.Fatalf("dead worker still holds %d rows", q)
	}
	// Queued rows cost no attempt; the running one counted its attempt.
	if n := count(t, e.pool, `select coalesce(sum(odd_checking_reservation_times), 0) from numbers`); n != 1 {
		t.Fatalf("attempts spent: %d, want 1", n)
	}
	if a := e.assigned(); a["n1.1"] != "" {
		t.Fatalf("dead worker still assigned to %q", a["n1.1"])
	}
	// The released rows go to the live worker as its queue drains.
	for range 10 {
		e.work("n2.1", 5, true)
		e.cycle(d)
	}
	if n := count(t, e.pool, `select count(*) from numbers where odd_checking_success`); n != 20 {
		t.Fatalf("%d of 20 rows completed by the survivor", n)
	}
}

func TestElasticAssignmentUpAndDown(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 35, func(j *Job) {
		j.MaxPendingTasks = 10
		j.MaxAssignedWorkers = 3
		j.FilterWorkerID = regexp.MustCompile(`\.1$`)
	})
	e.register("a.1", "b.1", "c.1", "d.1", "a.2")
	d := e.dispatcher()
	e.cycle(d)
	got := e.assigned()
	want := map[string]string{"a.1": e.job.Name, "b.1": e.job.Name, "c.1": e.job.Name, "d.1": "", "a.2": ""}
	for id, job := range want {
		if got[id] != job {
			t.Fatalf("after first cycle %s has job %q, want %q (all: %v)", id, got[id], job, got)
		}
	}
	// Work everything off: assignment shrinks as the backlog does, to none.
	for range 20 {
		for _, id := range []string{"a.1", "b.1", "c.1"} {
			e.work(id, 5, true)
		}
		e.cycle(d)
	}
	if n := count(t, e.pool, `select count(*) from numbers where odd_checking_success`); n != 35 {
		t.Fatalf("%d of 35 rows done", n)
	}
	for id, job := range e.assigned() {
		if job != "" {
			t.Fatalf("worker %s still assigned to %q with an empty backlog", id, job)
		}
	}
	// New rows bring one worker back.
	mustExec(t, e.pool, `insert into numbers (value) values (1000)`)
	e.cycle(d)
	n := 0
	for _, job := range e.assigned() {
		if job != "" {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("%d workers assigned for 1 new row, want 1", n)
	}
}

func TestSelectingAndRelaunchingSnippets(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 20, func(j *Job) {
		j.Snippets.SelectingSQL = `select * from numbers
where odd_checking_reservation_id is null and odd_checking_start_time is null
  and coalesce(odd_checking_reservation_times, 0) < 3
order by value desc limit $1`
		j.Snippets.RelaunchingSQL = `select * from numbers
where odd_checking_end_time is not null and odd_checking_end_time < now() - interval '10 minutes' limit $1`
	})
	e.register("n1.1")
	d := e.dispatcher()
	e.cycle(d)
	if n := count(t, e.pool, `select count(*) from numbers where odd_checking_reservation_id = 'n1.1' and value > 15`); n != 5 {
		t.Fatalf("custom selection by value desc: got %d of keys 16..20", n)
	}
	e.work("n1.1", 5, true)
	mustExec(t, e.pool, `update numbers set odd_checking_end_time = now() - interval '11 minutes' where value = 20`)
	if s := e.cycle(d); s.Relaunched != 1 {
		t.Fatalf("relaunching snippet: stats %+v, want 1 relaunched", s)
	}
	var times int
	if err := e.pool.QueryRow(context.Background(), `select coalesce(odd_checking_reservation_times, 0) from numbers where value = 20`).Scan(&times); err != nil {
		t.Fatal(err)
	}
	if times != 0 {
		t.Fatalf("a relaunch after success should start a new series of attempts, times=%d", times)
	}
}

func TestReportSnippetsAndPartition(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 30)
	e.register("n1.1")
	d := e.dispatcher()
	e.cycle(d)
	e.work("n1.1", 2, true)
	mustExec(t, e.pool, NewQueries(e.job).StartChunk, "n1.1", 1)
	st, err := Report(context.Background(), e.pool, []Job{e.job})
	if err != nil {
		t.Fatal(err)
	}
	want := JobStatus{Job: e.job.Name, Total: 30, Pending: 25, Queued: 2, Running: 1, Completed: 2}
	if st[0] != want {
		t.Fatalf("report %+v, want %+v", st[0], want)
	}
	e.job.Snippets.TotalSQL = `select count(*) from numbers where value % 2 = 0`
	st, err = Report(context.Background(), e.pool, []Job{e.job})
	if err != nil {
		t.Fatal(err)
	}
	if st[0].Total != 15 {
		t.Fatalf("total_sql not honoured: %+v", st[0])
	}
}
