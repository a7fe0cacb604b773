package pampacli

import (
	"time"

	"github.com/urfave/cli/v2"

	"github.com/pampa-go/pampa/orchestrator"
	"github.com/pampa-go/pampa/sshx"
)

// sshFlags are accepted by every command that reaches SSH nodes, and
// globally before the command name.
func sshFlags() []cli.Flag {
	return []cli.Flag{
		&cli.BoolFlag{Name: "accept-new-host-keys", Usage: "record the host key of nodes missing from known_hosts (a changed key is always refused)"},
		&cli.DurationFlag{Name: "ssh-timeout", Usage: "bound for the TCP connect and the SSH handshake of each node", Value: 10 * time.Second},
		&cli.IntFlag{Name: "parallel", Usage: "nodes handled at once", Value: 16},
	}
}

// lineageSet returns the flag's value from the innermost command that set
// it, so `pampactl --parallel 4 nodes check` and `pampactl nodes check
// --parallel 4` both work.
func lineageSet(c *cli.Context, name string) (*cli.Context, bool) {
	for _, ctx := range c.Lineage() {
		if ctx.IsSet(name) {
			return ctx, true
		}
	}
	return c, false
}

func flagBool(c *cli.Context, name string) bool {
	ctx, _ := lineageSet(c, name)
	return ctx.Bool(name)
}

func flagDuration(c *cli.Context, name string, def time.Duration) time.Duration {
	if ctx, ok := lineageSet(c, name); ok {
		return ctx.Duration(name)
	}
	return def
}

func flagInt(c *cli.Context, name string, def int) int {
	if ctx, ok := lineageSet(c, name); ok {
		return ctx.Int(name)
	}
	return def
}

var _ orchestrator.Conn = (*sshx.Client)(nil)
