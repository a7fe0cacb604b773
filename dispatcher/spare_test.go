package dispatcher

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/pampa-go/pampa/internal/poll"
	"github.com/pampa-go/pampa/protocol"
)

// reservedFor counts the worker's reserved rows not started, in the table.
func (e *env) reservedFor(id string) int {
	e.t.Helper()
	return int(count(e.t, e.pool, `select count(*) from numbers where odd_checking_reservation_id = $1 and odd_checking_start_time is null`, id))
}

// quickWorker is a worker whose steps take no time, with its spares
// reserved: it ran one queue, and the next full cycle topped it up.
func quickWorker(t *testing.T, rows int, edit ...func(*Job)) (*env, *Dispatcher, *fakeWorker) {
	e := newEnv(t, rows, edit...)
	e.register("n1.1")
	d := e.dispatcher()
	e.cycle(d)
	fw := e.workers["n1.1"]
	fw.stepMillis = 0
	if n := e.work("n1.1", 5, true); n != 5 {
		t.Fatalf("worked %d rows, want its queue of 5", n)
	}
	e.cycle(d)
	return e, d, fw
}

// A quick worker gets spare rows beside its queue, and the next ones as
// soon as its outcomes arrive: without a cycle of the loop, so without a
// round trip to the database.
func TestQuickWorkersGetSpareRowsAtOnce(t *testing.T) {
	t.Parallel()
	e, d, fw := quickWorker(t, 300)
	if got, want := len(fw.queuedKeys()), 5; got != want {
		t.Fatalf("the worker holds %d rows, want its queue_size %d", got, want)
	}
	if got, want := e.reservedFor("n1.1"), 5+spareRows; got != want {
		t.Fatalf("%d rows reserved for the worker, want its queue and %d spares", got, spareRows)
	}
	rows := fw.take(5)
	fw.start(rows)
	for _, r := range rows {
		fw.end(r.Ref, true, "")
	}
	poll.Until(t, "spare rows to reach the worker without a cycle", 10*time.Second, func() string {
		if n := len(fw.queuedKeys()); n != 5 {
			return fmt.Sprintf("it holds %d rows", n)
		}
		return ""
	})
	// The loop takes them into its account with the outcomes: no row is
	// reserved twice, and the queue is topped up again only to spares.
	e.waitOutcomes(d, 5)
	s := e.quick(d)
	if s.Reserved != 5 {
		t.Fatalf("reserved %d after 5 spares went out, want 5", s.Reserved)
	}
	if got := e.reservedFor("n1.1"); got != 5+spareRows {
		t.Fatalf("%d rows reserved for the worker after the top-up, want %d", got, 5+spareRows)
	}
	if n := count(t, e.pool, `select count(*) from numbers where odd_checking_end_time is not null and odd_checking_success`); n != 10 {
		t.Fatalf("%d rows ended, want the 10 the worker ran", n)
	}
}

// A worker whose stream drops loses its spares: its reconnection's hello
// does not hold them, so the reconciliation frees them, and it gets its
// queue again.
func TestSparesGoBackWhenTheStreamDrops(t *testing.T) {
	t.Parallel()
	e, d, fw := quickWorker(t, 300)
	held := fw.queuedKeys()
	fw.stop()
	e.start1(fw, d)
	e.flush(d) // the hello reconciles; no reservation yet
	if got := e.reservedFor("n1.1"); got != len(held) {
		t.Fatalf("%d rows reserved after the reconnection, want the %d the worker holds", got, len(held))
	}
	if n := count(t, e.pool, `select count(*) from numbers where odd_checking_reservation_id is null and odd_checking_end_time is null`); int(n) != 295-len(held) {
		t.Fatalf("%d rows free, want %d: the spares back", n, 295-len(held))
	}
	// The same process, as quick as before: its spares come again.
	e.quick(d)
	if got := e.reservedFor("n1.1"); got != 5+spareRows {
		t.Fatalf("%d rows reserved for the reconnected worker, want %d", got, 5+spareRows)
	}
}

// A paused job's spares go back with its queued rows; a cancelled spare is
// never sent and ends cancelled.
func TestSparesOfPausedJobsAndCancelledRowsGoBack(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e, d, fw := quickWorker(t, 300)
	var spare string
	p := d.peers["n1.1"]
	p.spare.mu.Lock()
	spare = p.spare.rows[0].Key
	p.spare.mu.Unlock()
	if _, err := Cancel(ctx, e.pool, Postgres, e.queries(), []string{spare}); err != nil {
		t.Fatal(err)
	}
	e.cycle(d)
	e.cycle(d)
	if n := count(t, e.pool, `select count(*) from numbers where value = $1 and odd_checking_end_time is not null
  and odd_checking_error_description = 'cancelled' and odd_checking_reservation_id is null`, spare); n != 1 {
		t.Fatalf("the cancelled spare %s did not end cancelled", spare)
	}
	for range 3 {
		rows := fw.take(5)
		fw.start(rows)
		for _, r := range rows {
			if r.Key == spare {
				t.Fatalf("the cancelled spare %s reached the worker", spare)
			}
			fw.end(r.Ref, true, "")
		}
		e.waitOutcomes(d, len(rows))
		e.flush(d)
	}

	if err := SetPaused(ctx, e.pool, Postgres, []string{e.job.Name}, true, "test"); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Cycle(ctx); err != nil { // not e.cycle: the worker gives its queue back
		t.Fatal(err)
	}
	poll.Until(t, "the paused job's rows back", 10*time.Second, func() string {
		e.flush(d)
		if n := e.reservedFor("n1.1"); n != 0 {
			return fmt.Sprintf("%d rows still reserved for the worker", n)
		}
		return ""
	})
}

// A quick worker that slows down gives its spares back: they would wait
// behind its slow steps while other workers could run them.
func TestSparesGoBackWhenAWorkerSlowsDown(t *testing.T) {
	t.Parallel()
	e, d, fw := quickWorker(t, 300)
	fw.stepMillis = 50
	if n := e.work("n1.1", 1, true); n != 1 {
		t.Fatalf("worked %d rows, want 1", n)
	}
	// The outcome freed a slot, which a spare filled: the worker holds its
	// queue, and nothing more is reserved for it.
	e.sync(d)
	if got, want := e.reservedFor("n1.1"), len(fw.queuedKeys()); got != want {
		t.Fatalf("%d rows reserved for the slowed worker, want the %d it holds", got, want)
	}
	if s := e.quick(d); s.Reserved != 0 {
		t.Fatalf("reserved %d more for a full queue of a slow worker", s.Reserved)
	}
}

// A quick worker that leaves gives its spares back with its queue: nothing
// stays reserved for a stopped worker, which no liveness check revisits.
func TestSparesGoBackWhenAWorkerLeaves(t *testing.T) {
	t.Parallel()
	e, d, fw := quickWorker(t, 300)
	fw.mu.Lock()
	fw.leaving = true
	var back []protocol.Ref
	for _, r := range fw.queue {
		back = append(back, r.Ref)
	}
	fw.queue = nil
	fw.mu.Unlock()
	fw.client.Send(protocol.Message{Kind: protocol.KindRelease, Refs: back})
	poll.Until(t, "the worker let go, its rows back", 10*time.Second, func() string {
		if _, err := d.Cycle(context.Background()); err != nil { // not e.cycle: the worker gave its queue back
			t.Fatal(err)
		}
		if n := e.reservedFor("n1.1"); n != 0 {
			return fmt.Sprintf("%d rows still reserved for it", n)
		}
		if n := count(t, e.pool, `select count(*) from pampa_workers where id = 'n1.1' and state = 'stopped'`); n != 1 {
			return "not stopped yet"
		}
		return ""
	})
}

// A quick worker one of whose steps runs long gives its spares back at
// once: they would wait behind it.
func TestSparesGoBackWhileAStepRunsLong(t *testing.T) {
	t.Parallel()
	e, d, fw := quickWorker(t, 300)
	fw.start(fw.take(1))
	e.waitInbox(d, 1)
	e.flush(d)              // the start is heard
	time.Sleep(2 * slowRun) // the step runs on
	e.quick(d)
	if got, want := e.reservedFor("n1.1"), len(fw.queuedKeys()); got != want {
		t.Fatalf("%d rows reserved for a worker stuck on a long step, want the %d queued", got, want)
	}
}

// Near the end of a table, or on one too small to give every worker its
// spares, nobody gets them: the last rows are not hoarded.
func TestNoSparesWhenRowsAreScarce(t *testing.T) {
	t.Parallel()
	e, _, _ := quickWorker(t, 5+5+spareRows-1)
	if got := e.reservedFor("n1.1"); got != 5 {
		t.Fatalf("%d rows reserved with too few rows for spares, want the queue of 5", got)
	}
}

// A quick worker whose outcomes came while its pool was empty, its spares
// arriving just after, has room in its queue and nothing more to report.
// At the end of a table (every row reserved) it stays assigned, as a
// worker holding rows, and the loop moves its spares into its queue. It
// used to be let go as idle, its spares given back, and the last rows
// waited for the next assignment.
func TestSparesFillAnEmptyQueue(t *testing.T) {
	t.Parallel()
	e, d, fw := quickWorker(t, 5+5+spareRows) // the top-up reserves the last rows
	p := d.peers["n1.1"]
	spares := p.spare.take(anyRow)
	if len(spares) != spareRows {
		t.Fatalf("%d spares, want %d", len(spares), spareRows)
	}
	if n := e.work("n1.1", 5, true); n != 5 {
		t.Fatalf("worked %d rows, want its queue of 5", n)
	}
	p.spare.add(spares)
	s := e.cycle(d)
	if p.job != e.job.Name {
		t.Fatalf("the worker was let go of job %q with %d spares", e.job.Name, len(spares))
	}
	if got := fw.queuedKeys(); len(got) != 5 {
		t.Fatalf("the worker holds %d rows after the cycle, want a queue of 5 from its spares", len(got))
	}
	if s.Reserved != 0 || s.Released != 0 {
		t.Fatalf("reserved %d and released %d rows, want none: the queue came from the spares", s.Reserved, s.Released)
	}
	if got, want := e.reservedFor("n1.1"), spareRows; got != want {
		t.Fatalf("%d rows reserved for the worker, want %d: its queue and the spares left (none freed or lost)", got, want)
	}
}
