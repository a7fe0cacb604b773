package dispatcher

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pampa-go/pampa/internal/leaktest"
	"github.com/pampa-go/pampa/internal/nettest"
	"github.com/pampa-go/pampa/internal/pgtest"
	"github.com/pampa-go/pampa/internal/poll"
	"github.com/pampa-go/pampa/protocol"
)

func TestMain(m *testing.M) { os.Exit(leaktest.Check(pgtest.RunMain(m))) }

var secret = []byte("s3cret")

// env is a schema with the seed's numbers table and Pampa set up, and the
// workers the test connects: protocol clients driven by the test (see
// fakeWorker), so that each test decides when a row starts and ends.
type env struct {
	t       *testing.T
	url     string
	pool    *pgxpool.Pool
	job     Job
	addrs   map[*Dispatcher]string
	workers map[string]*fakeWorker
	pending []string // registered before the dispatcher existed
}

func numbersJob() Job {
	return Job{
		Name: "search_odd_numbers", Table: "numbers",
		Fields:          FieldsFor("odd_checking", "value"),
		MaxPendingTasks: 10, MaxAssignedWorkers: 5, QueueSize: 5,
		Step: Step{Command: []string{"true"}},
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
	return &env{t: t, url: url, pool: pool, job: j, addrs: map[*Dispatcher]string{}, workers: map[string]*fakeWorker{}}
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

// queries are the job's statements, as the dispatcher builds them.
func (e *env) queries() *Queries {
	e.t.Helper()
	kt, err := KeyType(context.Background(), e.pool, e.job)
	if err != nil {
		e.t.Fatal(err)
	}
	return NewQueries(e.job, kt)
}

// dispatcher returns a connected dispatcher serving the worker protocol on
// a loopback port, whose cycles the test runs (no Run loop). It takes the
// lease if it is free, and connects the workers registered so far.
func (e *env) dispatcher(edit ...func(*Config)) *Dispatcher {
	e.t.Helper()
	t := e.t
	cfg := Config{DatabaseURL: e.url, Jobs: []Job{e.job}, Delay: time.Millisecond, HeartbeatTimeout: 30 * time.Second, Secret: secret}
	for _, f := range edit {
		f(&cfg)
	}
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := d.connect(ctx); err != nil {
		t.Fatal(err)
	}
	ln := nettest.Listen(t, "127.0.0.1:0")
	sctx, stop := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() { served <- protocol.Serve(sctx, ln, d.Handler(), nil, nil) }()
	t.Cleanup(func() {
		d.srv.Shutdown()
		stop()
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
		ln.WaitClosed(t)
		d.close()
	})
	e.addrs[d] = ln.Addr().String()
	leader, err := d.lease(ctx)
	if err != nil {
		t.Fatal(err)
	}
	d.setLeader(leader)
	if leader {
		for _, id := range e.pending {
			e.connect(id, d)
		}
		e.pending = nil
	}
	return d
}

// register adds workers to the fleet: they connect to the next dispatcher
// made.
func (e *env) register(ids ...string) { e.pending = append(e.pending, ids...) }

// cycle runs one full cycle, then waits until the workers have every row
// the dispatcher sent them.
func (e *env) cycle(d *Dispatcher) Stats {
	e.t.Helper()
	stats, err := d.Cycle(context.Background())
	if err != nil {
		e.t.Fatal(err)
	}
	e.sync(d)
	return stats[e.job.Name]
}

// quick runs a cycle that is not a full one: no lease, liveness or
// relaunch, and the reservation cursor stays.
func (e *env) quick(d *Dispatcher) Stats {
	e.t.Helper()
	d.lastFull = time.Now()
	stats, err := d.cycle(context.Background())
	if err == nil {
		err = d.settle(context.Background(), stats)
	}
	if err != nil {
		e.t.Fatal(err)
	}
	e.sync(d)
	return stats[e.job.Name]
}

func (e *env) sync(d *Dispatcher) {
	e.t.Helper()
	for id, p := range d.peers {
		fw := e.workers[id]
		if p.sess == nil || fw == nil {
			continue
		}
		poll.Until(e.t, "worker "+id+" to receive its rows", 10*time.Second, func() string {
			for r, h := range p.held {
				if !fw.holds(r.key, h.started) {
					return fmt.Sprintf("row %s (started %v) not there", r.key, h.started)
				}
			}
			return ""
		})
	}
}

// flush writes what the workers said, as the next cycle would first: the
// test's stand-in for the old design's workers writing their own marks.
func (e *env) flush(d *Dispatcher) {
	e.t.Helper()
	if err := d.applyInbox(context.Background(), map[string]Stats{}); err != nil {
		e.t.Fatal(err)
	}
	if err := d.writeMarksNow(context.Background()); err != nil {
		e.t.Fatal(err)
	}
}

// queued counts the rows reserved for id in the database and not started.
func (e *env) queued(id string) int64 {
	return count(e.t, e.pool, `select count(*) from numbers where odd_checking_reservation_id = $1 and odd_checking_start_time is null`, id)
}

// assigned is the dispatcher's assignment of its workers.
func (e *env) assigned(d *Dispatcher) map[string]string {
	out := map[string]string{}
	for id, p := range d.peers {
		out[id] = p.job
	}
	return out
}

// work starts up to n of id's queued rows and ends them, and has the
// dispatcher write it. It returns how many rows it worked.
func (e *env) work(id string, n int, success bool) int {
	e.t.Helper()
	fw := e.workers[id]
	rows := fw.take(n)
	if len(rows) == 0 {
		return 0
	}
	d := fw.d
	fw.start(rows)
	for _, r := range rows {
		fw.end(r.Ref, success, "boom")
	}
	e.waitOutcomes(d, len(rows))
	e.flush(d)
	return len(rows)
}

// start starts up to n of id's queued rows and has the dispatcher write it.
func (e *env) start(id string, n int) int {
	e.t.Helper()
	fw := e.workers[id]
	rows := fw.take(n)
	if len(rows) == 0 {
		return 0
	}
	before := items(fw.d)
	fw.start(rows)
	e.waitInbox(fw.d, before+1)
	e.flush(fw.d)
	return len(rows)
}

func (e *env) waitInbox(d *Dispatcher, n int) {
	e.t.Helper()
	poll.Until(e.t, "the dispatcher to hear the workers", 10*time.Second, func() string {
		if got := items(d); got < n {
			return fmt.Sprintf("%d items, want %d", got, n)
		}
		return ""
	})
}

// waitOutcomes waits until the inbox holds at least n outcomes.
func (e *env) waitOutcomes(d *Dispatcher, n int) {
	e.t.Helper()
	poll.Until(e.t, "the dispatcher to hear the outcomes", 10*time.Second, func() string {
		d.inbox.mu.Lock()
		defer d.inbox.mu.Unlock()
		got := 0
		for _, ev := range d.inbox.events {
			got += len(ev.msg.Outcomes)
		}
		if got < n {
			return fmt.Sprintf("%d outcomes, want %d", got, n)
		}
		return ""
	})
}

// items counts what the streams told the dispatcher and it has not read
// yet: each start, outcome and row given back, and each other event. A
// client sends what waited for one write in one message.
func items(d *Dispatcher) int {
	d.inbox.mu.Lock()
	defer d.inbox.mu.Unlock()
	n := 0
	for _, e := range d.inbox.events {
		n += max(1, len(e.msg.Refs)+len(e.msg.Outcomes))
	}
	return n
}

// fakeWorker is a worker as the protocol sees it, run by the test: a real
// protocol client on a loopback stream whose rows start and end when the
// test says so. Its hello tells what it holds, as a worker's does.
type fakeWorker struct {
	id       string
	instance string
	d        *Dispatcher // the dispatcher it talks to
	client   *protocol.Client
	stop     func()          // ends the client and waits for it
	cancel   func()          // ends the client
	ended    <-chan struct{} // closed once the client has stopped

	mu      sync.Mutex
	queue   []protocol.Row
	running map[string]protocol.Ref
	up      bool
	leaving bool           // gone for good once the dispatcher closes the stream
	cancels []protocol.Ref // rows the dispatcher said to stop
	// stepMillis is what its outcomes say its steps took: 10 ms by
	// default, slow enough to get no spare rows (see spareWanted).
	stepMillis int64
}

// connect starts a worker talking to the first of ds that accepts it and
// waits until one has.
func (e *env) connect(id string, ds ...*Dispatcher) *fakeWorker {
	e.t.Helper()
	fw := newFakeWorker(id, ds[0])
	e.start1(fw, ds...)
	e.workers[id] = fw
	return fw
}

// newFakeWorker is a new worker process under id, not yet connected.
func newFakeWorker(id string, d *Dispatcher) *fakeWorker {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return &fakeWorker{id: id, instance: hex.EncodeToString(b), d: d, running: map[string]protocol.Ref{}, stepMillis: 10}
}

// start1 runs fw's client against ds and waits for its stream.
func (e *env) start1(fw *fakeWorker, ds ...*Dispatcher) {
	e.t.Helper()
	e.launch(fw, ds...)
	poll.Until(e.t, "worker "+fw.id+" to connect", 10*time.Second, func() string {
		if !fw.isUp() {
			return "not connected"
		}
		return ""
	})
}

// launch runs fw's client against ds; fw.ended closes when it stops
// (refused, say).
func (e *env) launch(fw *fakeWorker, ds ...*Dispatcher) {
	e.t.Helper()
	var addrs []string
	for _, d := range ds {
		addrs = append(addrs, e.addrs[d])
	}
	c, err := protocol.NewClient(protocol.ClientConfig{Addrs: addrs, Secret: secret, Hello: fw.hello, Deliver: fw.deliver,
		Connected: fw.connected, MinBackoff: 10 * time.Millisecond, MaxBackoff: 200 * time.Millisecond})
	if err != nil {
		e.t.Fatal(err)
	}
	fw.client = c
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = c.Run(ctx) }()
	var once sync.Once
	fw.cancel, fw.ended = cancel, done
	fw.stop = func() { once.Do(func() { cancel(); <-done }) }
	e.t.Cleanup(fw.stop)
}

func (fw *fakeWorker) hello() protocol.Hello {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	h := protocol.Hello{ID: fw.id, Node: strings.Split(fw.id, ".")[0], Hostname: "test", PID: os.Getpid(),
		Instance: fw.instance, Jobs: []string{numbersJob().Name}, Slots: 1}
	for _, r := range fw.queue {
		h.InHand = append(h.InHand, protocol.Held{Ref: r.Ref})
	}
	for _, r := range fw.running {
		h.InHand = append(h.InHand, protocol.Held{Ref: r, Started: true})
	}
	if fw.client != nil {
		for _, o := range fw.client.Unacked() {
			h.InHand = append(h.InHand, protocol.Held{Ref: o.Ref, Started: true})
		}
	}
	return h
}

func (fw *fakeWorker) deliver(m protocol.Message) {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	switch m.Kind {
	case protocol.KindRows:
		fw.queue = append(fw.queue, m.Rows...)
	case protocol.KindRevoke: // as a worker does: queued rows go back
		var back []protocol.Ref
		fw.queue = slices.DeleteFunc(fw.queue, func(r protocol.Row) bool {
			if slices.Contains(m.Refs, r.Ref) {
				back = append(back, r.Ref)
				return true
			}
			return false
		})
		go fw.client.Send(protocol.Message{Kind: protocol.KindReturn, Refs: back})
	case protocol.KindCancel: // the test ends the rows it was told to stop
		fw.cancels = append(fw.cancels, m.Refs...)
	}
}

func (fw *fakeWorker) connected(up bool) {
	fw.mu.Lock()
	fw.up = up
	leaving := fw.leaving
	fw.mu.Unlock()
	if !up && leaving {
		fw.cancel() // as a worker does once its rows are back: no reconnect
	}
}

func (fw *fakeWorker) isUp() bool {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	return fw.up
}

func (fw *fakeWorker) holds(key string, started bool) bool {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	if started {
		_, ok := fw.running[key]
		return ok
	}
	return slices.ContainsFunc(fw.queue, func(r protocol.Row) bool { return r.Key == key })
}

func (fw *fakeWorker) take(n int) []protocol.Row {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	n = min(n, len(fw.queue))
	rows := slices.Clone(fw.queue[:n])
	fw.queue = fw.queue[n:]
	return rows
}

func (fw *fakeWorker) start(rows []protocol.Row) {
	var refs []protocol.Ref
	fw.mu.Lock()
	for _, r := range rows {
		fw.running[r.Key] = r.Ref
		refs = append(refs, r.Ref)
	}
	fw.mu.Unlock()
	fw.client.Send(protocol.Message{Kind: protocol.KindStarts, Refs: refs})
}

func (fw *fakeWorker) end(r protocol.Ref, ok bool, errText string) {
	fw.mu.Lock()
	delete(fw.running, r.Key)
	fw.mu.Unlock()
	o := protocol.Outcome{Ref: r, OK: ok, Millis: fw.stepMillis}
	if !ok {
		o.Error = errText
	}
	fw.client.Report(o)
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
	// A dispatcher stops on the first, and goes on trying on the second.
	d, err := New(Config{DatabaseURL: url, Jobs: []Job{numbersJob()}, Secret: secret})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Run(ctx); !errors.Is(err, ErrNotSetUp) {
		t.Fatalf("Run on an empty schema: want ErrNotSetUp, got %v", err)
	}
}

func TestReserveFillsQueuesInKeyOrder(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 100)
	e.register("n1.1", "n1.2")
	d := e.dispatcher()
	s := e.cycle(d)
	// 100 pending rows / 10 per worker wants 10 workers, capped by the 2 connected.
	if s.Assigned != 2 || s.Reserved != 10 {
		t.Fatalf("stats %+v: want 2 assigned and 10 reserved", s)
	}
	if q := e.queued("n1.1"); q != 5 {
		t.Fatalf("n1.1 has %d queued, want queue_size 5", q)
	}
	if n := count(t, e.pool, `select count(*) from numbers where odd_checking_reservation_id = 'n1.1' and value <= 5`); n != 5 {
		t.Fatalf("first worker should get keys 1..5 by default order, got %d of them", n)
	}
	// The rows went down the stream in key order, with their columns.
	q := e.workers["n1.1"].take(5)
	for i, r := range q {
		var data map[string]any
		if err := json.Unmarshal(r.Data, &data); err != nil {
			t.Fatal(err)
		}
		bookkeeping := false
		for k := range data {
			bookkeeping = bookkeeping || strings.HasPrefix(k, "odd_checking_") // every Pampa column, field_final too
		}
		if r.Key != fmt.Sprint(i+1) || r.Attempt != 1 || r.Job != e.job.Name || data["value"] != float64(i+1) || bookkeeping {
			t.Fatalf("row %d sent as %+v with data %s: want key %d, attempt 1, the user's columns only", i, r.Ref, r.Data, i+1)
		}
	}
	fw := e.workers["n1.1"]
	fw.mu.Lock()
	fw.queue = append(q, fw.queue...) // back to the test worker
	fw.mu.Unlock()
	// A full queue is not topped up again.
	if s := e.cycle(d); s.Reserved != 0 {
		t.Fatalf("reserved %d more for full queues", s.Reserved)
	}
	e.work("n1.1", 3, true)
	if s := e.cycle(d); s.Reserved != 3 {
		t.Fatalf("want the 3 started rows replaced, reserved %d", s.Reserved)
	}
}

// Workers receive the table's own columns as they are at the latest full
// cycle: one added while the dispatcher runs reaches them; one dropped
// fails one reservation, which has the columns read again, the workers'
// streams kept.
func TestWorkersReceiveTheTableColumnsAsTheyAre(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 30)
	e.register("n1.1")
	d := e.dispatcher()
	keysOf := func(want string) {
		t.Helper()
		rows := e.workers["n1.1"].take(5)
		if len(rows) == 0 {
			t.Fatal("no row reserved")
		}
		for _, r := range rows {
			var data map[string]any
			if err := json.Unmarshal(r.Data, &data); err != nil {
				t.Fatal(err)
			}
			keys := slices.Sorted(maps.Keys(data))
			if got := strings.Join(keys, ","); got != want {
				t.Fatalf("row %s sent with data %s: columns %s, want %s", r.Key, r.Data, got, want)
			}
		}
		e.workers["n1.1"].start(rows)
		for _, r := range rows {
			e.workers["n1.1"].end(r.Ref, true, "")
		}
		e.waitOutcomes(d, len(rows))
	}
	e.cycle(d)
	keysOf("is_odd,value")
	mustExec(t, e.pool, `alter table numbers add column "it's" text default 'new'`)
	e.cycle(d)
	keysOf("is_odd,it's,value")
	mustExec(t, e.pool, `alter table numbers drop column is_odd`)
	e.quick(d) // not a full cycle: its reservation names is_odd
	e.quick(d)
	keysOf("it's,value")
	// Past json_build_object's 50 columns, the row is to_jsonb(t) minus
	// Pampa's columns.
	want := []string{"it's", "value"}
	for i := range 50 {
		c := fmt.Sprintf("c%02d", i)
		mustExec(t, e.pool, `alter table numbers add column `+c+` int`)
		want = append(want, c)
	}
	e.cycle(d)
	slices.Sort(want)
	keysOf(strings.Join(want, ","))
}

func TestReserveResumesAfterLastKeyAndFindsRowsFreedBelow(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 30)
	e.register("n1.1")
	d := e.dispatcher(func(c *Config) { c.Delay = time.Hour })
	e.cycle(d) // full: assigns the worker, reserves 1..5
	// Key 3 becomes free again behind the cursor (as a hand edit would)
	// while the worker runs it: its outcome comes too late to count.
	rows := e.workers["n1.1"].take(5)
	e.workers["n1.1"].start(rows)
	mustExec(t, e.pool, `update numbers set odd_checking_reservation_id = null, odd_checking_start_time = null,
  odd_checking_end_time = null, odd_checking_success = null where value = 3`)
	for _, r := range rows {
		e.workers["n1.1"].end(r.Ref, true, "")
	}
	e.waitOutcomes(d, 5)
	if s := e.quick(d); s.Reserved != 5 {
		t.Fatalf("reserved %d, want 5", s.Reserved)
	}
	if n := count(t, e.pool, `select count(*) from numbers where value = 3 and odd_checking_reservation_id is null and odd_checking_end_time is null`); n != 1 {
		t.Fatal("the late outcome of key 3 overwrote its freeing")
	}
	if n := count(t, e.pool, `select count(*) from numbers where odd_checking_reservation_id = 'n1.1' and odd_checking_start_time is null and value between 6 and 10`); n != 5 {
		t.Fatalf("want keys 6..10 reserved after the cursor, got %d of them", n)
	}
	e.work("n1.1", 5, true)
	mustExec(t, e.pool, `update numbers set odd_checking_end_time = now(), odd_checking_success = true where value > 10`)
	// Nothing is left after the cursor: the short round walks from the start.
	if s := e.quick(d); s.Reserved != 1 {
		t.Fatalf("reserved %d, want the freed key 3", s.Reserved)
	}
	if n := count(t, e.pool, `select count(*) from numbers where odd_checking_reservation_id = 'n1.1' and odd_checking_start_time is null and value = 3`); n != 1 {
		t.Fatal("key 3 was not reserved")
	}
}

// Between full cycles, a worker's starts wake the loop: a quick cycle fills
// the queues that have room to queue_size and no more, and leaves full
// ones alone.
func TestQuickCycleFillsOnlyQueuesWithRoom(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 30)
	e.register("n1.1", "n1.2")
	d := e.dispatcher(func(c *Config) { c.Delay = time.Hour })
	e.cycle(d) // full: both assigned, 1..5 and 6..10 reserved
	e.work("n1.1", 3, true)
	if s := e.quick(d); s.Reserved != 3 || e.queued("n1.1") != 5 || e.queued("n1.2") != 5 {
		t.Fatalf("reserved %d; queues %d and %d, want 3 and 5, 5", s.Reserved, e.queued("n1.1"), e.queued("n1.2"))
	}
	if s := e.quick(d); s.Reserved != 0 {
		t.Fatalf("full queues got %d more rows", s.Reserved)
	}
	if n := count(t, e.pool, `select count(*) from numbers where odd_checking_reservation_id = 'n1.1' and value between 11 and 13`); n != 3 {
		t.Fatalf("the refill should be the next keys 11..13, got %d of them", n)
	}
}

// Reservation is safe whoever runs it: sessions standing for several
// dispatchers (a leader whose lease ran out and its successor, each with
// its sql step sessions) reserve at once with every form of the statement,
// and no row is ever handed out twice.
func TestConcurrentReservationNeverDoubleAssigns(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 2000)
	q := e.queries()
	ctx := context.Background()
	var (
		wg  sync.WaitGroup
		mu  sync.Mutex
		got = map[int64]int{}
	)
	const sessions = 16
	for i := range sessions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			worker := fmt.Sprintf("n.%d", i)
			for range 40 {
				var keys []int64
				err := pgx.BeginFunc(ctx, e.pool, func(tx pgx.Tx) error {
					var rows pgx.Rows
					var err error
					switch i % 3 {
					case 0:
						rows, err = tx.Query(ctx, q.ReserveMany, []string{worker, worker + "b"}, slots([]int{6, 4}), e.job.MaxTryTimes)
					case 1:
						rows, err = tx.Query(ctx, q.ReserveManyAfter, []string{worker}, slots([]int{10}), e.job.MaxTryTimes, int64(i*50))
					case 2: // a sql step session: take, then mark done
						rows, err = tx.Query(ctx, q.Take, 10, e.job.MaxTryTimes)
					}
					if err != nil {
						return err
					}
					var texts []string
					for rows.Next() {
						vals, err := rows.Values()
						if err != nil {
							return err
						}
						if i%3 == 2 { // take: (key, key text)
							keys, texts = append(keys, vals[0].(int64)), append(texts, vals[1].(string))
							continue
						}
						k, err := strconv.ParseInt(vals[0].(string), 10, 64) // reserve: key text first
						if err != nil {
							return err
						}
						keys = append(keys, k)
					}
					if err := rows.Err(); err != nil {
						return err
					}
					if i%3 == 2 && len(texts) > 0 {
						tag, err := tx.Exec(ctx, q.Done, texts, worker)
						if err == nil && tag.RowsAffected() != int64(len(texts)) {
							err = fmt.Errorf("marked %d of %d taken rows done", tag.RowsAffected(), len(texts))
						}
						return err
					}
					return nil
				})
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				for _, k := range keys {
					got[k]++
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	// 16×40×10 = 6400 asked for 2000 rows: each handed out exactly once.
	if n := count(t, e.pool, `select count(*) from numbers where odd_checking_reservation_id is null`); n != 0 {
		t.Fatalf("%d rows never reserved", n)
	}
	if len(got) != 2000 {
		t.Fatalf("%d distinct rows handed out, want 2000", len(got))
	}
	for k, n := range got {
		if n != 1 {
			t.Fatalf("row %d handed out %d times", k, n)
		}
	}
}

// Of two dispatchers, the one holding the lease serves; the other refuses
// workers, who go to the leader. When the leader resigns, the other takes
// over and the workers move to it with what they hold.
func TestTwoDispatchersOneLeader(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 50)
	a := e.dispatcher(func(c *Config) { c.Holder = "a" })
	b := e.dispatcher(func(c *Config) { c.Holder = "b" })
	if !a.leader || b.leader {
		t.Fatalf("leaders: a %v, b %v; want a alone", a.leader, b.leader)
	}
	fw := e.connect("n1.1", b, a) // the standby first: it refuses
	fw.d = a
	if b.inbox.len() != 0 || a.inbox.len() != 1 {
		t.Fatalf("the worker's hello reached the standby (%d events) or not the leader (%d)", b.inbox.len(), a.inbox.len())
	}
	if s := e.cycle(a); s.Reserved != 5 {
		t.Fatalf("leader reserved %d", s.Reserved)
	}
	e.work("n1.1", 2, true)
	if s := e.cycle(b); s != (Stats{}) || b.leader {
		t.Fatalf("standby dispatcher acted: %+v", s)
	}
	// a stalls past its lease: b takes over.
	mustExec(t, e.pool, `update pampa_leases set expires_at = now() - interval '1 second' where holder = 'a'`)
	if e.cycle(b); !b.leader {
		t.Fatal("standby did not take over after the leader's lease ran out")
	}
	// a sees it lost the lease and lets its workers go; they come to b
	// with the three rows they hold, which b keeps theirs.
	if e.cycle(a); a.leader || len(a.peers) != 0 {
		t.Fatalf("old leader still leads (%v) or holds %d workers", a.leader, len(a.peers))
	}
	fw.d = b
	poll.Until(t, "the worker to move to the new leader", 10*time.Second, func() string {
		if b.inbox.len() == 0 {
			return "no hello at b"
		}
		return ""
	})
	if s := e.cycle(b); s.Reserved != 2 || s.Released != 0 {
		t.Fatalf("new leader: %+v, want the 2 free places refilled and nothing released", s)
	}
	if q := e.queued("n1.1"); q != 5 {
		t.Fatalf("%d rows queued for the worker, want 5", q)
	}
	if n := e.work("n1.1", 5, true); n != 5 {
		t.Fatalf("worked %d rows after the move, want 5", n)
	}
	if n := count(t, e.pool, `select count(*) from numbers where odd_checking_success`); n != 7 {
		t.Fatalf("%d rows done, want 7", n)
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
	if n := count(t, e.pool, `select rows_failed from pampa_workers where id = 'n1.1'`); n != 3 {
		t.Fatalf("the worker counted %d failures, want 3", n)
	}
}

func TestRelaunchLateFromStartNotReservation(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 2, func(j *Job) { j.MaxTryTimes = 2; j.MaxJobDuration = 15 * time.Minute })
	e.register("n1.1")
	d := e.dispatcher()
	e.cycle(d)
	e.start("n1.1", 2)
	// Reserved long ago but started just now: not late.
	mustExec(t, e.pool, `update numbers set odd_checking_reservation_time = now() - interval '1 hour'`)
	if s := e.cycle(d); s.Relaunched != 0 {
		t.Fatalf("relaunched %d rows measured from reservation", s.Relaunched)
	}
	mustExec(t, e.pool, `update numbers set odd_checking_start_time = now() - interval '16 minutes' where value = 1`)
	if s := e.cycle(d); s.Relaunched != 1 {
		t.Fatalf("want the late row relaunched, stats %+v", s)
	}
	// Second attempt, handed out again by the same cycle, also late: out
	// of tries, failed with a reason.
	if n := e.start("n1.1", 5); n != 1 {
		t.Fatalf("started %d rows, want the relaunched one", n)
	}
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

// A worker whose stream ended and stayed away for the heartbeat timeout is
// dead: its queued rows go back with no attempt spent, its running row is
// relaunched (the attempt counts), and the survivor works them off.
func TestDeadWorkerRowsReturnAtOnce(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 20)
	e.register("n1.1", "n2.1")
	d := e.dispatcher(func(c *Config) { c.HeartbeatTimeout = 300 * time.Millisecond })
	e.cycle(d)
	e.start("n1.1", 1)
	before := items(d)
	e.workers["n1.1"].stop()
	e.waitInbox(d, before+1)
	e.cycle(d) // sees the stream end
	p := d.peers["n1.1"]
	if p == nil || p.sess != nil {
		t.Fatal("the dispatcher did not see the stream end")
	}
	poll.Until(t, "the heartbeat timeout to pass", 10*time.Second, func() string {
		if time.Since(p.gone) < d.cfg.HeartbeatTimeout {
			return "not yet"
		}
		return ""
	})
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
	if n := count(t, e.pool, `select count(*) from pampa_workers where id = 'n1.1' and state = 'dead' and job is null`); n != 1 {
		t.Fatal("the dead worker is not marked dead and unassigned")
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

// A worker that reconnects to another dispatcher (the first died before
// writing what it was told) says again what it holds and sends its
// outcomes again: they are written, and nothing it holds is taken back.
func TestWorkerMovingToANewDispatcherKeepsItsOutcomes(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 20)
	a := e.dispatcher(func(c *Config) { c.Holder = "a" })
	b := e.dispatcher(func(c *Config) { c.Holder = "b" })
	fw := e.connect("n1.1", a, b)
	e.cycle(a)
	before := items(a)
	rows := fw.take(3)
	fw.start(rows)
	e.waitInbox(a, before+1)
	e.flush(a) // the starts are written
	before = items(a)
	for _, r := range rows[:2] {
		fw.end(r.Ref, true, "")
	}
	e.waitInbox(a, before+2)
	// a stops before its next flush: the outcomes are not written.
	a.srv.Shutdown()
	a.resign()
	e.cycle(b)
	fw.d = b
	poll.Until(t, "the worker to bring its outcomes to b", 10*time.Second, func() string {
		if n := b.inbox.len(); n < 2 {
			return fmt.Sprintf("%d events at b, want a hello and the outcomes", n)
		}
		return ""
	})
	if s := e.cycle(b); s.Released != 0 || s.Relaunched != 0 {
		t.Fatalf("new dispatcher took rows back: %+v", s)
	}
	if n := count(t, e.pool, `select count(*) from numbers where value in (1, 2) and odd_checking_success and odd_checking_reservation_times = 1`); n != 2 {
		var rows string
		_ = e.pool.QueryRow(context.Background(), `select json_agg(n order by value)::text from numbers n where value <= 5`).Scan(&rows)
		t.Fatalf("%d of the 2 outcomes sent again were written: %s", n, rows)
	}
	if n := count(t, e.pool, `select count(*) from numbers where value = 3 and odd_checking_reservation_id = 'n1.1'
  and odd_checking_start_time is not null and odd_checking_end_time is null`); n != 1 {
		t.Fatal("the running row was taken from the worker that still runs it")
	}
	if n := count(t, e.pool, `select count(*) from numbers where value in (4, 5) and odd_checking_reservation_id = 'n1.1'`); n != 2 {
		t.Fatal("the queued rows were taken from the worker that still holds them")
	}
	poll.Until(t, "the outcomes to be acknowledged", 10*time.Second, func() string {
		if n := len(fw.client.Unacked()); n > 0 {
			return fmt.Sprintf("%d unacknowledged", n)
		}
		return ""
	})
}

// A worker that gives its rows back (it is stopping) hands back its queue
// and its interrupted row, with no attempt spent, is let go once they are
// back and is recorded as stopped.
func TestReleasedRowsGoBackWithoutSpendingAnAttempt(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 10)
	e.register("n1.1")
	d := e.dispatcher()
	e.cycle(d)
	fw := e.workers["n1.1"]
	e.start("n1.1", 1)
	fw.mu.Lock()
	fw.leaving = true
	var refs []protocol.Ref
	for _, r := range fw.queue {
		refs = append(refs, r.Ref)
	}
	for _, r := range fw.running {
		refs = append(refs, r)
	}
	fw.mu.Unlock()
	before := items(d)
	fw.client.Send(protocol.Message{Kind: protocol.KindRelease, Refs: refs})
	e.waitInbox(d, before+1)
	e.cycle(d)
	if n := e.untried(); n != 10 {
		t.Fatalf("%d of 10 rows available with no attempt spent", n)
	}
	e.waitLetGo(fw)
	poll.Until(t, "the worker to be recorded as stopped", 10*time.Second, func() string {
		e.cycle(d)
		if n := count(t, e.pool, `select count(*) from pampa_workers where id = 'n1.1' and state = 'stopped'`); n != 1 {
			return "not stopped"
		}
		return ""
	})
}

// leaveIdle has fw, holding nothing, say it is leaving, and waits until the
// dispatcher heard it.
func (e *env) leaveIdle(fw *fakeWorker) {
	e.t.Helper()
	fw.mu.Lock()
	fw.leaving = true
	fw.mu.Unlock()
	before := items(fw.d)
	fw.client.Send(protocol.Message{Kind: protocol.KindRelease})
	e.waitInbox(fw.d, before+1)
}

// untried counts the rows available with no attempt spent.
func (e *env) untried() int64 {
	return count(e.t, e.pool, `select count(*) from numbers where odd_checking_reservation_id is null and odd_checking_start_time is null
  and coalesce(odd_checking_reservation_times, 0) = 0`)
}

// waitLetGo waits until the dispatcher has closed fw's stream.
func (e *env) waitLetGo(fw *fakeWorker) {
	e.t.Helper()
	poll.Until(e.t, "the dispatcher to let the worker go", 10*time.Second, func() string {
		if fw.isUp() {
			return "stream still open"
		}
		return ""
	})
}

// A worker leaving with nothing in hand (idle, or its queue already empty)
// gives nothing back, and is let go all the same.
func TestIdleWorkerLeavingIsLetGo(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 0)
	e.register("n1.1")
	d := e.dispatcher()
	e.cycle(d)
	fw := e.workers["n1.1"]
	e.leaveIdle(fw)
	poll.Until(t, "the dispatcher to let the worker go", 10*time.Second, func() string {
		e.cycle(d)
		if fw.isUp() {
			return "stream still open"
		}
		return ""
	})
	poll.Until(t, "the worker to be recorded as stopped", 10*time.Second, func() string {
		e.cycle(d)
		if n := count(t, e.pool, `select count(*) from pampa_workers where id = 'n1.1' and state = 'stopped'`); n != 1 {
			return "not stopped"
		}
		return ""
	})
}

// A worker that says it is leaving while a reservation for it is on its
// way from the database never gets those rows: they go back to the table
// with no attempt spent, and the worker is let go once they are, not
// before (a worker gone with rows still reserved for it would leave them
// stuck until it was judged dead).
func TestRowsOnTheirWayToALeavingWorkerGoBack(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 10)
	e.register("n1.1")
	d := e.dispatcher()
	ctx := context.Background()
	e.cycle(d)
	if n := e.work("n1.1", 5, true); n != 5 {
		t.Fatalf("worked %d rows, want its queue of 5", n)
	}
	// The table is locked: the next reservation waits in flight.
	tx, err := e.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if _, err := tx.Exec(ctx, `lock table numbers in exclusive mode`); err != nil {
		t.Fatal(err)
	}
	quick := func() map[string]Stats {
		t.Helper()
		d.lastFull = time.Now()
		stats, err := d.cycle(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return stats
	}
	quick()
	if d.rflight == nil {
		t.Fatal("no reservation in flight")
	}
	fw := e.workers["n1.1"]
	e.leaveIdle(fw)
	stats := quick() // it hears the worker leave
	if err := d.landMarks(ctx); err != nil {
		t.Fatal(err)
	}
	// Its marks landed before the rows did: it must not go yet.
	for range 30 {
		if !fw.isUp() {
			t.Fatal("the worker was let go with rows on their way to it")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := d.settle(ctx, stats); err != nil {
		t.Fatal(err)
	}
	if err := d.writeMarksNow(ctx); err != nil {
		t.Fatal(err)
	}
	if n := e.untried(); n != 5 {
		t.Fatalf("%d of the 5 rows left available with no attempt spent, want all", n)
	}
	e.waitLetGo(fw)
	fw.mu.Lock()
	defer fw.mu.Unlock()
	if len(fw.queue) != 0 {
		t.Fatalf("the leaving worker got %d rows", len(fw.queue))
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
	got := e.assigned(d)
	want := map[string]string{"a.1": e.job.Name, "b.1": e.job.Name, "c.1": e.job.Name, "d.1": "", "a.2": ""}
	for id, job := range want {
		if got[id] != job {
			t.Fatalf("after first cycle %s has job %q, want %q (all: %v)", id, got[id], job, got)
		}
	}
	// The registry shows the assignment from the next full cycle on.
	e.cycle(d)
	if n := count(t, e.pool, `select count(*) from pampa_workers where job = $1`, e.job.Name); n != 3 {
		t.Fatalf("registry shows %d workers assigned, want 3", n)
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
	for id, job := range e.assigned(d) {
		if job != "" {
			t.Fatalf("worker %s still assigned to %q with an empty backlog", id, job)
		}
	}
	// New rows bring one worker back.
	mustExec(t, e.pool, `insert into numbers (value) values (1000)`)
	e.cycle(d)
	n := 0
	for _, job := range e.assigned(d) {
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
	e := newEnv(t, 30, func(j *Job) { j.MaxTryTimes = 1 })
	e.register("n1.1")
	d := e.dispatcher()
	e.cycle(d)
	e.work("n1.1", 2, true)
	e.work("n1.1", 1, false)
	e.start("n1.1", 1)
	st, err := Report(context.Background(), e.pool, []Job{e.job})
	if err != nil {
		t.Fatal(err)
	}
	want := JobStatus{Job: e.job.Name, Total: 30, Pending: 25, Queued: 1, Running: 1, Completed: 2, Failed: 1}
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
	ws, err := ListWorkers(context.Background(), e.pool)
	if err != nil {
		t.Fatal(err)
	}
	if len(ws) != 1 || ws[0].ID != "n1.1" || ws[0].Node != "n1" || ws[0].State != StateAlive || ws[0].RowsDone != 2 || ws[0].RowsFailed != 1 {
		t.Fatalf("workers %+v", ws)
	}
}

// runDispatcher runs a dispatcher's loop and protocol server until the
// test ends.
func (e *env) runDispatcher(edit ...func(*Config)) *Dispatcher {
	e.t.Helper()
	cfg := Config{DatabaseURL: e.url, Jobs: []Job{e.job}, Delay: 200 * time.Millisecond, HeartbeatTimeout: 3 * time.Second, Secret: secret}
	for _, f := range edit {
		f(&cfg)
	}
	d, err := New(cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	ln := nettest.Listen(e.t, "127.0.0.1:0")
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); _ = protocol.Serve(ctx, ln, d.Handler(), nil, nil) }()
	go func() {
		defer wg.Done()
		if err := d.Run(ctx); err != nil {
			e.t.Errorf("dispatcher: %v", err)
		}
	}()
	e.t.Cleanup(func() { cancel(); wg.Wait(); ln.WaitClosed(e.t) })
	return d
}

// The dispatcher runs sql steps itself, each chunk in one transaction with
// its rows' end marks: a row's effects exist exactly when it is marked
// done. A failing row fails alone, and is retried up to max_try_times.
func TestSQLStepRunsWithItsMarks(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 1000, func(j *Job) {
		j.QueueSize = 100
		j.MaxTryTimes = 2
		// Multiples of 7 divide by zero; the insert goes with the update.
		j.Step = Step{SQL: `with h as (insert into hits (value) values ($1))
update numbers set is_odd = (1 / (value % 7) >= 0) and (value % 2 = 1) where value = $1`}
	})
	mustExec(t, e.pool, `create table hits (value bigint not null)`)
	e.runDispatcher(func(c *Config) { c.SQLSessions = 3 })
	poll.Until(t, "every row to end", 60*time.Second, func() string {
		n := count(t, e.pool, `select count(*) from numbers where odd_checking_end_time is not null
  and (odd_checking_success or odd_checking_reservation_times >= 2)`)
		if n != 1000 {
			return fmt.Sprintf("%d of 1000 ended", n)
		}
		return ""
	})
	if n := count(t, e.pool, `select count(*) from numbers where odd_checking_success and odd_checking_reservation_times = 1
  and odd_checking_reservation_id = $1 and is_odd = (value % 2 = 1) and odd_checking_start_time <= odd_checking_end_time`, SQLWorker); n != 1000-142 {
		t.Fatalf("%d rows done right at the first attempt, want 858", n)
	}
	if n := count(t, e.pool, `select count(*) from numbers where not odd_checking_success and odd_checking_reservation_times = 2
  and odd_checking_error_description like '%division by zero%' and is_odd is null`); n != 142 {
		t.Fatalf("%d rows failed twice with the division error and no effect, want 142", n)
	}
	if n := count(t, e.pool, `select count(*) from (select value from hits group by value having count(*) <> 1) d`); n != 0 {
		t.Fatalf("%d rows whose step took effect more than once", n)
	}
	if n := count(t, e.pool, `select count(*) from hits h join numbers n using (value) where not n.odd_checking_success`); n != 0 {
		t.Fatalf("%d failed rows kept their step's effects", n)
	}
	if n := count(t, e.pool, `select count(*) from hits`); n != 858 {
		t.Fatalf("%d effects, want one per successful row (858)", n)
	}
}

// A sql step that runs past max_job_duration fails its row, as a late
// command does, and the other rows of its chunk go on; the session is kept.
func TestSQLStepPastMaxJobDurationFailsItsRow(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 20, func(j *Job) {
		j.QueueSize = 20
		j.MaxTryTimes = 1
		j.MaxJobDuration = 300 * time.Millisecond
		j.Step = Step{SQL: `update numbers set is_odd = (value % 2 = 1)
where value = $1 and pg_sleep(case when value = 7 then 5 else 0 end) is not null`}
	})
	e.runDispatcher(func(c *Config) { c.SQLSessions = 1 })
	poll.Until(t, "every row to end", 60*time.Second, func() string {
		if n := count(t, e.pool, `select count(*) from numbers where odd_checking_end_time is not null`); n != 20 {
			return fmt.Sprintf("%d of 20 ended", n)
		}
		return ""
	})
	if n := count(t, e.pool, `select count(*) from numbers where odd_checking_success and is_odd = (value % 2 = 1)`); n != 19 {
		t.Errorf("%d rows done, want the 19 quick ones", n)
	}
	if n := count(t, e.pool, `select count(*) from numbers where value = 7 and not odd_checking_success
  and odd_checking_error_description like '%max_job_duration%' and is_odd is null`); n != 1 {
		t.Errorf("row 7 did not fail with max_job_duration")
	}
}

// A worker process killed just after its step began, and a new one under
// its id, reach the dispatcher before its next flush: the start it heard
// counts. The row is relaunched at the next attempt, not handed out again
// as the same attempt, which a step may tell apart (PAMPA_ATTEMPT).
func TestAStartHeardBeforeTheWorkerRestartedCounts(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 10)
	e.register("n1.1")
	d := e.dispatcher()
	e.cycle(d)
	old := e.workers["n1.1"]
	rows := old.take(1)
	old.start(rows)
	poll.Until(t, "the dispatcher to hear the start", 10*time.Second, func() string {
		d.inbox.mu.Lock()
		defer d.inbox.mu.Unlock()
		for _, ev := range d.inbox.events {
			if ev.msg.Kind == protocol.KindStarts {
				return ""
			}
		}
		return "not yet"
	})
	old.stop()
	// A new process, holding nothing. Until the server has let go of the
	// old stream it refuses the id as held (409), and the client stops.
	poll.Until(t, "a new process under n1.1 to connect", 10*time.Second, func() string {
		fw := newFakeWorker("n1.1", d)
		e.launch(fw, d)
		for deadline := time.Now().Add(2 * time.Second); !fw.isUp(); {
			select {
			case <-fw.ended:
				return "refused: the old stream is still held"
			case <-time.After(10 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				fw.stop()
				return "not connected"
			}
		}
		e.workers["n1.1"] = fw
		return ""
	})
	e.quick(d)
	key := rows[0].Key
	if n := count(t, e.pool, `select coalesce(odd_checking_reservation_times, 0) from numbers where value = $1`, key); n != 1 {
		t.Fatalf("row %s: %d attempts recorded, want the 1 that began", key, n)
	}
	e.cycle(d)
	for _, r := range e.workers["n1.1"].take(10) {
		if r.Key == key && r.Attempt != 2 {
			t.Fatalf("row %s handed out again at attempt %d, want 2", key, r.Attempt)
		}
	}
}
