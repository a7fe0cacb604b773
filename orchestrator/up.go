package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
)

// DialListener connects to the dispatcher's listener on the control host
// (ListenerAddr): where the tunnels lead.
func (c *Config) DialListener(ctx context.Context) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, "tcp", c.ListenerAddr())
}

// UpOptions configure Fleet.Up.
type UpOptions struct {
	Names     []string // nodes; all when empty
	Binary    BinaryFunc
	ConfigFor func(Node) ([]byte, error) // what deploy pushes to a node
}

// Upped is what Fleet.Up did.
type Upped struct {
	Deployed []NodeDeploy
	// Tunnels are open until the caller closes them (when its dispatcher
	// stops); nil when no node has one.
	Tunnels *Tunnels
	Started []NodeWorkers // DiedAtOnce tells which of them did not last
	// Warnings are the steps that failed on some nodes; those nodes were
	// left out of the next steps, and each warning names them.
	Warnings []error
}

// Up readies the fleet for a dispatcher on this host: it deploys to the
// nodes, opens the tunnels of those that have one and starts the workers.
// A node that fails a step is left out of the next ones: its workers are
// not started where the binary or the config may be stale, nor where the
// tunnel did not open (they would send the worker secret to whatever holds
// the tunnel's port on the node). It fails only when no node is left, or
// ctx ends; the caller closes Upped.Tunnels, also on failure.
func (f *Fleet) Up(ctx context.Context, opts UpOptions) (*Upped, error) {
	nodes, err := f.Nodes(opts.Names)
	if err != nil {
		return nil, err
	}
	up := &Upped{}
	active := make([]string, 0, len(nodes))
	byName := map[string]Node{}
	for _, n := range nodes {
		active = append(active, n.Name)
		byName[n.Name] = n
	}
	// goOn keeps the active nodes that ok says passed a step that failed
	// with err, or gives up when none is left.
	goOn := func(ok func(string) bool, err error) error {
		var left []string
		for _, n := range active {
			if ok(n) {
				left = append(left, n)
			}
		}
		if ctx.Err() != nil || len(left) == 0 {
			return err
		}
		if len(left) < len(active) {
			err = fmt.Errorf("%w\ngoing on with %s only", err, strings.Join(left, ", "))
		}
		up.Warnings = append(up.Warnings, err)
		active = left
		return nil
	}

	up.Deployed, err = f.Deploy(ctx, DeployOptions{Names: active, Binary: opts.Binary, ConfigFor: opts.ConfigFor})
	if err != nil {
		deployed := map[string]bool{}
		for _, d := range up.Deployed {
			deployed[d.Node] = true
		}
		// A local node has nothing to deploy.
		if err := goOn(func(n string) bool { return deployed[n] || byName[n].Local }, err); err != nil {
			return up, err
		}
	}

	var tunnelled []string
	for _, n := range active {
		if byName[n].Tunnel {
			tunnelled = append(tunnelled, n)
		}
	}
	if len(tunnelled) > 0 {
		up.Tunnels, err = f.OpenTunnels(ctx, tunnelled, f.Config.DialListener)
		if err != nil {
			open := map[string]bool{}
			if up.Tunnels != nil {
				for _, n := range up.Tunnels.Nodes() {
					open[n] = true
				}
			}
			if err := goOn(func(n string) bool { return !byName[n].Tunnel || open[n] }, err); err != nil {
				return up, err
			}
		}
	}

	up.Started, err = f.StartWorkers(ctx, active)
	var partial *PartialError
	switch {
	case errors.As(err, &partial) && len(partial.Failed) < partial.Total:
		up.Warnings = append(up.Warnings, err)
	case err != nil:
		return up, err
	}
	return up, nil
}
