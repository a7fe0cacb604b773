package sshx

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/kevinburke/ssh_config"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"

	"github.com/pampa-go/pampa/internal/homedir"
)

// Config says how to reach and authenticate to one node. The zero value of
// every field except Host has a sensible default.
type Config struct {
	// Host is an address or a Host alias from the ssh config file.
	// "host:port" is accepted too.
	Host string
	// Port defaults to the ssh config's Port, then 22.
	Port int
	// User defaults to the ssh config's User, then the local user.
	User string

	// Password enables password authentication. It never appears in
	// errors or in String.
	Password string
	// KeyFiles are private keys to offer, before any IdentityFile from the
	// ssh config. With no key, password or agent configured, the usual
	// ~/.ssh/id_* files are tried.
	KeyFiles []string
	// Passphrase decrypts encrypted key files.
	Passphrase string
	// UseAgent offers the keys of the agent at $SSH_AUTH_SOCK.
	UseAgent bool

	// KnownHostsFile defaults to ~/.ssh/known_hosts.
	KnownHostsFile string
	// AcceptNewHostKeys records the key of a host missing from
	// KnownHostsFile instead of refusing it. A changed key is always refused.
	AcceptNewHostKeys bool
	// SSHConfigFile defaults to ~/.ssh/config (ignored when missing);
	// "none" disables it. HostName, User, Port, IdentityFile and
	// ProxyJump are honoured.
	SSHConfigFile string

	// ConnectTimeout bounds the TCP connect; default 10s.
	ConnectTimeout time.Duration
	// HandshakeTimeout bounds banner, key exchange and authentication;
	// default 15s.
	HandshakeTimeout time.Duration
	// KeepAliveInterval is how often an idle or busy connection is probed;
	// default 15s, negative disables keepalives.
	KeepAliveInterval time.Duration
	// KeepAliveCountMax is how many intervals without a reply close the
	// connection; default 3.
	KeepAliveCountMax int
}

const (
	defaultConnectTimeout    = 10 * time.Second
	defaultHandshakeTimeout  = 15 * time.Second
	defaultKeepAliveInterval = 15 * time.Second
	defaultKeepAliveCountMax = 3
)

// String describes c without its secrets, so a Config can be logged.
func (c Config) String() string {
	redacted := c
	if redacted.Password != "" {
		redacted.Password = "REDACTED"
	}
	if redacted.Passphrase != "" {
		redacted.Passphrase = "REDACTED"
	}
	type plain Config // drops the String method, avoiding recursion
	return fmt.Sprintf("%+v", plain(redacted))
}

// LogValue keeps secrets out of slog output.
func (c Config) LogValue() slog.Value { return slog.StringValue(c.String()) }

// endpoint is one hop after applying the ssh config.
type endpoint struct {
	host     string // what the ssh config resolved, or the alias itself
	port     int
	user     string
	keyFiles []string // from the ssh config or defaults: missing ones are skipped
}

func (e endpoint) addr() string { return net.JoinHostPort(e.host, strconv.Itoa(e.port)) }

// resolve applies the ssh config to the target and its ProxyJump hops.
// Explicit Config fields win over the ssh config, as flags do for ssh(1).
func (c Config) resolve() (target endpoint, jumps []endpoint, err error) {
	if c.Host == "" {
		return endpoint{}, nil, errors.New("no host given")
	}
	sc, err := c.sshConfig()
	if err != nil {
		return endpoint{}, nil, err
	}
	alias, port := c.Host, c.Port
	if h, p, err := net.SplitHostPort(c.Host); err == nil {
		n, err := strconv.Atoi(p)
		if err != nil {
			return endpoint{}, nil, fmt.Errorf("host %q: bad port %q", c.Host, p)
		}
		alias = h
		if port == 0 {
			port = n
		}
	}
	target, err = lookup(sc, alias, c.User, port)
	if err != nil {
		return endpoint{}, nil, err
	}
	spec := get(sc, alias, "ProxyJump")
	if spec == "" || strings.EqualFold(spec, "none") {
		return target, nil, nil
	}
	for _, hop := range strings.Split(spec, ",") {
		ep, err := parseJump(sc, strings.TrimSpace(hop))
		if err != nil {
			return endpoint{}, nil, fmt.Errorf("ProxyJump %q: %w", spec, err)
		}
		jumps = append(jumps, ep)
	}
	return target, jumps, nil
}

func (c Config) sshConfig() (*ssh_config.Config, error) {
	path, explicit := c.SSHConfigFile, true
	switch path {
	case "none":
		return nil, nil
	case "":
		path, explicit = homePath(".ssh", "config"), false
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) && !explicit {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read ssh config: %w", err)
	}
	sc, err := ssh_config.DecodeBytes(data)
	if err != nil {
		return nil, fmt.Errorf("parse ssh config %s: %w", path, err)
	}
	return sc, nil
}

// parseJump reads one ProxyJump entry: [user@]host[:port].
func parseJump(sc *ssh_config.Config, hop string) (endpoint, error) {
	var usr string
	if i := strings.LastIndex(hop, "@"); i >= 0 {
		usr, hop = hop[:i], hop[i+1:]
	}
	port := 0
	if h, p, err := net.SplitHostPort(hop); err == nil {
		n, err := strconv.Atoi(p)
		if err != nil {
			return endpoint{}, fmt.Errorf("bad port %q", p)
		}
		hop, port = h, n
	}
	if hop == "" {
		return endpoint{}, errors.New("empty host")
	}
	return lookup(sc, hop, usr, port)
}

func lookup(sc *ssh_config.Config, alias, usr string, port int) (endpoint, error) {
	ep := endpoint{host: alias, port: port, user: usr}
	if h := get(sc, alias, "HostName"); h != "" {
		ep.host = strings.ReplaceAll(h, "%h", alias)
	}
	if ep.port == 0 {
		ep.port = 22
		if p := get(sc, alias, "Port"); p != "" {
			n, err := strconv.Atoi(p)
			if err != nil {
				return endpoint{}, fmt.Errorf("ssh config: host %s: bad Port %q", alias, p)
			}
			ep.port = n
		}
	}
	if ep.user == "" {
		ep.user = get(sc, alias, "User")
	}
	if ep.user == "" {
		u, err := user.Current()
		if err != nil {
			return endpoint{}, fmt.Errorf("no user given and the local user is unknown: %w", err)
		}
		ep.user = u.Username
	}
	if sc != nil {
		files, _ := sc.GetAll(alias, "IdentityFile")
		for _, f := range files {
			// What Expand refuses (~user, no home) stays as written: not
			// found, it is skipped like any missing IdentityFile.
			f, _ = homedir.Expand(f)
			ep.keyFiles = append(ep.keyFiles, f)
		}
	}
	return ep, nil
}

func get(sc *ssh_config.Config, alias, key string) string {
	if sc == nil {
		return ""
	}
	v, _ := sc.Get(alias, key)
	return v
}

func homePath(elem ...string) string {
	home, _ := os.UserHomeDir()
	return filepath.Join(append([]string{home}, elem...)...)
}

// authMethods builds public key (files, then agent) and password
// authentication. The returned func releases the agent connection and must
// be called once the handshake is over.
func (c Config) authMethods(ctx context.Context, ep endpoint) ([]ssh.AuthMethod, func(), error) {
	var signers []ssh.Signer
	for _, f := range c.KeyFiles {
		s, err := c.loadKey(f)
		if err != nil {
			return nil, nil, err
		}
		signers = append(signers, s)
	}
	optional := ep.keyFiles
	if len(c.KeyFiles) == 0 && len(ep.keyFiles) == 0 && c.Password == "" && !c.UseAgent {
		optional = []string{homePath(".ssh", "id_ed25519"), homePath(".ssh", "id_ecdsa"), homePath(".ssh", "id_rsa")}
	}
	for _, f := range optional {
		s, err := c.loadKey(f)
		if errors.Is(err, fs.ErrNotExist) {
			continue // like ssh(1), a missing IdentityFile is not fatal
		}
		if err != nil {
			return nil, nil, err
		}
		signers = append(signers, s)
	}

	release := func() {}
	if c.UseAgent {
		sock := os.Getenv("SSH_AUTH_SOCK")
		if sock == "" {
			return nil, nil, errors.New("UseAgent is set but SSH_AUTH_SOCK is empty")
		}
		var d net.Dialer
		conn, err := d.DialContext(ctx, "unix", sock)
		if err != nil {
			return nil, nil, fmt.Errorf("connect to ssh agent: %w", err)
		}
		release = func() { conn.Close() }
		agentSigners, err := agent.NewClient(conn).Signers()
		if err != nil {
			release()
			return nil, nil, fmt.Errorf("list ssh agent keys: %w", err)
		}
		signers = append(signers, agentSigners...)
	}

	var methods []ssh.AuthMethod
	if len(signers) > 0 {
		methods = append(methods, ssh.PublicKeys(signers...))
	}
	if c.Password != "" {
		methods = append(methods, ssh.Password(c.Password))
	}
	return methods, release, nil
}

func (c Config) loadKey(path string) (ssh.Signer, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read key file: %w", err)
	}
	s, err := ssh.ParsePrivateKey(data)
	var missing *ssh.PassphraseMissingError
	if errors.As(err, &missing) {
		if c.Passphrase == "" {
			return nil, fmt.Errorf("key file %s is encrypted and no passphrase is set", path)
		}
		s, err = ssh.ParsePrivateKeyWithPassphrase(data, []byte(c.Passphrase))
		if err != nil {
			return nil, fmt.Errorf("decrypt key file %s: %w", path, err)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("parse key file %s: %w", path, err)
	}
	return s, nil
}
