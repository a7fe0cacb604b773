package dispatcher

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// heldPerKey counts the rows held (queued or running) per value of
// value % 3.
func (e *env) heldPerKey() map[int64]int64 {
	e.t.Helper()
	rows, err := e.pool.Query(context.Background(), `select value % 3, count(*) from numbers
where odd_checking_reservation_id is not null and odd_checking_end_time is null group by 1`)
	if err != nil {
		e.t.Fatal(err)
	}
	out := map[int64]int64{}
	for rows.Next() {
		var k, n int64
		if err := rows.Scan(&k, &n); err != nil {
			e.t.Fatal(err)
		}
		out[k] = n
	}
	return out
}

func (e *env) held() int64 {
	return count(e.t, e.pool, `select count(*) from numbers where odd_checking_reservation_id is not null and odd_checking_end_time is null`)
}

func TestMaxRunningBoundsTheFleet(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 30, func(j *Job) { j.QueueSize = 5; j.Limits.MaxRunning = 4 })
	e.register("n1.1", "n1.2", "n1.3")
	d := e.dispatcher()
	e.cycle(d)
	e.cycle(d)
	if n := e.held(); n != 4 {
		t.Fatalf("%d rows held across 3 workers of queue_size 5; want max_running = 4", n)
	}
	done := 0
	for _, id := range []string{"n1.1", "n1.2", "n1.3"} {
		done += e.work(id, 1, true)
	}
	e.cycle(d)
	if n := e.held(); n != 4 {
		t.Fatalf("after %d rows ended, %d held; want back to 4", done, n)
	}
}

func TestMaxRunningPerKey(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 30, func(j *Job) {
		j.QueueSize = 10
		j.Limits = Limits{Key: "value % 3", MaxRunningPerKey: 2}
	})
	e.register("n1.1", "n1.2")
	d := e.dispatcher()
	e.cycle(d)
	e.cycle(d)
	for k, n := range e.heldPerKey() {
		if n > 2 {
			t.Fatalf("key %d: %d rows held; want at most max_running_per_key = 2", k, n)
		}
	}
	if n := e.held(); n != 6 {
		t.Fatalf("%d rows held; want 2 for each of the 3 keys", n)
	}
	e.work("n1.1", 10, true)
	e.work("n1.2", 10, true)
	e.cycle(d)
	if n := e.held(); n != 6 {
		t.Fatalf("after the rows ended, %d held; want 6 again", n)
	}
}

// Two dispatchers reserving at once (a leader and one taking over) take
// turns on the job's lock, so the per-key limit holds: each session runs
// the reservation batch the dispatcher sends, over and over, while a third
// ends rows.
func TestPerKeyLimitHoldsAgainstTwoDispatchers(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newEnv(t, 600, func(j *Job) { j.Limits = Limits{Key: "value % 3", MaxRunningPerKey: 4} })
	q := e.queries()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var failures []string
	for i := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := pgx.Connect(ctx, e.url)
			if err != nil {
				t.Error(err)
				return
			}
			defer conn.Close(ctx)
			ids := []string{fmt.Sprintf("d%d.1", i), fmt.Sprintf("d%d.2", i)}
			for range 60 {
				b := &pgx.Batch{}
				b.Queue(`select pg_advisory_xact_lock(hashtext('pampa reserve'), hashtext($1))`, q.limitLock)
				if i == 0 {
					b.Queue(q.ReserveMany, ids, slots([]int{5, 5}), q.job.MaxTryTimes)
				} else { // a dispatcher whose cursor is elsewhere: it sees other rows
					b.Queue(q.ReserveManyAfter, ids, slots([]int{5, 5}), q.job.MaxTryTimes, int64(300))
				}
				if err := conn.SendBatch(ctx, b).Close(); err != nil {
					t.Error(err)
					return
				}
				var worst int64
				if err := conn.QueryRow(ctx, `select coalesce(max(c), 0) from (select count(*) as c from numbers
where odd_checking_reservation_id is not null and odd_checking_end_time is null group by value % 3) s`).Scan(&worst); err != nil {
					t.Error(err)
					return
				}
				if worst > 4 {
					mu.Lock()
					failures = append(failures, fmt.Sprintf("%d rows of one key held", worst))
					mu.Unlock()
				}
			}
		}()
	}
	reserved := make(chan struct{})
	ended := make(chan struct{})
	go func() { // the workers: rows end, freeing their keys, while the dispatchers reserve
		defer close(ended)
		for {
			select {
			case <-reserved:
				return
			default:
			}
			if _, err := e.pool.Exec(ctx, `update numbers set odd_checking_end_time = now(), odd_checking_success = true
where value in (select value from numbers where odd_checking_reservation_id is not null and odd_checking_end_time is null
  order by random() limit 2)`); err != nil {
				t.Error(err)
				return
			}
			time.Sleep(time.Millisecond)
		}
	}()
	wg.Wait()
	close(reserved)
	<-ended
	if len(failures) > 0 {
		t.Fatalf("the per-key limit broke %d times: %v", len(failures), failures[0])
	}
	if n := count(t, e.pool, `select count(*) from numbers where odd_checking_end_time is not null`); n == 0 {
		t.Fatal("no row ended: the test exercised nothing")
	}
}

func TestMaxPerMinute(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 20, func(j *Job) { j.QueueSize = 10; j.Limits.MaxPerMinute = 5 })
	e.register("n1.1")
	d := e.dispatcher()
	e.cycle(d)
	if n := e.work("n1.1", 10, true); n != 5 {
		t.Fatalf("the worker got %d rows in the first minute; want max_per_minute = 5", n)
	}
	e.cycle(d)
	if n := e.work("n1.1", 10, true); n != 0 {
		t.Fatalf("the worker got %d more rows within the minute; want 0", n)
	}
	// A minute later, by the database's clock.
	mustExec(t, e.pool, `update numbers set odd_checking_reservation_time = odd_checking_reservation_time - interval '61 seconds'`)
	e.cycle(d)
	if n := e.work("n1.1", 10, true); n != 5 {
		t.Fatalf("a minute later the worker got %d rows; want 5", n)
	}
}

// The seed's allowing, queue_slots and occupied functions, as SQL with $1
// the worker id: a client's remaining credits decide who gets rows.
func TestWorkerSnippets(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 30, func(j *Job) {
		j.QueueSize = 5
		j.Snippets.AllowingSQL = `select coalesce((select credits > 0 from credits where worker = $1), false)`
		// Credits left: less the rows it holds.
		j.Snippets.QueueSlotsSQL = `select credits - (select count(*) from numbers
  where odd_checking_reservation_id = $1 and odd_checking_end_time is null) from credits where worker = $1`
		// n1.3 is busy with 4 things of another kind besides its queue.
		j.Snippets.OccupiedSQL = `select count(*) + case when $1::text = 'n1.3' then 4 else 0 end from numbers
  where odd_checking_reservation_id = $1 and odd_checking_start_time is null`
	})
	mustExec(t, e.pool, `create table credits (worker text primary key, credits int)`)
	mustExec(t, e.pool, `insert into credits values ('n1.1', 2), ('n1.2', 0), ('n1.3', 10)`)
	e.register("n1.1", "n1.2", "n1.3")
	d := e.dispatcher()
	e.cycle(d)
	e.cycle(d)
	for id, want := range map[string]int64{"n1.1": 2, "n1.2": 0, "n1.3": 1} {
		if got := e.queued(id); got != want {
			t.Errorf("worker %s queues %d rows; want %d", id, got, want)
		}
	}
}

func TestBadWorkerSnippetIsRefusedAtConnect(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 1, func(j *Job) { j.Snippets.AllowingSQL = `select nope from nowhere where w = $1` })
	d, err := New(Config{DatabaseURL: e.url, Jobs: []Job{e.job}, Delay: time.Millisecond, HeartbeatTimeout: time.Second, Secret: secret})
	if err != nil {
		t.Fatal(err)
	}
	defer d.close()
	if err := d.connect(context.Background()); !errors.Is(err, ErrBadSQL) || !strings.Contains(err.Error(), "allowing_sql") {
		t.Fatalf("connect = %v; want ErrBadSQL naming allowing_sql", err)
	}
}

// With limit_key, max_per_minute counts per value of the key.
func TestMaxPerMinutePerKey(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 30, func(j *Job) {
		j.QueueSize = 20
		j.Limits = Limits{Key: "value % 3", MaxPerMinute: 2}
	})
	e.register("n1.1")
	d := e.dispatcher()
	e.cycle(d)
	if n := e.work("n1.1", 20, true); n != 6 {
		t.Fatalf("the worker got %d rows in the first minute; want 2 per key, 6", n)
	}
	e.cycle(d)
	if n := e.work("n1.1", 20, true); n != 0 {
		t.Fatalf("the worker got %d more rows within the minute; want 0", n)
	}
}
