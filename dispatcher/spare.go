package dispatcher

import (
	"sync"
	"time"

	"github.com/pampa-go/pampa/protocol"
)

// Spare rows. A worker whose steps take next to no time (a Go handler
// that only computes) finishes its queue long before the next flush
// answers, and then waits on the database, not on work: at queue_size 5
// every row would pay a fifth of a round trip. For such a worker the
// dispatcher reserves, beside its queue, spareRows more rows (in the
// database they are the worker's, reserved and not started, like its
// queue) and keeps them in memory; the goroutine of the worker's stream
// hands them over as its outcomes arrive, without waiting for the loop or
// the database (while the lease surely holds: a dispatcher cut off from
// the database may have been replaced). A worker with slower steps gets
// exactly queue_size: spares would only keep rows from the other workers,
// so a worker that slows down gives its spares back.
const (
	// spareRows is how many: enough that a round trip of the loop under
	// load (a few milliseconds) does not drain them at a quick worker's
	// pace. A queue_size this long or longer gets none: the queue already
	// spreads the round trip over its rows.
	spareRows = 100
	// A worker becomes quick when the mean of its last steps is under
	// quickMillis, and stops being quick when it passes slowMillis, or
	// when one of its steps has run for slowRun: apart, so that a worker
	// near the bound does not take and give back its spares all the time.
	quickMillis = 2.0
	slowMillis  = 5.0
	slowRun     = 100 * time.Millisecond
)

// judgeQuick updates p.quick from its steps' mean duration; a worker
// that stops being quick gives its spares back.
func (d *Dispatcher) judgeQuick(p *peer) {
	switch {
	case !p.quick:
		p.quick = p.ended >= 5 && p.millis < quickMillis
	case p.millis > slowMillis:
		p.quick = false
		d.giveBackSpares(p, anyRow)
	}
}

// slowedDown takes back the spares of quick workers one of whose steps has
// run for slowRun: their spares would wait behind it.
func (d *Dispatcher) slowedDown() {
	now := time.Now()
	for _, p := range d.peers {
		if !p.quick {
			continue
		}
		for _, h := range p.held {
			if h.started && now.Sub(h.startedAt) > slowRun {
				p.quick = false
				d.giveBackSpares(p, anyRow)
				break
			}
		}
	}
}

// spareWanted is how many spare rows p should have for job j: none
// unless the job had rows enough, at its last assignment, for every
// assigned worker's queue and spares (the last rows of a table are not
// hoarded by a few workers while the others idle).
func (d *Dispatcher) spareWanted(p *peer, j Job) int {
	if !p.quick || !d.spareOK[j.Name] {
		return 0
	}
	return spareRows
}

// spareCountLimit bounds the pending count that decides spares: a fleet
// this large is kept busy by queues alone.
const spareCountLimit = 20000

// spares says whether j's rows can be kept as spares: limits, snippets
// and selecting_sql decide per reservation, so their rows are reserved
// only as they are sent.
func (j Job) spares() bool {
	return j.QueueSize < spareRows && !j.Limits.Any() && len(j.Snippets.workerSnippets()) == 0 &&
		j.Snippets.SelectingSQL == ""
}

// sparePool holds one stream's spare rows. The loop fills it; the
// stream's goroutine (handler.Receive) takes from it.
type sparePool struct {
	mu   sync.Mutex
	sess *protocol.Session
	rows []protocol.Row
	// handed counts rows sent that the loop has not yet put in the
	// worker's held rows (they travel in the inbox with the outcomes that
	// freed their slots).
	handed int
}

// handOut sends up to n spare rows down the pool's stream and returns
// them.
func (s *sparePool) handOut(n int) []protocol.Row {
	s.mu.Lock()
	defer s.mu.Unlock()
	n = min(n, len(s.rows))
	if n == 0 {
		return nil
	}
	out := s.rows[:n:n]
	s.rows = s.rows[n:]
	s.handed += n
	s.sess.Send(protocol.Message{Kind: protocol.KindRows, Rows: out})
	return out
}

func (s *sparePool) add(rows []protocol.Row) {
	s.mu.Lock()
	s.rows = append(s.rows, rows...)
	s.mu.Unlock()
}

// absorbed tells the pool the loop took n handed rows into held.
func (s *sparePool) absorbed(n int) {
	s.mu.Lock()
	s.handed -= n
	s.mu.Unlock()
}

// size counts the spare rows and those handed that the loop has not seen.
func (s *sparePool) size() int {
	if s == nil {
		return 0
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.rows) + s.handed
}

// take removes the rows match picks and returns them.
func (s *sparePool) take(match func(protocol.Row) bool) []protocol.Row {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []protocol.Row
	kept := s.rows[:0]
	for _, r := range s.rows {
		if match(r) {
			out = append(out, r)
		} else {
			kept = append(kept, r)
		}
	}
	s.rows = kept
	return out
}

// unabsorbed counts the rows handed that the loop has not seen.
func (s *sparePool) unabsorbed() int {
	if s == nil {
		return 0
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.handed
}

func anyRow(protocol.Row) bool { return true }

// leaseHolds says whether spares may go out: a dispatcher whose lease may
// have run out may have been replaced, and its rows given to others. Safe
// from the streams' goroutines.
func (d *Dispatcher) leaseHolds() bool { return time.Now().UnixNano() < d.leaseUntil.Load() }

// queueSpares moves spare rows into p's queue where it has room. Outcomes
// hand spares over as they come; a worker whose last outcomes came before
// its spares did has room and nothing to report, and would wait on rows
// it already has.
func (d *Dispatcher) queueSpares(p *peer, j Job) {
	room := j.QueueSize - p.queued(j.Name) - p.spare.unabsorbed()
	if room <= 0 || p.spare.size() == 0 || !d.leaseHolds() {
		return
	}
	rows := p.spare.handOut(room)
	p.spare.absorbed(len(rows))
	now := time.Now()
	for _, row := range rows {
		p.held[rowID{row.Job, row.Key}] = hold{attempt: row.Attempt, reserved: now}
	}
}

// giveBackSpares takes the spare rows match picks out of p's pool and has
// them given back in the next flush.
func (d *Dispatcher) giveBackSpares(p *peer, match func(protocol.Row) bool) {
	if p.spare == nil {
		return
	}
	for _, r := range p.spare.take(match) {
		d.marks.give(p.id, r.Ref)
	}
}
