package sshx

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// UnknownHostError is returned when the node's host key is not in
// known_hosts and new keys are not accepted.
type UnknownHostError struct {
	Host        string // host:port as dialled
	Fingerprint string // SHA256:... of the key the node offered
}

func (e *UnknownHostError) Error() string {
	return fmt.Sprintf("host key of %s is unknown (%s); if that fingerprint is right, trust it with "+
		"\"pampactl nodes trust NODE\" or connect once with --accept-new-host-keys", e.Host, e.Fingerprint)
}

// HostKeyError is returned when the node offers a key different from the
// one recorded in known_hosts. It may mean an attack; it is never accepted
// automatically.
type HostKeyError struct {
	Host string // host:port as dialled
	Want string // SHA256:... recorded in known_hosts
	Got  string // SHA256:... the node offered
	File string // the known_hosts file holding Want
}

func (e *HostKeyError) Error() string {
	fix := "ssh-keygen -R " + knownhosts.Normalize(e.Host)
	if e.File != "" && e.File != homePath(".ssh", "known_hosts") {
		fix = "ssh-keygen -f " + e.File + " -R " + knownhosts.Normalize(e.Host)
	}
	return fmt.Sprintf("host key of %s changed: known_hosts has %s, node offered %s; "+
		"this can mean someone is intercepting the connection; if the change is expected, run: %s",
		e.Host, e.Want, e.Got, fix)
}

// hostKeyCheck verifies host keys against one known_hosts file.
type hostKeyCheck struct {
	file   string
	accept bool
	db     ssh.HostKeyCallback // nil when the file does not exist yet
}

func newHostKeyCheck(file string, accept bool) (*hostKeyCheck, error) {
	if file == "" {
		file = homePath(".ssh", "known_hosts")
	}
	h := &hostKeyCheck{file: file, accept: accept}
	db, err := knownhosts.New(file)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("read known hosts: %w", err)
	default:
		h.db = db
	}
	return h, nil
}

func (h *hostKeyCheck) lookup(addr string, remote net.Addr, key ssh.PublicKey) error {
	if h.db == nil {
		return &knownhosts.KeyError{}
	}
	return h.db(addr, remote, key)
}

// algorithms lists the host key algorithms of the keys known for addr.
// Without this, x/crypto would prefer ECDSA over the ed25519 key that
// ssh(1) recorded, and a healthy host would look like a changed key.
func (h *hostKeyCheck) algorithms(addr string) []string {
	var ke *knownhosts.KeyError
	if !errors.As(h.lookup(addr, &net.TCPAddr{IP: net.IPv4zero}, placeholderKey{}), &ke) {
		return nil
	}
	var algos []string
	for _, k := range ke.Want {
		switch t := k.Key.Type(); t {
		case ssh.KeyAlgoRSA:
			algos = append(algos, ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256, ssh.KeyAlgoRSA)
		default:
			algos = append(algos, t)
		}
	}
	return algos
}

func (h *hostKeyCheck) callback(hostname string, remote net.Addr, key ssh.PublicKey) error {
	err := h.lookup(hostname, remote, key)
	var ke *knownhosts.KeyError
	switch {
	case err == nil:
		return nil
	case !errors.As(err, &ke):
		return fmt.Errorf("check host key of %s against %s: %w", hostname, h.file, err)
	case len(ke.Want) > 0:
		want := ke.Want[0].Key
		for _, k := range ke.Want {
			if k.Key.Type() == key.Type() {
				want = k.Key
			}
		}
		return &HostKeyError{Host: hostname, Want: ssh.FingerprintSHA256(want), Got: ssh.FingerprintSHA256(key), File: h.file}
	case !h.accept:
		return &UnknownHostError{Host: hostname, Fingerprint: ssh.FingerprintSHA256(key)}
	default:
		return h.record(hostname, key)
	}
}

// record appends key for hostname; knownhosts.Line writes the [host]:port
// form for ports other than 22, as ssh(1) does.
func (h *hostKeyCheck) record(hostname string, key ssh.PublicKey) error {
	if err := os.MkdirAll(filepath.Dir(h.file), 0o700); err != nil {
		return fmt.Errorf("record host key: %w", err)
	}
	f, err := os.OpenFile(h.file, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("record host key: %w", err)
	}
	// One write per line keeps concurrent dials from interleaving lines.
	_, err = f.WriteString(knownhosts.Line([]string{hostname}, key) + "\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("record host key in %s: %w", h.file, err)
	}
	return nil
}

// placeholderKey matches no known key, so a lookup with it lists them all.
type placeholderKey struct{}

func (placeholderKey) Type() string                        { return "placeholder" }
func (placeholderKey) Marshal() []byte                     { return []byte("placeholder") }
func (placeholderKey) Verify([]byte, *ssh.Signature) error { return errors.New("placeholder key") }

// errKeyScanned ends a handshake once the host key is known.
var errKeyScanned = errors.New("host key scanned")

// TrustHostKey fetches the node's host key (no authentication needed) and
// records it in cfg.KnownHostsFile unless it is there already. It returns
// the key's SHA256 fingerprint and whether it was added. A key different
// from the recorded one is a *HostKeyError and is not recorded.
func TrustHostKey(ctx context.Context, cfg Config) (fingerprint string, added bool, err error) {
	target, jumps, err := cfg.resolve()
	if err != nil {
		return "", false, fmt.Errorf("trust host key of %s: %w", cfg.Host, err)
	}
	addr := target.addr()
	hosts, err := newHostKeyCheck(cfg.KnownHostsFile, false)
	if err != nil {
		return "", false, fmt.Errorf("trust host key of %s: %w", addr, err)
	}
	// Jump hosts are logged into as Dial does, their keys checked as
	// always: only the target's key is being learnt.
	var via *ssh.Client
	for _, hop := range jumps {
		jc, err := cfg.dialHop(ctx, via, hop, hosts)
		if err != nil {
			return "", false, fmt.Errorf("trust host key of %s: jump host %s: %w", addr, hop.addr(), err)
		}
		defer jc.Close()
		via = jc
	}
	var key ssh.PublicKey
	scan := Config{ConnectTimeout: cfg.ConnectTimeout, HandshakeTimeout: cfg.HandshakeTimeout}
	dctx, cancel := context.WithTimeout(ctx, cmp(scan.ConnectTimeout, defaultConnectTimeout))
	var conn net.Conn
	if via != nil {
		conn, err = via.DialContext(dctx, "tcp", addr)
	} else {
		var d net.Dialer
		conn, err = d.DialContext(dctx, "tcp", addr)
	}
	cancel()
	if err != nil {
		return "", false, fmt.Errorf("trust host key of %s: connect: %w", addr, err)
	}
	defer conn.Close()
	// A connection through a jump host takes no deadline: the context
	// bounds the handshake then.
	deadline := time.Now().Add(cmp(scan.HandshakeTimeout, defaultHandshakeTimeout))
	_ = conn.SetDeadline(deadline)
	hctx, hcancel := context.WithDeadline(ctx, deadline)
	defer hcancel()
	stop := context.AfterFunc(hctx, func() { conn.Close() })
	defer stop()
	_, _, _, err = ssh.NewClientConn(conn, addr, &ssh.ClientConfig{
		User:              "pampa-keyscan",
		HostKeyAlgorithms: hosts.algorithms(addr),
		HostKeyCallback: func(_ string, _ net.Addr, k ssh.PublicKey) error {
			key = k
			return errKeyScanned
		},
	})
	if key == nil {
		if ctx.Err() != nil {
			return "", false, fmt.Errorf("trust host key of %s: %w", addr, context.Cause(ctx))
		}
		return "", false, fmt.Errorf("trust host key of %s: ssh handshake: %w", addr, err)
	}
	fingerprint = ssh.FingerprintSHA256(key)
	switch err := hosts.callback(addr, conn.RemoteAddr(), key); {
	case err == nil:
		return fingerprint, false, nil
	case errors.As(err, new(*UnknownHostError)):
		if err := hosts.record(addr, key); err != nil {
			return fingerprint, false, err
		}
		return fingerprint, true, nil
	default:
		return fingerprint, false, err
	}
}
