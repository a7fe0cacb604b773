package protocol

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/pampa-go/pampa/internal/backoff"
)

// ClientConfig configures a Client.
type ClientConfig struct {
	// Addrs are the dispatchers' host:port, tried in turn: the leader
	// accepts, a standby refuses and the next is tried.
	Addrs  []string
	Secret []byte
	TLS    *tls.Config // nil: cleartext HTTP/2 (loopback, SSH tunnel)
	// Hello is called for each connection, so that InHand is current.
	Hello func() Hello
	// Deliver receives the dispatcher's messages (welcome, rows, drain) in
	// order, from the client's reader goroutine; acks are handled here.
	Deliver func(Message)
	// Connected, if set, is told whenever the stream comes up or goes down.
	Connected func(up bool)

	Logger *slog.Logger
	// MinBackoff and MaxBackoff space rounds of reconnects (jittered);
	// default 100ms and DefaultMaxBackoff.
	MinBackoff, MaxBackoff time.Duration
}

// DefaultMaxBackoff is the longest a worker waits between two rounds of
// attempts on its dispatcher addresses. attemptTimeout bounds one attempt,
// from the dial to the dispatcher's answer (a dead host lets dials time
// out; a hung one, or a dead peer behind a live proxy, accepts and says
// nothing); dialTimeout bounds its dial.
const (
	DefaultMaxBackoff = 5 * time.Second
	attemptTimeout    = 5 * time.Second
	dialTimeout       = 3 * time.Second
)

// FindLeaderWithin bounds how long a worker with the default backoff
// takes to reach a new leader among addrs dispatcher addresses: one wait
// and one attempt on each, however the others fail. A new leader gives
// the workers of the old one that long to come back before it takes
// their rows.
func FindLeaderWithin(addrs int) time.Duration {
	return DefaultMaxBackoff + time.Duration(max(addrs, 1))*attemptTimeout
}

// ErrRefused wraps a refusal that reconnecting cannot cure: a wrong secret,
// or the worker id held by another process.
var ErrRefused = errors.New("refused by the dispatcher")

// Client is a worker's end of the protocol. It keeps reconnecting until
// its context ends and never drops an outcome the server has not
// acknowledged.
type Client struct {
	cfg ClientConfig
	log *slog.Logger
	hc  *http.Client

	mu      sync.Mutex
	seq     uint64
	unacked map[uint64]Outcome
	// What waits for the current stream: starts and outcomes go out
	// merged, a message of each, then the other messages in order.
	starts   []Ref
	outcomes []Outcome
	out      []Message
	wake     chan struct{} // something waits for the stream
	live     bool
	// connecting: a stream is being opened and not yet accepted or refused
	connecting bool
	acked      chan struct{} // closed and replaced whenever unacked shrinks to empty
	heard      time.Time     // when the server last spoke; zero while not live
	ping       time.Duration // the server's ping period
}

// NewClient validates cfg.
func NewClient(cfg ClientConfig) (*Client, error) {
	if len(cfg.Addrs) == 0 {
		return nil, errors.New("protocol client: no dispatcher address")
	}
	if len(cfg.Secret) == 0 {
		return nil, errors.New("protocol client: no worker secret")
	}
	if cfg.Hello == nil || cfg.Deliver == nil {
		return nil, errors.New("protocol client: Hello and Deliver are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = 100 * time.Millisecond
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = DefaultMaxBackoff
	}
	tr := &http.Transport{
		DialContext:       (&net.Dialer{Timeout: dialTimeout, KeepAlive: 15 * time.Second}).DialContext,
		ForceAttemptHTTP2: true,
		TLSClientConfig:   cfg.TLS,
	}
	p := new(http.Protocols)
	if cfg.TLS != nil {
		p.SetHTTP2(true)
	} else {
		p.SetUnencryptedHTTP2(true)
	}
	tr.Protocols = p
	return &Client{cfg: cfg, log: cfg.Logger, hc: &http.Client{Transport: tr},
		unacked: map[uint64]Outcome{}, wake: make(chan struct{}, 1), acked: make(chan struct{})}, nil
}

// Send queues m for the current stream. Messages other than outcomes are
// advice (releases, returns; starts go by Started): they are dropped when
// the stream ends before they go out, and the next hello's InHand says the
// same again.
func (c *Client) Send(m Message) {
	c.mu.Lock()
	if c.live {
		c.out = append(c.out, m)
	}
	c.mu.Unlock()
	c.poke()
}

// Started tells the server a row's step began; advice, as Send's.
func (c *Client) Started(r Ref) {
	c.mu.Lock()
	if c.live {
		c.starts = append(c.starts, r)
	}
	c.mu.Unlock()
	c.poke()
}

// Report hands an outcome to the client, which delivers it until the
// server acknowledges it. A start of the same row still waiting is
// dropped: the outcome says the row ran.
func (c *Client) Report(o Outcome) {
	c.mu.Lock()
	c.seq++
	o.Seq = c.seq
	c.unacked[o.Seq] = o
	if c.live {
		for i := len(c.starts) - 1; i >= 0; i-- {
			if c.starts[i] == o.Ref {
				c.starts = slices.Delete(c.starts, i, i+1)
				break
			}
		}
		c.outcomes = append(c.outcomes, o)
	}
	c.mu.Unlock()
	c.poke()
}

// pending takes what waits for the stream, as the messages to write.
func (c *Client) pending() []Message {
	c.mu.Lock()
	defer c.mu.Unlock()
	var ms []Message
	if len(c.starts) > 0 {
		ms = append(ms, Message{Kind: KindStarts, Refs: c.starts})
	}
	if len(c.outcomes) > 0 {
		ms = append(ms, Message{Kind: KindOutcomes, Outcomes: c.outcomes})
	}
	ms = append(ms, c.out...)
	c.starts, c.outcomes, c.out = nil, nil, nil
	return ms
}

// Heard says whether the server spoke within two of its ping periods: a
// worker that has not heard it so long starts no new row, since the
// dispatcher may soon give that row to another worker, while the stream
// itself is given up after three.
func (c *Client) Heard() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	ping := c.ping
	if ping == 0 {
		ping = time.Second
	}
	return c.live && time.Since(c.heard) <= 2*ping
}

// Unacked returns the outcomes not yet acknowledged, in order.
func (c *Client) Unacked() []Outcome {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.unackedLocked()
}

func (c *Client) unackedLocked() []Outcome {
	out := make([]Outcome, 0, len(c.unacked))
	for _, o := range c.unacked {
		out = append(out, o)
	}
	slices.SortFunc(out, func(a, b Outcome) int { return int(a.Seq - b.Seq) })
	return out
}

// AllAcked returns a channel closed once no outcome awaits its ack.
func (c *Client) AllAcked() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.unacked) == 0 {
		done := make(chan struct{})
		close(done)
		return done
	}
	return c.acked
}

func (c *Client) poke() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// Run connects and reconnects until ctx ends, or until a dispatcher
// refuses the worker for good (ErrRefused).
func (c *Client) Run(ctx context.Context) error {
	bo := backoff.New(c.cfg.MinBackoff, c.cfg.MaxBackoff)
	defer c.hc.CloseIdleConnections()
	// Every address is tried once per round, and the wait comes between
	// rounds: a new leader is found within one wait (FindLeaderWithin),
	// not one per address.
	tried := 0
	for i := 0; ctx.Err() == nil; i++ {
		addr := c.cfg.Addrs[i%len(c.cfg.Addrs)]
		served, err := c.stream(ctx, addr)
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, ErrRefused) {
			return err
		}
		// A connection that carried a dead stream is not reused: its peer
		// may be gone without a word, and a request on it would wait for
		// TCP to give up rather than for attemptTimeout.
		c.hc.CloseIdleConnections()
		if served {
			bo.Reset()
			i-- // the same dispatcher first, it was the leader
			tried = 0
		} else if tried++; tried < len(c.cfg.Addrs) {
			c.log.Warn("no stream to the dispatcher; trying the next", "addr", addr, "err", err)
			continue
		}
		tried = 0
		c.log.Warn("no stream to the dispatcher; reconnecting", "addr", addr, "err", err, "in", bo.Peek())
		bo.Wait(ctx)
	}
	return nil
}

// stream runs one stream; served says it was accepted.
func (c *Client) stream(ctx context.Context, addr string) (served bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	pr, pw := io.Pipe()
	defer pr.Close()
	scheme := "http"
	if c.cfg.TLS != nil {
		scheme = "https"
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, scheme+"://"+addr+Path, pr)
	if err != nil {
		return false, err
	}
	req.Header.Set("Authorization", "Bearer "+string(c.cfg.Secret))
	req.Header.Set("Content-Type", "application/x-ndjson")

	hello := c.cfg.Hello()
	hello.Version = Version
	writeErr := make(chan error, 1)
	ready := make(chan struct{})
	pings := make(chan time.Duration, 1) // the server's ping period, from the welcome
	go func() { writeErr <- c.write(ctx, pw, hello, ready, pings) }()

	c.setConnecting(true)
	noAnswer := time.AfterFunc(attemptTimeout, cancel)
	resp, err := c.hc.Do(req)
	if !noAnswer.Stop() && err != nil {
		err = fmt.Errorf("no answer within %s: %w", attemptTimeout, err)
	}
	if err != nil || resp.StatusCode != http.StatusOK {
		c.setConnecting(false)
	}
	if err != nil {
		// The writer may be past the hello, waiting for ready: end it.
		cancel()
		pw.CloseWithError(err)
		<-writeErr
		return false, fmt.Errorf("connect to dispatcher %s: %w", addr, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
		cancel() // the writer may be past the hello, waiting for ready
		pw.CloseWithError(errors.New("refused"))
		<-writeErr
		msg := strings.TrimSpace(string(body))
		switch resp.StatusCode {
		case http.StatusUnauthorized, http.StatusForbidden, http.StatusConflict, http.StatusBadRequest:
			return false, fmt.Errorf("dispatcher %s: %w: %s", addr, ErrRefused, msg)
		}
		return false, fmt.Errorf("dispatcher %s: %s: %s", addr, resp.Status, msg)
	}
	c.setLive(true)
	close(ready)
	defer c.setLive(false)

	readErr := make(chan error, 1)
	go func() { readErr <- c.read(resp.Body, pings) }()
	var other chan error
	select {
	case err = <-readErr:
		other = writeErr
	case err = <-writeErr:
		other = readErr
	}
	cancel()
	pw.CloseWithError(context.Canceled)
	resp.Body.Close()
	// Both end before the next stream starts: an old writer must not take
	// the next stream's messages, nor an old reader call Deliver alongside
	// the next one's.
	// The watchdog's verdict says why the stream ended; the writer's
	// error (its pipe closed) is only the echo of it.
	if otherErr := <-other; errors.As(otherErr, new(silentError)) {
		err = otherErr
	}
	return true, err
}

// silentError ends a stream on which the dispatcher said nothing, not
// even a ping, for three of its ping periods.
type silentError struct{ quiet time.Duration }

func (e silentError) Error() string { return fmt.Sprintf("the dispatcher was silent for %s", e.quiet) }

func (c *Client) setConnecting(on bool) {
	c.mu.Lock()
	c.connecting = on
	c.mu.Unlock()
}

// Connecting says whether a stream is being opened: the dispatcher may
// have taken the worker in already, though Connected has not been called.
func (c *Client) Connecting() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.connecting
}

func (c *Client) setLive(up bool) {
	c.mu.Lock()
	changed := c.live != up
	c.live = up
	c.connecting = false
	c.heard = time.Time{}
	if up {
		c.heard = time.Now()
	}
	c.starts, c.outcomes, c.out = nil, nil, nil
	if up {
		// Everything not acknowledged goes out again on the new stream.
		c.outcomes = c.unackedLocked()
	}
	c.mu.Unlock()
	if up {
		c.poke()
	}
	if changed && c.cfg.Connected != nil {
		c.cfg.Connected(up)
	}
}

// write sends the hello, then, once the stream is accepted, whatever is
// queued, and a ping whenever the stream is quiet.
func (c *Client) write(ctx context.Context, w *io.PipeWriter, hello Hello, ready <-chan struct{}, pings <-chan time.Duration) error {
	bw := bufio.NewWriter(w)
	enc := newEncoder(bw)
	if err := enc.Encode(Message{Kind: KindHello, Hello: &hello}); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	select {
	case <-ready:
	case <-ctx.Done():
		return ctx.Err()
	}
	ping := time.NewTicker(time.Second) // until the welcome gives the server's period
	defer ping.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case d := <-pings:
			ping.Reset(d)
		case <-ping.C:
			if err := enc.Encode(Message{Kind: KindPing}); err != nil {
				return err
			}
		case <-c.wake:
			for _, m := range c.pending() {
				if err := enc.Encode(m); err != nil {
					return err
				}
			}
		}
		if err := bw.Flush(); err != nil {
			return err
		}
	}
}

// read handles the dispatcher's messages; a stream silent for three ping
// periods is dead.
func (c *Client) read(body io.ReadCloser, pings chan<- time.Duration) error {
	sc := bufio.NewScanner(body)
	sc.Buffer(make([]byte, 4<<10), maxLine) // grows as lines need
	// A watchdog rather than a timer reset per line: it closes the body,
	// which ends the read, once the server has been silent (c.heard) for
	// three of its ping periods (6 s until the welcome says).
	var (
		watchMu  sync.Mutex
		watch    *time.Timer
		deadline = 6 * time.Second
		silent   bool
		stopped  bool
	)
	check := func() {
		c.mu.Lock()
		quiet := time.Since(c.heard)
		c.mu.Unlock()
		watchMu.Lock()
		defer watchMu.Unlock()
		switch {
		case stopped:
		case quiet >= deadline:
			silent = true
			body.Close()
		default:
			watch.Reset(deadline - quiet)
		}
	}
	watchMu.Lock()
	watch = time.AfterFunc(deadline, check)
	watchMu.Unlock()
	defer func() {
		watchMu.Lock()
		stopped = true
		watch.Stop()
		watchMu.Unlock()
	}()
	for sc.Scan() {
		c.mu.Lock()
		c.heard = time.Now()
		c.mu.Unlock()
		var m Message
		if err := decodeMessage(sc.Bytes(), &m); err != nil {
			return fmt.Errorf("garbled message from the dispatcher: %w", err)
		}
		switch m.Kind {
		case KindPing:
		case KindAcks:
			c.ack(m.Acks)
		case KindWelcome:
			if m.Welcome != nil && m.Welcome.PingMillis > 0 {
				p := time.Duration(m.Welcome.PingMillis) * time.Millisecond
				watchMu.Lock()
				deadline = 3 * p
				watch.Reset(deadline) // the first check was set for 6 s
				watchMu.Unlock()
				c.mu.Lock()
				c.ping = p
				c.mu.Unlock()
				select { // the writer pings as often as the server
				case pings <- p:
				default:
				}
			}
			c.cfg.Deliver(m)
		default:
			c.cfg.Deliver(m)
		}
	}
	watchMu.Lock()
	defer watchMu.Unlock()
	if silent {
		return silentError{deadline}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	return io.EOF
}

func (c *Client) ack(seqs []uint64) {
	c.mu.Lock()
	before := len(c.unacked)
	for _, s := range seqs {
		delete(c.unacked, s)
	}
	if before > 0 && len(c.unacked) == 0 {
		close(c.acked)
		c.acked = make(chan struct{})
	}
	c.mu.Unlock()
}
