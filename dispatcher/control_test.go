package dispatcher

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/pampa-go/pampa/internal/poll"
	"github.com/pampa-go/pampa/protocol"
)

func TestPauseTakesQueuedRowsBackAndSurvivesARestart(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newEnv(t, 10, func(j *Job) { j.QueueSize = 3 })
	e.register("n1.1")
	d := e.dispatcher()
	e.cycle(d)
	fw := e.workers["n1.1"]
	if e.start("n1.1", 1) != 1 {
		t.Fatal("no row to start")
	}
	if err := SetPaused(ctx, e.pool, Postgres, []string{e.job.Name}, true, "test"); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Cycle(ctx); err != nil { // not e.cycle: the worker gives its queue back
		t.Fatal(err)
	}
	poll.Until(t, "the queued rows to come back", 10*time.Second, func() string {
		if got := fw.queuedKeys(); got != nil {
			return "the worker still queues " + got[0]
		}
		e.flush(d)
		if n := e.queued("n1.1"); n != 0 {
			return "rows still reserved in the database"
		}
		return ""
	})
	st, err := Report(ctx, e.pool, []Job{e.job})
	if err != nil {
		t.Fatal(err)
	}
	if !st[0].Paused || st[0].Running != 1 || st[0].Queued != 0 {
		t.Fatalf("report %+v; want paused, the started row still running, none queued", st[0])
	}
	// The running row finishes; nothing new comes, from this dispatcher or
	// a new one.
	fw.mu.Lock()
	var running protocol.Ref
	for _, r := range fw.running {
		running = r
	}
	fw.mu.Unlock()
	fw.end(running, true, "")
	e.waitOutcomes(d, 1)
	e.flush(d)
	e.cycle(d)
	e.cycle(d)
	if got := fw.queuedKeys(); got != nil {
		t.Fatalf("a paused job's rows were reserved: %v", got)
	}
	fw.stop()
	delete(e.workers, "n1.1")
	d.srv.Shutdown()
	d.close()

	e.register("n1.2")
	d2 := e.dispatcher()
	e.cycle(d2)
	if got := e.workers["n1.2"].queuedKeys(); got != nil {
		t.Fatalf("a restarted dispatcher reserved rows of the paused job: %v", got)
	}
	if err := SetPaused(ctx, e.pool, Postgres, []string{e.job.Name}, false, "test"); err != nil {
		t.Fatal(err)
	}
	e.cycle(d2)
	e.cycle(d2)
	if got := e.workers["n1.2"].queuedKeys(); len(got) != 3 {
		t.Fatalf("after resume the worker queues %v; want 3 rows", got)
	}
}

func TestCancelEndsFreeRowsAtOnceAndStopsHeldOnes(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newEnv(t, 6, func(j *Job) { j.QueueSize = 2; j.MaxTryTimes = 3 })
	e.register("n1.1")
	d := e.dispatcher()
	e.cycle(d)
	fw := e.workers["n1.1"]
	e.start("n1.1", 1) // row 1 running, row 2 queued
	q := e.queries()
	res, err := Cancel(ctx, e.pool, Postgres, q, []string{"1", "2", "5", "99"})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(res.Cancelled, []string{"1", "2", "5"}) || !slices.Equal(res.Unknown, []string{"99"}) {
		t.Fatalf("Cancel = %+v; want 1 2 5 cancelled, 99 unknown", res)
	}
	if n := count(t, e.pool, `select count(*) from numbers where value = 5 and odd_checking_end_time is not null
  and not odd_checking_success and odd_checking_error_description = 'cancelled' and odd_checking_final`); n != 1 {
		t.Fatal("the free row 5 was not ended as cancelled at once")
	}
	e.cycle(d)
	poll.Until(t, "the dispatcher to tell the worker", 10*time.Second, func() string {
		fw.mu.Lock()
		defer fw.mu.Unlock()
		if len(fw.cancels) < 2 {
			return "not told yet"
		}
		return ""
	})
	// The worker stops them, as a worker does: a cancelled outcome each.
	fw.mu.Lock()
	told := slices.Clone(fw.cancels)
	fw.queue = slices.DeleteFunc(fw.queue, func(r protocol.Row) bool { return slices.Contains(told, r.Ref) })
	fw.mu.Unlock()
	for _, r := range told {
		fw.client.Report(protocol.Outcome{Ref: r, Error: "cancelled", Permanent: true})
	}
	e.waitOutcomes(d, 2)
	e.flush(d)
	for range 3 {
		e.cycle(d)
		if n := e.work("n1.1", 5, true); n == 0 {
			break
		}
	}
	if n := count(t, e.pool, `select count(*) from numbers where odd_checking_error_description = 'cancelled'
  and odd_checking_final and odd_checking_end_time is not null`); n != 3 {
		t.Fatalf("%d rows ended cancelled; want 3", n)
	}
	if n := count(t, e.pool, `select count(*) from numbers where value in (1, 2, 5) and odd_checking_reservation_id is null
  and odd_checking_end_time is null`); n != 0 {
		t.Fatal("a cancelled row became available again")
	}
	// A retry undoes it.
	done, err := Retry(ctx, e.pool, Postgres, q, []string{"2", "3"})
	if err != nil || !slices.Equal(done, []string{"2"}) {
		t.Fatalf("Retry = %v, %v; want row 2 (row 3 did not fail)", done, err)
	}
}

func TestListRowsByState(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newEnv(t, 6, func(j *Job) { j.QueueSize = 3; j.MaxTryTimes = 2; j.RetryDelay, j.RetryDelayMax = time.Hour, time.Hour })
	e.register("n1.1")
	d := e.dispatcher()
	e.cycle(d)
	e.work("n1.1", 1, false) // row 1 failed, one try left: retrying in an hour
	e.start("n1.1", 1)       // row 2 running, row 3 queued
	mustExec(t, e.pool, `update numbers set odd_checking_end_time = now(), odd_checking_success = false,
  odd_checking_reservation_times = 2, odd_checking_error_description = 'boom' where value = 6`) // out of tries
	for state, want := range map[string][]string{
		"failed": {"6"}, "retrying": {"1"}, "running": {"2"}, "queued": {"3"}, "pending": {"4", "5"}, "completed": nil,
		"": {"1", "2", "3", "4", "5", "6"},
	} {
		rows, err := ListRows(ctx, e.pool, e.job, RowFilter{State: state, Limit: 10})
		if err != nil {
			t.Fatal(err)
		}
		var keys []string
		for _, r := range rows {
			keys = append(keys, r.Key)
			if state != "" && r.State != state {
				t.Errorf("row %s listed under %q says %q", r.Key, state, r.State)
			}
		}
		if !slices.Equal(keys, want) {
			t.Errorf("ListRows(%q) = %v; want %v", state, keys, want)
		}
	}
	st, err := Report(ctx, e.pool, []Job{e.job})
	if err != nil {
		t.Fatal(err)
	}
	if s := st[0]; s.Failed != 1 || s.Retrying != 1 || s.Running != 1 || s.Queued != 1 || s.Pending != 2 || s.Total != 6 {
		t.Fatalf("report %+v; want 1 failed, 1 retrying, 1 running, 1 queued, 2 pending of 6", s)
	}
	rows, _ := ListRows(ctx, e.pool, e.job, RowFilter{State: "retrying", Limit: 10})
	if r := rows[0]; r.Attempts != 1 || r.Worker == nil || *r.Worker != "n1.1" || r.Error == nil || *r.Error != "boom" || r.End == nil {
		t.Fatalf("failed row %+v; want attempts 1, worker n1.1, error boom, an end", r)
	}
}
