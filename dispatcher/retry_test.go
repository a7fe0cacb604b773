package dispatcher

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// rowsJSON is the rows of numbers outside [lo, hi], every column, in key
// order: what "untouched" is checked against.
func rowsJSON(t *testing.T, e *env, lo, hi int) string {
	t.Helper()
	var s string
	err := e.pool.QueryRow(context.Background(), `select coalesce(json_agg(n order by value)::text, '')
from numbers n where value not between $1 and $2`, lo, hi).Scan(&s)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestRetryFailedResetsOnlyRowsOutOfTries(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 20, func(j *Job) { j.MaxTryTimes = 2 })
	e.register("n1.1")
	d := e.dispatcher()
	q := e.queries()
	ctx := context.Background()

	// Rows 1..5 fail both their attempts, through the normal cycle.
	for range 2 {
		e.cycle(d)
		if n := e.work("n1.1", 5, false); n != 5 {
			t.Fatalf("started %d rows, want 5", n)
		}
	}
	// Then, one row in each other state: 6, 7 completed, 8 running, 9, 10
	// queued, 11 failed with a try left, 12..20 available.
	e.cycle(d)
	e.work("n1.1", 2, true)
	e.start("n1.1", 1)
	mustExec(t, e.pool, `update numbers set odd_checking_end_time = now(), odd_checking_success = false,
  odd_checking_reservation_times = 1, odd_checking_error_description = 'try left' where value = 11`)
	if n := count(t, e.pool, `select count(*) from numbers where odd_checking_reservation_id = 'n1.1' and odd_checking_start_time is null`); n != 2 {
		t.Fatalf("%d rows queued, want 2 (9 and 10)", n)
	}
	all, before := rowsJSON(t, e, 0, 0), rowsJSON(t, e, 1, 5)

	if n, err := CountFailedForGood(ctx, e.pool, q); err != nil || n != 5 {
		t.Fatalf("count: %d, %v; want 5", n, err)
	}
	if rowsJSON(t, e, 0, 0) != all {
		t.Fatal("counting changed rows")
	}
	n, err := RetryFailed(ctx, e.pool, q)
	if err != nil || n != 5 {
		t.Fatalf("retry: %d, %v; want 5", n, err)
	}
	if n, err := RetryFailed(ctx, e.pool, q); err != nil || n != 0 {
		t.Fatalf("second retry: %d, %v; want 0", n, err)
	}
	if after := rowsJSON(t, e, 1, 5); after != before {
		t.Fatalf("rows other than the failed ones changed:\nbefore %s\nafter  %s", before, after)
	}
	reset := count(t, e.pool, `select count(*) from numbers where value between 1 and 5
  and odd_checking_reservation_id is null and odd_checking_reservation_time is null
  and odd_checking_start_time is null and odd_checking_end_time is null and odd_checking_success is null
  and odd_checking_reservation_times = 0 and odd_checking_error_description = 'boom'`)
	if reset != 5 {
		t.Fatalf("%d of rows 1..5 reset to available with 0 attempts and their error kept", reset)
	}
	st, err := Report(ctx, e.pool, []Job{e.job})
	if err != nil {
		t.Fatal(err)
	}
	if st[0].Failed != 0 {
		t.Fatalf("report %+v: nothing should be failed for good", st[0])
	}

	// The normal cycle takes them from here: each gets a first attempt
	// again, and its success clears the old error.
	for range 10 {
		e.work("n1.1", 5, true)
		e.cycle(d)
	}
	done := count(t, e.pool, `select count(*) from numbers where value between 1 and 5
  and odd_checking_success and odd_checking_reservation_times = 1 and odd_checking_error_description is null`)
	if done != 5 {
		t.Fatalf("%d of the 5 retried rows completed on their first new attempt", done)
	}
}

func TestWakeDispatcherNotifiesItsChannel(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 1)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, e.url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	ns, err := Namespace(ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "listen "+quote(DispatcherChannel(ns))); err != nil {
		t.Fatal(err)
	}
	if err := WakeDispatcher(ctx, e.pool, "retry"); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	n, err := conn.WaitForNotification(wctx)
	if err != nil {
		t.Fatalf("no wake-up: %v", err)
	}
	if n.Payload != "retry" {
		t.Fatalf("payload %q, want retry", n.Payload)
	}
}
