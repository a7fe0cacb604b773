package worker

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pampa-go/pampa/protocol"
)

// Handler processes one task of a job. A nil error marks the row
// successful, and the value it returns (nil, a string, []byte, or anything
// encoding/json takes) is the step's output: result_sql's $2, stored in the
// transaction that marks the row done. An error marks the row failed with
// the error's text as its description; wrapped by Permanent, it fails the
// row for good, whatever tries are left. The context ends when the task
// outlives max_job_duration, the row is cancelled, or the worker stops past
// its grace period.
type Handler func(ctx context.Context, t *Task) (any, error)

// Permanent marks a Handler's error as one no retry can mend (a malformed
// row, a resource that is gone): the row ends failed at once instead of
// being tried again.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &permanentError{err}
}

type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// Task is one row handed to a Handler.
type Task struct {
	Job      string
	WorkerID string
	Key      string // primary key, as text
	Attempt  int    // 1 on the first try
	// Data holds the row's own columns as a JSON object (Decode reads it).
	Data json.RawMessage
	w    *Worker
}

// Decode reads the row's columns into v, a struct with json tags or a
// map[string]any (numbers become json.Number, so that large keys and
// numerics keep their digits). Only a handler that asks pays for it.
func (t *Task) Decode(v any) error {
	if len(t.Data) == 0 {
		return nil
	}
	d := json.NewDecoder(bytes.NewReader(t.Data))
	d.UseNumber()
	if err := d.Decode(v); err != nil {
		return fmt.Errorf("decode row %s of job %s: %w", t.Key, t.Job, err)
	}
	return nil
}

// DB opens, on first use, a pool of database sessions for handlers that
// write somewhere themselves: at most one session per slot of the worker,
// from Config.DatabaseURL (PAMPA_DATABASE_URL on the node). Workers hold no
// session otherwise; prefer result_sql, which needs none.
func (t *Task) DB(ctx context.Context) (*pgxpool.Pool, error) { return t.w.database(ctx) }

// Job is what a worker needs of a job: its step.
type Job struct {
	Name           string
	Command        []string // argv run per row, the row as JSON on stdin; nil: a Go handler
	MaxJobDuration time.Duration
	// Slots is how many rows of the job the worker runs at once: command
	// steps as processes, Go handlers as goroutines. 0 means 1.
	Slots int
}

// Config configures a Worker.
type Config struct {
	ID          string   // "node.N"
	Node        string   // the node's name
	Dispatchers []string // host:port of the dispatchers, tried in turn
	Secret      []byte   // the cluster's worker secret
	TLS         *tls.Config
	Jobs        []Job              // the jobs this worker may take
	Handlers    map[string]Handler // Go steps by job name
	GracePeriod time.Duration      // time the running task gets after stop; default 30s
	WorkDir     string             // where command steps run
	// StartCommand runs once before the worker connects.
	StartCommand []string
	OutputLimit  int // bytes of a command's stdout kept as output; default DefaultOutputLimit
	// Limits bound each command step (the node's max_ram and the rest);
	// NoKernelLimits keeps them out of cgroups, to the worker's own means.
	Limits         Limits
	NoKernelLimits bool
	DatabaseURL    string // what Task.DB opens; "" for none
	// StepsFile records the running step's process group; default
	// WORK_DIR/run/ID.steps.
	StepsFile string
	Logger    *slog.Logger
}

func (c *Config) validate() error {
	if err := validateWorkerID(c.ID); err != nil {
		return err
	}
	if len(c.Dispatchers) == 0 {
		return errors.New("worker: no dispatcher address")
	}
	if len(c.Secret) == 0 {
		return errors.New("worker: no worker secret")
	}
	if c.GracePeriod <= 0 {
		c.GracePeriod = 30 * time.Second
	}
	if c.OutputLimit <= 0 {
		c.OutputLimit = DefaultOutputLimit
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.StepsFile == "" {
		c.StepsFile = filepath.Join(c.WorkDir, "run", c.ID+".steps")
	}
	for _, j := range c.Jobs {
		if len(j.Command) == 0 && c.Handlers[j.Name] == nil {
			return fmt.Errorf("job %q has no command, and this worker binary registers no Go handler for it: "+
				"set command in the job, or build pampactl with a handler (pampacli.Options.Handlers)", j.Name)
		}
		if j.MaxJobDuration <= 0 {
			return fmt.Errorf("job %q: max job duration must be positive", j.Name)
		}
	}
	return nil
}

func validateWorkerID(id string) error {
	node, n, ok := strings.Cut(id, ".")
	if !ok || node == "" || n == "" || strings.ContainsAny(id, " \t\n/'\"") {
		return fmt.Errorf("worker id %q: want node.N, like node1.3", id)
	}
	return nil
}

// Worker takes the rows the dispatcher pushes to it over the worker
// protocol, runs its job's step on each and reports how it went. It holds
// no database session: the dispatcher writes the marks.
type Worker struct {
	cfg    Config
	log    *slog.Logger
	jobs   map[string]Job
	client *protocol.Client
	steps  stepRecord
	runs   sync.WaitGroup // the rows running, one goroutine each
	cg     cgroups
	plan   []LimitPlan // how each of cfg.Limits is enforced

	mu    sync.Mutex
	queue []protocol.Row
	// running maps the rows whose step runs to what stops it (an operator
	// cancelled it); up to the job's slots at once.
	running     map[protocol.Ref]*runningRow
	interrupted []protocol.Ref // stopped past the grace period: given back
	leaving     bool           // the queue is given back: rows that come now go back too
	up          bool           // a dispatcher serves us
	wake        chan struct{}
	streamDown  chan struct{}
	streamUp    chan struct{}
	stopClient  context.CancelFunc // set by Run

	dbOnce sync.Once
	db     *pgxpool.Pool
	dbErr  error
}

// New validates cfg; nothing connects until Run.
func New(cfg Config) (*Worker, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	w := &Worker{cfg: cfg, log: cfg.Logger.With("worker", cfg.ID), jobs: map[string]Job{},
		steps: stepRecord{path: cfg.StepsFile}, running: map[protocol.Ref]*runningRow{}, wake: make(chan struct{}, 1), streamDown: make(chan struct{}, 1),
		streamUp: make(chan struct{}, 1)}
	for _, j := range cfg.Jobs {
		w.jobs[j.Name] = j
	}
	if cfg.Limits.any() {
		w.cg = findCgroups(cfg.WorkDir)
		w.plan = planLimits(cfg.Limits, w.cg, cfg.NoKernelLimits)
	}
	instance := make([]byte, 8)
	_, _ = rand.Read(instance)
	host, _ := os.Hostname()
	names, slots := make([]string, 0, len(cfg.Jobs)), 1
	for _, j := range cfg.Jobs {
		names, slots = append(names, j.Name), max(slots, j.Slots)
	}
	client, err := protocol.NewClient(protocol.ClientConfig{
		Addrs: cfg.Dispatchers, Secret: cfg.Secret, TLS: cfg.TLS, Logger: w.log,
		Hello: func() protocol.Hello {
			return protocol.Hello{ID: cfg.ID, Node: cfg.Node, Hostname: host, PID: os.Getpid(),
				Instance: hex.EncodeToString(instance), Jobs: names, Slots: slots, InHand: w.inHand()}
		},
		Deliver:   w.deliver,
		Connected: w.connected,
	})
	if err != nil {
		return nil, err
	}
	w.client = client
	return w, nil
}

// inHand is what the worker holds: queued rows, the running one, and rows
// whose outcome the dispatcher has not acknowledged (so that it does not
// relaunch them before the outcome is written).
func (w *Worker) inHand() []protocol.Held {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []protocol.Held
	for _, r := range w.queue {
		out = append(out, protocol.Held{Ref: r.Ref})
	}
	for r := range w.running {
		out = append(out, protocol.Held{Ref: r, Started: true})
	}
	for _, o := range w.client.Unacked() {
		out = append(out, protocol.Held{Ref: o.Ref, Started: true})
	}
	return out
}

func (w *Worker) deliver(m protocol.Message) {
	switch m.Kind {
	case protocol.KindRows:
		w.mu.Lock()
		if w.leaving {
			w.mu.Unlock()
			// Sent before the dispatcher heard that this worker leaves:
			// back at once, or they would wait for the heartbeat timeout.
			refs := make([]protocol.Ref, len(m.Rows))
			for i, r := range m.Rows {
				refs[i] = r.Ref
			}
			w.client.Send(protocol.Message{Kind: protocol.KindRelease, Refs: refs})
			return
		}
		w.queue = append(w.queue, m.Rows...)
		w.mu.Unlock()
		w.poke()
	case protocol.KindRevoke:
		if back := w.unqueue(m.Refs); len(back) > 0 {
			w.client.Send(protocol.Message{Kind: protocol.KindReturn, Refs: back})
		}
	case protocol.KindCancel:
		for _, r := range w.unqueue(m.Refs) {
			w.client.Report(protocol.Outcome{Ref: r, Error: errCancelled.Error(), Permanent: true})
		}
		w.mu.Lock()
		for _, r := range m.Refs {
			if run := w.running[r]; run != nil {
				w.log.Info("stopping a running row: cancelled", "job", r.Job, "key", r.Key)
				run.cancelled.Store(true)
				run.stop()
			}
		}
		w.mu.Unlock()
	}
}

// errCancelled ends a row an operator cancelled.
var errCancelled = errors.New("cancelled")

// unqueue takes refs out of the queue and returns those it held.
func (w *Worker) unqueue(refs []protocol.Ref) []protocol.Ref {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []protocol.Ref
	w.queue = slices.DeleteFunc(w.queue, func(r protocol.Row) bool {
		if slices.Contains(refs, r.Ref) {
			out = append(out, r.Ref)
			return true
		}
		return false
	})
	return out
}

func (w *Worker) connected(up bool) {
	w.mu.Lock()
	w.up = up
	if !up {
		// Queued rows hold only on the stream that brought them: the
		// dispatcher may hand them to others before this worker is back,
		// and a row started meanwhile could not be reported. The running
		// row finishes and its outcome is kept.
		if len(w.queue) > 0 {
			w.log.Info("stream to the dispatcher lost; giving up the queued rows", "rows", len(w.queue))
		}
		w.queue = nil
	}
	leaving, stop := w.leaving, w.stopClient
	w.mu.Unlock()
	switch {
	case up && leaving:
		// A new stream, maybe to another dispatcher: say again that this
		// worker leaves, so that it is let go rather than given rows.
		w.client.Send(protocol.Message{Kind: protocol.KindRelease})
	case !up && leaving && stop != nil && len(w.client.Unacked()) == 0:
		// Let go with nothing left to deliver: do not reconnect, which
		// would sign the worker up again before it exits.
		stop()
	}
	ch := w.streamUp
	if !up {
		ch = w.streamDown
	}
	select {
	case ch <- struct{}{}:
	default:
	}
	w.poke()
}

func (w *Worker) poke() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// Run works until ctx ends, then stops gracefully: it starts no new row,
// lets the running one finish within GracePeriod, gives back its queue,
// waits (10s at most) for its outcomes to be acknowledged and returns nil.
// While no dispatcher answers it finishes the running row and keeps its
// outcome until a dispatcher acknowledges it; its queued rows it gives up
// at once (the dispatcher frees them when the worker is back, or when the
// heartbeat timeout declares it dead). Run returns an error when the worker cannot
// start (start_command) or a dispatcher refuses it for good (wrong secret,
// id held by another process).
func (w *Worker) Run(ctx context.Context) error {
	// Work outlives ctx by the grace period so the running task can end well.
	work, cancelWork := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWork()
	stopGrace := context.AfterFunc(ctx, func() {
		w.log.Info("stopping: finishing the running task", "grace", w.cfg.GracePeriod)
		t := time.AfterFunc(w.cfg.GracePeriod, cancelWork)
		context.AfterFunc(work, func() { t.Stop() })
	})
	defer stopGrace()
	defer w.closeDB()

	if n := w.steps.killLeftovers(); n > 0 {
		w.log.Warn("killed processes of a step that an earlier worker under this id left running", "processes", n)
	}
	if len(w.cfg.StartCommand) > 0 {
		if err := runCommand(ctx, w.cfg.StartCommand, w.cfg.WorkDir, os.Environ(), w.cfg.GracePeriod, w.log); err != nil {
			return fmt.Errorf("worker %s: start_command: %w", w.cfg.ID, err)
		}
	}
	cctx, stopClient := context.WithCancel(context.WithoutCancel(ctx))
	defer stopClient()
	w.mu.Lock()
	w.stopClient = stopClient
	w.mu.Unlock()
	clientDone := make(chan error, 1)
	go func() { clientDone <- w.client.Run(cctx) }()
	w.log.Info("worker started", "pid", os.Getpid(), "jobs", len(w.jobs), "dispatchers", w.cfg.Dispatchers)
	for _, p := range w.plan {
		w.log.Info("resource limit", "limit", p.Limit, "value", fmt.Sprintf("%d %s", p.Value, p.Unit), "by", p.By, "why", p.Reason)
	}

	refused := w.loop(ctx, work, clientDone)
	w.runs.Wait() // the rows running finish (or the grace period ends them)
	if refused != nil {
		return refused
	}
	w.leave(work)
	stopClient()
	if err := <-clientDone; err != nil {
		w.log.Warn("worker stopped", "err", err)
	}
	w.log.Info("worker stopped")
	return nil
}

// loop runs rows until stop ends or the client is refused for good.
func (w *Worker) loop(stop, work context.Context, clientDone <-chan error) error {
	for {
		select {
		case <-stop.Done():
			return nil
		case err := <-clientDone:
			w.log.Error("the dispatcher refused this worker", "err", err)
			return fmt.Errorf("worker %s: %w", w.cfg.ID, err)
		case <-w.wake:
		}
		for stop.Err() == nil {
			r, rowCtx, ok := w.next(work)
			if !ok {
				break
			}
			w.runs.Add(1)
			go func() {
				defer w.runs.Done()
				w.runRow(work, rowCtx, r)
				w.poke() // a slot is free
			}()
		}
	}
}

// next pops a queued row, unless the dispatcher has gone quiet: a row
// started then may be handed to another worker before its outcome gets
// through. (What a worker cut off without knowing it yet runs in vain is
// bounded by its queue: nothing refills it.)
func (w *Worker) next(work context.Context) (protocol.Row, context.Context, bool) {
	if !w.client.Heard() {
		time.AfterFunc(100*time.Millisecond, w.poke) // look again: it may be back
		return protocol.Row{}, nil, false
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.queue) == 0 || len(w.running) >= max(w.jobs[w.queue[0].Job].Slots, 1) {
		return protocol.Row{}, nil, false
	}
	r := w.queue[0]
	w.queue = w.queue[1:]
	run := &runningRow{}
	run.ctx = rowContext{parent: work, deadline: time.Now().Add(w.jobs[r.Job].MaxJobDuration)}
	w.running[r.Ref] = run
	return r, &run.ctx, true
}

// runningRow is a row whose step runs: its context, and whether an
// operator cancelled it.
type runningRow struct {
	ctx       rowContext
	cancelled atomic.Bool
}

func (r *runningRow) stop() { r.ctx.stop() }

// rowContext ends a row's step at max_job_duration, on a cancel and when
// the worker stops. Its timer and channel are made when the step first
// asks for Done: a Go step that only computes never does, and a
// context.WithDeadline per row, with its timer and its registration in
// the parent, was a tenth of a quick worker's CPU.
type rowContext struct {
	parent   context.Context
	deadline time.Time
	mu       sync.Mutex
	inner    context.Context // made by Done while the context runs
	cancel   context.CancelFunc
	err      error         // once ended, while there is no inner
	closed   chan struct{} // Done's once ended without inner
}

func (c *rowContext) Deadline() (time.Time, bool) { return c.deadline, true }

// Value answers from inner once there is one: a child context then finds
// the cancelCtx whose Done is this one's, and needs no goroutine to watch.
func (c *rowContext) Value(key any) any {
	c.mu.Lock()
	inner := c.inner
	c.mu.Unlock()
	if inner != nil {
		return inner.Value(key)
	}
	return c.parent.Value(key)
}

func (c *rowContext) Done() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.inner != nil {
		return c.inner.Done()
	}
	if c.ended() != nil {
		// Ended already: its error stays the one Err gave.
		if c.closed == nil {
			c.closed = make(chan struct{})
			close(c.closed)
		}
		return c.closed
	}
	c.inner, c.cancel = context.WithDeadline(c.parent, c.deadline)
	return c.inner.Done()
}

func (c *rowContext) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.inner != nil {
		return c.inner.Err()
	}
	return c.ended()
}

// ended is Err without inner; an error once given stays. Called locked.
func (c *rowContext) ended() error {
	if c.err == nil {
		if err := c.parent.Err(); err != nil {
			c.err = err
		} else if !time.Now().Before(c.deadline) {
			c.err = context.DeadlineExceeded
		}
	}
	return c.err
}

// stop cancels the context and lets go of its timer.
func (c *rowContext) stop() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ended() == nil {
		c.err = context.Canceled
	}
	if c.cancel != nil {
		c.cancel()
	}
}

// runRow runs one row's step and reports its outcome. row is work's
// child that max_job_duration and a cancel end.
func (w *Worker) runRow(work, row context.Context, r protocol.Row) {
	w.client.Started(r.Ref)
	j, known := w.jobs[r.Job]
	began := time.Now()
	var output *string
	var stepErr error
	if !known {
		stepErr = fmt.Errorf("job %q is not one this worker runs; check that dispatcher and worker share one config", r.Job)
	} else {
		output, stepErr = w.step(row, j, r)
	}
	w.mu.Lock()
	run := w.running[r.Ref]
	delete(w.running, r.Ref)
	switch {
	case run != nil && run.cancelled.Load():
		output, stepErr = nil, Permanent(errCancelled)
	case known && stepErr != nil && row.Err() == context.DeadlineExceeded && work.Err() == nil:
		stepErr = fmt.Errorf("ran past max_job_duration (%s): %w", j.MaxJobDuration, stepErr)
	}
	if run != nil {
		run.stop()
	}
	if stepErr != nil && work.Err() != nil {
		// Stopped past the grace period: not the row's fault, give it back.
		w.interrupted = append(w.interrupted, r.Ref)
		w.mu.Unlock()
		return
	}
	w.mu.Unlock()
	o := protocol.Outcome{Ref: r.Ref, OK: stepErr == nil, Output: output, Millis: time.Since(began).Milliseconds()}
	if stepErr != nil {
		o.Error = stepErr.Error()
		var exit *exec.ExitError
		if errors.As(stepErr, &exit) && exit.ExitCode() > 0 {
			o.ExitCode = exit.ExitCode()
		}
		o.Permanent = errors.As(stepErr, new(*permanentError))
		w.log.Warn("task failed", "job", r.Job, "key", r.Key, "attempt", r.Attempt, "err", o.Error, "permanent", o.Permanent)
	}
	w.client.Report(o)
}

func (w *Worker) step(ctx context.Context, j Job, r protocol.Row) (*string, error) {
	if len(j.Command) > 0 {
		log := w.log.With("job", j.Name, "key", r.Key)
		env := append(os.Environ(),
			"PAMPA_TASK_ID="+r.Key, "PAMPA_JOB="+j.Name,
			"PAMPA_WORKER_ID="+w.cfg.ID, fmt.Sprintf("PAMPA_ATTEMPT=%d", r.Attempt))
		var limits *stepLimits
		if len(w.plan) > 0 {
			var err error
			if limits, err = newStepLimits(w.cfg.Limits, w.plan, w.cg, w.cfg.ID); err != nil {
				return nil, fmt.Errorf("resource limits: %w", err)
			}
		}
		pgid := 0
		out, err := command{argv: j.Command, stdin: r.Data, dir: w.cfg.WorkDir, env: env, killDelay: 5 * time.Second,
			outputLimit: w.cfg.OutputLimit, log: log, started: func(p int) { pgid = p; w.steps.add(p) }, limits: limits}.run(ctx)
		if pgid != 0 {
			w.steps.remove(pgid)
		}
		if err != nil {
			return nil, err
		}
		return &out, nil
	}
	t := &Task{Job: j.Name, WorkerID: w.cfg.ID, Key: r.Key, Attempt: r.Attempt, Data: r.Data, w: w}
	v, err := safeCall(ctx, w.cfg.Handlers[j.Name], t)
	if err != nil {
		return nil, err
	}
	return outputOf(v)
}

// outputOf turns a handler's value into the step's output.
func outputOf(v any) (*string, error) {
	var s string
	switch x := v.(type) {
	case nil:
		return nil, nil
	case string:
		s = x
	case []byte:
		s = string(x)
	default:
		b, err := json.Marshal(v)
		if err != nil {
			return nil, fmt.Errorf("encode the handler's result: %w", err)
		}
		s = string(b)
	}
	return &s, nil
}

// leave gives back the queue and the interrupted rows, and waits a little
// for the outcomes to be committed and the rows to be taken back.
func (w *Worker) leave(ctx context.Context) {
	select {
	case <-w.streamUp: // an old stream's
	default:
	}
	w.mu.Lock()
	var back []protocol.Ref
	for _, r := range w.queue {
		back = append(back, r.Ref)
	}
	back = append(back, w.interrupted...)
	w.queue, w.interrupted, w.leaving = nil, nil, true
	up := w.up
	w.mu.Unlock()
	wait := time.NewTimer(10 * time.Second)
	defer wait.Stop()
	select {
	case <-w.streamDown:
	default:
	}
	if !up && w.client.Connecting() {
		// A stream is being accepted: the dispatcher may have signed this
		// worker in. Wait for it, so that it hears the worker leave rather
		// than judge it dead a heartbeat timeout later.
		select {
		case <-w.streamUp:
			up = true
		case <-time.After(2 * time.Second):
		}
	}
	w.client.Send(protocol.Message{Kind: protocol.KindRelease, Refs: back})
	select {
	case <-w.client.AllAcked():
	case <-wait.C:
		if n := len(w.client.Unacked()); n > 0 {
			w.log.Warn("stopping with outcomes no dispatcher acknowledged; their rows will run again", "rows", n)
		}
		return
	}
	if up {
		// The dispatcher closes the stream once the rows are back.
		select {
		case <-w.streamDown:
		case <-wait.C:
		case <-ctx.Done():
		}
	}
}

func safeCall(ctx context.Context, h Handler, t *Task) (v any, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("handler panicked: %v", p)
		}
	}()
	return h(ctx, t)
}

func (w *Worker) database(ctx context.Context) (*pgxpool.Pool, error) {
	w.dbOnce.Do(func() {
		if w.cfg.DatabaseURL == "" {
			w.dbErr = errors.New("this worker has no database URL: set PAMPA_DATABASE_URL on the node, or write results with the job's result_sql")
			return
		}
		cfg, err := pgxpool.ParseConfig(w.cfg.DatabaseURL)
		if err != nil {
			w.dbErr = fmt.Errorf("worker database URL: %w", err)
			return
		}
		cfg.MaxConns, cfg.MinConns = 1, 0
		w.db, w.dbErr = pgxpool.NewWithConfig(context.WithoutCancel(ctx), cfg)
	})
	return w.db, w.dbErr
}

func (w *Worker) closeDB() {
	if w.db != nil {
		w.db.Close()
	}
}
