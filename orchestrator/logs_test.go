package orchestrator_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/pampa-go/pampa/internal/sshtest"
	"github.com/pampa-go/pampa/orchestrator"
	"github.com/pampa-go/pampa/sshx"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// flakyLink forwards TCP to a target; Cut drops every connection, and
// while Down it refuses new ones (accepts and closes), like a node that
// went away and comes back on the same address.
type flakyLink struct {
	Addr   string
	target string
	ln     net.Listener
	wg     sync.WaitGroup

	mu      sync.Mutex
	down    bool
	refused int
	conns   []net.Conn
}

func newFlakyLink(t *testing.T, target string) *flakyLink {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := &flakyLink{Addr: ln.Addr().String(), target: target, ln: ln}
	l.wg.Add(1)
	go l.serve()
	t.Cleanup(func() {
		ln.Close()
		l.Cut()
		l.wg.Wait()
	})
	return l
}

func (l *flakyLink) serve() {
	defer l.wg.Done()
	for {
		c, err := l.ln.Accept()
		if err != nil {
			return
		}
		l.mu.Lock()
		if l.down {
			l.refused++
			l.mu.Unlock()
			c.Close()
			continue
		}
		s, err := net.Dial("tcp", l.target)
		if err != nil {
			l.mu.Unlock()
			c.Close()
			continue
		}
		l.conns = append(l.conns, c, s)
		l.mu.Unlock()
		l.wg.Add(2)
		go l.copy(c, s)
		go l.copy(s, c)
	}
}

func (l *flakyLink) copy(dst, src net.Conn) {
	defer l.wg.Done()
	_, _ = io.Copy(dst, src)
	dst.Close()
	src.Close()
}

// Cut closes every forwarded connection.
func (l *flakyLink) Cut() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range l.conns {
		c.Close()
	}
	l.conns = nil
}

func (l *flakyLink) SetDown(down bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.down = down
}

func (l *flakyLink) Refused() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.refused
}

func poll(t *testing.T, what string, cond func() string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		msg := cond()
		if msg == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %s", what, msg)
		}
		time.Sleep(10 * time.Millisecond) // polling, not waiting for an effect
	}
}

// TestFollowLogsReconnects follows a node's logs through a link that
// drops and stays down for a while: the stream comes back by itself.
func TestFollowLogsReconnects(t *testing.T) {
	t.Parallel()
	srv := sshtest.NewServer(t)
	link := newFlakyLink(t, srv.Addr)
	host, port, _ := net.SplitHostPort(link.Addr)
	work := filepath.Join(t.TempDir(), "work")
	if err := os.MkdirAll(work, 0o755); err != nil {
		t.Fatal(err)
	}
	logFile := filepath.Join(work, "worker.w1.1.log")
	appendLine := func(s string) {
		f, err := os.OpenFile(logFile, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		fmt.Fprintln(f, s)
	}
	appendLine("first")
	cfg, err := orchestrator.Parse("cluster.toml", fmt.Appendf(nil, `[[nodes]]
name = "w1"
net_remote_ip = %q
ssh_port = %s
ssh_username = %q
work_dir = %q
`, host, port, srv.User, work))
	if err != nil {
		t.Fatal(err)
	}
	knownHosts := filepath.Join(t.TempDir(), "known_hosts")
	sshtest.WriteKnownHosts(t, knownHosts, link.Addr, srv.HostKey)
	fleet := &orchestrator.Fleet{Config: cfg, DialSSH: func(ctx context.Context, n orchestrator.Node) (orchestrator.Conn, error) {
		return sshx.Dial(ctx, sshx.Config{Host: n.Host, Port: n.Port, User: n.User, KeyFiles: []string{srv.ClientKeyFile},
			KnownHostsFile: knownHosts, SSHConfigFile: "none", KeepAliveInterval: -1})
	}}

	var mu sync.Mutex
	var lines []string
	seen := func(want string) func() string {
		return func() string {
			mu.Lock()
			defer mu.Unlock()
			for _, l := range lines {
				if l == want {
					return ""
				}
			}
			return fmt.Sprintf("no %q in %q", want, lines)
		}
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		done <- fleet.TailLogs(ctx, orchestrator.TailOptions{Lines: 10, Follow: true, Backoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond,
			Emit: func(node, worker, line string) {
				mu.Lock()
				defer mu.Unlock()
				lines = append(lines, node+" "+worker+" "+line)
			}})
	}()
	poll(t, "initial lines", seen("w1 w1.1 first"))
	appendLine("second")
	poll(t, "followed line", seen("w1 w1.1 second"))

	link.SetDown(true)
	link.Cut()
	poll(t, "reconnection attempts while the node is away", func() string {
		if link.Refused() < 2 {
			return "no reconnection attempt refused yet"
		}
		return ""
	})
	link.SetDown(false)
	// Lines written before the new tail starts are not shown (it resumes
	// at the end); keep writing until one comes through.
	i := 0
	poll(t, "lines after the node came back", func() string {
		i++
		appendLine(fmt.Sprintf("back %d", i))
		mu.Lock()
		defer mu.Unlock()
		for _, l := range lines {
			if strings.HasPrefix(l, "w1 w1.1 back ") {
				return ""
			}
		}
		return fmt.Sprintf("lines %q", lines)
	})
	mu.Lock()
	for _, l := range lines {
		if l == "w1 w1.1 first" && strings.Count(strings.Join(lines, "\n"), "w1 w1.1 first") > 1 {
			t.Errorf("lines shown before the drop were repeated: %q", lines)
		}
	}
	mu.Unlock()
	cancel()
	if err := <-done; err != context.Canceled {
		t.Errorf("TailLogs = %v, want context.Canceled", err)
	}
}

func TestNodeDatabaseURL(t *testing.T) {
	t.Parallel()
	cfg, err := orchestrator.Parse("cluster.toml", []byte(`[database]
url = "postgres://u:pw@db.internal:6543/pampa?sslmode=disable"
url_env = ""
[[nodes]]
name = "direct"
net_remote_ip = "10.0.0.1"
ssh_username = "u"
[[nodes]]
name = "tunnelled"
net_remote_ip = "10.0.0.2"
ssh_username = "u"
db_tunnel = true
`))
	if err != nil {
		t.Fatal(err)
	}
	getenv := func(string) string { return "" }
	for name, want := range map[string]string{
		"direct":    "postgres://u:pw@db.internal:6543/pampa?sslmode=disable",
		"tunnelled": "postgres://u:pw@127.0.0.1:15432/pampa?sslmode=disable",
	} {
		n, _ := cfg.Node(name)
		if got, err := cfg.NodeDatabaseURL(n, getenv); err != nil || got != want {
			t.Errorf("NodeDatabaseURL(%s) = %q, %v; want %q", name, got, err, want)
		}
	}
	if addr, err := cfg.DatabaseAddr(getenv); err != nil || addr != "db.internal:6543" {
		t.Errorf("DatabaseAddr = %q, %v", addr, err)
	}
}
