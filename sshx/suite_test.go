package sshx_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/crypto/ssh"

	"github.com/pampa-go/pampa/internal/poll"
	"github.com/pampa-go/pampa/internal/sshtest"
	"github.com/pampa-go/pampa/sshx"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// servers are the implementations every behaviour case runs against.
var servers = []struct {
	name  string
	start func(testing.TB) *sshtest.Server
}{
	{"inproc", sshtest.NewServer},
	{"sshd", sshtest.StartSSHD},
}

// config trusts srv and authenticates with its client key, ignoring the
// user's own ssh files.
func config(t testing.TB, srv *sshtest.Server) sshx.Config {
	return sshx.Config{
		Host:              srv.Host,
		Port:              srv.Port,
		User:              srv.User,
		KeyFiles:          []string{srv.ClientKeyFile},
		KnownHostsFile:    srv.KnownHosts(t),
		SSHConfigFile:     "none",
		HandshakeTimeout:  10 * time.Second,
		KeepAliveInterval: -1,
	}
}

func dial(t testing.TB, cfg sshx.Config) *sshx.Client {
	t.Helper()
	c, err := sshx.Dial(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// waitFile polls for path, which a remote command creates once it runs.
func waitFile(t *testing.T, path string) {
	t.Helper()
	poll.Until(t, path+" to appear", 10*time.Second, func() string {
		if _, err := os.Stat(path); err != nil {
			return err.Error()
		}
		return ""
	})
}

func randomBytes(t testing.TB, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

var suite = []struct {
	name string
	test func(t *testing.T, srv *sshtest.Server)
}{
	{"RunCapturesStdout", func(t *testing.T, srv *sshtest.Server) {
		out, err := dial(t, config(t, srv)).Run(t.Context(), []string{"echo", "hello", "world"}, nil)
		if err != nil || string(out) != "hello world\n" {
			t.Fatalf("Run = %q, %v; want \"hello world\\n\"", out, err)
		}
	}},
	{"ExitCodeAndStderr", func(t *testing.T, srv *sshtest.Server) {
		_, err := dial(t, config(t, srv)).Run(t.Context(), []string{"sh", "-c", "echo oops >&2; exit 3"}, nil)
		var exit *sshx.ExitError
		if !errors.As(err, &exit) || exit.Code != 3 || strings.TrimSpace(exit.Stderr) != "oops" {
			t.Fatalf("err = %v, want ExitError code 3 with stderr oops", err)
		}
		if want := "run sh on node " + srv.Addr + ": exit status 3: oops"; err.Error() != want {
			t.Errorf("message %q, want %q", err, want)
		}
	}},
	{"Stdin", func(t *testing.T, srv *sshtest.Server) {
		in := append([]byte("line\n"), randomBytes(t, 100<<10)...)
		out, err := dial(t, config(t, srv)).Run(t.Context(), []string{"cat"}, bytes.NewReader(in))
		if err != nil || !bytes.Equal(out, in) {
			t.Fatalf("cat returned %d bytes, %v; want the %d sent", len(out), err, len(in))
		}
	}},
	{"Stream", func(t *testing.T, srv *sshtest.Server) {
		var stdout, stderr bytes.Buffer
		err := dial(t, config(t, srv)).Stream(t.Context(), []string{"sh", "-c", "echo out; echo err >&2"}, nil, &stdout, &stderr)
		// A login shell's rc files on the node may print to stderr first.
		if err != nil || stdout.String() != "out\n" || !strings.HasSuffix(stderr.String(), "err\n") || strings.Contains(stderr.String(), "sshx-pid") {
			t.Fatalf("Stream: %v, stdout %q, stderr %q", err, stdout.String(), stderr.String())
		}
	}},
	{"NastyArgumentsArriveVerbatim", func(t *testing.T, srv *sshtest.Server) {
		dir := t.TempDir()
		args := []string{"a b", "it's", `"dq"`, "$(touch " + dir + "/pwned)", "`touch " + dir + "/pwned2`",
			"line1\nline2", "*", "", "$HOME", "; touch " + dir + "/pwned3", `\`, "-n"}
		out, err := dial(t, config(t, srv)).Run(t.Context(), append([]string{"printf", `%s\0`}, args...), nil)
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.Split(strings.TrimSuffix(string(out), "\x00"), "\x00"); !slices.Equal(got, args) {
			t.Errorf("node saw %q, want %q", got, args)
		}
		if entries, _ := os.ReadDir(dir); len(entries) > 0 {
			t.Errorf("arguments ran as shell code: %s exists", entries[0].Name())
		}
	}},
	{"UnknownHostRefused", func(t *testing.T, srv *sshtest.Server) {
		cfg := config(t, srv)
		cfg.KnownHostsFile = filepath.Join(t.TempDir(), "known_hosts")
		_, err := sshx.Dial(t.Context(), cfg)
		var unknown *sshx.UnknownHostError
		if !errors.As(err, &unknown) || unknown.Fingerprint != ssh.FingerprintSHA256(srv.HostKey) {
			t.Fatalf("err = %v, want UnknownHostError with %s", err, ssh.FingerprintSHA256(srv.HostKey))
		}
		if !strings.Contains(err.Error(), "--accept-new-host-keys") || !strings.HasPrefix(err.Error(), "dial node "+srv.Addr+": ") {
			t.Errorf("message %q does not say how to fix it", err)
		}
	}},
	{"AcceptNewHostKey", func(t *testing.T, srv *sshtest.Server) {
		cfg := config(t, srv)
		cfg.KnownHostsFile = filepath.Join(t.TempDir(), "new", "known_hosts")
		cfg.AcceptNewHostKeys = true
		dial(t, cfg).Close()
		recorded, _ := os.ReadFile(cfg.KnownHostsFile)
		if want := fmt.Sprintf("[%s]:%d ", srv.Host, srv.Port); !strings.HasPrefix(string(recorded), want) {
			t.Errorf("known_hosts = %q, want a line for %s", recorded, want)
		}
		cfg.AcceptNewHostKeys = false
		dial(t, cfg)
	}},
	{"ChangedHostKeyRefused", func(t *testing.T, srv *sshtest.Server) {
		cfg := config(t, srv)
		cfg.KnownHostsFile = filepath.Join(t.TempDir(), "known_hosts")
		other := sshtest.NewKey(t, filepath.Join(t.TempDir(), "other"), "")
		sshtest.WriteKnownHosts(t, cfg.KnownHostsFile, srv.Addr, other)
		before, _ := os.ReadFile(cfg.KnownHostsFile)
		cfg.AcceptNewHostKeys = true // must not matter
		_, err := sshx.Dial(t.Context(), cfg)
		var changed *sshx.HostKeyError
		if !errors.As(err, &changed) || changed.Want != ssh.FingerprintSHA256(other) || changed.Got != ssh.FingerprintSHA256(srv.HostKey) {
			t.Fatalf("err = %v, want HostKeyError", err)
		}
		if !strings.Contains(err.Error(), "ssh-keygen") || !strings.Contains(err.Error(), "changed") {
			t.Errorf("message %q does not explain the fix", err)
		}
		if after, _ := os.ReadFile(cfg.KnownHostsFile); !bytes.Equal(before, after) {
			t.Errorf("known_hosts was modified")
		}
	}},
	{"WrongKey", func(t *testing.T, srv *sshtest.Server) {
		cfg := config(t, srv)
		cfg.KeyFiles = []string{filepath.Join(t.TempDir(), "stranger")}
		sshtest.NewKey(t, cfg.KeyFiles[0], "")
		_, err := sshx.Dial(t.Context(), cfg)
		if !errors.Is(err, sshx.ErrAuth) || !strings.Contains(err.Error(), srv.User) {
			t.Fatalf("err = %v, want ErrAuth naming the user", err)
		}
	}},
	{"WrongPassword", func(t *testing.T, srv *sshtest.Server) {
		cfg := config(t, srv)
		cfg.KeyFiles = nil
		cfg.Password = "not-the-password-xyzzy"
		_, err := sshx.Dial(t.Context(), cfg)
		if !errors.Is(err, sshx.ErrAuth) || strings.Contains(err.Error(), cfg.Password) {
			t.Fatalf("err = %v, want ErrAuth without the password", err)
		}
	}},
	{"Password", func(t *testing.T, srv *sshtest.Server) {
		if srv.Password == "" {
			t.Skip("password login is off on this server")
		}
		cfg := config(t, srv)
		cfg.KeyFiles, cfg.Password = nil, srv.Password
		dial(t, cfg)
	}},
	{"EncryptedKey", func(t *testing.T, srv *sshtest.Server) {
		cfg := config(t, srv)
		cfg.KeyFiles = []string{srv.EncryptedKeyFile}
		cfg.Passphrase = "wrong-passphrase-plugh"
		if _, err := sshx.Dial(t.Context(), cfg); err == nil || strings.Contains(err.Error(), cfg.Passphrase) {
			t.Fatalf("wrong passphrase: err = %v, want an error without the passphrase", err)
		}
		cfg.Passphrase = ""
		if _, err := sshx.Dial(t.Context(), cfg); err == nil || !strings.Contains(err.Error(), "encrypted") {
			t.Fatalf("no passphrase: err = %v, want one saying the key is encrypted", err)
		}
		cfg.Passphrase = srv.KeyPassphrase
		dial(t, cfg)
	}},
	{"CancelKillsCommand", func(t *testing.T, srv *sshtest.Server) {
		c := dial(t, config(t, srv))
		started := filepath.Join(t.TempDir(), "started")
		ctx, cancel := context.WithCancel(t.Context())
		result := make(chan error, 1)
		go func() {
			_, err := c.Run(ctx, []string{"sh", "-c", `touch "$1"; exec sleep 30`, "sh", started}, nil)
			result <- err
		}()
		waitFile(t, started)
		cancel()
		select {
		case err := <-result:
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("err = %v, want context.Canceled", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Run did not return within 10s of cancel")
		}
		// The connection is still usable.
		if _, err := c.Run(t.Context(), []string{"true"}, nil); err != nil {
			t.Fatal(err)
		}
	}},
	{"KeepAliveDetectsFrozenLink", func(t *testing.T, srv *sshtest.Server) {
		proxy := sshtest.NewProxy(t, srv.Addr)
		cfg := config(t, srv)
		cfg.Host, cfg.Port = proxy.Addr, 0
		cfg.KnownHostsFile = filepath.Join(t.TempDir(), "known_hosts")
		sshtest.WriteKnownHosts(t, cfg.KnownHostsFile, proxy.Addr, srv.HostKey)
		cfg.KeepAliveInterval, cfg.KeepAliveCountMax = 100*time.Millisecond, 3
		c := dial(t, cfg)
		started := filepath.Join(t.TempDir(), "started")
		result := make(chan error, 1)
		go func() {
			_, err := c.Run(t.Context(), []string{"sh", "-c", `touch "$1"; exec sleep 10`, "sh", started}, nil)
			result <- err
		}()
		waitFile(t, started)
		proxy.Freeze()
		select {
		case err := <-result:
			if !errors.Is(err, sshx.ErrUnresponsive) {
				t.Fatalf("err = %v, want ErrUnresponsive", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Run still blocked 10s after the link froze")
		}
	}},
	{"CancelWhileOpeningOnFrozenLink", func(t *testing.T, srv *sshtest.Server) {
		proxy := sshtest.NewProxy(t, srv.Addr)
		cfg := config(t, srv)
		cfg.Host, cfg.Port = proxy.Addr, 0
		cfg.KnownHostsFile = filepath.Join(t.TempDir(), "known_hosts")
		sshtest.WriteKnownHosts(t, cfg.KnownHostsFile, proxy.Addr, srv.HostKey)
		cfg.KeepAliveInterval = -1 // nothing else would ever end the open
		c := dial(t, cfg)
		proxy.Freeze()
		ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
		defer cancel()
		result := make(chan error, 1)
		go func() {
			_, err := c.Run(ctx, []string{"true"}, nil)
			result <- err
		}()
		select {
		case err := <-result:
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("err = %v, want context.DeadlineExceeded", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Run still blocked 10s after its context ended")
		}
	}},
	{"SSHConfigAlias", func(t *testing.T, srv *sshtest.Server) {
		dir := t.TempDir()
		sshConfig := filepath.Join(dir, "config")
		writeFile(t, sshConfig, fmt.Sprintf("Host mynode\n  HostName %s\n  Port %d\n  User %s\n  IdentityFile %s\n",
			srv.Host, srv.Port, srv.User, srv.ClientKeyFile))
		c := dial(t, sshx.Config{Host: "mynode", SSHConfigFile: sshConfig, KnownHostsFile: srv.KnownHosts(t), KeepAliveInterval: -1})
		if c.Addr() != srv.Addr {
			t.Errorf("Addr() = %s, want %s", c.Addr(), srv.Addr)
		}
		if out, err := c.Run(t.Context(), []string{"echo", "ok"}, nil); err != nil || string(out) != "ok\n" {
			t.Fatalf("Run = %q, %v", out, err)
		}
	}},
	{"ProxyJump", func(t *testing.T, srv *sshtest.Server) {
		dir := t.TempDir()
		sshConfig := filepath.Join(dir, "config")
		// The server jumps to itself: enough to prove the hop is used,
		// since the target's address is only reachable as "localhost" here.
		writeFile(t, sshConfig, fmt.Sprintf(`Host jump
  HostName %[1]s
  Port %[2]d
  User %[3]s
  IdentityFile %[4]s
Host target
  HostName localhost
  Port %[2]d
  User %[3]s
  IdentityFile %[4]s
  ProxyJump jump
`, srv.Host, srv.Port, srv.User, srv.ClientKeyFile))
		knownHosts := srv.KnownHosts(t)
		sshtest.WriteKnownHosts(t, knownHosts, fmt.Sprintf("localhost:%d", srv.Port), srv.HostKey)
		c := dial(t, sshx.Config{Host: "target", SSHConfigFile: sshConfig, KnownHostsFile: knownHosts, KeepAliveInterval: -1})
		if out, err := c.Run(t.Context(), []string{"echo", "jumped"}, nil); err != nil || string(out) != "jumped\n" {
			t.Fatalf("Run = %q, %v", out, err)
		}

		// Trusting the target learns its key through the jump host, whose
		// own key must be known already.
		fresh := srv.KnownHosts(t) // the jump host's entry only
		fp, added, err := sshx.TrustHostKey(t.Context(), sshx.Config{Host: "target", SSHConfigFile: sshConfig, KnownHostsFile: fresh})
		if err != nil || !added || fp != ssh.FingerprintSHA256(srv.HostKey) {
			t.Fatalf("TrustHostKey through ProxyJump = %q, %v, %v", fp, added, err)
		}
		dial(t, sshx.Config{Host: "target", SSHConfigFile: sshConfig, KnownHostsFile: fresh, KeepAliveInterval: -1})
		unknownJump := filepath.Join(dir, "empty_known_hosts")
		writeFile(t, unknownJump, "")
		var unknown *sshx.UnknownHostError
		if _, _, err := sshx.TrustHostKey(t.Context(), sshx.Config{Host: "target", SSHConfigFile: sshConfig, KnownHostsFile: unknownJump}); !errors.As(err, &unknown) {
			t.Fatalf("TrustHostKey through an unknown jump host = %v, want *UnknownHostError", err)
		}
	}},
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestSuite runs every behaviour case against every server.
func TestSuite(t *testing.T) {
	t.Parallel()
	for _, s := range servers {
		t.Run(s.name, func(t *testing.T) {
			t.Parallel()
			srv := s.start(t)
			for _, tc := range suite {
				t.Run(tc.name, func(t *testing.T) {
					t.Parallel()
					tc.test(t, srv)
				})
			}
		})
	}
}

// TestHandshakeTimeout dials a listener that never speaks.
func TestHandshakeTimeout(t *testing.T) {
	t.Parallel()
	start := time.Now()
	_, err := sshx.Dial(t.Context(), sshx.Config{
		Host:             sshtest.Blackhole(t),
		User:             "nobody",
		Password:         "x",
		SSHConfigFile:    "none",
		HandshakeTimeout: 200 * time.Millisecond,
	})
	if err == nil || !strings.Contains(err.Error(), "timed out") {
		t.Fatalf("err = %v, want a handshake timeout", err)
	}
	if elapsed := time.Since(start); elapsed > 5*time.Second {
		t.Errorf("Dial took %s with a 200ms handshake timeout", elapsed)
	}
}

func TestDialCancelDuringHandshake(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(t.Context())
	result := make(chan error, 1)
	go func() {
		_, err := sshx.Dial(ctx, sshx.Config{Host: sshtest.Blackhole(t), User: "nobody", Password: "x", SSHConfigFile: "none"})
		result <- err
	}()
	cancel()
	if err := <-result; !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
}
