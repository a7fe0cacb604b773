package netnstest

import (
	"errors"
	"io"
	"net"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Forward makes target (host:port in the root namespace, such as the
// throwaway PostgreSQL on 127.0.0.1) reachable from every host: it listens on
// each host's Gateway, on one port that it returns, and forwards every
// connection to target. A process in host h connects to
// net.JoinHostPort(h.Gateway, strconv.Itoa(port)). The forwarders and their
// connections are closed at cleanup; a connection through a cut host stalls
// like any other.
func (n *Net) Forward(tb testing.TB, target string) (port int) {
	tb.Helper()
	f := &forwarder{target: target, conns: map[net.Conn]bool{}}
	// The first listener picks a free port; the gateways are this Net's
	// alone, so the others almost always get it too. Retry when not.
	for attempt := 0; ; attempt++ {
		lns, p, err := listenAll(n.Hosts)
		if err == nil {
			f.lns, port = lns, p
			break
		}
		if attempt == 4 || !errors.Is(err, syscall.EADDRINUSE) {
			tb.Fatalf("forward to %s: %v", target, err)
		}
	}
	for _, ln := range f.lns {
		f.wg.Add(1)
		go f.serve(ln)
	}
	tb.Cleanup(f.close)
	return port
}

func listenAll(hosts []*Host) ([]net.Listener, int, error) {
	var lns []net.Listener
	port := 0
	for _, h := range hosts {
		ln, err := net.Listen("tcp", net.JoinHostPort(h.Gateway, strconv.Itoa(port)))
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			return nil, 0, err
		}
		lns = append(lns, ln)
		port = ln.Addr().(*net.TCPAddr).Port
	}
	return lns, port, nil
}

// forwarder copies connections from its listeners to target.
type forwarder struct {
	target string
	lns    []net.Listener
	wg     sync.WaitGroup

	mu     sync.Mutex
	conns  map[net.Conn]bool
	closed bool
}

func (f *forwarder) serve(ln net.Listener) {
	defer f.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		f.wg.Add(1)
		go f.forward(c)
	}
}

// track records c so close can break its copy; false when closing.
func (f *forwarder) track(c net.Conn) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return false
	}
	f.conns[c] = true
	return true
}

func (f *forwarder) untrack(c net.Conn) {
	f.mu.Lock()
	delete(f.conns, c)
	f.mu.Unlock()
	c.Close()
}

func (f *forwarder) forward(client net.Conn) {
	defer f.wg.Done()
	if !f.track(client) {
		client.Close()
		return
	}
	defer f.untrack(client)
	server, err := net.DialTimeout("tcp", f.target, 10*time.Second)
	if err != nil {
		return
	}
	if !f.track(server) {
		server.Close()
		return
	}
	defer f.untrack(server)

	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = io.Copy(server, client)
		closeWrite(server)
	}()
	_, _ = io.Copy(client, server)
	closeWrite(client)
	<-done
}

// closeWrite passes on an EOF, so half-closed protocols work.
func closeWrite(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
}

func (f *forwarder) close() {
	f.mu.Lock()
	f.closed = true
	for _, ln := range f.lns {
		ln.Close()
	}
	for c := range f.conns {
		c.Close()
	}
	f.mu.Unlock()
	f.wg.Wait()
}
