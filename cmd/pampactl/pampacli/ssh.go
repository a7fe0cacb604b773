package pampacli

import (
	"context"
	"fmt"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/pampa-go/pampa/orchestrator"
	"github.com/pampa-go/pampa/sshx"
)

// EnvPassphrase holds the passphrase of encrypted SSH key files.
const EnvPassphrase = "PAMPA_SSH_PASSPHRASE"

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

// sshConfig describes how to reach node n. Secrets come from the config
// or the environment and go nowhere else: sshx keeps them out of errors.
func (e *env) sshConfig(c *cli.Context, n orchestrator.Node) (sshx.Config, error) {
	timeout := flagDuration(c, "ssh-timeout", 10*time.Second)
	cfg := sshx.Config{
		Host: n.Host, Port: n.Port, User: n.User,
		Password:          n.Password,
		Passphrase:        e.getenv(EnvPassphrase),
		KnownHostsFile:    n.KnownHostsFile,
		AcceptNewHostKeys: flagBool(c, "accept-new-host-keys"),
		ConnectTimeout:    timeout,
		HandshakeTimeout:  timeout,
	}
	if n.PrivateKeyFile != "" {
		cfg.KeyFiles = []string{n.PrivateKeyFile}
	}
	if n.PasswordEnv != "" {
		cfg.Password = e.getenv(n.PasswordEnv)
		if cfg.Password == "" && n.PrivateKeyFile == "" {
			return cfg, fmt.Errorf("%s: ssh_password_env names %s, which is not set; export it or set ssh_private_key_file",
				n.Addr(), n.PasswordEnv)
		}
	}
	// The agent is offered only when no key is configured: too many keys
	// and sshd gives up (MaxAuthTries) before the right one.
	cfg.UseAgent = n.PrivateKeyFile == "" && e.getenv("SSH_AUTH_SOCK") != ""
	return cfg, nil
}

// sshDialer returns how this invocation reaches SSH nodes.
func (e *env) sshDialer(c *cli.Context, cfg *orchestrator.Config) orchestrator.DialFunc {
	return func(ctx context.Context, n orchestrator.Node) (orchestrator.Conn, error) {
		sc, err := e.sshConfig(c, n)
		if err != nil {
			return nil, err
		}
		client, err := sshx.Dial(ctx, sc)
		if err != nil {
			return nil, err
		}
		return client, nil
	}
}

var _ orchestrator.Conn = (*sshx.Client)(nil)
