package sshtest

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// SSHDPath is where StartSSHD expects OpenSSH's server.
const SSHDPath = "/usr/sbin/sshd"

// StartSSHD starts a real OpenSSH sshd on 127.0.0.1 that accepts
// ClientKeyFile for the current user (password login is off). Without
// sshd the test is skipped, or fails when $CI is set.
func StartSSHD(tb testing.TB) *Server {
	tb.Helper()
	if _, err := os.Stat(SSHDPath); err != nil {
		if os.Getenv("CI") != "" {
			tb.Fatalf("sshd not found at %s; install openssh-server", SSHDPath)
		}
		tb.Skipf("sshd not found at %s; install openssh-server to run these tests", SSHDPath)
	}
	s, hostPriv, clientKeys := newIdentity(tb)
	hostKeyFile := filepath.Join(s.Dir, "host_ed25519")
	writeKey(tb, hostKeyFile, hostPriv, "")
	authorized := filepath.Join(s.Dir, "authorized_keys")
	s.AuthorizedKeysFile = authorized
	var keys []byte
	for _, k := range clientKeys {
		keys = append(keys, ssh.MarshalAuthorizedKey(k)...)
	}
	if err := os.WriteFile(authorized, keys, 0o600); err != nil {
		tb.Fatal(err)
	}
	if os.Geteuid() == 0 {
		// Privilege separation directory, normally made by the service unit;
		// sshd refuses to start as root without it.
		if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
			tb.Fatal(err)
		}
	}

	// The free port can be taken between probing and sshd binding it;
	// retry a few times rather than fail.
	var lastLog string
	for range 5 {
		port := freePort(tb)
		log, ok := startSSHD(tb, s, hostKeyFile, authorized, port)
		if ok {
			s.setAddr(net.JoinHostPort("127.0.0.1", fmt.Sprint(port)))
			return s
		}
		lastLog = log
		if !strings.Contains(log, "in use") {
			break
		}
	}
	tb.Fatalf("sshd did not start:\n%s", lastLog)
	return nil
}

// startSSHD runs sshd on port and waits until it accepts connections. It
// returns false and sshd's log when sshd exits first.
func startSSHD(tb testing.TB, s *Server, hostKeyFile, authorized string, port int) (string, bool) {
	tb.Helper()
	dir := tb.TempDir()
	config := SSHDConfig(fmt.Sprintf("127.0.0.1:%d", port), hostKeyFile, filepath.Join(dir, "sshd.pid"), authorized)
	configFile := filepath.Join(dir, "sshd_config")
	if err := os.WriteFile(configFile, []byte(config), 0o600); err != nil {
		tb.Fatal(err)
	}
	// A file, not a buffer: sshd's per-connection children inherit stderr,
	// and a pipe would make Wait wait for all of them.
	logFile := filepath.Join(dir, "sshd.log")
	logw, err := os.Create(logFile)
	if err != nil {
		tb.Fatal(err)
	}
	defer logw.Close()
	readLog := func() string {
		b, _ := os.ReadFile(logFile)
		return string(b)
	}

	cmd := exec.Command(SSHDPath, "-D", "-e", "-f", configFile)
	cmd.Stdout, cmd.Stderr = logw, logw
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	stop := func() {
		_ = cmd.Process.Kill()
		<-exited
	}

	addr := net.JoinHostPort("127.0.0.1", fmt.Sprint(port))
	deadline := time.Now().Add(15 * time.Second)
	for {
		select {
		case <-exited:
			return readLog(), false
		default:
		}
		if conn, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			conn.Close()
			break
		}
		if time.Now().After(deadline) {
			stop()
			tb.Fatalf("sshd did not accept connections on %s within 15s:\n%s", addr, readLog())
		}
		// Polling a local port; a short pause keeps it from spinning.
		time.Sleep(10 * time.Millisecond)
	}
	tb.Cleanup(func() {
		stop()
		if tb.Failed() {
			tb.Logf("sshd log:\n%s", readLog())
		}
	})
	return "", true
}

func freePort(tb testing.TB) int {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// SSHDConfig is the sshd_config of every test sshd: key login only, as
// the current user (root included), with forwarding and many sessions.
func SSHDConfig(listen, hostKeyFile, pidFile, authorizedKeysFile string) string {
	config := fmt.Sprintf(`ListenAddress %s
HostKey %s
PidFile %s
AuthorizedKeysFile %s
StrictModes no
PermitRootLogin yes
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
AllowTcpForwarding yes
MaxStartups 100
MaxSessions 100
# Pampa needs no SFTP; scp, the fleet bench's reference, does.
Subsystem sftp internal-sftp
`, listen, hostKeyFile, pidFile, authorizedKeysFile)
	// Newer sshd penalises sources that fail to authenticate, which the
	// wrong-key tests do on purpose. Older ones reject the option.
	probe, _ := exec.Command(SSHDPath, "-t", "-f", "/dev/null", "-o", "PerSourcePenalties=no").CombinedOutput()
	if !bytes.Contains(probe, []byte("Bad configuration option")) {
		config += "PerSourcePenalties no\n"
	}
	return config
}
