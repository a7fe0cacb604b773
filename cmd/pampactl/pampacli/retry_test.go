package pampacli_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/pampa-go/pampa/cmd/pampactl/pampacli"

	"github.com/jackc/pgx/v5"

	"github.com/pampa-go/pampa/dispatcher"
)

// An operator's retry: rows out of tries are counted by --dry-run, reset by
// the command, and the dispatcher is woken; a mistyped job changes nothing.
func TestJobsRetry(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	cfg, conn, _ := localNumbers(t, 10)
	c := func(args ...string) result {
		return pampactl(ctx, t, nil, append([]string{"--config", cfg}, args...)...)
	}
	// Rows 1..4 failed all 3 attempts (the default max_try_times); row 5
	// failed with tries left; row 6 completed.
	if _, err := conn.Exec(ctx, `update numbers set odd_checking_reservation_id = 'local.1',
  odd_checking_start_time = now(), odd_checking_end_time = now(), odd_checking_success = false,
  odd_checking_reservation_times = case when value = 5 then 1 else 3 end,
  odd_checking_error_description = 'boom' where value <= 5;
update numbers set odd_checking_start_time = now(), odd_checking_end_time = now(),
  odd_checking_success = true, odd_checking_reservation_times = 1 where value = 6`); err != nil {
		t.Fatal(err)
	}
	outOfTries := func() int {
		t.Helper()
		var n int
		if err := conn.QueryRow(ctx, `select count(*) from numbers where odd_checking_end_time is not null
  and not odd_checking_success and odd_checking_reservation_times >= 3`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}

	r := c("jobs", "retry", "--job", "nope")
	if r.code != pampacli.ExitUsage || !strings.Contains(r.stderr, `"nope"`) || !strings.Contains(r.stderr, "search_odd_numbers") {
		t.Fatalf("unknown job: exit %d, stderr %q; want 2 naming the job and the known jobs", r.code, r.stderr)
	}
	r = c("jobs", "retry", "--dry-run")
	if r.code != 0 || !strings.Contains(r.stdout, "search_odd_numbers: 4 rows would be reset") {
		t.Fatalf("dry run: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	if n := outOfTries(); n != 4 {
		t.Fatalf("after the dry run %d rows out of tries, want the 4 untouched", n)
	}

	// The dispatcher's channel, heard on this connection.
	ns, err := dispatcher.Namespace(ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "listen "+pgx.Identifier{dispatcher.DispatcherChannel(ns)}.Sanitize()); err != nil {
		t.Fatal(err)
	}
	r = c("jobs", "retry", "--job", "search_odd_numbers")
	if r.code != 0 || !strings.Contains(r.stdout, "search_odd_numbers: 4 rows reset") {
		t.Fatalf("retry: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if n, err := conn.WaitForNotification(wctx); err != nil || n.Payload != "retry" {
		t.Fatalf("dispatcher not woken: %v %v", n, err)
	}
	if n := outOfTries(); n != 0 {
		t.Fatalf("%d rows still out of tries after retry", n)
	}
	var available, tryLeft, completed int
	if err := conn.QueryRow(ctx, `select
  count(*) filter (where value <= 4 and odd_checking_reservation_id is null and odd_checking_end_time is null
    and odd_checking_reservation_times = 0),
  count(*) filter (where value = 5 and odd_checking_end_time is not null and odd_checking_reservation_times = 1),
  count(*) filter (where value = 6 and odd_checking_success)
from numbers`).Scan(&available, &tryLeft, &completed); err != nil {
		t.Fatal(err)
	}
	if available != 4 || tryLeft != 1 || completed != 1 {
		t.Fatalf("after retry: %d of 4 available with 0 attempts, row with tries left kept %d, completed kept %d",
			available, tryLeft, completed)
	}
	if r := c("jobs", "retry"); r.code != 0 || !strings.Contains(r.stdout, "search_odd_numbers: 0 rows reset") {
		t.Fatalf("second retry: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
}
