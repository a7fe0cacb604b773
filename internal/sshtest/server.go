// Package sshtest starts SSH servers for tests: an in-process server built on
// x/crypto/ssh (NewServer) and a real OpenSSH sshd (StartSSHD), so one
// behaviour suite can run against both. Both run commands as the current
// user on the local machine, so tests can check effects on the local file
// system. It also provides a freezable TCP proxy and a listener that never
// speaks, to test dead links. Everything is stopped by t.Cleanup.
package sshtest

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/subtle"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// Server describes a running test SSH server.
type Server struct {
	Addr    string // 127.0.0.1:port
	Host    string // 127.0.0.1
	Port    int
	HostKey ssh.PublicKey
	User    string // the current user

	ClientKeyFile string // unencrypted private key the server accepts
	// EncryptedKeyFile is another accepted key, encrypted with KeyPassphrase.
	EncryptedKeyFile string
	KeyPassphrase    string
	// Password is accepted for User; empty when password login is off (sshd).
	Password string
	// AuthorizedKeysFile also lists accepted keys, read at each login, so a
	// test can install a key (as `pampactl nodes bootstrap` does). It may
	// not exist yet.
	AuthorizedKeysFile string

	Dir string // private directory holding the server's files
}

// KnownHosts writes a known_hosts file trusting s and returns its path.
func (s *Server) KnownHosts(tb testing.TB) string {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), "known_hosts")
	WriteKnownHosts(tb, path, s.Addr, s.HostKey)
	return path
}

// WriteKnownHosts appends a known_hosts line for addr (host:port) and key.
func WriteKnownHosts(tb testing.TB, path, addr string, key ssh.PublicKey) {
	tb.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(knownhosts.Line([]string{addr}, key) + "\n"); err != nil {
		tb.Fatal(err)
	}
}

// NewKey generates an ed25519 key, writes its private half to path in
// OpenSSH format (encrypted when passphrase is not empty) and returns the
// public half.
func NewKey(tb testing.TB, path, passphrase string) ssh.PublicKey {
	tb.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	writeKey(tb, path, priv, passphrase)
	sshPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		tb.Fatal(err)
	}
	return sshPub
}

func writeKey(tb testing.TB, path string, priv ed25519.PrivateKey, passphrase string) {
	tb.Helper()
	var block *pem.Block
	var err error
	if passphrase == "" {
		block, err = ssh.MarshalPrivateKey(priv, "sshtest")
	} else {
		block, err = ssh.MarshalPrivateKeyWithPassphrase(priv, "sshtest", []byte(passphrase))
	}
	if err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		tb.Fatal(err)
	}
}

// newIdentity fills in the keys and user common to both servers and returns
// the host key's private half and the client public keys to accept.
func newIdentity(tb testing.TB) (*Server, ed25519.PrivateKey, []ssh.PublicKey) {
	tb.Helper()
	u, err := user.Current()
	if err != nil {
		tb.Fatal(err)
	}
	s := &Server{Dir: tb.TempDir(), User: u.Username, KeyPassphrase: "correct horse"}
	hostPub, hostPriv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	if s.HostKey, err = ssh.NewPublicKey(hostPub); err != nil {
		tb.Fatal(err)
	}
	s.ClientKeyFile = filepath.Join(s.Dir, "client_ed25519")
	clientPub := NewKey(tb, s.ClientKeyFile, "")

	// The encrypted key uses the legacy PEM encryption: OpenSSH's bcrypt
	// KDF costs seconds per use under the race detector.
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	der, err := x509.MarshalECPrivateKey(ecKey)
	if err != nil {
		tb.Fatal(err)
	}
	//nolint:staticcheck // deprecated for its weak KDF, which is the point here
	block, err := x509.EncryptPEMBlock(rand.Reader, "EC PRIVATE KEY", der, []byte(s.KeyPassphrase), x509.PEMCipherAES256)
	if err != nil {
		tb.Fatal(err)
	}
	s.EncryptedKeyFile = filepath.Join(s.Dir, "client_ecdsa_encrypted")
	if err := os.WriteFile(s.EncryptedKeyFile, pem.EncodeToMemory(block), 0o600); err != nil {
		tb.Fatal(err)
	}
	ecPub, err := ssh.NewPublicKey(&ecKey.PublicKey)
	if err != nil {
		tb.Fatal(err)
	}
	return s, hostPriv, []ssh.PublicKey{clientPub, ecPub}
}

func (s *Server) setAddr(addr string) {
	host, port, _ := net.SplitHostPort(addr)
	s.Addr, s.Host = addr, host
	s.Port, _ = strconv.Atoi(port)
}

// inproc is the in-process server's state.
type inproc struct {
	config *ssh.ServerConfig
	ln     net.Listener
	wg     sync.WaitGroup

	mu     sync.Mutex
	conns  map[net.Conn]bool
	closed bool
}

// NewServer starts an in-process SSH server on 127.0.0.1. It accepts
// ClientKeyFile and Password, runs exec requests with /bin/sh -c, forwards
// direct-tcpip (for ProxyJump) and answers keepalives.
func NewServer(tb testing.TB) *Server {
	tb.Helper()
	s, hostPriv, clientKeys := newIdentity(tb)
	s.Password = "s3cret-" + rand.Text()
	s.AuthorizedKeysFile = filepath.Join(s.Dir, "authorized_keys")
	hostSigner, err := ssh.NewSignerFromKey(hostPriv)
	if err != nil {
		tb.Fatal(err)
	}
	config := &ssh.ServerConfig{
		PasswordCallback: func(meta ssh.ConnMetadata, pw []byte) (*ssh.Permissions, error) {
			if meta.User() == s.User && subtle.ConstantTimeCompare(pw, []byte(s.Password)) == 1 {
				return nil, nil
			}
			return nil, errors.New("wrong password")
		},
		PublicKeyCallback: func(meta ssh.ConnMetadata, key ssh.PublicKey) (*ssh.Permissions, error) {
			for _, k := range append(clientKeys, readAuthorizedKeys(s.AuthorizedKeysFile)...) {
				if meta.User() == s.User && bytes.Equal(key.Marshal(), k.Marshal()) {
					return nil, nil
				}
			}
			return nil, errors.New("unknown key")
		},
	}
	config.AddHostKey(hostSigner)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	s.setAddr(ln.Addr().String())
	srv := &inproc{config: config, ln: ln, conns: map[net.Conn]bool{}}
	srv.wg.Add(1)
	go srv.serve()
	tb.Cleanup(srv.close)
	return s
}

// readAuthorizedKeys parses an authorized_keys file; a missing file or a
// bad line yields fewer keys.
func readAuthorizedKeys(path string) []ssh.PublicKey {
	data, err := os.ReadFile(path)
	var keys []ssh.PublicKey
	for err == nil && len(data) > 0 {
		var k ssh.PublicKey
		k, _, _, data, err = ssh.ParseAuthorizedKey(data)
		if err == nil {
			keys = append(keys, k)
		}
	}
	return keys
}

func (srv *inproc) serve() {
	defer srv.wg.Done()
	for {
		nc, err := srv.ln.Accept()
		if err != nil {
			return
		}
		srv.mu.Lock()
		if srv.closed {
			srv.mu.Unlock()
			nc.Close()
			return
		}
		srv.conns[nc] = true
		srv.wg.Add(1)
		srv.mu.Unlock()
		go srv.serveConn(nc)
	}
}

func (srv *inproc) close() {
	srv.mu.Lock()
	srv.closed = true
	srv.ln.Close()
	for nc := range srv.conns {
		nc.Close()
	}
	srv.mu.Unlock()
	srv.wg.Wait()
}

func (srv *inproc) serveConn(nc net.Conn) {
	defer srv.wg.Done()
	defer func() {
		srv.mu.Lock()
		delete(srv.conns, nc)
		srv.mu.Unlock()
		nc.Close()
	}()
	// A client that never finishes the handshake must not pin the server.
	_ = nc.SetDeadline(time.Now().Add(30 * time.Second))
	conn, chans, reqs, err := ssh.NewServerConn(nc, srv.config)
	if err != nil {
		return
	}
	_ = nc.SetDeadline(time.Time{})
	defer conn.Close()
	srv.wg.Add(1)
	go func() {
		defer srv.wg.Done()
		for req := range reqs {
			// OpenSSH answers keepalives with failure; a reply is all that counts.
			_ = req.Reply(req.Type == "keepalive@openssh.com", nil)
		}
	}()
	for nch := range chans {
		switch nch.ChannelType() {
		case "session":
			ch, creqs, err := nch.Accept()
			if err != nil {
				continue
			}
			srv.wg.Add(1)
			go srv.session(ch, creqs)
		case "direct-tcpip":
			srv.wg.Add(1)
			go srv.directTCPIP(nch)
		default:
			_ = nch.Reject(ssh.UnknownChannelType, "not supported")
		}
	}
}

// session serves one session channel: exec and signals.
func (srv *inproc) session(ch ssh.Channel, reqs <-chan *ssh.Request) {
	defer srv.wg.Done()
	defer ch.Close()
	var cmd *exec.Cmd
	exited := make(chan struct{})
	for req := range reqs {
		switch req.Type {
		case "exec":
			var payload struct{ Value string }
			if cmd != nil || ssh.Unmarshal(req.Payload, &payload) != nil {
				_ = req.Reply(false, nil)
				continue
			}
			cmd = exec.Command("/bin/sh", "-c", payload.Value)
			cmd.Stdin, cmd.Stdout, cmd.Stderr = ch, ch, ch.Stderr()
			// Own process group, so a signal reaches the command's children.
			cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
			// Background children may keep stdout open; don't wait for them.
			cmd.WaitDelay = time.Second
			if err := cmd.Start(); err != nil {
				_ = req.Reply(false, nil)
				continue
			}
			_ = req.Reply(true, nil)
			srv.wg.Add(1)
			go func() {
				defer srv.wg.Done()
				defer close(exited)
				_ = cmd.Wait()
				_ = ch.CloseWrite()
				_, _ = ch.SendRequest("exit-status", false, ssh.Marshal(struct{ Status uint32 }{exitStatus(cmd.ProcessState)}))
				ch.Close()
			}()
		case "signal":
			var payload struct{ Signal string }
			if cmd != nil && ssh.Unmarshal(req.Payload, &payload) == nil {
				if sig, ok := signals[payload.Signal]; ok {
					_ = syscall.Kill(-cmd.Process.Pid, sig)
				}
			}
			_ = req.Reply(true, nil)
		case "env":
			_ = req.Reply(true, nil)
		default:
			_ = req.Reply(false, nil)
		}
	}
	// The channel is gone (closed by the client, or the connection died):
	// don't leave a running command behind.
	if cmd != nil {
		select {
		case <-exited:
		default:
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		}
	}
}

var signals = map[string]syscall.Signal{
	"KILL": syscall.SIGKILL, "TERM": syscall.SIGTERM, "INT": syscall.SIGINT, "HUP": syscall.SIGHUP,
}

func exitStatus(ps *os.ProcessState) uint32 {
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + uint32(ws.Signal())
	}
	return uint32(ps.ExitCode())
}

// directTCPIP forwards a channel to a TCP address, as ProxyJump needs.
func (srv *inproc) directTCPIP(nch ssh.NewChannel) {
	defer srv.wg.Done()
	var dest struct {
		Host     string
		Port     uint32
		OrigHost string
		OrigPort uint32
	}
	if err := ssh.Unmarshal(nch.ExtraData(), &dest); err != nil {
		_ = nch.Reject(ssh.ConnectionFailed, "bad request")
		return
	}
	tc, err := net.DialTimeout("tcp", net.JoinHostPort(dest.Host, strconv.Itoa(int(dest.Port))), 10*time.Second)
	if err != nil {
		_ = nch.Reject(ssh.ConnectionFailed, err.Error())
		return
	}
	ch, reqs, err := nch.Accept()
	if err != nil {
		tc.Close()
		return
	}
	srv.wg.Add(1)
	go func() {
		defer srv.wg.Done()
		ssh.DiscardRequests(reqs)
	}()
	pipe(ch, tc)
}

// pipe copies both ways until either side ends, then closes both.
func pipe(a, b io.ReadWriteCloser) {
	done := make(chan struct{}, 2)
	cp := func(dst io.Writer, src io.Reader) {
		_, _ = io.Copy(dst, src)
		done <- struct{}{}
	}
	go cp(a, b)
	go cp(b, a)
	<-done
	a.Close()
	b.Close()
	<-done
}

// String names the server in test output.
func (s *Server) String() string { return fmt.Sprintf("ssh server %s@%s", s.User, s.Addr) }
