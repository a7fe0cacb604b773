// Package nettest gives tests loopback addresses and listeners. It is
// imported only by _test.go files.
package nettest

import (
	"net"
	"sync"
	"testing"
	"time"
)

// FreeAddr is a loopback address nothing listens on (the kernel just
// handed it out and it was closed), for a server a test starts later.
func FreeAddr(tb testing.TB) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// Listener is a loopback listener that knows which of the connections it
// accepted are still open: a test waits for the server to close them all
// before goroutine leak checks look (an HTTP/2 server may close a
// connection a client left mid-stream a moment after it stopped).
type Listener struct {
	net.Listener
	open sync.WaitGroup
}

// Listen listens on addr ("127.0.0.1:0" for any port).
func Listen(tb testing.TB, addr string) *Listener {
	tb.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		tb.Fatal(err)
	}
	return &Listener{Listener: ln}
}

// Accept counts the connection as open until it is closed.
func (l *Listener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.open.Add(1)
	return &conn{Conn: c, closed: l.open.Done}, nil
}

// WaitClosed waits, once the server has stopped accepting, until it has
// closed every connection it accepted; 10s at most.
func (l *Listener) WaitClosed(tb testing.TB) {
	tb.Helper()
	done := make(chan struct{})
	go func() { l.open.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		tb.Errorf("the server kept connections open 10s after it stopped")
	}
}

type conn struct {
	net.Conn
	once   sync.Once
	closed func()
}

func (c *conn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.closed)
	return err
}
