package sshx

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
)

// ListenRemote asks the node to listen on addr (such as "127.0.0.1:15432")
// and returns the listener; connections to it on the node arrive through
// this Client. Closing the listener cancels the forwarding on the node.
func (c *Client) ListenRemote(ctx context.Context, addr string) (net.Listener, error) {
	if err := ctx.Err(); err != nil {
		return nil, context.Cause(ctx)
	}
	ln, err := c.conn.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s on node %s: %w", addr, c.addr, c.why(err))
	}
	return ln, nil
}

// ReverseForward listens on remoteAddr on the node and connects each
// connection made to it there to one from dialLocal, on the control host,
// until ctx ends or the connection to the node is lost. It returns the
// cause: ctx's, or why the listener failed.
func (c *Client) ReverseForward(ctx context.Context, remoteAddr string, dialLocal func(context.Context) (net.Conn, error)) error {
	ln, err := c.ListenRemote(ctx, remoteAddr)
	if err != nil {
		return err
	}
	if err := Forward(ctx, ln, dialLocal); err != nil {
		return fmt.Errorf("forward %s on node %s: %w", remoteAddr, c.addr, c.why(err))
	}
	return nil
}

// Forward accepts connections on ln and pipes each to a connection from
// dial until ctx ends (the usual case: it then returns ctx's cause) or ln
// fails. It closes ln and every connection it made before returning.
func Forward(ctx context.Context, ln net.Listener, dial func(context.Context) (net.Conn, error)) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var wg sync.WaitGroup
	var err error
	for {
		var rc net.Conn
		rc, err = ln.Accept()
		if err != nil {
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			lc, err := dial(ctx)
			if err != nil {
				rc.Close()
				return
			}
			pipe(ctx, rc, lc)
		}()
	}
	outer := ctx.Err() != nil
	cause := context.Cause(ctx)
	cancel(errors.New("forwarding stopped"))
	ln.Close()
	wg.Wait()
	if outer {
		return cause
	}
	return fmt.Errorf("accept: %w", err)
}

// pipe copies both ways until either side ends or ctx is done, then closes
// both.
func pipe(ctx context.Context, a, b net.Conn) {
	stop := context.AfterFunc(ctx, func() { a.Close(); b.Close() })
	defer stop()
	done := make(chan struct{}, 2)
	cp := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		// Half-close lets the other direction finish (a client that sent
		// its last query still gets the answer).
		if cw, ok := dst.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		} else {
			dst.Close()
		}
		done <- struct{}{}
	}
	go cp(a, b)
	go cp(b, a)
	<-done
	<-done
	a.Close()
	b.Close()
}
