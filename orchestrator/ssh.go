package orchestrator

import (
	"fmt"
	"time"

	"github.com/pampa-go/pampa/sshx"
)

// EnvPassphrase holds the passphrase of encrypted SSH key files.
const EnvPassphrase = "PAMPA_SSH_PASSPHRASE"

// SSHOptions are the command line's say in how nodes are reached.
type SSHOptions struct {
	AcceptNewHostKeys bool
	Timeout           time.Duration // TCP connect and SSH handshake, each; 0 means 10s
}

// SSHConfig describes how to reach the node. Secrets come from the config
// or the environment (getenv) and go nowhere else: sshx keeps them out of
// errors.
func (n Node) SSHConfig(opts SSHOptions, getenv func(string) string) (sshx.Config, error) {
	timeout := opts.Timeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	cfg := sshx.Config{
		Host: n.Host, Port: n.Port, User: n.User,
		Password:          n.Password,
		Passphrase:        getenv(EnvPassphrase),
		KnownHostsFile:    n.KnownHostsFile,
		AcceptNewHostKeys: opts.AcceptNewHostKeys,
		ConnectTimeout:    timeout,
		HandshakeTimeout:  timeout,
	}
	if n.PrivateKeyFile != "" {
		cfg.KeyFiles = []string{n.PrivateKeyFile}
	}
	if n.PasswordEnv != "" {
		cfg.Password = getenv(n.PasswordEnv)
		if cfg.Password == "" && n.PrivateKeyFile == "" {
			return cfg, fmt.Errorf("%s: ssh_password_env names %s, which is not set; export it or set ssh_private_key_file",
				n.Addr(), n.PasswordEnv)
		}
	}
	// The agent is offered only when no key is configured: too many keys
	// and sshd gives up (MaxAuthTries) before the right one.
	cfg.UseAgent = n.PrivateKeyFile == "" && getenv("SSH_AUTH_SOCK") != ""
	return cfg, nil
}
