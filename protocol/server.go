package protocol

import (
	"bufio"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"
)

// Handler is what the server needs of the dispatcher. Open and Closed are
// called once per accepted stream; Receive is called from the stream's own
// goroutine, in the order the worker sent its messages.
type Handler interface {
	// Open decides whether to accept a worker that proved the secret and
	// said hello. A *Refusal refuses it with its status; nil accepts.
	Open(s *Session) error
	Receive(s *Session, m Message)
	Closed(s *Session)
}

// Refusal is an error that refuses a stream with an HTTP status.
type Refusal struct {
	Status int
	Msg    string
}

func (r *Refusal) Error() string { return r.Msg }

// ServerConfig configures a Server.
type ServerConfig struct {
	Secret  []byte // the cluster's worker secret; required
	Handler Handler
	Logger  *slog.Logger
	// Ping is how often each side speaks on a quiet stream; a stream
	// silent for three of these is dead. Default 1s.
	Ping time.Duration
}

// Server serves worker streams; mount it at Path.
type Server struct {
	cfg      ServerConfig
	log      *slog.Logger
	mu       sync.Mutex
	sessions map[string]*Session
	wg       sync.WaitGroup
	closed   bool
}

// maxLine bounds one message. Rows are sent in batches well below it.
const maxLine = 16 << 20

// NewServer validates cfg.
func NewServer(cfg ServerConfig) (*Server, error) {
	if len(cfg.Secret) == 0 {
		return nil, errors.New("protocol server: no worker secret")
	}
	if cfg.Handler == nil {
		return nil, errors.New("protocol server: no handler")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Ping <= 0 {
		cfg.Ping = time.Second
	}
	return &Server{cfg: cfg, log: cfg.Logger, sessions: map[string]*Session{}}, nil
}

// Session is one worker's stream.
type Session struct {
	Hello Hello
	Addr  string // the peer's address

	mu     sync.Mutex
	queue  []Message
	wake   chan struct{}
	done   chan struct{} // closed by Close
	once   sync.Once
	ended  chan struct{} // closed when the handler is done with the session
	server *Server
}

// Send queues m for the worker without blocking; after Close it is dropped.
func (s *Session) Send(m Message) {
	s.mu.Lock()
	select {
	case <-s.done:
	default:
		s.queue = append(s.queue, m)
	}
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Close ends the stream; the worker will reconnect unless it is leaving.
func (s *Session) Close() { s.once.Do(func() { close(s.done) }) }

func (s *Session) take() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	q := s.queue
	s.queue = nil
	return q
}

func (s *Server) refuse(w http.ResponseWriter, r *http.Request, status int, msg string) {
	s.log.Warn("refused a worker connection", "addr", r.RemoteAddr, "status", status, "reason", msg)
	http.Error(w, msg, status)
}

// admit checks what every worker stream must bring, before its hello: a
// POST over HTTP/2 with the cluster's secret. It returns the refusal's
// status and reason, or 0.
func admit(r *http.Request, secret []byte) (int, string) {
	if r.Method != http.MethodPost {
		return http.StatusMethodNotAllowed, "the worker protocol takes POST"
	}
	tok, ok := bearer(r)
	if !ok {
		return http.StatusUnauthorized, "no worker secret: a worker must send the cluster's worker secret"
	}
	if subtle.ConstantTimeCompare([]byte(tok), secret) != 1 {
		return http.StatusUnauthorized, "wrong worker secret: deploy the cluster's secret to this node (pampactl nodes deploy)"
	}
	if r.ProtoMajor < 2 {
		// HTTP/1 would carry the welcome but not the worker's later
		// messages: the stream needs both bodies open at once.
		return http.StatusHTTPVersionNotSupported, "the worker protocol needs HTTP/2"
	}
	return 0, ""
}

func bearer(r *http.Request) (string, bool) {
	h := r.Header.Get("Authorization")
	tok, ok := strings.CutPrefix(h, "Bearer ")
	return tok, ok && tok != ""
}

// ServeHTTP authenticates the peer, reads its hello and serves the stream
// until either side ends it.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if status, msg := admit(r, s.cfg.Secret); status != 0 {
		s.refuse(w, r, status, msg)
		return
	}
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Now().Add(3 * s.cfg.Ping))
	sc := bufio.NewScanner(r.Body)
	sc.Buffer(make([]byte, 4<<10), maxLine) // grows as lines need
	var first Message
	if !sc.Scan() {
		s.refuse(w, r, http.StatusBadRequest, "expected a hello message, got nothing")
		return
	}
	if err := json.Unmarshal(sc.Bytes(), &first); err != nil || first.Kind != KindHello || first.Hello == nil {
		s.refuse(w, r, http.StatusBadRequest, "expected a hello message first")
		return
	}
	h := *first.Hello
	if h.Version != Version {
		s.refuse(w, r, http.StatusBadRequest, fmt.Sprintf("protocol version %d; this dispatcher speaks %d: push the worker build of the same release to the node (pampactl nodes deploy)", h.Version, Version))
		return
	}
	if h.ID == "" || h.Instance == "" {
		s.refuse(w, r, http.StatusBadRequest, "hello without a worker id or instance")
		return
	}
	sess := &Session{Hello: h, Addr: r.RemoteAddr, wake: make(chan struct{}, 1), done: make(chan struct{}), ended: make(chan struct{}), server: s}
	if err := s.register(sess); err != nil {
		var ref *Refusal
		if errors.As(err, &ref) {
			s.refuse(w, r, ref.Status, ref.Msg)
		} else {
			s.refuse(w, r, http.StatusServiceUnavailable, err.Error())
		}
		return
	}
	defer s.unregister(sess)

	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	welcome := Message{Kind: KindWelcome, Welcome: &Welcome{PingMillis: s.cfg.Ping.Milliseconds()}}
	enc := newEncoder(w)
	if enc.Encode(welcome) != nil || rc.Flush() != nil {
		return
	}
	s.log.Info("worker connected", "worker", h.ID, "addr", r.RemoteAddr, "in_hand", len(h.InHand))

	// The reader delivers the worker's messages until the stream ends.
	// Before the handler returns (and Closed is called) it stops it and
	// waits for it: the ResponseWriter must not be touched after ServeHTTP
	// returns, and the Handler hears nothing of a session after Closed.
	var (
		readMu      sync.Mutex
		readStopped bool
		readUntil   time.Time // the reader's own
	)
	// alive says whether the reader may go on, and keeps the read deadline
	// at two and a half to three ping periods ahead. Each change of a
	// deadline is a message to the connection's goroutine, so it moves
	// once per half a period, not per message.
	alive := func(extend bool) bool {
		readMu.Lock()
		defer readMu.Unlock()
		if readStopped {
			return false
		}
		if now := time.Now(); extend && readUntil.Sub(now) < 5*s.cfg.Ping/2 {
			readUntil = now.Add(3 * s.cfg.Ping)
			_ = rc.SetReadDeadline(readUntil)
		}
		return true
	}
	readDone := make(chan error, 1)
	go func() {
		for alive(true) {
			if !sc.Scan() {
				err := sc.Err()
				if err == nil {
					err = io.EOF
				}
				readDone <- err
				return
			}
			var m Message
			if err := decodeMessage(sc.Bytes(), &m); err != nil {
				readDone <- fmt.Errorf("garbled message: %w", err)
				return
			}
			if m.Kind != KindPing && alive(false) {
				s.cfg.Handler.Receive(sess, m)
			}
		}
		readDone <- errors.New("stopped")
	}()
	ping := time.NewTicker(s.cfg.Ping)
	defer ping.Stop()
	var err error
	readerDone := false
	var writeUntil time.Time
	for err == nil {
		// A peer that stops reading (gone without a word, its window
		// full) must not wedge this loop: it could then never notice the
		// stream is dead. Moved as the read deadline is.
		if now := time.Now(); writeUntil.Sub(now) < 5*s.cfg.Ping/2 {
			writeUntil = now.Add(3 * s.cfg.Ping)
			_ = rc.SetWriteDeadline(writeUntil)
		}
		select {
		case err = <-readDone:
			readerDone = true
			sess.Close()
		case <-sess.done:
			// What was queued before the close (acks, say) still goes out.
			for _, m := range sess.take() {
				if enc.Encode(m) != nil {
					break
				}
			}
			_ = rc.Flush()
			err = errors.New("closed by the dispatcher")
		case <-r.Context().Done():
			err = r.Context().Err()
		case <-sess.wake:
			for _, m := range sess.take() {
				if err = enc.Encode(m); err != nil {
					break
				}
			}
			if err == nil {
				err = rc.Flush()
			}
		case <-ping.C:
			if err = enc.Encode(Message{Kind: KindPing}); err == nil {
				err = rc.Flush()
			}
		}
	}
	sess.Close()
	if !readerDone {
		readMu.Lock()
		readStopped = true
		_ = rc.SetReadDeadline(time.Unix(1, 0)) // in the past: a blocked read returns
		readMu.Unlock()
		<-readDone
	}
	s.log.Info("worker disconnected", "worker", h.ID, "addr", r.RemoteAddr, "why", err.Error())
}

// register accepts sess unless its id is held by another live process.
// A reconnect of the same process replaces its old stream: the old one is
// closed and its handler finished before Open sees the new one.
func (s *Server) register(sess *Session) error {
	id := sess.Hello.ID
	for {
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return &Refusal{Status: http.StatusServiceUnavailable, Msg: "the dispatcher is shutting down"}
		}
		old := s.sessions[id]
		if old == nil {
			if err := s.cfg.Handler.Open(sess); err != nil {
				s.mu.Unlock()
				return err
			}
			s.sessions[id] = sess
			s.wg.Add(1)
			s.mu.Unlock()
			return nil
		}
		s.mu.Unlock()
		if old.Hello.Instance != sess.Hello.Instance {
			return &Refusal{Status: http.StatusConflict, Msg: fmt.Sprintf(
				"worker id %s is already connected from %s (another process, pid %d on %s); give each worker process its own id",
				id, old.Addr, old.Hello.PID, old.Hello.Hostname)}
		}
		old.Close()
		<-old.ended
	}
}

func (s *Server) unregister(sess *Session) {
	s.cfg.Handler.Closed(sess)
	s.mu.Lock()
	if s.sessions[sess.Hello.ID] == sess {
		delete(s.sessions, sess.Hello.ID)
	}
	s.mu.Unlock()
	close(sess.ended)
	s.wg.Done()
}

// Shutdown refuses new streams, closes the open ones and waits for their
// handlers to finish.
func (s *Server) Shutdown() {
	s.mu.Lock()
	s.closed = true
	for _, sess := range s.sessions {
		sess.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}
