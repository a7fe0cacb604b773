package dispatcher

import (
	"context"
	"crypto/subtle"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pampa-go/pampa/internal/backoff"
	"github.com/pampa-go/pampa/protocol"
)

// Config configures a Dispatcher.
type Config struct {
	DatabaseURL      string
	Flavor           Flavor
	Jobs             []Job
	Delay            time.Duration // idle poll period; 0 means 1s
	HeartbeatTimeout time.Duration // a worker unheard of this long is dead; 0 means 30s
	// Dispatchers is how many dispatcher addresses the workers try in
	// turn (this one and its standbys); a new leader waits for their
	// rounds before it judges the old leader's workers. Default 1.
	Dispatchers int
	StartSQL    string // run once after each connect
	Holder      string // lease holder name; default hostname:pid
	Logger      *slog.Logger
	// Secret is the cluster's worker secret: workers prove with it that
	// they belong to the cluster. Required.
	Secret []byte
	// KnownWorker says whether a worker id belongs to the cluster (a
	// configured node, a number within its max_workers); nil accepts any.
	KnownWorker func(id string) error
	// SQLSessions is how many sessions run sql steps, each in its own
	// transaction with its rows' end marks; default 2. Unused without sql
	// jobs.
	SQLSessions int
	// Ping is how often the protocol speaks on a quiet stream; default 2s.
	Ping time.Duration
	// Metrics, if set, hears what the dispatcher does (package
	// dispatcher/metrics); MetricsHandler, if set, is served at /metrics
	// beside the worker protocol (to loopback peers, and to others that
	// bring the worker secret as a bearer token).
	Metrics        Observer
	MetricsHandler http.Handler
}

func (c *Config) validate() error {
	if c.DatabaseURL == "" {
		return errors.New("dispatcher: no database URL")
	}
	if len(c.Secret) == 0 {
		return errors.New("dispatcher: no worker secret")
	}
	if c.Flavor == "" {
		c.Flavor = Postgres
	}
	if c.Delay <= 0 {
		c.Delay = time.Second
	}
	if c.HeartbeatTimeout <= 0 {
		c.HeartbeatTimeout = 30 * time.Second
	}
	if c.SQLSessions <= 0 {
		c.SQLSessions = 2
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Holder == "" {
		host, _ := os.Hostname()
		c.Holder = fmt.Sprintf("%s:%d", host, os.Getpid())
	}
	for i := range c.Jobs {
		if err := c.Jobs[i].Validate(); err != nil {
			return err
		}
	}
	return nil
}

// ErrBadSQL means SQL of the config (result_sql) does not run as written.
var ErrBadSQL = errors.New("bad SQL in the config")

// Dispatcher is the database's one client for the whole fleet. One loop
// owns the fleet's state and two sessions: on one it writes the workers'
// start and end marks in set-based batches, relaunches failed and late
// rows, takes rows back from dead workers and assigns workers to jobs; on
// the other it reserves rows, which it pushes to workers over the worker
// protocol. Marks and reservations run beside the loop (see flight.go). A
// third session LISTENs for new rows (PostgreSQL), and sql steps run on
// SQLSessions more.
type Dispatcher struct {
	cfg Config
	log *slog.Logger
	srv *protocol.Server

	queries []*Queries // built at connect, once the keys' types are known
	byJob   map[string]*Queries

	conn        *pgx.Conn   // the loop's: marks, relaunches, the registry
	rconn       *pgx.Conn   // reservations, at the same time as the marks
	notes       chan string // payloads from the LISTEN session
	stopBG      context.CancelFunc
	bg          sync.WaitGroup
	leading     atomic.Bool  // read by the protocol server's goroutines
	leaseUntil  atomic.Int64 // unix nanoseconds: until when the lease is surely held
	leader      bool
	leaderSince time.Time
	lastFull    time.Time
	assignBy    time.Time // assignment is revisited early when this passes
	// after is, per job, the highest key reserved since the last full
	// cycle: reservation resumes there instead of walking again past every
	// row taken since the last VACUUM. Rows that become free below it are
	// found by the walk from the start that every full cycle and every
	// short reservation makes (see resetCursor).
	after map[string]any

	obs   Observer // cfg.Metrics, or one that hears nothing
	inbox inbox
	peers map[string]*peer
	pools sync.Map // *protocol.Session → *sparePool, for the streams' goroutines
	// spareOK says, per job, whether its workers may have spare rows (see
	// spareWanted), as of its last assignment.
	spareOK map[string]bool
	// marks is what the workers said since the marks in flight left;
	// marksRoom, the emptied marks of the last flight, kept for their room.
	marks, marksRoom *pendingMarks
	mflight          *marksFlight       // on d.conn
	rflight          *reservationFlight // on d.rconn
	// reserveDue: something may have made room in a queue since the last
	// reservation round (an outcome, a worker, a notification, a cycle).
	reserveDue bool
	cursorGen  int // counts resets of after
	sqlRun     []*sqlRunner
	// paused holds the jobs operators paused, as of the last full cycle;
	// the sql runners read it too.
	paused atomic.Pointer[map[string]bool]

	decMu     sync.Mutex
	decisions []Decision // the last assignment decisions, oldest first

	// For Progress, read from other goroutines.
	ended atomic.Int64 // attempts whose end mark this dispatcher wrote
	alive atomic.Int64 // workers with a live stream at the last full cycle
}

// New validates cfg and returns a dispatcher; nothing is written until Run.
func New(cfg Config) (*Dispatcher, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	d := &Dispatcher{cfg: cfg, log: cfg.Logger, after: map[string]any{}, peers: map[string]*peer{}, spareOK: map[string]bool{},
		notes: make(chan string, 64), obs: cfg.Metrics, marks: &pendingMarks{}, reserveDue: true}
	if d.obs == nil {
		d.obs = noObserver{}
	}
	d.inbox.poke = make(chan struct{}, 1)
	srv, err := protocol.NewServer(protocol.ServerConfig{Secret: cfg.Secret, Handler: (*handler)(d), Logger: cfg.Logger,
		Ping: cfg.Ping})
	if err != nil {
		return nil, err
	}
	d.srv = srv
	return d, nil
}

// Handler serves the worker protocol at protocol.Path.
func (d *Dispatcher) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle(protocol.Path, d.srv)
	if h := d.cfg.MetricsHandler; h != nil {
		mux.Handle("/metrics", LoopbackOrBearer(d.cfg.Secret, h))
	}
	return mux
}

// Progress says how many attempts this dispatcher has ended so far and
// how many workers were connected at its last full cycle; safe from any
// goroutine.
func (d *Dispatcher) Progress() (ended int64, alive int, leader bool) {
	return d.ended.Load(), int(d.alive.Load()), d.leading.Load()
}

// MetricsHandler is the handler the dispatcher serves at /metrics, or nil.
func (d *Dispatcher) MetricsHandler() http.Handler { return d.cfg.MetricsHandler }

// LoopbackOrBearer serves h to peers on loopback and to others that send
// secret as a bearer token; the rest get 401.
func LoopbackOrBearer(secret []byte, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		ip := net.ParseIP(host)
		tok, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if (ip == nil || !ip.IsLoopback()) && subtle.ConstantTimeCompare([]byte(tok), secret) != 1 {
			http.Error(w, "metrics: send the worker secret as a bearer token, or scrape from loopback", http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// leaseTTL is how long a dispatcher stays leader without renewing; a second
// dispatcher stands by until the lease expires.
func (d *Dispatcher) leaseTTL() time.Duration { return max(10*time.Second, 5*d.cfg.Delay) }

// Run loops until ctx ends: a step, then a wait of at most Delay that a
// worker's message or a new row cuts short. Database errors are logged and
// retried with backoff, keeping every outcome not yet committed; only ctx
// ends the loop.
func (d *Dispatcher) Run(ctx context.Context) error {
	defer d.close()
	bo := backoff.New(100*time.Millisecond, 10*time.Second)
	for ctx.Err() == nil {
		if err := d.connect(ctx); err != nil {
			if errors.Is(err, ErrNotSetUp) || errors.Is(err, ErrBadSQL) {
				return err // retrying cannot fix the schema or the config
			}
			d.log.Error("dispatcher cannot reach the database; retrying", "err", err, "in", bo.Peek())
			_ = d.applyInbox(ctx, map[string]Stats{}) // keep the fleet's state current meanwhile: nothing is in flight
			bo.Wait(ctx)
			continue
		}
		began := time.Now()
		stats, err := d.cycle(ctx)
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			d.log.Error("dispatcher step failed; reconnecting", "err", err, "in", bo.Peek())
			d.drop()
			bo.Wait(ctx)
			continue
		}
		d.obs.Cycled(time.Since(began), stats)
		bo.Reset()
		d.wait(ctx)
	}
	d.srv.Shutdown()
	d.abandon()
	d.resign()
	return nil
}

// RunOnce connects, runs one full cycle without serving workers and
// returns what it did.
func (d *Dispatcher) RunOnce(ctx context.Context) (map[string]Stats, error) {
	defer d.close()
	if err := d.connect(ctx); err != nil {
		return nil, err
	}
	stats, err := d.Cycle(ctx)
	d.resign()
	return stats, err
}

// Stats counts what one cycle did, per job.
type Stats struct {
	Reserved, Relaunched, Released, Failed, Repeated int64
	Assigned                                         int
}

func (d *Dispatcher) connect(ctx context.Context) error {
	if d.conn != nil {
		return nil
	}
	conn, err := d.open(ctx)
	if err != nil {
		return err
	}
	fail := func(err error) error { conn.Close(context.Background()); return err }
	if err := Check(ctx, conn, d.cfg.Jobs); err != nil {
		return fail(err)
	}
	if d.queries == nil {
		d.byJob = map[string]*Queries{}
		for _, j := range d.cfg.Jobs {
			kt, err := KeyType(ctx, conn, j)
			if err != nil {
				return fail(err)
			}
			q := NewQueries(j, kt)
			if j.ResultSQL != "" {
				// Checked now, not at the first row: a statement that does
				// not prepare would stop every flush.
				sd, err := conn.Prepare(ctx, "", j.ResultSQL)
				if err != nil {
					return fail(fmt.Errorf("%w: job %q: result_sql: %w", ErrBadSQL, j.Name, err))
				}
				if q.resultArgs = len(sd.ParamOIDs); q.resultArgs > 2 {
					return fail(fmt.Errorf("%w: job %q: result_sql takes %d parameters; it gets two, $1 the key and $2 the output",
						ErrBadSQL, j.Name, q.resultArgs))
				}
			}
			for _, s := range j.Snippets.workerSnippets() {
				sd, err := conn.Prepare(ctx, "", s.name)
				if err != nil {
					return fail(fmt.Errorf("%w: job %q: %s: %w", ErrBadSQL, j.Name, s.key, err))
				}
				if len(sd.ParamOIDs) != 1 || len(sd.Fields) != 1 {
					return fail(fmt.Errorf("%w: job %q: %s takes %d parameters and returns %d columns; it gets $1, the worker id, and returns one value",
						ErrBadSQL, j.Name, s.key, len(sd.ParamOIDs), len(sd.Fields)))
				}
			}
			d.queries = append(d.queries, q)
			d.byJob[j.Name] = q
		}
	}
	ns, err := Namespace(ctx, conn)
	if err != nil {
		return fail(err)
	}
	// Reservations run on a session of their own, beside the marks: they
	// touch other rows (available ones, not held ones), so the two
	// statements of a round run at once on two server processes.
	rconn, err := d.open(ctx)
	if err != nil {
		return fail(err)
	}
	d.conn, d.rconn = conn, rconn
	d.lastFull = time.Time{}
	bg, stop := context.WithCancel(ctx)
	d.stopBG = stop
	if d.cfg.Flavor == Postgres {
		d.bg.Add(1)
		go func() { defer d.bg.Done(); d.listen(bg, DispatcherChannel(ns)) }()
	}
	d.startSQLRunners(bg)
	d.log.Info("dispatcher connected", "schema", ns, "jobs", len(d.queries), "flavor", d.cfg.Flavor)
	return nil
}

// readColumns keeps the list of columns the reservations send workers
// current: a column added to or dropped from a job's table while the
// dispatcher runs reaches the workers within a full cycle.
func (d *Dispatcher) readColumns(ctx context.Context) (changed bool, err error) {
	for i, q := range d.queries {
		if q.job.Step.SQL != "" {
			continue // its rows go to no worker
		}
		cols, err := UserColumns(ctx, d.conn, d.cfg.Flavor, q.job)
		if err != nil {
			return changed, err
		}
		if q.user != nil && slices.Equal(cols, q.user) {
			continue
		}
		if q.user != nil {
			changed = true
			d.log.Info("the columns of a job's table changed; workers receive them as they are now", "job", q.job.Name, "columns", cols)
		}
		nq := newQueries(q.job, q.keyType, cols)
		nq.resultArgs = q.resultArgs
		d.queries[i], d.byJob[q.job.Name] = nq, nq
	}
	return changed, nil
}

// columnsDropped says whether err is a reservation that named a column
// dropped since the last full cycle, after reading the columns again: the
// next reservation sends what the table has now.
func (d *Dispatcher) columnsDropped(ctx context.Context, err error) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "42703" { // undefined_column
		return false
	}
	if d.landMarks(ctx) != nil {
		return false
	}
	changed, rerr := d.readColumns(ctx)
	if rerr != nil || !changed {
		return false
	}
	d.log.Warn("a reservation named a column dropped since; the next one takes the table's columns as they are now", "err", err)
	return true
}

// open connects a session and runs start_sql on it: every session the
// dispatcher holds runs with the settings it makes (a search_path, say).
func (d *Dispatcher) open(ctx context.Context) (*pgx.Conn, error) {
	cc, err := pgx.ParseConfig(d.cfg.DatabaseURL)
	if err != nil {
		return nil, fmt.Errorf("database URL: %w", err)
	}
	if d.cfg.Metrics != nil {
		cc.Tracer = tracer{d.obs}
	}
	conn, err := pgx.ConnectConfig(ctx, cc)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	if d.cfg.StartSQL != "" {
		if _, err := conn.Exec(ctx, d.cfg.StartSQL); err != nil {
			conn.Close(context.WithoutCancel(ctx))
			return nil, fmt.Errorf("dispatcher start_sql: %w", err)
		}
	}
	return conn, nil
}

func (d *Dispatcher) drop() {
	if d.stopBG != nil {
		d.stopBG()
		d.bg.Wait()
		d.stopBG = nil
		d.sqlRun = nil
	}
	if d.conn != nil {
		d.abandon()
		d.conn.Close(context.Background())
		d.rconn.Close(context.Background())
		d.conn, d.rconn = nil, nil
	}
}

func (d *Dispatcher) close() { d.drop() }

// resign gives up the lease so a standby dispatcher takes over at once.
func (d *Dispatcher) resign() {
	if !d.leader {
		return
	}
	d.setLeader(false)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if d.conn != nil && d.conn.IsClosed() {
		d.drop() // a statement cancelled as the loop ended closes its session
	}
	if d.conn == nil {
		if err := d.connect(ctx); err != nil {
			return
		}
		defer d.drop()
	}
	_, _ = d.conn.Exec(ctx, `delete from pampa_leases where name = 'dispatcher' and holder = $1`, d.cfg.Holder)
}

// listen holds a session on the dispatcher's channel: the insert trigger
// and `jobs retry` wake the loop through it.
func (d *Dispatcher) listen(ctx context.Context, channel string) {
	bo := backoff.New(100*time.Millisecond, 10*time.Second)
	for ctx.Err() == nil {
		err := func() error {
			conn, err := d.open(ctx)
			if err != nil {
				return err
			}
			defer conn.Close(context.WithoutCancel(ctx))
			if _, err := conn.Exec(ctx, "listen "+quote(channel)); err != nil {
				return err
			}
			bo.Reset()
			d.note("freed") // whatever came while we were away
			for {
				n, err := conn.WaitForNotification(ctx)
				if err != nil {
					return err
				}
				d.note(n.Payload)
			}
		}()
		if ctx.Err() != nil {
			return
		}
		d.log.Warn("lost the notification session; polling until it is back", "err", err, "in", bo.Peek())
		bo.Wait(ctx)
	}
}

func (d *Dispatcher) note(payload string) {
	select {
	case d.notes <- payload:
	default: // the loop has plenty to wake up for already
	}
}

// wait blocks until a worker's message, a flight landing, a notification,
// or the next full cycle.
func (d *Dispatcher) wait(ctx context.Context) {
	if d.inbox.len() > 0 || d.mflight == nil && d.marks.any() {
		return
	}
	var marksBack, rowsBack chan struct{} // nil, never ready, when none is in flight
	if d.mflight != nil {
		marksBack = d.mflight.done
	}
	if d.rflight != nil {
		rowsBack = d.rflight.done
	}
	next := min(time.Until(d.lastFull.Add(d.cfg.Delay)), time.Until(d.assignBy))
	t := time.NewTimer(max(next, time.Millisecond))
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	case <-d.inbox.poke:
	case <-marksBack:
	case <-rowsBack:
	case p := <-d.notes:
		d.noted(p)
	}
	for {
		select {
		case p := <-d.notes:
			d.noted(p)
		default:
			return
		}
	}
}

func (d *Dispatcher) noted(payload string) {
	// New rows come with new keys, usually above the cursor; anything else
	// (a retry) may free rows anywhere.
	if payload != "insert" {
		d.resetCursor()
	}
	if payload == ControlNote || payload == "freed" {
		d.lastFull = time.Time{} // read the operators' orders now
	}
	d.assignBy = time.Now()
	d.reserveDue = true
	for _, r := range d.sqlRun {
		r.poke()
	}
}

func (d *Dispatcher) setLeader(on bool) {
	if on && !d.leader {
		d.leaderSince = time.Now()
	}
	d.leader = on
	d.leading.Store(on)
	if !on {
		d.leaseUntil.Store(0)
	}
	d.obs.Leading(on)
}

// lease takes or renews the dispatcher lease; false means another dispatcher
// holds it and this one stands by.
func (d *Dispatcher) lease(ctx context.Context) (bool, error) {
	var holder string
	asked := time.Now() // the lease runs from the database's now(), which is later
	err := d.conn.QueryRow(ctx, `insert into pampa_leases (name, holder, expires_at)
values ('dispatcher', $1, now() + $2::float8 * interval '1 second')
on conflict (name) do update set holder = excluded.holder, expires_at = excluded.expires_at
where pampa_leases.holder = excluded.holder or pampa_leases.expires_at < now()
returning holder`, d.cfg.Holder, d.leaseTTL().Seconds()).Scan(&holder)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("take dispatcher lease: %w", err)
	}
	d.leaseUntil.Store(asked.Add(d.leaseTTL()).UnixNano())
	return true, nil
}

// Cycle runs one full pass: lease, liveness, relaunch, assignment and
// reservation, and waits for its writes. It returns per-job statistics.
func (d *Dispatcher) Cycle(ctx context.Context) (map[string]Stats, error) {
	d.lastFull = time.Time{}
	stats, err := d.cycle(ctx)
	if err != nil {
		return nil, err
	}
	return stats, d.settle(ctx, stats)
}

// cycle lands the flights that are back, runs the full pass when it is
// due, and sends off the next flights.
func (d *Dispatcher) cycle(ctx context.Context) (map[string]Stats, error) {
	if d.conn == nil {
		return nil, errors.New("dispatcher: not connected")
	}
	stats := map[string]Stats{}
	if err := d.applyInbox(ctx, stats); err != nil {
		return nil, err
	}
	d.slowedDown()
	full := time.Since(d.lastFull) >= d.cfg.Delay
	assign := full || !time.Now().Before(d.assignBy)
	if full || assign || !d.leader {
		// What follows runs on the loop's session, which marks in flight
		// hold. A reservation in flight goes on: it takes rows that are
		// free, which none of it touches.
		if err := d.landMarks(ctx); err != nil {
			return nil, err
		}
	}
	if full || !d.leader {
		leader, err := d.lease(ctx)
		if err != nil {
			return nil, err
		}
		if leader != d.leader || d.lastFull.IsZero() {
			if leader {
				d.log.Info("dispatcher is the leader; serving workers", "holder", d.cfg.Holder)
			} else {
				d.log.Warn("another dispatcher holds the lease; standing by (workers are refused here until it stops)")
			}
		}
		d.setLeader(leader) // before standBy: Open refuses from now on
		if !leader {
			if err := d.landReservation(ctx, stats); err != nil {
				return nil, err
			}
			d.standBy() // also a stream that Open took just before
			d.lastFull = time.Now()
			return stats, nil
		}
	}
	if full {
		d.lastFull = time.Now()
		d.resetCursor()
		d.reserveDue = true
		if _, err := d.readColumns(ctx); err != nil {
			return nil, err
		}
		// Outcomes already received are written before their workers can
		// be judged dead: their rows would be taken back and run again.
		if err := d.writeMarksNow(ctx); err != nil {
			return nil, err
		}
		if err := d.liveness(ctx, stats); err != nil {
			return nil, err
		}
		live := 0
		for _, p := range d.peers {
			if p.sess != nil {
				live++
			}
		}
		d.alive.Store(int64(live))
		if d.cfg.Metrics != nil {
			byNode := map[string]int{}
			for _, p := range d.peers {
				if p.sess != nil {
					byNode[p.hello.Node]++
				}
			}
			d.obs.Workers(byNode)
		}
		for _, q := range d.queries {
			if err := d.relaunch(ctx, q, stats); err != nil {
				return nil, err
			}
		}
		if err := d.control(ctx); err != nil {
			return nil, err
		}
	}
	// Assignment first: the reservation is for the workers it leaves
	// assigned.
	if assign {
		d.assignBy = time.Now().Add(d.cfg.Delay)
		d.reserveDue = true
		for _, q := range d.queries {
			if err := d.assign(ctx, q, stats); err != nil {
				return nil, err
			}
		}
	}
	if err := d.pump(ctx, stats); err != nil {
		return nil, err
	}
	for name, s := range stats {
		if s != (Stats{}) {
			d.log.Debug("dispatcher cycle", "job", name, "reserved", s.Reserved, "relaunched", s.Relaunched,
				"released", s.Released, "failed", s.Failed, "assigned", s.Assigned)
		}
	}
	return stats, nil
}

// standBy drops every worker stream: the leader serves them.
func (d *Dispatcher) standBy() {
	for _, p := range d.peers {
		if p.sess != nil {
			p.sess.Close()
		}
		d.dropSpares(p)
	}
	clear(d.peers)
	d.marks = &pendingMarks{}
}

func (d *Dispatcher) relaunch(ctx context.Context, q *Queries, stats map[string]Stats) error {
	j := q.job
	s := stats[j.Name]
	failedArgs := []any{j.MaxTryTimes}
	switch {
	case j.Snippets.RelaunchingSQL != "":
		failedArgs = []any{1000}
	case j.RetryDelay > 0:
		failedArgs = append(failedArgs, j.RetryDelay.Seconds(), j.RetryDelayMax.Seconds())
	}
	b := &pgx.Batch{}
	b.Queue(q.RelaunchFailed, failedArgs...)
	b.Queue(q.RelaunchLate, j.MaxTryTimes, j.MaxJobDuration.Seconds())
	b.Queue(q.FailLate, j.MaxTryTimes, j.MaxJobDuration.Seconds())
	counts := []*int64{&s.Relaunched, &s.Relaunched, &s.Failed}
	if q.RepeatDone != "" {
		b.Queue(q.RepeatDone, j.RepeatEvery.Seconds())
		counts = append(counts, &s.Repeated)
	}
	res := d.conn.SendBatch(ctx, b)
	defer res.Close()
	for _, count := range counts {
		tag, err := res.Exec()
		if err != nil {
			return fmt.Errorf("job %q: relaunch rows: %w", j.Name, err)
		}
		*count += tag.RowsAffected()
	}
	stats[j.Name] = s
	if s.Relaunched > 0 || s.Repeated > 0 {
		d.resetCursor()
	}
	return res.Close()
}

// Jobs returns the names of the dispatcher's jobs in config order.
func (d *Dispatcher) Jobs() []string {
	names := make([]string, len(d.cfg.Jobs))
	for i, j := range d.cfg.Jobs {
		names[i] = j.Name
	}
	return slices.Clip(names)
}

// Serve serves the worker protocol on ln (TLS when tlsConfig is set) and
// runs the dispatcher until ctx ends.
func (d *Dispatcher) Serve(ctx context.Context, ln net.Listener, tlsConfig *tls.Config) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	served := make(chan error, 1)
	go func() { served <- protocol.Serve(ctx, ln, d.Handler(), tlsConfig, d.log) }()
	err := d.Run(ctx)
	cancel()
	if serr := <-served; err == nil && serr != nil {
		err = fmt.Errorf("serve workers on %s: %w", ln.Addr(), serr)
	}
	return err
}
