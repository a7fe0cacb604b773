package sshx

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/ssh"
)

// ErrAuth means the node refused every credential offered.
var ErrAuth = errors.New("authentication failed")

// ErrUnresponsive means the node stopped answering keepalives, so the
// connection was closed. The Client is no longer usable; dial again.
var ErrUnresponsive = errors.New("node stopped answering keepalives; connection closed")

// Client is one SSH connection to a node. It is safe for concurrent use:
// each Run or Stream uses its own session.
type Client struct {
	addr string      // host:port of the node, for messages
	conn *ssh.Client // the node
	hops []*ssh.Client

	lost atomic.Pointer[error] // why the connection was dropped, if it was

	done      chan struct{} // closed by Close: stops the keepalive loop
	wg        sync.WaitGroup
	closeOnce sync.Once
	closeErr  error
}

// Dial connects and authenticates to the node described by cfg, through its
// ProxyJump hosts if the ssh config names any.
func Dial(ctx context.Context, cfg Config) (*Client, error) {
	target, jumps, err := cfg.resolve()
	if err != nil {
		return nil, fmt.Errorf("dial node %s: %w", cfg.Host, err)
	}
	c := &Client{addr: target.addr(), done: make(chan struct{})}
	hosts, err := newHostKeyCheck(cfg.KnownHostsFile, cfg.AcceptNewHostKeys)
	if err != nil {
		return nil, fmt.Errorf("dial node %s: %w", c.addr, err)
	}
	var via *ssh.Client
	for _, hop := range jumps {
		jc, err := cfg.dialHop(ctx, via, hop, hosts)
		if err != nil {
			c.closeConns()
			return nil, fmt.Errorf("dial node %s: jump host %s: %w", c.addr, hop.addr(), err)
		}
		c.hops = append(c.hops, jc)
		via = jc
	}
	c.conn, err = cfg.dialHop(ctx, via, target, hosts)
	if err != nil {
		c.closeConns()
		return nil, fmt.Errorf("dial node %s: %w", c.addr, err)
	}

	interval, count := cfg.KeepAliveInterval, cfg.KeepAliveCountMax
	if interval == 0 {
		interval = defaultKeepAliveInterval
	}
	if count <= 0 {
		count = defaultKeepAliveCountMax
	}
	if interval > 0 {
		c.wg.Add(1)
		go c.keepAlive(interval, count)
	}
	return c, nil
}

// dialHop opens one SSH connection, over via when it is not nil.
func (cfg Config) dialHop(ctx context.Context, via *ssh.Client, ep endpoint, hosts *hostKeyCheck) (*ssh.Client, error) {
	addr := ep.addr()
	connectTimeout := cmp(cfg.ConnectTimeout, defaultConnectTimeout)
	dctx, cancel := context.WithTimeout(ctx, connectTimeout)
	var conn net.Conn
	var err error
	if via == nil {
		var d net.Dialer
		conn, err = d.DialContext(dctx, "tcp", addr)
	} else {
		conn, err = via.DialContext(dctx, "tcp", addr)
	}
	cancel()
	if err != nil {
		if ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
			return nil, fmt.Errorf("connect timed out after %s", connectTimeout)
		}
		return nil, fmt.Errorf("connect: %w", err)
	}

	auth, release, err := cfg.authMethods(ctx, ep)
	if err != nil {
		conn.Close()
		return nil, err
	}
	defer release()
	config := &ssh.ClientConfig{
		User:              ep.user,
		Auth:              auth,
		HostKeyCallback:   hosts.callback,
		HostKeyAlgorithms: hosts.algorithms(addr),
	}

	// ssh.NewClientConn has no timeout of its own: a peer that accepts and
	// never speaks would hang it. The deadline covers TCP connections; the
	// context (which also carries the caller's cancellation) covers
	// connections through a jump host, whose deadlines are not supported.
	handshakeTimeout := cmp(cfg.HandshakeTimeout, defaultHandshakeTimeout)
	deadline := time.Now().Add(handshakeTimeout)
	_ = conn.SetDeadline(deadline)
	hctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	stop := context.AfterFunc(hctx, func() { conn.Close() })
	sc, chans, reqs, err := ssh.NewClientConn(conn, addr, config)
	if !stop() {
		if err == nil {
			sc.Close()
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("ssh handshake: %w", context.Cause(ctx))
		}
		return nil, fmt.Errorf("ssh handshake timed out after %s", handshakeTimeout)
	}
	if err != nil {
		conn.Close()
		switch {
		case errors.Is(err, os.ErrDeadlineExceeded):
			return nil, fmt.Errorf("ssh handshake timed out after %s", handshakeTimeout)
		case strings.Contains(err.Error(), "unable to authenticate"):
			// x/crypto has no typed error for this; its text is stable.
			return nil, fmt.Errorf("%w as user %q; check the key files, agent or password: %w", ErrAuth, ep.user, err)
		}
		return nil, err
	}
	_ = conn.SetDeadline(time.Time{})
	return ssh.NewClient(sc, chans, reqs), nil
}

func cmp(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

// keepAlive probes the node every interval. A node that leaves a probe
// unanswered for count intervals is presumed gone: closing the connection
// makes every blocked call return instead of waiting for TCP to notice,
// which can take many minutes.
func (c *Client) keepAlive(interval time.Duration, count int) {
	defer c.wg.Done()
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	for {
		select {
		case <-c.done:
			return
		case <-ticker.C:
		}
		reply := make(chan error, 1)
		go func() {
			// Any reply counts, even a refusal: OpenSSH answers failure.
			_, _, err := c.conn.SendRequest("keepalive@openssh.com", true, nil)
			reply <- err
		}()
		timeout := time.NewTimer(interval * time.Duration(count))
		select {
		case err := <-reply:
			timeout.Stop()
			if err != nil {
				return // connection already gone
			}
		case <-timeout.C:
			err := fmt.Errorf("%w (no reply within %s)", ErrUnresponsive, interval*time.Duration(count))
			c.lost.CompareAndSwap(nil, &err)
			c.closeConns()
			<-reply // SendRequest returns once the connection is closed
			return
		}
	}
}

// why explains err by a dropped connection when there was one.
func (c *Client) why(err error) error {
	if lost := c.lost.Load(); lost != nil {
		return *lost
	}
	return err
}

// closeConns closes the connection and its jump hosts, innermost first.
func (c *Client) closeConns() error {
	var errs []error
	if c.conn != nil {
		errs = append(errs, ignoreClosed(c.conn.Close()))
	}
	for _, conn := range slices.Backward(c.hops) {
		errs = append(errs, ignoreClosed(conn.Close()))
	}
	return errors.Join(errs...)
}

func ignoreClosed(err error) error {
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// Close closes the connection and waits for the Client's goroutines.
func (c *Client) Close() error {
	c.closeOnce.Do(func() {
		close(c.done)
		c.closeErr = c.closeConns()
		c.wg.Wait()
		if c.closeErr != nil {
			c.closeErr = fmt.Errorf("close connection to node %s: %w", c.addr, c.closeErr)
		}
	})
	return c.closeErr
}

// Addr is the node's host:port, after applying the ssh config.
func (c *Client) Addr() string { return c.addr }
