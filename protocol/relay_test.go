package protocol

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/pampa-go/pampa/internal/poll"
)

// startRelay serves a relay to upstreams until the test ends.
func startRelay(t *testing.T, upstreams ...string) (*Relay, string, *logBuf) {
	t.Helper()
	logger, buf := newLogger()
	r, err := NewRelay(RelayConfig{Name: "site", Upstreams: upstreams, Secret: []byte(testSecret), Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	ln := listen(t, "127.0.0.1:0")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, ln, r, nil, logger) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("relay Serve: %v", err)
		}
		r.Close()
	})
	return r, ln.Addr().String(), buf
}

// Workers behind a relay reach the dispatcher over one connection: their
// hellos, messages and outcomes go up, the server's messages and acks come
// down, each stream to its own worker.
func TestRelayCarriesManyWorkersOverOneConnection(t *testing.T) {
	t.Parallel()
	h := &handler{}
	h.onReceive = func(s *Session, m Message) {
		if m.Kind == KindStarts {
			s.Send(Message{Kind: KindRows, Rows: []Row{{Ref: Ref{Job: "j", Key: "for-" + s.Hello.ID, Attempt: 1}}}})
		}
	}
	srv := startServer(t, "127.0.0.1:0", h, nil, nil)
	relay, addr, _ := startRelay(t, srv.addr)
	const n = 30
	var cs []*client
	for i := range n {
		c := startClient(t, ClientConfig{Addrs: []string{addr}, Hello: hello(fmt.Sprintf("w.%d", i+1), fmt.Sprintf("i%d", i))})
		cs = append(cs, c)
	}
	for _, c := range cs {
		c.waitUp(t)
		c.Send(Message{Kind: KindStarts, Refs: []Ref{{Job: "j", Key: "x", Attempt: 1}}})
	}
	h.waitOpen(t, n)
	for i, c := range cs {
		id := fmt.Sprintf("w.%d", i+1)
		poll.Until(t, id+" gets its own row", wait, func() string {
			for _, m := range c.messages() {
				if m.Kind == KindRows && len(m.Rows) == 1 && m.Rows[0].Key == "for-"+id {
					return ""
				}
			}
			return fmt.Sprintf("messages %v", c.messages())
		})
		c.Report(Outcome{Ref: Ref{Job: "j", Key: "for-" + id, Attempt: 1}, OK: true})
	}
	for i := 1; i <= n; i++ {
		s := h.session(i)
		poll.Until(t, "the outcome of "+s.Hello.ID+" arrives", wait, func() string {
			if len(h.outcomes(s)) == 0 {
				return "none yet"
			}
			return ""
		})
	}
	if d := relay.Dials(); d != 1 {
		t.Fatalf("the relay opened %d connections to the dispatcher for %d workers; want 1", d, n)
	}
}

// The relay checks the secret itself: a wrong one never reaches the
// dispatcher. A standby upstream sends the stream to the next one.
func TestRelayRefusesWrongSecretAndSkipsAStandby(t *testing.T) {
	t.Parallel()
	standby := &handler{onOpen: func(*Session) error {
		return &Refusal{Status: http.StatusServiceUnavailable, Msg: "this dispatcher is standing by"}
	}}
	leader := &handler{}
	s1 := startServer(t, "127.0.0.1:0", standby, nil, nil)
	s2 := startServer(t, "127.0.0.1:0", leader, nil, nil)
	relay, addr, rlog := startRelay(t, s1.addr, s2.addr)

	bad := startClient(t, ClientConfig{Addrs: []string{addr}, Secret: []byte("wrong-secret-000"), Hello: hello("w.1", "a")})
	if err := bad.result(t); err == nil || !strings.Contains(err.Error(), "wrong worker secret") {
		t.Fatalf("a wrong secret through the relay: %v; want the refusal", err)
	}
	if len(rlog.lines("refused a worker connection", "status=401")) == 0 || strings.Contains(rlog.String(), "wrong-secret-000") {
		t.Errorf("relay log should record the refusal, without the secret:\n%s", rlog)
	}
	if relay.Dials() != 0 {
		t.Errorf("a refused worker made the relay dial the dispatcher")
	}

	good := startClient(t, ClientConfig{Addrs: []string{addr}, Hello: hello("w.2", "b")})
	good.waitUp(t)
	leader.waitOpen(t, 1)
	if standby.opens() != 0 {
		t.Fatalf("the standby accepted a stream")
	}
	// The upstream that answered is tried first from now on.
	time.Sleep(10 * time.Millisecond)
	second := startClient(t, ClientConfig{Addrs: []string{addr}, Hello: hello("w.3", "c")})
	second.waitUp(t)
	leader.waitOpen(t, 2)
}
