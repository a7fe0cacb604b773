package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/pampa-go/pampa/internal/backoff"
	"github.com/pampa-go/pampa/sshx"
)

// WorkerDispatchers are the addresses the workers of n dial: [worker]
// dispatchers (a node's own config says so), their end of the tunnel when
// n has one, the node's dispatcher_address, or [dispatcher] addresses.
func (c *Config) WorkerDispatchers(n Node) []string {
	switch {
	case len(c.Worker.Dispatchers) > 0:
		return c.Worker.Dispatchers
	case n.Tunnel:
		return []string{net.JoinHostPort("127.0.0.1", strconv.Itoa(n.TunnelPort))}
	case n.DispatcherAddress != "":
		return []string{n.DispatcherAddress}
	case n.Relay != "":
		if r, ok := c.Relay(n.Relay); ok {
			return []string{r.Address}
		}
	}
	return c.Dispatcher.Addresses
}

// ListenerAddr is where the control host reaches its own dispatcher's
// listener: where tunnels lead. A wildcard host becomes loopback.
func (c *Config) ListenerAddr() string {
	host, port, err := net.SplitHostPort(c.Dispatcher.Listen)
	if err != nil {
		return c.Dispatcher.Listen
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}

// remoteListener is what a tunnel needs of an SSH connection
// (*sshx.Client).
type remoteListener interface {
	ListenRemote(ctx context.Context, addr string) (net.Listener, error)
}

// Tunnels are the open tunnels of `pampactl up`.
type Tunnels struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
	open   []string // nodes whose tunnel came up
}

// OpenTunnels opens, on every tunnel node among names, a listener on
// 127.0.0.1:tunnel_port whose connections dialDB connects to the
// database from the control host. It returns once every listener is up or
// has failed; the tunnels then stay open, re-established with backoff when
// a node drops, until ctx ends or Close.
//
// Failures are per node: when some tunnels failed and others opened, it
// returns the open ones (Nodes) together with a *PartialError naming the
// failed nodes; when every tunnel failed, it returns nil and the error.
func (f *Fleet) OpenTunnels(ctx context.Context, names []string, dialDB func(context.Context) (net.Conn, error)) (*Tunnels, error) {
	return f.openTunnels(ctx, names, dialDB, false)
}

// KeepTunnels is OpenTunnels for a process that serves whatever workers
// run (the dispatcher): a node whose tunnel cannot open now is retried
// with backoff until it can, instead of being given up. The error names
// the nodes that failed the first attempt; the Tunnels are never nil.
func (f *Fleet) KeepTunnels(ctx context.Context, names []string, dialDB func(context.Context) (net.Conn, error)) (*Tunnels, error) {
	return f.openTunnels(ctx, names, dialDB, true)
}

func (f *Fleet) openTunnels(ctx context.Context, names []string, dialDB func(context.Context) (net.Conn, error), keepTrying bool) (*Tunnels, error) {
	nodes, err := f.Nodes(names)
	if err != nil {
		return nil, err
	}
	var tunnelled []Node
	for _, n := range nodes {
		if n.Tunnel {
			tunnelled = append(tunnelled, n)
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	t := &Tunnels{cancel: cancel}
	log := f.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var mu sync.Mutex
	failed := map[string]error{}
	opened := map[string]bool{}
	var ready sync.WaitGroup
	for _, n := range tunnelled {
		ready.Add(1)
		t.wg.Add(1)
		go func() {
			defer t.wg.Done()
			addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(n.TunnelPort))
			bo := backoff.New(time.Second, 30*time.Second)
			for attempt := 0; ; attempt++ {
				err := f.tunnel(ctx, n, addr, dialDB, func() {
					if attempt == 0 {
						mu.Lock()
						opened[n.Name] = true
						mu.Unlock()
						ready.Done()
					} else {
						log.Info("tunnel open", "node", n.Name, "listen", addr)
					}
					bo.Reset()
				})
				if ctx.Err() != nil {
					if attempt == 0 && !isReadyErr(err) {
						ready.Done() // cancelled before it was ready
					}
					return
				}
				if attempt == 0 && err != nil && !isReadyErr(err) {
					mu.Lock()
					failed[n.Name] = err
					mu.Unlock()
					ready.Done()
					if !keepTrying {
						return
					}
				}
				log.Warn("tunnel down; reopening", "node", n.Name, "in", bo.Peek(), "err", err)
				if bo.Wait(ctx); ctx.Err() != nil {
					return
				}
			}
		}()
	}
	ready.Wait()
	if err := ctx.Err(); err != nil {
		t.Close()
		return nil, fmt.Errorf("open tunnels: %w", err)
	}
	mu.Lock()
	for _, n := range tunnelled {
		if opened[n.Name] {
			t.open = append(t.open, n.Name)
		}
	}
	mu.Unlock()
	err = nodeErrors("open tunnels", failed, len(tunnelled))
	if len(t.open) == 0 && err != nil && !keepTrying {
		t.Close()
		return nil, err
	}
	// The tunnels that opened stay open: the nodes behind them go on
	// without the ones that failed.
	return t, err
}

// Nodes names the nodes whose tunnel opened, in the order they were given.
func (t *Tunnels) Nodes() []string { return t.open }

// errAfterReady marks a tunnel that worked, then broke.
type errAfterReady struct{ error }

func (e errAfterReady) Unwrap() error { return e.error }

func isReadyErr(err error) bool { return errors.As(err, new(errAfterReady)) }

// tunnel opens one node's tunnel, calls ready once it listens, and serves
// it until it fails or ctx ends.
func (f *Fleet) tunnel(ctx context.Context, n Node, addr string, dialDB func(context.Context) (net.Conn, error), ready func()) error {
	c, err := f.dial(ctx, n)
	if err != nil {
		return err
	}
	defer c.Close()
	rl, ok := c.(remoteListener)
	if !ok {
		return fmt.Errorf("%s: this connection cannot listen on the node", n.Addr())
	}
	ln, err := rl.ListenRemote(ctx, addr)
	if err != nil {
		return fmt.Errorf("tunnel: %w (is port %d free on the node? set tunnel_port)", err, n.TunnelPort)
	}
	ready()
	return errAfterReady{sshx.Forward(ctx, ln, dialDB)}
}

// Close stops the tunnels and waits for them.
func (t *Tunnels) Close() {
	t.cancel()
	t.wg.Wait()
}
