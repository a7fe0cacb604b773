package sshx_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pampa-go/pampa/internal/poll"
	"github.com/pampa-go/pampa/internal/sshtest"
	"github.com/pampa-go/pampa/sshx"
)

// TestReverseForward opens a listener on the node (real sshd: the
// in-process server does not forward) and checks a connection made there
// reaches a local echo server; cancelling stops everything.
func TestReverseForward(t *testing.T) {
	t.Parallel()
	srv := sshtest.StartSSHD(t)
	c := dial(t, config(t, srv))

	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	go func() {
		for {
			conn, err := echo.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				sc := bufio.NewScanner(conn)
				for sc.Scan() {
					fmt.Fprintf(conn, "echo %s\n", sc.Text())
				}
			}()
		}
	}()

	// A free port on the node (which is this machine).
	probe, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	remote := probe.Addr().String()
	probe.Close()

	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		done <- c.ReverseForward(ctx, remote, func(ctx context.Context) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", echo.Addr().String())
		})
	}()
	// x/crypto registers a remote listener only once the node has replied,
	// and refuses a connection that comes before (the node resets it):
	// retry until one gets through.
	poll.Until(t, "through the tunnel "+remote, 10*time.Second, func() string {
		line, err := echoOnce(remote)
		if err == nil && strings.TrimSpace(line) == "echo hello" {
			return ""
		}
		return fmt.Sprintf("%q, %v", line, err)
	})
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("ReverseForward = %v, want context.Canceled", err)
	}
}

// echoOnce sends "hello" to addr and returns the line it answers.
func echoOnce(addr string) (string, error) {
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintln(conn, "hello")
	return bufio.NewReader(conn).ReadString('\n')
}

func TestTrustHostKey(t *testing.T) {
	t.Parallel()
	for _, s := range servers {
		t.Run(s.name, func(t *testing.T) {
			t.Parallel()
			srv := s.start(t)
			cfg := config(t, srv)
			cfg.KnownHostsFile = filepath.Join(t.TempDir(), "known_hosts")
			fp, added, err := sshx.TrustHostKey(t.Context(), cfg)
			if err != nil || !added || !strings.HasPrefix(fp, "SHA256:") {
				t.Fatalf("TrustHostKey = %q, %v, %v", fp, added, err)
			}
			if _, added, err := sshx.TrustHostKey(t.Context(), cfg); err != nil || added {
				t.Fatalf("second TrustHostKey: added %v, %v", added, err)
			}
			c := dial(t, cfg) // the recorded key is accepted
			c.Close()

			other := sshtest.NewServer(t)
			cfg.KnownHostsFile = filepath.Join(t.TempDir(), "known_hosts")
			sshtest.WriteKnownHosts(t, cfg.KnownHostsFile, srv.Addr, other.HostKey)
			var hk *sshx.HostKeyError
			if _, _, err := sshx.TrustHostKey(t.Context(), cfg); !errors.As(err, &hk) {
				t.Fatalf("TrustHostKey over a changed key = %v, want *HostKeyError", err)
			}
		})
	}
}
