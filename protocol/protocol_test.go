package protocol

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/pampa-go/pampa/internal/poll"
	"github.com/pampa-go/pampa/internal/syncbuf"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// testSecret is the cluster secret of every test server. It must never
// show in a log line, a response or an error.
const testSecret = "s3cret-7f1b-never-log-me"

// wait is how long any test waits for something that should happen.
const wait = 10 * time.Second

// window is how long a test watches for something that must not happen
// (a call that must wait for another to return) before it lets the other
// call return. It costs the passing test its length; nothing waits on it
// to let things happen.
const window = 300 * time.Millisecond

// ---- logs ----

// logBuf collects a logger's text output.
type logBuf struct{ syncbuf.Buffer }

// lines returns the log lines containing every one of words.
func (l *logBuf) lines(words ...string) []string {
	var out []string
	for line := range strings.Lines(l.String()) {
		if !slices.ContainsFunc(words, func(w string) bool { return !strings.Contains(line, w) }) {
			out = append(out, strings.TrimSpace(line))
		}
	}
	return out
}

func newLogger() (*slog.Logger, *logBuf) {
	buf := &logBuf{}
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug})), buf
}

// ---- the dispatcher's side: a Handler that records what it sees ----

// handler records every call of the Handler interface. Sessions are named
// by their order of opening: #1, #2...
type handler struct {
	onOpen    func(*Session) error // optional; a refusal keeps the session out
	onReceive func(*Session, Message)
	onClosed  func(*Session)

	mu       sync.Mutex
	sessions []*Session
	closed   map[*Session]bool
	received map[*Session][]Message
	events   []string
}

func (h *handler) name(s *Session) string {
	if i := slices.Index(h.sessions, s); i >= 0 {
		return fmt.Sprintf("#%d", i+1)
	}
	return "unknown session " + s.Hello.Instance
}

func (h *handler) event(format string, args ...any) {
	h.events = append(h.events, fmt.Sprintf(format, args...))
}

func (h *handler) Open(s *Session) error {
	if h.onOpen != nil {
		if err := h.onOpen(s); err != nil {
			return err
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.sessions = append(h.sessions, s)
	h.event("open %s %s/%s", h.name(s), s.Hello.ID, s.Hello.Instance)
	return nil
}

func (h *handler) Receive(s *Session, m Message) {
	h.mu.Lock()
	if h.received == nil {
		h.received = map[*Session][]Message{}
	}
	h.received[s] = append(h.received[s], m)
	if h.closed[s] {
		h.event("receive after closed %s", h.name(s))
	}
	h.mu.Unlock()
	if h.onReceive != nil {
		h.onReceive(s, m)
	}
}

func (h *handler) Closed(s *Session) {
	h.mu.Lock()
	if h.closed == nil {
		h.closed = map[*Session]bool{}
	}
	if h.closed[s] {
		h.event("closed twice %s", h.name(s))
	}
	h.closed[s] = true
	h.event("closed %s", h.name(s))
	h.mu.Unlock()
	if h.onClosed != nil {
		h.onClosed(s)
	}
}

func (h *handler) opens() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.sessions)
}

// session returns the n-th session opened, counting from 1, or nil.
func (h *handler) session(n int) *Session {
	h.mu.Lock()
	defer h.mu.Unlock()
	if n > len(h.sessions) {
		return nil
	}
	return h.sessions[n-1]
}

func (h *handler) isClosed(s *Session) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.closed[s]
}

func (h *handler) log() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.events)
}

func (h *handler) messages(s *Session) []Message {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.received[s])
}

// outcomes counts the deliveries of each outcome on s, by Seq.
func (h *handler) outcomes(s *Session) map[uint64]int {
	n := map[uint64]int{}
	for _, m := range h.messages(s) {
		if m.Kind == KindOutcomes {
			for _, o := range m.Outcomes {
				n[o.Seq]++
			}
		}
	}
	return n
}

// waitOpen waits for the n-th session and returns it.
func (h *handler) waitOpen(t *testing.T, n int) *Session {
	t.Helper()
	poll.Until(t, fmt.Sprintf("session #%d opens", n), wait, func() string {
		if got := h.opens(); got < n {
			return fmt.Sprintf("%d sessions opened; events %v", got, h.log())
		}
		return ""
	})
	return h.session(n)
}

// ---- servers ----

type server struct {
	addr   string
	srv    *Server
	log    *logBuf
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
}

// listen listens on addr, retrying a while when the port is still taken
// (a restart on the same port).
func listen(t *testing.T, addr string) net.Listener {
	t.Helper()
	var ln net.Listener
	poll.Until(t, "listen on "+addr, wait, func() string {
		var err error
		if ln, err = net.Listen("tcp", addr); err != nil {
			return err.Error()
		}
		return ""
	})
	return ln
}

// freeAddr returns a loopback address nothing listens on (for now).
func freeAddr(t *testing.T) string {
	ln := listen(t, "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// startServer serves a protocol server for h on addr ("127.0.0.1:0" for
// any port) until the test ends or stop is called.
func startServer(t *testing.T, addr string, h Handler, tweak func(*ServerConfig), tlsConfig *tls.Config) *server {
	t.Helper()
	logger, buf := newLogger()
	cfg := ServerConfig{Secret: []byte(testSecret), Handler: h, Logger: logger}
	if tweak != nil {
		tweak(&cfg)
	}
	srv, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln := listen(t, addr)
	ctx, cancel := context.WithCancel(context.Background())
	s := &server{addr: ln.Addr().String(), srv: srv, log: buf, cancel: cancel, done: make(chan error, 1)}
	mux := http.NewServeMux()
	mux.Handle(Path, srv)
	go func() { s.done <- Serve(ctx, ln, mux, tlsConfig, logger) }()
	t.Cleanup(func() { s.stop(t) })
	return s
}

// stop kills the server: its listener and every stream end.
func (s *server) stop(t *testing.T) {
	t.Helper()
	s.once.Do(func() {
		s.cancel()
		select {
		case err := <-s.done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(wait):
			t.Errorf("Serve did not return %s after its context ended", wait)
		}
		s.srv.Shutdown() // nothing should be left; returns at once then
	})
}

// ---- workers ----

type client struct {
	*Client
	log    *logBuf
	cancel context.CancelFunc
	done   chan error

	mu        sync.Mutex
	delivered []Message
	up        bool
	ups       int // times the stream came up
}

func hello(id, instance string) func() Hello {
	return func() Hello {
		return Hello{ID: id, Instance: instance, Node: "node", Hostname: "host-" + instance, PID: 42, Jobs: []string{"j"}, Slots: 2}
	}
}

// startClient runs a Client until the test ends. cfg needs Addrs and Hello;
// Secret defaults to testSecret.
func startClient(t *testing.T, cfg ClientConfig) *client {
	t.Helper()
	logger, buf := newLogger()
	c := &client{log: buf, done: make(chan error, 1)}
	if cfg.Secret == nil {
		cfg.Secret = []byte(testSecret)
	}
	cfg.Logger = logger
	cfg.Deliver = func(m Message) {
		c.mu.Lock()
		c.delivered = append(c.delivered, m)
		c.mu.Unlock()
	}
	cfg.Connected = func(up bool) {
		c.mu.Lock()
		c.up = up
		if up {
			c.ups++
		}
		c.mu.Unlock()
	}
	if cfg.MinBackoff == 0 {
		cfg.MinBackoff, cfg.MaxBackoff = 5*time.Millisecond, 50*time.Millisecond
	}
	var err error
	if c.Client, err = NewClient(cfg); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	c.cancel = cancel
	go func() { c.done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := c.result(t); err != nil && !errors.Is(err, ErrRefused) { // tests check refusals themselves
			t.Errorf("Run after cancel: %v", err)
		}
	})
	return c
}

// result waits for Run to return and returns its error.
func (c *client) result(t *testing.T) error {
	t.Helper()
	select {
	case err := <-c.done:
		c.done <- err // keep it for the next caller
		return err
	case <-time.After(wait):
		t.Fatalf("Client.Run did not return within %s", wait)
		return nil
	}
}

func (c *client) state() (up bool, ups int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.up, c.ups
}

func (c *client) waitUp(t *testing.T) {
	t.Helper()
	poll.Until(t, "client connects", wait, func() string {
		if up, _ := c.state(); !up {
			return "not connected; client log:\n" + c.log.String()
		}
		return ""
	})
}

func (c *client) messages() []Message {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.delivered)
}

// ---- raw HTTP/2 peers ----

// rawPeer is an HTTP/2 (prior knowledge) or HTTP/1.1 client that is not a
// protocol.Client, and that remembers the local address of its
// connections, which is what the server sees as the peer's address.
type rawPeer struct {
	*http.Client
	mu    sync.Mutex
	addrs []string
}

func newRawPeer(t *testing.T, http1 bool) *rawPeer {
	p := &rawPeer{}
	d := &net.Dialer{Timeout: wait}
	protos := new(http.Protocols)
	protos.SetUnencryptedHTTP2(!http1)
	protos.SetHTTP1(http1)
	tr := &http.Transport{
		Protocols: protos,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			conn, err := d.DialContext(ctx, network, addr)
			if err == nil {
				p.mu.Lock()
				p.addrs = append(p.addrs, conn.LocalAddr().String())
				p.mu.Unlock()
			}
			return conn, err
		},
	}
	p.Client = &http.Client{Transport: tr, Timeout: wait}
	t.Cleanup(tr.CloseIdleConnections)
	return p
}

func (p *rawPeer) localAddrs() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.addrs)
}

// post sends body to the server's Path with the Authorization header auth
// (none if empty).
func (p *rawPeer) post(ctx context.Context, addr, auth string, body io.Reader) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+addr+Path, body)
	if err != nil {
		return nil, err
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	return p.Do(req)
}

func line(t *testing.T, m Message) string {
	t.Helper()
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return string(b) + "\n"
}

func helloLine(t *testing.T, h Hello) string {
	h.Version = Version
	return line(t, Message{Kind: KindHello, Hello: &h})
}

// ---- TLS ----

// selfSigned returns a certificate for 127.0.0.1 and a pool trusting it.
func selfSigned(t *testing.T) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "pampa test dispatcher"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
}

// ---- tests ----

// Peers that do not prove the secret, or that prove it and then say
// something other than a hello, are refused with a one-line reason, logged
// with their address, and never reach the handler.
func TestRefusals(t *testing.T) {
	t.Parallel()
	h := &handler{}
	srv := startServer(t, "127.0.0.1:0", h, nil, nil)
	bearer := "Bearer " + testSecret
	hi := helloLine(t, Hello{ID: "node.1", Instance: "i1"})
	cases := []struct {
		name   string
		auth   string
		body   string
		status int
		reason string
		http1  bool // else HTTP/2
	}{
		{"no secret", "", hi, http.StatusUnauthorized, "no worker secret", false},
		{"empty bearer", "Bearer ", hi, http.StatusUnauthorized, "no worker secret", false},
		{"basic auth", "Basic " + testSecret, hi, http.StatusUnauthorized, "no worker secret", false},
		{"wrong secret", "Bearer wrong-" + testSecret[:6], hi, http.StatusUnauthorized, "wrong worker secret", false},
		{"secret with a suffix", bearer + "x", hi, http.StatusUnauthorized, "wrong worker secret", false},
		{"not json", bearer, "hello\r\n\r\n", http.StatusBadRequest, "expected a hello", false},
		{"json, not a hello", bearer, line(t, Message{Kind: KindOutcomes, Outcomes: []Outcome{{Seq: 1}}}), http.StatusBadRequest, "expected a hello", false},
		{"hello kind without hello", bearer, `{"k":"hello"}` + "\n", http.StatusBadRequest, "expected a hello", false},
		{"a hello in another kind", bearer, line(t, Message{Kind: KindStarts, Hello: &Hello{Version: Version, ID: "node.1", Instance: "i1"}}), http.StatusBadRequest, "expected a hello", false},
		{"nothing", bearer, "", http.StatusBadRequest, "got nothing", false},
		{"no worker id", bearer, helloLine(t, Hello{Instance: "i1"}), http.StatusBadRequest, "without a worker id", false},
		{"no instance", bearer, helloLine(t, Hello{ID: "node.1"}), http.StatusBadRequest, "without a worker id or instance", false},
		{"other version", bearer, line(t, Message{Kind: KindHello, Hello: &Hello{Version: Version + 1, ID: "node.1", Instance: "i1"}}), http.StatusBadRequest, "protocol version", false},
		{"HTTP/1.1", bearer, hi, http.StatusHTTPVersionNotSupported, "needs HTTP/2", true},
		{"HTTP/1.1 without secret", "", hi, http.StatusUnauthorized, "no worker secret", true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			peer := newRawPeer(t, tc.http1)
			resp, err := peer.post(t.Context(), srv.addr, tc.auth, strings.NewReader(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				t.Fatal(err)
			}
			if want := map[bool]int{false: 2, true: 1}[tc.http1]; resp.ProtoMajor != want {
				t.Errorf("answered over %s, want HTTP/%d", resp.Proto, want)
			}
			if resp.StatusCode != tc.status {
				t.Errorf("status %d, want %d (body %q)", resp.StatusCode, tc.status, body)
			}
			reason := strings.TrimSuffix(string(body), "\n")
			if reason == "" || strings.Contains(reason, "\n") || !strings.Contains(reason, tc.reason) {
				t.Errorf("reason %q, want one line containing %q", body, tc.reason)
			}
			if strings.Contains(string(body), testSecret) {
				t.Errorf("the answer shows the secret: %q", body)
			}
			addrs := peer.localAddrs()
			if len(addrs) != 1 {
				t.Fatalf("peer dialled %d times: %v", len(addrs), addrs)
			}
			// The warning is written before the answer, so it is there.
			lines := srv.log.lines("level=WARN", addrs[0], "status="+strconv.Itoa(tc.status))
			if len(lines) != 1 {
				t.Errorf("want one warning with the peer's address %s, got %q; log:\n%s", addrs[0], lines, srv.log)
			}
		})
	}
	t.Run("raw TCP garbage", func(t *testing.T) {
		t.Parallel()
		for _, tc := range []struct {
			garbage   string
			closeSend bool // shorter than the HTTP/2 preface: the server waits for more
		}{
			{"hello\r\n\r\n", true},
			{"hello hello hello hello\r\n\r\n", false},
			{"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + strings.Repeat("\xff", 64), false},
		} {
			conn, err := net.Dial("tcp", srv.addr)
			if err != nil {
				t.Fatal(err)
			}
			_ = conn.SetDeadline(time.Now().Add(wait))
			if _, err := io.WriteString(conn, tc.garbage); err != nil {
				t.Fatal(err)
			}
			if tc.closeSend {
				_ = conn.(*net.TCPConn).CloseWrite()
			}
			// The server answers (a 400, or a GOAWAY and maybe a reset)
			// and hangs up.
			got, err := io.ReadAll(conn)
			conn.Close()
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				t.Errorf("%q: the server kept the connection open %s (read %q)", tc.garbage, wait, got)
			}
			if strings.HasPrefix(tc.garbage, "hello") && !strings.HasPrefix(string(got), "HTTP/1.1 400 ") {
				t.Errorf("%q: answered %q, want a 400", tc.garbage, got)
			}
		}
	})
	t.Cleanup(func() { // after the parallel subtests
		if n := h.opens(); n != 0 {
			t.Errorf("Open was called %d times for refused peers: %v", n, h.log())
		}
		if strings.Contains(srv.log.String(), testSecret) || strings.Contains(srv.log.String(), testSecret[:6]) {
			t.Errorf("the server log shows the secret:\n%s", srv.log)
		}
	})
}

// A wrong secret cannot be cured by retrying: Run gives up at once.
func TestClientWrongSecret(t *testing.T) {
	t.Parallel()
	h := &handler{}
	srv := startServer(t, "127.0.0.1:0", h, nil, nil)
	wrong := "not-the-" + testSecret
	c := startClient(t, ClientConfig{Addrs: []string{srv.addr}, Secret: []byte(wrong), Hello: hello("node.1", "i1")})
	err := c.result(t)
	if !errors.Is(err, ErrRefused) {
		t.Fatalf("Run returned %v, want an ErrRefused", err)
	}
	if !strings.Contains(err.Error(), "wrong worker secret") {
		t.Errorf("the error does not say why: %v", err)
	}
	for _, s := range []string{testSecret, wrong} {
		if strings.Contains(err.Error(), s) || strings.Contains(c.log.String(), s) || strings.Contains(srv.log.String(), s) {
			t.Errorf("a secret shows: error %v\nclient log:\n%s\nserver log:\n%s", err, c.log, srv.log)
		}
	}
	if _, ups := c.state(); ups != 0 || h.opens() != 0 || len(c.messages()) != 0 {
		t.Errorf("a refused client got a stream: %d ups, %d opens, delivered %v", ups, h.opens(), c.messages())
	}
	if len(srv.log.lines("level=WARN", "127.0.0.1:", "status=401")) != 1 {
		t.Errorf("want one warning for the refusal; log:\n%s", srv.log)
	}
}

// The handler's Open refuses with a *Refusal's status; any other error is
// a 503. The client gives up on the statuses retrying cannot cure and
// retries the others.
func TestOpenRefuses(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		err    error
		status int
		gaveUp bool
	}{
		{"conflict", &Refusal{Status: http.StatusConflict, Msg: "worker node.1 belongs to another cluster"}, http.StatusConflict, true},
		{"not the leader", &Refusal{Status: http.StatusServiceUnavailable, Msg: "standing by"}, http.StatusServiceUnavailable, false},
		{"plain error", errors.New("the database is down"), http.StatusServiceUnavailable, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var mu sync.Mutex
			tries := 0
			h := &handler{onOpen: func(*Session) error {
				mu.Lock()
				defer mu.Unlock()
				tries++
				return tc.err
			}}
			srv := startServer(t, "127.0.0.1:0", h, nil, nil)
			c := startClient(t, ClientConfig{Addrs: []string{srv.addr}, Hello: hello("node.1", "i1")})
			if tc.gaveUp {
				err := c.result(t)
				if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), tc.err.Error()) {
					t.Errorf("Run returned %v, want an ErrRefused saying %q", err, tc.err)
				}
			} else {
				poll.Until(t, "the client retries", wait, func() string {
					mu.Lock()
					defer mu.Unlock()
					if tries < 3 {
						return fmt.Sprintf("%d tries", tries)
					}
					return ""
				})
				select {
				case err := <-c.done:
					t.Errorf("Run returned %v on a refusal it should retry", err)
				default:
				}
				if !strings.Contains(c.log.String(), tc.err.Error()) {
					t.Errorf("the client log does not say why:\n%s", c.log)
				}
			}
			if len(srv.log.lines("level=WARN", "status="+strconv.Itoa(tc.status), tc.err.Error())) == 0 {
				t.Errorf("no warning with status %d; log:\n%s", tc.status, srv.log)
			}
		})
	}
}

// One worker id, one live stream: another process with the id is refused,
// the same process reconnecting replaces its old stream.
func TestOneStreamPerWorkerID(t *testing.T) {
	t.Parallel()
	h := &handler{}
	srv := startServer(t, "127.0.0.1:0", h, nil, nil)
	first := startClient(t, ClientConfig{Addrs: []string{srv.addr}, Hello: hello("node.1", "first")})
	first.waitUp(t)
	s1 := h.waitOpen(t, 1)

	// Another process with the same id.
	second := startClient(t, ClientConfig{Addrs: []string{srv.addr}, Hello: hello("node.1", "second")})
	err := second.result(t)
	if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "already connected") {
		t.Fatalf("the second process's Run returned %v, want an ErrRefused saying the id is taken", err)
	}
	if lines := srv.log.lines("level=WARN", "status=409"); len(lines) != 1 {
		t.Errorf("want one warning for the 409; log:\n%s", srv.log)
	}
	if up, ups := first.state(); !up || ups != 1 || h.opens() != 1 || h.isClosed(s1) {
		t.Fatalf("the first process lost its stream: up %v, %d ups; events %v", up, ups, h.log())
	}
	// The first stream still works both ways.
	s1.Send(Message{Kind: KindRows, Rows: []Row{{Ref: Ref{Job: "j", Key: "after-409", Attempt: 1}}}})
	poll.Until(t, "a row after the 409 reaches the first client", wait, func() string {
		for _, m := range first.messages() {
			if m.Kind == KindRows && m.Rows[0].Key == "after-409" {
				return ""
			}
		}
		return fmt.Sprintf("delivered %v", first.messages())
	})

	// The dispatcher drops the stream; the same process comes back.
	s1.Close()
	s2 := h.waitOpen(t, 2)
	first.waitUp(t)
	if got := s2.Hello.Instance; got != "first" {
		t.Errorf("session #2 is instance %q", got)
	}

	// The same process again on a second connection, while its stream
	// still looks alive (a cut the server has not noticed): it replaces
	// the old stream, which is closed before the new one opens.
	peer := newRawPeer(t, false)
	pr, pw := io.Pipe()
	defer pw.Close()
	again := helloLine(t, hello("node.1", "first")())
	go func() { _, _ = io.WriteString(pw, again) }()
	resp, err := peer.post(t.Context(), srv.addr, "Bearer "+testSecret, pr)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("the reconnect got %s: %s", resp.Status, b)
	}
	var welcome Message
	sc := bufio.NewScanner(resp.Body)
	if !sc.Scan() || json.Unmarshal(sc.Bytes(), &welcome) != nil || welcome.Kind != KindWelcome {
		t.Fatalf("no welcome on the reconnect: %q %v", sc.Text(), sc.Err())
	}
	// And the client, whose stream was replaced, replaces it back.
	h.waitOpen(t, 4)
	want := []string{
		"open #1 node.1/first",
		"closed #1",
		"open #2 node.1/first",
		"closed #2",
		"open #3 node.1/first",
		"closed #3",
		"open #4 node.1/first",
	}
	if got := h.log(); !slices.Equal(got[:min(len(got), len(want))], want) {
		t.Errorf("events\n%q\nwant\n%q", got, want)
	}
}

func outcome(i int) Outcome {
	out := fmt.Sprintf("out-%d", i)
	return Outcome{Ref: Ref{Job: "j", Key: strconv.Itoa(i), Attempt: 1}, OK: i%2 == 0, Error: map[bool]string{false: "boom"}[i%2 == 0], Output: &out, Millis: int64(i)}
}

func seqs(os []Outcome) []uint64 {
	var s []uint64
	for _, o := range os {
		s = append(s, o.Seq)
	}
	return s
}

// waitDelivered waits until s received each outcome of want at least once.
func waitDelivered(t *testing.T, h *handler, s *Session, want ...uint64) {
	t.Helper()
	poll.Until(t, fmt.Sprintf("outcomes %v reach the server", want), wait, func() string {
		got := h.outcomes(s)
		for _, seq := range want {
			if got[seq] == 0 {
				return fmt.Sprintf("outcome %d missing; got %v", seq, got)
			}
		}
		return ""
	})
}

func waitUnacked(t *testing.T, c *client, want ...uint64) {
	t.Helper()
	poll.Until(t, fmt.Sprintf("unacked outcomes are %v", want), wait, func() string {
		if got := seqs(c.Unacked()); !slices.Equal(got, want) {
			return fmt.Sprintf("unacked %v", got)
		}
		return ""
	})
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// Outcomes stay with the client until acknowledged, across a dispatcher
// that is not up yet, a stream the dispatcher drops and a dispatcher
// restart on the same port.
func TestOutcomesUntilAcked(t *testing.T) {
	t.Parallel()
	addr := freeAddr(t) // the dispatcher is down
	c := startClient(t, ClientConfig{Addrs: []string{addr}, Hello: hello("node.1", "i1")})
	sent := map[uint64]Outcome{}
	report := func(i int) {
		c.Report(outcome(i))
		o := outcome(i)
		o.Seq = uint64(i)
		sent[o.Seq] = o
	}
	for i := 1; i <= 3; i++ {
		report(i)
	}
	if got := seqs(c.Unacked()); !slices.Equal(got, []uint64{1, 2, 3}) {
		t.Fatalf("unacked %v, want [1 2 3]", got)
	}
	allAcked := c.AllAcked()
	poll.Until(t, "the client tries the dispatcher that is down", wait, func() string {
		if len(c.log.lines("no stream to the dispatcher", addr)) < 2 {
			return "client log:\n" + c.log.String()
		}
		return ""
	})

	// The dispatcher comes up.
	h1 := &handler{}
	srv1 := startServer(t, addr, h1, nil, nil)
	s1 := h1.waitOpen(t, 1)
	waitDelivered(t, h1, s1, 1, 2, 3)
	report(4) // while connected
	report(5)
	waitDelivered(t, h1, s1, 1, 2, 3, 4, 5)
	s1.Send(Message{Kind: KindAcks, Acks: []uint64{1, 2}})
	waitUnacked(t, c, 3, 4, 5)

	// The dispatcher drops the stream: the new one carries what is unacked.
	s1.Close()
	s2 := h1.waitOpen(t, 2)
	waitDelivered(t, h1, s2, 3, 4, 5)

	// The dispatcher dies and comes back on the same port.
	srv1.stop(t)
	report(6) // while it is down (or already back)
	h2 := &handler{}
	startServer(t, addr, h2, nil, nil)
	s3 := h2.waitOpen(t, 1)
	waitDelivered(t, h2, s3, 3, 4, 5, 6)
	if isClosed(allAcked) {
		t.Fatal("AllAcked is closed with outcomes unacked")
	}
	s3.Send(Message{Kind: KindAcks, Acks: []uint64{3, 4, 5, 6}})
	select {
	case <-allAcked:
	case <-time.After(wait):
		t.Fatalf("AllAcked not closed; unacked %v", seqs(c.Unacked()))
	}
	if u := c.Unacked(); len(u) != 0 {
		t.Errorf("unacked %v after all acks", seqs(u))
	}
	if !isClosed(c.AllAcked()) {
		t.Error("AllAcked is open with nothing unacked")
	}

	// Per stream: every outcome unacked when it opened arrived, unchanged;
	// none acked before came back.
	streams := []struct {
		h        *handler
		s        *Session
		want     []uint64
		notAfter []uint64
	}{
		{h1, s1, []uint64{1, 2, 3, 4, 5}, nil},
		{h1, s2, []uint64{3, 4, 5}, []uint64{1, 2}},
		{h2, s3, []uint64{3, 4, 5, 6}, []uint64{1, 2}},
	}
	for i, st := range streams {
		got := st.h.outcomes(st.s)
		for _, seq := range st.want {
			if got[seq] == 0 {
				t.Errorf("stream %d: outcome %d lost (got %v)", i+1, seq, got)
			}
		}
		for _, seq := range st.notAfter {
			if got[seq] != 0 {
				t.Errorf("stream %d: acked outcome %d sent again", i+1, seq)
			}
		}
		for _, m := range st.h.messages(st.s) {
			for _, o := range m.Outcomes {
				if want := sent[o.Seq]; !reflect.DeepEqual(o, want) {
					t.Errorf("stream %d: got outcome %+v, reported %+v", i+1, o, want)
				}
			}
		}
	}
}

// Messages arrive in the order they were sent, both ways.
func TestMessagesInOrder(t *testing.T) {
	t.Parallel()
	h := &handler{}
	srv := startServer(t, "127.0.0.1:0", h, func(cfg *ServerConfig) { cfg.Ping = 3 * time.Second }, nil)
	c := startClient(t, ClientConfig{Addrs: []string{srv.addr}, Hello: hello("node.1", "i1")})
	c.waitUp(t)
	s := h.waitOpen(t, 1)
	const n = 500
	for i := range n {
		rows := []Row{{Ref: Ref{Job: "j", Key: strconv.Itoa(i), Attempt: 1}, Data: json.RawMessage(fmt.Sprintf(`{"i":%d}`, i))}}
		s.Send(Message{Kind: KindRows, Rows: rows})
		c.Send(Message{Kind: KindStarts, Refs: []Ref{rows[0].Ref}})
	}
	s.Send(Message{Kind: KindRows, Rows: []Row{{Ref: Ref{Job: "j", Key: "last"}}}})
	poll.Until(t, "the rows reach the client", wait, func() string {
		if got := c.messages(); len(got) < n+2 {
			return fmt.Sprintf("%d of %d messages", len(got), n+2)
		}
		return ""
	})
	got := c.messages()
	if w := got[0].Welcome; got[0].Kind != KindWelcome || w == nil || w.PingMillis != 3000 {
		t.Errorf("first message %+v, want the welcome", got[0])
	}
	for i, m := range got[1 : n+1] {
		if m.Kind != KindRows || len(m.Rows) != 1 || m.Rows[0].Key != strconv.Itoa(i) || string(m.Rows[0].Data) != fmt.Sprintf(`{"i":%d}`, i) {
			t.Fatalf("message %d is %+v, want row %d", i+1, m, i)
		}
	}
	if last := got[n+1]; last.Kind != KindRows || len(last.Rows) != 1 || last.Rows[0].Key != "last" || len(got) != n+2 {
		t.Errorf("after the rows: %+v", got[n+1:])
	}
	// Starts that waited for one write go in one message, in order.
	refs := func() []Ref {
		var out []Ref
		for _, m := range h.messages(s) {
			if m.Kind != KindStarts {
				t.Fatalf("server message %+v, want starts", m)
			}
			out = append(out, m.Refs...)
		}
		return out
	}
	poll.Until(t, "the starts reach the server", wait, func() string {
		if got := refs(); len(got) < n {
			return fmt.Sprintf("%d of %d", len(got), n)
		}
		return ""
	})
	for i, r := range refs() {
		if r.Key != strconv.Itoa(i) {
			t.Fatalf("start %d is %+v", i, r)
		}
	}
}

// What waits for one write goes out merged: one message of starts, one of
// outcomes, then the rest in order; a start whose outcome came before the
// write is left out.
func TestPendingMerged(t *testing.T) {
	t.Parallel()
	c := &Client{unacked: map[uint64]Outcome{}, wake: make(chan struct{}, 1), live: true}
	a, b := Ref{Job: "j", Key: "1", Attempt: 1}, Ref{Job: "j", Key: "2", Attempt: 1}
	c.Started(a)
	c.Started(b)
	c.Send(Message{Kind: KindRelease, Refs: []Ref{{Job: "j", Key: "3", Attempt: 1}}})
	c.Report(Outcome{Ref: a, OK: true})
	got := c.pending()
	if len(got) != 3 || got[0].Kind != KindStarts || len(got[0].Refs) != 1 || got[0].Refs[0] != b ||
		got[1].Kind != KindOutcomes || len(got[1].Outcomes) != 1 || got[1].Outcomes[0].Ref != a || got[2].Kind != KindRelease {
		t.Errorf("pending = %+v", got)
	}
	if again := c.pending(); len(again) != 0 {
		t.Errorf("pending again = %+v, want nothing", again)
	}
	// The outcome stays unacknowledged: a new stream sends it again.
	c.setLive(false)
	c.setLive(true)
	if got := c.pending(); len(got) != 1 || got[0].Kind != KindOutcomes || len(got[0].Outcomes) != 1 || got[0].Outcomes[0].Seq != 1 {
		t.Errorf("pending on a new stream = %+v, want outcome 1 again", got)
	}
}

// Over TLS a client that trusts the dispatcher's certificate talks; one
// that does not cannot connect, which is no refusal: it keeps trying.
func TestTLS(t *testing.T) {
	t.Parallel()
	cert, pool := selfSigned(t)
	h := &handler{}
	srv := startServer(t, "127.0.0.1:0", h, nil, &tls.Config{Certificates: []tls.Certificate{cert}})

	t.Run("trusted", func(t *testing.T) {
		c := startClient(t, ClientConfig{Addrs: []string{srv.addr}, Hello: hello("node.1", "i1"), TLS: &tls.Config{RootCAs: pool}})
		c.waitUp(t)
		s := h.waitOpen(t, 1)
		s.Send(Message{Kind: KindRows, Rows: []Row{{Ref: Ref{Job: "j", Key: "1", Attempt: 1}}}})
		c.Report(outcome(1))
		poll.Until(t, "a row over TLS", wait, func() string {
			if got := c.messages(); len(got) < 2 || got[1].Kind != KindRows {
				return fmt.Sprintf("delivered %v", got)
			}
			return ""
		})
		waitDelivered(t, h, s, 1)
	})
	t.Run("untrusted", func(t *testing.T) {
		c := startClient(t, ClientConfig{Addrs: []string{srv.addr}, Hello: hello("node.2", "i2"), TLS: &tls.Config{RootCAs: x509.NewCertPool()}})
		poll.Until(t, "the client fails the handshake", wait, func() string {
			if len(c.log.lines("no stream to the dispatcher", "certificate signed by unknown authority")) < 2 {
				return "client log:\n" + c.log.String()
			}
			return ""
		})
		c.cancel()
		if err := c.result(t); err != nil {
			t.Errorf("Run: %v, want nil after cancel (it is not a refusal)", err)
		}
		if _, ups := c.state(); ups != 0 {
			t.Errorf("the untrusting client connected %d times", ups)
		}
	})
	if n := h.opens(); n != 1 {
		t.Errorf("%d sessions, want 1: %v", n, h.log())
	}
}

// The handler hears nothing from a session after Closed: a Receive in
// progress when the dispatcher drops the stream finishes before Closed.
func TestNoReceiveAfterClosed(t *testing.T) {
	t.Parallel()
	entered := make(chan *Session, 1)
	release := make(chan struct{})
	closed := make(chan struct{}, 1)
	h := &handler{}
	h.onReceive = func(s *Session, m Message) {
		if m.Kind == KindStarts && m.Refs[0].Key == "block" {
			entered <- s
			<-release
		}
	}
	h.onClosed = func(*Session) {
		select {
		case closed <- struct{}{}:
		default:
		}
	}
	srv := startServer(t, "127.0.0.1:0", h, nil, nil)
	c := startClient(t, ClientConfig{Addrs: []string{srv.addr}, Hello: hello("node.1", "i1")})
	c.waitUp(t)
	c.Send(Message{Kind: KindStarts, Refs: []Ref{{Job: "j", Key: "block", Attempt: 1}}})
	for i := range 20 { // lines waiting behind the blocked one
		c.Send(Message{Kind: KindStarts, Refs: []Ref{{Job: "j", Key: strconv.Itoa(i), Attempt: 1}}})
	}
	var s *Session
	select {
	case s = <-entered:
	case <-time.After(wait):
		t.Fatalf("no Receive; events %v", h.log())
	}
	s.Close()
	select {
	case <-closed:
		t.Errorf("Closed was called while Receive was in progress")
	case <-time.After(window):
	}
	close(release)
	h.waitOpen(t, 2) // the client comes back
	for _, e := range h.log() {
		if strings.HasPrefix(e, "receive after closed") || strings.HasPrefix(e, "closed twice") {
			t.Errorf("%s; events %v", e, h.log())
		}
	}
}

// Deliver is called from one goroutine at a time, in order, even when a
// stream ends while Deliver is busy.
func TestDeliverOneAtATime(t *testing.T) {
	t.Parallel()
	h := &handler{}
	srv := startServer(t, "127.0.0.1:0", h, nil, nil)
	var mu sync.Mutex
	var busy bool
	var events []string
	entered := make(chan struct{}, 1)
	release := make(chan struct{})
	secondWelcome := make(chan struct{}, 1)
	welcomes := 0
	deliver := func(m Message) {
		mu.Lock()
		if busy {
			events = append(events, "overlap "+string(m.Kind))
		}
		busy = true
		if m.Kind == KindWelcome {
			if welcomes++; welcomes == 2 {
				secondWelcome <- struct{}{}
			}
		}
		mu.Unlock()
		if m.Kind == KindRows && m.Rows[0].Key == "block" {
			entered <- struct{}{}
			select {
			case <-release:
			case <-secondWelcome: // the bug: another stream delivers meanwhile
				<-release
			}
		}
		mu.Lock()
		busy = false
		events = append(events, string(m.Kind))
		mu.Unlock()
	}
	cl, err := NewClient(ClientConfig{Addrs: []string{srv.addr}, Secret: []byte(testSecret), Hello: hello("node.1", "i1"),
		Deliver: deliver, MinBackoff: 5 * time.Millisecond, MaxBackoff: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- cl.Run(ctx) }()
	defer func() {
		cancel()
		select {
		case <-done:
		case <-time.After(wait):
			t.Errorf("Run did not return")
		}
	}()
	s := h.waitOpen(t, 1)
	s.Send(Message{Kind: KindRows, Rows: []Row{{Ref: Ref{Job: "j", Key: "block", Attempt: 1}}}})
	select {
	case <-entered:
	case <-time.After(wait):
		t.Fatal("the row did not arrive")
	}
	s.Close()
	// The reader is busy; the client learns that the stream ended when a
	// write fails, so give it something to write.
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	end := time.After(window)
watch:
	for {
		select {
		case <-tick.C:
			cl.Send(Message{Kind: KindStarts, Refs: []Ref{{Job: "j", Key: "x", Attempt: 1}}})
		case <-secondWelcome:
			secondWelcome <- struct{}{}
			break watch
		case <-end:
			break watch
		}
	}
	close(release)
	h.waitOpen(t, 2)
	poll.Until(t, "the second welcome", wait, func() string {
		mu.Lock()
		defer mu.Unlock()
		if welcomes < 2 {
			return fmt.Sprintf("events %v", events)
		}
		return ""
	})
	mu.Lock()
	defer mu.Unlock()
	if want := []string{"welcome", "rows", "welcome"}; !slices.Equal(events[:min(3, len(events))], want) {
		t.Errorf("deliveries %v, want %v first", events, want)
	}
}

// Each side speaks every Ping: a short Ping does not kill quiet streams.
// It is still four times shorter than the client's own period before the
// welcome (1 s), which would let the server's patience (3 pings) run out,
// and long enough that a loaded machine running every test at once does
// not miss it by scheduling alone (100 ms did, under -race).
func TestShortPing(t *testing.T) {
	t.Parallel()
	const ping = 250 * time.Millisecond
	h := &handler{}
	srv := startServer(t, "127.0.0.1:0", h, func(cfg *ServerConfig) { cfg.Ping = ping }, nil)
	c := startClient(t, ClientConfig{Addrs: []string{srv.addr}, Hello: hello("node.1", "i1")})
	c.waitUp(t)
	s := h.waitOpen(t, 1)
	// The client says nothing but pings for 15 periods, five times the
	// server's patience.
	tick := time.NewTicker(ping)
	defer tick.Stop()
	for i := range 15 {
		<-tick.C
		s.Send(Message{Kind: KindRows, Rows: []Row{{Ref: Ref{Job: "j", Key: strconv.Itoa(i), Attempt: 1}}}})
	}
	poll.Until(t, "the rows arrive", wait, func() string {
		if n := len(c.messages()); n < 16 {
			return fmt.Sprintf("%d rows; events %v; server log:\n%s", n-1, h.log(), srv.log)
		}
		return ""
	})
	if _, ups := c.state(); ups != 1 || h.opens() != 1 {
		t.Errorf("the stream came up %d times, %d sessions; server log:\n%s", ups, h.opens(), srv.log)
	}
}

// Serve returns once its streams have ended, so that a dispatcher can
// close what its handler uses.
func TestServeWaitsForStreams(t *testing.T) {
	t.Parallel()
	entered := make(chan struct{}, 1)
	release := make(chan struct{})
	h := &handler{onClosed: func(*Session) {
		select {
		case entered <- struct{}{}:
		default:
		}
		<-release
	}}
	srv := startServer(t, "127.0.0.1:0", h, nil, nil)
	c := startClient(t, ClientConfig{Addrs: []string{srv.addr}, Hello: hello("node.1", "i1")})
	c.waitUp(t)
	srv.cancel()
	select {
	case <-entered:
	case <-time.After(wait):
		t.Fatal("the session did not close")
	}
	select {
	case <-srv.done:
		t.Error("Serve returned while a stream's handler was running")
		srv.done <- nil
	case <-time.After(window):
	}
	close(release)
	srv.stop(t)
}

// A worker tries every address before it waits: behind a dead dispatcher
// and a standby, the leader is reached in the first round, whatever the
// backoff (here an hour).
func TestClientTriesEveryAddressBeforeWaiting(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := l.Addr().String()
	l.Close()
	standbyH := &handler{onOpen: func(*Session) error {
		return &Refusal{Status: http.StatusServiceUnavailable, Msg: "standing by"}
	}}
	standby := startServer(t, "127.0.0.1:0", standbyH, nil, nil)
	leaderH := &handler{}
	leader := startServer(t, "127.0.0.1:0", leaderH, nil, nil)
	c := startClient(t, ClientConfig{Addrs: []string{dead, standby.addr, leader.addr}, Hello: hello("node.1", "i1"),
		MinBackoff: time.Hour, MaxBackoff: time.Hour})
	c.waitUp(t)
	leaderH.waitOpen(t, 1)
	if n := len(c.log.lines("trying the next")); n != 2 {
		t.Errorf("the client moved on %d times, want 2 (the dead address, the standby); log:\n%s", n, c.log)
	}
}

// A dispatcher that is not the leader refuses with 503; the client tries
// the next one and settles there.
func TestStandby(t *testing.T) {
	t.Parallel()
	// A standby refuses as the dispatcher's does: Open says 503.
	var leading atomic.Bool
	standbyH, leaderH := &handler{onOpen: func(*Session) error {
		if !leading.Load() {
			return &Refusal{Status: http.StatusServiceUnavailable, Msg: "standing by"}
		}
		return nil
	}}, &handler{}
	standby := startServer(t, "127.0.0.1:0", standbyH, nil, nil)
	leader := startServer(t, "127.0.0.1:0", leaderH, nil, nil)
	c := startClient(t, ClientConfig{Addrs: []string{standby.addr, leader.addr}, Hello: hello("node.1", "i1")})
	c.waitUp(t)
	leaderH.waitOpen(t, 1)
	if standbyH.opens() != 0 || len(standby.log.lines("level=WARN", "status=503")) == 0 {
		t.Errorf("the standby: %d opens; log:\n%s", standbyH.opens(), standby.log)
	}
	// The leader goes; the standby takes over.
	leader.stop(t)
	leading.Store(true)
	standbyH.waitOpen(t, 1)
	c.waitUp(t)
}

// A dispatcher that accepts a stream and then says nothing, not even its
// pings, is given up after three ping periods: the client reconnects.
func TestClientLeavesASilentStream(t *testing.T) {
	t.Parallel()
	var opens atomic.Int32
	quit := make(chan struct{})
	mux := http.NewServeMux()
	mux.HandleFunc(Path, func(w http.ResponseWriter, r *http.Request) {
		opens.Add(1)
		w.WriteHeader(http.StatusOK)
		_ = json.NewEncoder(w).Encode(Message{Kind: KindWelcome, Welcome: &Welcome{PingMillis: 100}})
		_ = http.NewResponseController(w).Flush()
		select { // silent from now on
		case <-r.Context().Done():
		case <-quit:
		}
	})
	ln := listen(t, "127.0.0.1:0")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, ln, mux, nil, slog.New(slog.DiscardHandler)) }()
	t.Cleanup(func() { close(quit); cancel(); <-done })
	c := startClient(t, ClientConfig{Addrs: []string{ln.Addr().String()}, Hello: hello("node.1", "i1")})
	poll.Until(t, "the client to leave the silent stream and open another", wait, func() string {
		if n := opens.Load(); n < 2 {
			return fmt.Sprintf("%d streams opened; client log:\n%s", n, c.log)
		}
		return ""
	})
	if len(c.log.lines("the dispatcher was silent for 300ms")) == 0 {
		t.Errorf("the client did not say why it left; log:\n%s", c.log)
	}
}

// A worker that pings is kept past the hello's deadline; once it says
// nothing, not even a ping, it is dropped after three of the server's ping
// periods: its session closes.
func TestServerLeavesASilentWorker(t *testing.T) {
	t.Parallel()
	const ping = 250 * time.Millisecond // lines 2.5 periods apart would be dropped: room for a loaded machine
	h := &handler{}
	srv := startServer(t, "127.0.0.1:0", h, func(cfg *ServerConfig) { cfg.Ping = ping }, nil)
	pr, pw := io.Pipe()
	t.Cleanup(func() { pw.Close() })
	pinged := make(chan struct{})
	go func() {
		defer close(pinged)
		if _, err := io.WriteString(pw, helloLine(t, Hello{ID: "node.1", Instance: "i1"})); err != nil {
			return
		}
		for range 8 { // 2 s: well past the 750 ms the hello had
			time.Sleep(ping)
			if _, err := io.WriteString(pw, line(t, Message{Kind: KindPing})); err != nil {
				return
			}
		}
	}()
	resp, err := newRawPeer(t, false).post(t.Context(), srv.addr, "Bearer "+testSecret, pr)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d, want 200", resp.StatusCode)
	}
	s := h.waitOpen(t, 1)
	<-pinged
	if h.isClosed(s) {
		t.Fatalf("the session of a worker that pinged was closed; server log:\n%s", srv.log)
	}
	poll.Until(t, "the server to close the silent worker's session", wait, func() string {
		if !h.isClosed(s) {
			return fmt.Sprintf("still open; server log:\n%s", srv.log)
		}
		return ""
	})
}

// hungProxy stands for a dispatcher whose host stopped answering behind a
// live connection: it forwards to target until hung, then passes nothing
// on, closes nothing, and accepts new connections without a word.
type hungProxy struct {
	ln    net.Listener
	hung  atomic.Bool
	mu    sync.Mutex
	conns []net.Conn
}

func startHungProxy(t *testing.T, target string) *hungProxy {
	t.Helper()
	p := &hungProxy{ln: listen(t, "127.0.0.1:0")}
	go func() {
		for {
			c, err := p.ln.Accept()
			if err != nil {
				return
			}
			p.keep(c)
			if p.hung.Load() {
				continue
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				continue
			}
			p.keep(u)
			go p.forward(u, c)
			go p.forward(c, u)
		}
	}()
	t.Cleanup(func() {
		p.ln.Close()
		p.mu.Lock()
		defer p.mu.Unlock()
		for _, c := range p.conns {
			c.Close()
		}
	})
	return p
}

func (p *hungProxy) keep(c net.Conn) {
	p.mu.Lock()
	p.conns = append(p.conns, c)
	p.mu.Unlock()
}

func (p *hungProxy) forward(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if err != nil || p.hung.Load() {
			return // once hung, what comes is swallowed
		}
		if _, err := dst.Write(buf[:n]); err != nil {
			return
		}
	}
}

// The leader's host hangs (behind a live proxy, or a live tunnel end): the
// stream goes silent, the attempt to reconnect there is answered by
// nobody, and the worker moves on to the standby that took over, instead
// of waiting on the dead connection for TCP to give up.
func TestClientLeavesAHungLeaderForTheStandby(t *testing.T) {
	t.Parallel()
	const ping = 100 * time.Millisecond
	short := func(cfg *ServerConfig) { cfg.Ping = ping }
	leaderH := &handler{}
	leader := startServer(t, "127.0.0.1:0", leaderH, short, nil)
	var leading atomic.Bool
	standbyH := &handler{onOpen: func(*Session) error {
		if !leading.Load() {
			return &Refusal{Status: http.StatusServiceUnavailable, Msg: "standing by"}
		}
		return nil
	}}
	standby := startServer(t, "127.0.0.1:0", standbyH, short, nil)
	proxy := startHungProxy(t, leader.addr)
	c := startClient(t, ClientConfig{Addrs: []string{proxy.ln.Addr().String(), standby.addr}, Hello: hello("node.1", "i1")})
	c.waitUp(t)
	leaderH.waitOpen(t, 1)
	proxy.hung.Store(true)
	leading.Store(true)
	poll.Until(t, "the worker to reach the standby", 3*attemptTimeout, func() string {
		if standbyH.opens() == 0 {
			return "not yet; client log:\n" + c.log.String()
		}
		return ""
	})
}
