package dispatcher

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pampa-go/pampa/internal/pgtest"
	"github.com/pampa-go/pampa/protocol"
)

// endedAgo moves the end of row key's last attempt back by d, as if it
// ended that long ago: the dispatcher reads the database clock, so the test
// moves the row instead of waiting.
func (e *env) endedAgo(key int, d time.Duration) {
	e.t.Helper()
	mustExec(e.t, e.pool, `update numbers set odd_checking_end_time = now() - $2::float8 * interval '1 second' where value = $1`,
		key, d.Seconds())
}

// endedAgoJittered is endedAgo with the end time's last three digits of
// microseconds set to micros, which fixes the backoff's jitter factor at
// 0.9 + 0.2*micros/1000 (see RelaunchFailed), so the test need not race
// the clock at the bounds.
func (e *env) endedAgoJittered(key int, d time.Duration, micros int) {
	e.t.Helper()
	mustExec(e.t, e.pool, `update numbers
set odd_checking_end_time = v.x - (mod(extract(microseconds from v.x)::bigint, 1000) - $3) * interval '1 microsecond'
from (select now() - $2::float8 * interval '1 second' as x) as v where value = $1`,
		key, d.Seconds(), micros)
}

// queuedKeys returns the keys the worker holds in its queue, sorted.
func (fw *fakeWorker) queuedKeys() []string {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	var keys []string
	for _, r := range fw.queue {
		keys = append(keys, r.Key)
	}
	slices.Sort(keys)
	return keys
}

func TestRunAtKeepsScheduledRowsBack(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 4, func(j *Job) { j.Fields.RunAt = "run_at" })
	mustExec(t, e.pool, `update numbers set run_at = case value
  when 1 then null when 2 then now() - interval '1 minute' else now() + interval '1 hour' end`)
	st, err := Report(context.Background(), e.pool, []Job{e.job})
	if err != nil {
		t.Fatal(err)
	}
	if s := st[0]; s.Scheduled != 2 || s.Pending != 2 || s.Total != 4 {
		t.Fatalf("report %+v; want 2 scheduled (future run_at) and 2 pending", s)
	}
	e.register("n1.1")
	d := e.dispatcher()
	e.cycle(d)
	if got := e.workers["n1.1"].queuedKeys(); !slices.Equal(got, []string{"1", "2"}) {
		t.Fatalf("reserved %v; want only the rows due (1: run_at null, 2: past)", got)
	}
	mustExec(t, e.pool, `update numbers set run_at = now() - interval '1 second' where value = 3`)
	e.cycle(d)
	if got := e.workers["n1.1"].queuedKeys(); !slices.Equal(got, []string{"1", "2", "3"}) {
		t.Fatalf("reserved %v once row 3 came due; want 1 2 3", got)
	}
}

func TestRetryDelayDoublesPerAttemptUpToTheCap(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 1, func(j *Job) {
		j.MaxTryTimes = 4
		j.RetryDelay, j.RetryDelayMax = 10*time.Second, 20*time.Second
	})
	e.register("n1.1")
	d := e.dispatcher()
	// Delays after attempts 1, 2, 3: 10 s, 20 s, then 20 s (capped), each
	// times a jitter factor in [0.9, 1.1) fixed by the end time. The
	// checks that the row still waits leave a tenth of the delay for the
	// time between the update and the cycle; a relaunch due stays due.
	for attempt, delay := range []time.Duration{10 * time.Second, 20 * time.Second, 20 * time.Second} {
		e.cycle(d)
		if n := e.work("n1.1", 5, false); n != 1 {
			t.Fatalf("attempt %d: worker ran %d rows, want 1", attempt+1, n)
		}
		for _, c := range []struct {
			ago      time.Duration
			micros   int
			relaunch bool
		}{
			{delay * 100 / 100, 999, false}, // highest jitter: 1.0998 × delay
			{delay * 80 / 100, 0, false},    // lowest jitter: 0.9 × delay
			{delay * 91 / 100, 0, true},
		} {
			e.endedAgoJittered(1, c.ago, c.micros)
			s := e.cycle(d)
			if got := s.Relaunched == 1; got != c.relaunch {
				t.Fatalf("after attempt %d, %.1f s after its end with jitter factor %.4f, relaunched = %v; the delay is %s",
					attempt+1, c.ago.Seconds(), 0.9+0.2*float64(c.micros)/1000, got, delay)
			}
			if !c.relaunch && e.workers["n1.1"].queuedKeys() != nil {
				t.Fatalf("after attempt %d the row was queued %.1f s after its end; the delay is %s", attempt+1, c.ago.Seconds(), delay)
			}
		}
	}
}

func TestRepeatEveryMakesSucceededRowsAvailableAgain(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 2, func(j *Job) { j.RepeatEvery = 10 * time.Minute })
	e.register("n1.1")
	d := e.dispatcher()
	e.cycle(d)
	if n := e.work("n1.1", 5, true); n != 2 {
		t.Fatalf("worker ran %d rows, want 2", n)
	}
	e.endedAgo(1, 9*time.Minute)
	e.endedAgo(2, 11*time.Minute)
	e.cycle(d)
	if got := e.workers["n1.1"].queuedKeys(); !slices.Equal(got, []string{"2"}) {
		t.Fatalf("queued %v; want only row 2, which ended more than repeat_every ago", got)
	}
	rows := e.workers["n1.1"].take(1)
	if rows[0].Attempt != 1 {
		t.Fatalf("the repeated row came at attempt %d; a repeat starts a new series at 1", rows[0].Attempt)
	}
}

func TestPermanentFailuresAreNotTriedAgain(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 3, func(j *Job) { j.MaxTryTimes = 5; j.FatalExitCodes = []int{3} })
	e.register("n1.1")
	d := e.dispatcher()
	e.cycle(d)
	fw := e.workers["n1.1"]
	rows := fw.take(3)
	fw.start(rows)
	outcomes := []protocol.Outcome{
		{Ref: rows[0].Ref, Error: "no such page", Permanent: true},    // a handler's worker.Permanent
		{Ref: rows[1].Ref, Error: "exit status 3: gone", ExitCode: 3}, // a fatal exit code
		{Ref: rows[2].Ref, Error: "exit status 1: flaky", ExitCode: 1},
	}
	for _, o := range outcomes {
		fw.client.Report(o)
	}
	e.waitOutcomes(d, 3)
	e.flush(d)
	e.cycle(d)
	if got := fw.queuedKeys(); !slices.Equal(got, []string{rows[2].Key}) {
		t.Fatalf("relaunched %v; want only row %s (exit 1 is not fatal)", got, rows[2].Key)
	}
	st, err := Report(context.Background(), e.pool, []Job{e.job})
	if err != nil {
		t.Fatal(err)
	}
	if st[0].Failed != 2 {
		t.Fatalf("report %+v; want the 2 permanent failures failed for good", st[0])
	}
	var desc string
	if err := e.pool.QueryRow(context.Background(), `select odd_checking_error_description from numbers where value = $1`,
		rows[1].Key).Scan(&desc); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(desc, "gone") || !strings.Contains(desc, "permanent") {
		t.Fatalf("error description %q; want the step's error and that it is permanent", desc)
	}
	// jobs retry gives them another series.
	n, err := RetryFailed(context.Background(), e.pool, e.queries())
	if err != nil || n != 2 {
		t.Fatalf("RetryFailed = %d, %v; want the 2 permanent failures back", n, err)
	}
}

// A flush holding only failures of a job with result_sql counts them: no
// result runs, but the worker's counters must still move.
func TestFailuresOfAResultSQLJobAreCounted(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 2, func(j *Job) { j.ResultSQL = `update numbers set is_odd = true where value = $1::bigint` })
	e.register("n1.1")
	d := e.dispatcher()
	e.cycle(d)
	if n := e.work("n1.1", 1, false); n != 1 {
		t.Fatalf("worked %d rows", n)
	}
	if n := count(t, e.pool, `select rows_failed from pampa_workers where id = 'n1.1'`); n != 1 {
		t.Fatalf("rows_failed = %d after one failure; want 1", n)
	}
	e.work("n1.1", 1, true)
	if n := count(t, e.pool, `select rows_done from pampa_workers where id = 'n1.1'`); n != 1 {
		t.Fatalf("rows_done = %d after one success; want 1", n)
	}
}

// db setup refuses, before writing anything, a primary key that is not a
// column and bookkeeping keys naming columns that cannot be Pampa's.
func TestSetupRefusesColumnsThatDoNotFit(t *testing.T) {
	t.Parallel()
	pool, _ := pgtest.Pool(t)
	ctx := context.Background()
	mustExec(t, pool, `create table pages (id bigint primary key, url varchar(8000) not null, tries text, owner uuid)`)
	base := Job{Name: "scrape", Table: "pages", Fields: FieldsFor("scrape", "id")}.WithDefaults()
	for name, tc := range map[string]struct {
		edit func(*Fields)
		want string
	}{
		"primary key":       {func(f *Fields) { f.PrimaryKey = "nope" }, `field_primary_key = "nope" is not a column`},
		"user data":         {func(f *Fields) { f.ErrorDescription = "url" }, `field_error_description = "url" is NOT NULL`},
		"text attempts":     {func(f *Fields) { f.Times = "tries" }, `field_times = "tries" is a column of type text`},
		"uuid reservations": {func(f *Fields) { f.ID = "owner" }, `field_id = "owner" is a column of type uuid`},
	} {
		j := base
		tc.edit(&j.Fields)
		err := Setup(ctx, pool, Postgres, []Job{j})
		if !errors.Is(err, ErrBadColumn) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Setup = %v; want ErrBadColumn saying %q", name, err, tc.want)
		}
	}
	if n := count(t, pool, `select count(*) from information_schema.columns where table_name = 'pages' and table_schema = current_schema()`); n != 4 {
		t.Fatalf("pages has %d columns after refused setups; want its 4: nothing written", n)
	}
	if n := count(t, pool, `select count(*) from information_schema.tables where table_name = 'pampa_workers' and table_schema = current_schema()`); n != 0 {
		t.Fatal("a refused setup created Pampa's tables")
	}
}
