package dispatcher

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/pampa-go/pampa/protocol"
)

// peer is what the dispatcher knows of one worker, in memory: liveness is
// written to pampa_workers in bulk once per full cycle.
type peer struct {
	id    string
	sess  *protocol.Session // nil while disconnected
	hello protocol.Hello
	job   string         // assigned job, "" for none
	held  map[rowID]hold // rows sent to it and not ended
	gone  time.Time      // when its stream ended
	fresh bool           // connected since the last marks left: register and reconcile
	leave bool           // it gave its rows back and is stopping
	spare *sparePool     // its stream's spare rows (see spareWanted); nil while disconnected
	// coming is how many rows the reservation in flight asked for it.
	coming int
	// millis is the mean duration of its last steps, ended counts its
	// outcomes: quick workers get spare rows.
	millis float64
	ended  int
	quick  bool
}

type rowID struct{ job, key string }

// hold is a row a worker holds: the attempt it holds it at, and whether
// that attempt began. A row relaunched while its worker still runs it may
// come back to the same worker: the attempt tells the two apart.
type hold struct {
	attempt   int
	started   bool
	startedAt time.Time // when the loop heard of its start
	reserved  time.Time // when it was sent, for the queue wait
	told      bool      // asked to give it back (its job is paused)
	cancelled bool      // told to stop it
}

// busy says whether p holds rows: sent, kept as its spares, or on their
// way from the database.
func (p *peer) busy() bool { return len(p.held) > 0 || p.spare.size() > 0 || p.coming > 0 }

func (p *peer) queued(job string) int {
	n := 0
	for r, h := range p.held {
		if r.job == job && !h.started {
			n++
		}
	}
	return n
}

func (p *peer) can(job string) bool { return slices.Contains(p.hello.Jobs, job) }

// event is something a worker stream did, queued for the loop.
type event struct {
	sess     *protocol.Session
	msg      protocol.Message
	closed   bool
	opened   bool
	handed   []protocol.Row // spare rows sent as the outcomes in msg arrived
	handedAt time.Time
}

// inbox hands events from the streams' goroutines to the loop.
type inbox struct {
	mu     sync.Mutex
	events []event
	poke   chan struct{}
}

func (b *inbox) put(e event) {
	b.mu.Lock()
	b.events = append(b.events, e)
	b.mu.Unlock()
	select {
	case b.poke <- struct{}{}:
	default:
	}
}

func (b *inbox) take() []event {
	b.mu.Lock()
	defer b.mu.Unlock()
	ev := b.events
	b.events = nil
	return ev
}

func (b *inbox) len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.events)
}

// handler is the Dispatcher as the protocol server sees it.
type handler Dispatcher

func (h *handler) Open(s *protocol.Session) error {
	if !h.leading.Load() {
		return &protocol.Refusal{Status: http.StatusServiceUnavailable, Msg: "this dispatcher is standing by; another holds the lease"}
	}
	if h.cfg.KnownWorker != nil {
		if err := h.cfg.KnownWorker(s.Hello.ID); err != nil {
			return &protocol.Refusal{Status: http.StatusForbidden, Msg: err.Error()}
		}
	}
	h.inbox.put(event{sess: s, opened: true})
	return nil
}

func (h *handler) Receive(s *protocol.Session, m protocol.Message) {
	e := event{sess: s, msg: m}
	if m.Kind == protocol.KindOutcomes {
		// Each outcome frees a slot of the worker's queue: fill it from the
		// spares now, not after the loop's next round trip.
		if pool, ok := h.pools.Load(s); ok && (*Dispatcher)(h).leaseHolds() {
			e.handed, e.handedAt = pool.(*sparePool).handOut(len(m.Outcomes)), time.Now()
		}
	}
	h.inbox.put(e)
}
func (h *handler) Closed(s *protocol.Session) { h.inbox.put(event{sess: s, closed: true}) }

// applyInbox brings the fleet's state up to date with what the streams
// said. A stream that opens or closes waits for the flights to land: they
// were built for the fleet as it was. Their errors are returned once every
// event is applied.
func (d *Dispatcher) applyInbox(ctx context.Context, stats map[string]Stats) error {
	var err error
	events := d.inbox.take()
	if len(events) > 0 {
		d.reserveDue = true
	}
	for _, e := range events {
		if e.opened || e.closed {
			err = errors.Join(err, d.settle(ctx, stats))
		}
		id := e.sess.Hello.ID
		p := d.peers[id]
		switch {
		case e.opened:
			if p == nil || p.hello.Instance != e.sess.Hello.Instance {
				// A new process under this id: what an old one held is
				// reconciled against what this one says it holds.
				p = &peer{id: id}
				d.peers[id] = p
			}
			// Spares of an earlier stream are the worker's in the database
			// and not in its hello: the reconciliation frees them.
			d.dropSpares(p)
			p.sess, p.hello, p.fresh, p.leave, p.gone = e.sess, e.sess.Hello, true, false, time.Time{}
			p.spare = &sparePool{sess: e.sess}
			d.pools.Store(e.sess, p.spare)
			p.held = map[rowID]hold{}
			for _, h := range e.sess.Hello.InHand {
				// An unacknowledged outcome and a newer attempt of the
				// same row: the newer is the one held.
				id := rowID{h.Job, h.Key}
				if old, ok := p.held[id]; !ok || h.Attempt >= old.attempt {
					p.held[id] = hold{attempt: h.Attempt, started: h.Started}
				}
			}
			if p.job != "" && !p.can(p.job) {
				p.job = ""
			}
			d.assignBy = time.Now()
		case p == nil || p.sess != e.sess:
			// An event of a stream that was replaced: its successor's
			// hello said what the worker holds.
		case e.closed:
			// Its spares are freed by its next hello, or with its other
			// rows once it is judged dead.
			d.dropSpares(p)
			p.sess, p.gone = nil, time.Now()
			if p.leave && len(p.held) == 0 {
				delete(d.peers, id)
				d.marks.stopped = append(d.marks.stopped, id)
			}
		default:
			d.receive(p, e.msg)
			for _, r := range e.handed {
				p.held[rowID{r.Job, r.Key}] = hold{attempt: r.Attempt, reserved: e.handedAt}
			}
			if len(e.handed) > 0 {
				p.spare.absorbed(len(e.handed))
			}
		}
	}
	return err
}

// dropSpares forgets p's spare rows: its stream is gone.
func (d *Dispatcher) dropSpares(p *peer) {
	if p.spare != nil {
		d.pools.Delete(p.spare.sess)
		p.spare.take(anyRow)
		p.spare = nil
	}
}

func (d *Dispatcher) receive(p *peer, m protocol.Message) {
	switch m.Kind {
	case protocol.KindStarts:
		for _, r := range m.Refs {
			id := rowID{r.Job, r.Key}
			if h, ok := p.held[id]; ok && h.attempt == r.Attempt && d.byJob[r.Job] != nil {
				if !h.started {
					d.obs.RowStarted(r.Job, time.Since(h.reserved))
				}
				h.started, h.startedAt = true, time.Now()
				p.held[id] = h
				d.marks.start(p.id, r)
			}
		}
	case protocol.KindOutcomes:
		for _, o := range m.Outcomes {
			// The outcome of an attempt relaunched since leaves the newer
			// attempt in hand: its start must still be marked.
			id := rowID{o.Job, o.Key}
			if h, ok := p.held[id]; ok && h.attempt == o.Attempt {
				if !h.started && !h.reserved.IsZero() {
					// Its start never went out: the client drops a start
					// whose outcome is reported before it is written.
					ran := time.Duration(o.Millis) * time.Millisecond
					d.obs.RowStarted(o.Job, max(time.Since(h.reserved)-ran, 0))
				}
				delete(p.held, id)
			}
			p.ended++
			p.millis += (float64(o.Millis) - p.millis) / float64(min(p.ended, 20))
			d.judgeQuick(p)
			if d.byJob[o.Job] == nil {
				d.log.Warn("outcome for a job this dispatcher does not run; dropped", "worker", p.id, "job", o.Job)
				p.sess.Send(protocol.Message{Kind: protocol.KindAcks, Acks: []uint64{o.Seq}})
				continue
			}
			d.marks.outcome(p.id, p.hello.Instance, o)
		}
	case protocol.KindRelease, protocol.KindReturn:
		if m.Kind == protocol.KindRelease {
			p.leave = true
			d.marks.leave(p.id)
			d.giveBackSpares(p, anyRow)
		}
		for _, r := range m.Refs {
			if id := (rowID{r.Job, r.Key}); p.held[id].attempt == r.Attempt {
				delete(p.held, id)
			}
			if d.byJob[r.Job] != nil {
				d.marks.give(p.id, r)
			}
		}
	default:
		d.log.Warn("unexpected message from a worker; ignored", "worker", p.id, "kind", m.Kind)
	}
}

// liveness writes the connected workers' heartbeats and assignments in
// one statement, then takes rows back from the workers gone longer than
// the heartbeat timeout (those this dispatcher saw leave, and those an
// earlier dispatcher knew that never came back).
func (d *Dispatcher) liveness(ctx context.Context, stats map[string]Stats) error {
	var ids, jobs []string
	for _, p := range d.peers {
		if p.sess != nil || time.Since(p.gone) < d.cfg.HeartbeatTimeout {
			ids = append(ids, p.id)
			jobs = append(jobs, p.job)
		}
	}
	if len(ids) > 0 {
		if _, err := d.conn.Exec(ctx, `update pampa_workers as w set heartbeat_at = now(), state = 'alive', job = nullif(u.job, ''),
  assigned_at = case when w.job is distinct from nullif(u.job, '') then now() else w.assigned_at end
from unnest($1::text[], $2::text[]) as u(id, job) where w.id = u.id`, ids, jobs); err != nil {
			return fmt.Errorf("record workers' heartbeats: %w", err)
		}
	}
	var dead []string
	for id, p := range d.peers {
		if p.sess == nil && time.Since(p.gone) >= d.cfg.HeartbeatTimeout {
			dead = append(dead, id)
		}
	}
	// Workers an earlier leader knew are judged by their heartbeat in the
	// registry, but not before they had time to find this leader: they
	// were refused while it stood by, and back off between rounds.
	judgeRegistry := time.Since(d.leaderSince) >= d.cfg.HeartbeatTimeout+protocol.FindLeaderWithin(d.cfg.Dispatchers)
	rows, err := d.conn.Query(ctx, `update pampa_workers set state = 'dead', job = null, assigned_at = null
where state = 'alive' and ((heartbeat_at < now() - $1::float8 * interval '1 second' and $3) or id = any($2))
returning id`, d.cfg.HeartbeatTimeout.Seconds(), dead, judgeRegistry)
	if err != nil {
		return fmt.Errorf("find dead workers: %w", err)
	}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return err
		}
		if !slices.Contains(dead, id) {
			dead = append(dead, id)
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("find dead workers: %w", err)
	}
	if len(dead) == 0 {
		return nil
	}
	d.log.Warn("workers unheard of for the heartbeat timeout; taking their rows back", "workers", dead, "timeout", d.cfg.HeartbeatTimeout)
	for _, q := range d.queries {
		s := stats[q.job.Name]
		for _, step := range []struct {
			sql   string
			args  []any
			count *int64
		}{
			{q.ReleaseQueued, []any{dead}, &s.Released},
			{q.ReleaseRunning, []any{dead, q.job.MaxTryTimes}, &s.Relaunched},
			{q.FailRunning, []any{dead, q.job.MaxTryTimes}, &s.Failed},
		} {
			tag, err := d.conn.Exec(ctx, step.sql, step.args...)
			if err != nil {
				return fmt.Errorf("job %q: release rows of dead workers: %w", q.job.Name, err)
			}
			*step.count += tag.RowsAffected()
		}
		stats[q.job.Name] = s
	}
	for _, id := range dead {
		if p := d.peers[id]; p != nil && p.sess == nil {
			delete(d.peers, id)
		}
	}
	d.resetCursor()
	return nil
}

// ready are the workers that may be given rows of job now.
func (d *Dispatcher) assignedTo(job string) []*peer {
	var ps []*peer
	for _, p := range d.peers {
		if p.job == job {
			ps = append(ps, p)
		}
	}
	sort.Slice(ps, func(a, b int) bool { return ps[a].id < ps[b].id })
	return ps
}

// desiredWorkers is the elastic rule: one worker per max_pending_tasks
// available rows, at least one while any row waits, at most
// max_assigned_workers; workers still holding rows are kept.
func desiredWorkers(j Job, pending int64, busy int) int {
	if pending == 0 {
		return busy
	}
	n := int(math.Ceil(float64(pending) / float64(j.MaxPendingTasks)))
	if j.MaxAssignedWorkers > 0 {
		n = min(n, j.MaxAssignedWorkers)
	}
	return max(n, busy, 1)
}

// assign applies the elastic rule to a job among the connected workers.
// sql jobs take no workers: the dispatcher runs their steps itself.
func (d *Dispatcher) assign(ctx context.Context, q *Queries, stats map[string]Stats) error {
	j := q.job
	if j.Step.SQL != "" {
		return nil
	}
	if d.isPaused(j.Name) {
		// Workers finish what runs, then go elsewhere.
		for _, p := range d.assignedTo(j.Name) {
			if len(p.held) == 0 && p.coming == 0 {
				p.job = ""
				d.giveBackSpares(p, anyRow)
			}
		}
		return nil
	}
	live := 0
	for _, p := range d.peers {
		if p.sess != nil {
			live++
		}
	}
	limit := j.MaxPendingTasks*max(j.MaxAssignedWorkers, live) + 1
	if j.spares() {
		// Enough to tell whether every worker that may be assigned below
		// could have its queue and spares.
		limit = max(limit, min((j.QueueSize+spareRows)*live, spareCountLimit)+1)
	}
	var pending int64
	if err := d.conn.QueryRow(ctx, q.PendingCount, limit, j.MaxTryTimes).Scan(&pending); err != nil {
		return fmt.Errorf("job %q: count pending rows: %w", j.Name, err)
	}
	defer func() {
		// Pending rows enough for every assigned worker's queue and spares.
		need := (j.QueueSize + spareRows) * len(d.assignedTo(j.Name))
		d.spareOK[j.Name] = j.spares() && need > 0 && need <= spareCountLimit && pending >= int64(need)
	}()
	assigned := d.assignedTo(j.Name)
	busy := 0
	for _, p := range assigned {
		if p.busy() {
			busy++
		}
	}
	want := desiredWorkers(j, pending, busy)
	s := stats[j.Name]
	switch {
	case len(assigned) < want:
		var free []*peer
		for _, p := range d.peers {
			if p.job == "" && p.sess != nil && !p.leave && p.can(j.Name) && j.WorkerMatches(p.id) {
				free = append(free, p)
			}
		}
		sort.Slice(free, func(a, b int) bool { return free[a].id < free[b].id })
		for _, p := range free {
			if len(assigned) >= want {
				break
			}
			p.job = j.Name
			p.millis, p.ended, p.quick = 0, 0, false // quick at this job is to be seen
			assigned = append(assigned, p)
			s.Assigned++
			d.log.Info("worker assigned", "job", j.Name, "worker", p.id, "pending", pending)
			d.decided(Decision{Job: j.Name, Worker: p.id, Assigned: true, Pending: pending, Want: want})
		}
	case len(assigned) > want:
		// Let go of idle workers only: one holding rows finishes them first.
		surplus := len(assigned) - want
		for _, p := range assigned {
			if surplus > 0 && !p.busy() {
				p.job = ""
				d.giveBackSpares(p, anyRow)
				surplus--
				d.log.Info("worker unassigned", "job", j.Name, "worker", p.id, "pending", pending)
				d.decided(Decision{Job: j.Name, Worker: p.id, Pending: pending, Want: want})
			}
		}
	}
	stats[j.Name] = s
	return nil
}

// Decision is one assignment the elastic rule made: a worker given to a
// job, or let go of it, with the pending rows and the workers it wanted.
type Decision struct {
	At       time.Time `json:"at"`
	Job      string    `json:"job"`
	Worker   string    `json:"worker"`
	Assigned bool      `json:"assigned"` // false: unassigned
	Pending  int64     `json:"pending"`
	Want     int       `json:"want"`
}

// keptDecisions is how many of the last decisions Decisions returns.
const keptDecisions = 200

func (d *Dispatcher) decided(x Decision) {
	x.At = time.Now()
	d.decMu.Lock()
	defer d.decMu.Unlock()
	d.decisions = append(d.decisions, x)
	if len(d.decisions) > keptDecisions {
		d.decisions = slices.Clone(d.decisions[len(d.decisions)-keptDecisions:])
	}
}

// Decisions returns the last assignment decisions, newest first; safe
// from any goroutine (the console asks).
func (d *Dispatcher) Decisions() []Decision {
	d.decMu.Lock()
	defer d.decMu.Unlock()
	out := slices.Clone(d.decisions)
	slices.Reverse(out)
	return out
}
