package orchestrator

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	"golang.org/x/crypto/ssh"

	"github.com/pampa-go/pampa/deploy"
	"github.com/pampa-go/pampa/sshx"
)

// BootstrapOptions configure Fleet.Bootstrap.
type BootstrapOptions struct {
	Names []string
	// AuthorizedKeys is the file on the node; "" for ~/.ssh/authorized_keys.
	AuthorizedKeys string
	// PampaKey is the key installed on nodes without ssh_private_key_file,
	// generated if missing; "" for ~/.pampa/id_ed25519.
	PampaKey string
	Getenv   func(string) string // for the passphrase of an encrypted key
}

// NodeBootstrap is the result of bootstrapping one node.
type NodeBootstrap struct {
	Node     string `json:"node"`
	KeyAdded bool   `json:"key_added"`
	KeyLogin bool   `json:"key_login"` // a login without password then worked
}

// Bootstrapped is what Fleet.Bootstrap did.
type Bootstrapped struct {
	Nodes []NodeBootstrap
	// PampaKey is the key given to nodes without ssh_private_key_file, if
	// any was; PampaKeyCreated says it was generated now.
	PampaKey        string
	PampaKeyCreated bool
}

// Bootstrap prepares SSH nodes for key login: it logs in (with the
// node's password if the key is not accepted yet), adds the public half of
// the key the node will log in with (its ssh_private_key_file, or the
// Pampa key) to the authorized keys, creates the work dir, checks the
// tools the workers need, then checks that a login without password
// works. Every key is read before any node is touched. Local nodes are
// skipped. Running it again changes nothing.
func (f *Fleet) Bootstrap(ctx context.Context, opts BootstrapOptions) (Bootstrapped, error) {
	var res Bootstrapped
	nodes, err := f.Nodes(opts.Names)
	if err != nil {
		return res, err
	}
	nodes = sshNodes(nodes)
	keyFile := map[string]string{} // node → private key file
	pubKey := map[string]string{}  // private key file → authorized_keys line
	for _, n := range nodes {
		key := n.PrivateKeyFile
		if key == "" {
			if res.PampaKey == "" {
				if res.PampaKey, res.PampaKeyCreated, err = ensurePampaKey(opts.PampaKey); err != nil {
					return res, err
				}
			}
			key = res.PampaKey
		}
		keyFile[n.Name] = key
		if _, ok := pubKey[key]; !ok {
			if pubKey[key], err = PublicKey(key, opts.Getenv); err != nil {
				return res, err
			}
		}
	}
	var mu sync.Mutex
	err = f.each(ctx, "bootstrap nodes", nodes, func(ctx context.Context, n Node, c Conn) error {
		added, err := deploy.Bootstrap(ctx, c, pubKey[keyFile[n.Name]], opts.AuthorizedKeys, n.WorkDir)
		if err != nil {
			return err
		}
		r := NodeBootstrap{Node: n.Name, KeyAdded: added}
		defer func() {
			mu.Lock()
			res.Nodes = append(res.Nodes, r)
			mu.Unlock()
		}()
		p, err := deploy.ProbeNode(ctx, c, n.WorkDir)
		if err != nil {
			return err
		}
		if len(p.MissingTools) > 0 {
			return fmt.Errorf("%s: key installed, but %s missing; install them (coreutils, util-linux) on the node",
				n.Addr(), strings.Join(p.MissingTools, ", "))
		}
		keyOnly := n
		keyOnly.Password, keyOnly.PasswordEnv, keyOnly.PrivateKeyFile = "", "", keyFile[n.Name]
		kc, err := f.dial(ctx, keyOnly)
		if err != nil {
			return fmt.Errorf("key installed, but login with it failed (is ssh_private_key_file the key whose public half was installed?): %w", err)
		}
		defer kc.Close()
		if _, err := kc.Run(ctx, []string{"true"}, nil); err != nil {
			return fmt.Errorf("key login: %w", err)
		}
		r.KeyLogin = true
		return nil
	})
	sort.Slice(res.Nodes, func(a, b int) bool { return res.Nodes[a].Node < res.Nodes[b].Node })
	return res, err
}

// ensurePampaKey returns path (default ~/.pampa/id_ed25519), generating
// an ed25519 key there if it is missing.
func ensurePampaKey(path string) (string, bool, error) {
	if path == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", false, fmt.Errorf("no ssh_private_key_file set and no home directory for ~/.pampa/id_ed25519: %w", err)
		}
		path = filepath.Join(home, ".pampa", "id_ed25519")
	}
	if _, err := os.Stat(path); err == nil {
		return path, false, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return "", false, err
	}
	fail := func(err error) (string, bool, error) {
		return "", false, fmt.Errorf("generate SSH key %s: %w", path, err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fail(err)
	}
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return fail(err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "pampa")
	if err != nil {
		return fail(err)
	}
	sshPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		return fail(err)
	}
	if err := os.WriteFile(path+".pub", ssh.MarshalAuthorizedKey(sshPub), 0o644); err != nil {
		return fail(err)
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		return fail(err)
	}
	return path, true, nil
}

// PublicKey returns the authorized_keys line of a private key file: its
// .pub file, else derived from the key itself (decrypted with the
// passphrase in EnvPassphrase if it must be).
func PublicKey(privPath string, getenv func(string) string) (string, error) {
	if b, err := os.ReadFile(privPath + ".pub"); err == nil {
		if _, _, _, _, err := ssh.ParseAuthorizedKey(b); err == nil {
			return strings.TrimSpace(string(b)), nil
		}
	}
	data, err := os.ReadFile(privPath)
	if err != nil {
		return "", fmt.Errorf("read ssh_private_key_file: %w", err)
	}
	signer, err := ssh.ParsePrivateKey(data)
	var missing *ssh.PassphraseMissingError
	if errors.As(err, &missing) {
		if missing.PublicKey != nil {
			return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(missing.PublicKey))), nil
		}
		pass := ""
		if getenv != nil {
			pass = getenv(EnvPassphrase)
		}
		if pass == "" {
			return "", fmt.Errorf("key file %s is encrypted: export %s or create %s.pub", privPath, EnvPassphrase, privPath)
		}
		signer, err = ssh.ParsePrivateKeyWithPassphrase(data, []byte(pass))
	}
	if err != nil {
		return "", fmt.Errorf("parse key file %s: %w", privPath, err)
	}
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(signer.PublicKey()))), nil
}

// HostTrust is what trusting one node's host key did.
type HostTrust struct {
	Node        string `json:"node"`
	Addr        string `json:"addr"`
	Local       bool   `json:"local,omitempty"` // a local node has no host key
	Fingerprint string `json:"fingerprint,omitempty"`
	Added       bool   `json:"added"` // false: it was trusted already
	KnownHosts  string `json:"known_hosts,omitempty"`
}

// TrustHostKeys records the host key of each named SSH node in its
// known_hosts file, in parallel. A key different from the one recorded is
// refused (*sshx.HostKeyError), never replaced.
func (f *Fleet) TrustHostKeys(ctx context.Context, names []string) ([]HostTrust, error) {
	nodes, err := f.Nodes(names)
	if err != nil {
		return nil, err
	}
	var mu sync.Mutex
	var out []HostTrust
	add := func(t HostTrust) {
		mu.Lock()
		out = append(out, t)
		mu.Unlock()
	}
	err = f.forEach(ctx, "trust host keys", nodes, func(ctx context.Context, n Node) error {
		if n.Local {
			add(HostTrust{Node: n.Name, Addr: n.Addr(), Local: true})
			return nil
		}
		cfg, err := f.sshConfig(n)
		if err != nil {
			return err
		}
		fp, added, err := sshx.TrustHostKey(ctx, cfg)
		if err != nil {
			return err
		}
		add(HostTrust{Node: n.Name, Addr: n.Addr(), Fingerprint: fp, Added: added, KnownHosts: n.KnownHostsFile})
		return nil
	})
	sort.Slice(out, func(a, b int) bool { return out[a].Node < out[b].Node })
	return out, err
}
