package orchestrator_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/pampa-go/pampa/deploy"
	polling "github.com/pampa-go/pampa/internal/poll"
	"github.com/pampa-go/pampa/internal/sshtest"
	"github.com/pampa-go/pampa/orchestrator"
	"github.com/pampa-go/pampa/sshx"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// poll waits for cond (see polling.Until).
func poll(t *testing.T, what string, cond func() string) {
	t.Helper()
	polling.Until(t, what, 20*time.Second, cond)
}

// TestFollowLogsReconnects follows two workers' logs through a link that
// drops and stays down while the workers keep writing: once the node is
// back, every line is printed exactly once, in order, including those
// written during the outage and a line half written when the link went.
func TestFollowLogsReconnects(t *testing.T) {
	t.Parallel()
	for name, start := range map[string]func(testing.TB) *sshtest.Server{"inproc": sshtest.NewServer, "sshd": sshtest.StartSSHD} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			testFollowLogsReconnects(t, start(t))
		})
	}
}

func testFollowLogsReconnects(t *testing.T, srv *sshtest.Server) {
	link := sshtest.NewLink(t, srv.Addr)
	host, port, _ := net.SplitHostPort(link.Addr)
	work := filepath.Join(t.TempDir(), "work")
	if err := os.MkdirAll(work, 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(id, s string) {
		t.Helper()
		f, err := os.OpenFile(filepath.Join(work, "worker."+id+".log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := f.WriteString(s); err != nil {
			t.Fatal(err)
		}
	}
	var want map[string][]string = map[string][]string{}
	line := func(id, s string) {
		t.Helper()
		write(id, s+"\n")
		want[id] = append(want[id], s)
	}
	for i := range 5 {
		write("w1.1", fmt.Sprintf("old %d\n", i))
	}
	want["w1.1"] = []string{"old 2", "old 3", "old 4"} // -n 3
	write("w1.2", "b old\n")
	want["w1.2"] = []string{"b old"}
	cfg, err := orchestrator.Parse("cluster.toml", fmt.Appendf(nil, `[[nodes]]
name = "w1"
net_remote_ip = %q
ssh_port = %s
ssh_username = %q
work_dir = %q
max_workers = 2
`, host, port, srv.User, work))
	if err != nil {
		t.Fatal(err)
	}
	knownHosts := filepath.Join(t.TempDir(), "known_hosts")
	sshtest.WriteKnownHosts(t, knownHosts, link.Addr, srv.HostKey)
	fleet := &orchestrator.Fleet{Config: cfg, SSH: func(n orchestrator.Node) (sshx.Config, error) {
		return sshx.Config{Host: n.Host, Port: n.Port, User: n.User, KeyFiles: []string{srv.ClientKeyFile},
			KnownHostsFile: knownHosts, SSHConfigFile: "none", KeepAliveInterval: -1}, nil
	}}

	var mu sync.Mutex
	got := map[string][]string{}
	// caughtUp says whether every line written so far was printed.
	caughtUp := func() string {
		mu.Lock()
		defer mu.Unlock()
		for id, w := range want {
			if len(got[id]) < len(w) {
				return fmt.Sprintf("%s: printed %q, want %q", id, got[id], w)
			}
		}
		return ""
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		done <- fleet.TailLogs(ctx, orchestrator.TailOptions{Lines: 3, Follow: true, Backoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond,
			Emit: func(node, worker, line string) {
				mu.Lock()
				defer mu.Unlock()
				if node != "w1" {
					t.Errorf("line %q from node %q", line, node)
				}
				got[worker] = append(got[worker], line)
			}})
	}()
	poll(t, "initial lines", caughtUp)
	line("w1.1", "live 1")
	line("w1.2", "b live 1")
	poll(t, "followed lines", caughtUp)
	write("w1.1", "half") // the link goes before the line is finished

	link.SetDown(true)
	link.Cut()
	write("w1.1", " written\n")
	want["w1.1"] = append(want["w1.1"], "half written")
	for i := range 3 {
		line("w1.1", fmt.Sprintf("while down %d", i))
		line("w1.2", fmt.Sprintf("b while down %d", i))
	}
	poll(t, "reconnection attempts while the node is away", func() string {
		if link.Refused() < 2 {
			return "no reconnection attempt refused yet"
		}
		return ""
	})
	link.SetDown(false)
	line("w1.1", "back 1")
	line("w1.2", "b back 1")
	poll(t, "every line after the node came back", caughtUp)
	line("w1.1", "back 2")
	poll(t, "following goes on", caughtUp)
	cancel()
	if err := <-done; err != context.Canceled {
		t.Errorf("TailLogs = %v, want context.Canceled", err)
	}
	mu.Lock()
	defer mu.Unlock()
	for id, w := range want {
		if !slices.Equal(got[id], w) {
			t.Errorf("%s: printed\n%q\nwant each line once, in order:\n%q", id, got[id], w)
		}
	}
}

// TestCheckReportsSystemd checks a node behind a real sshd: the probe's
// systemd detection reaches NodeCheck and its JSON, and agrees with the
// host (no systemd as PID 1 here: none).
func TestCheckReportsSystemd(t *testing.T) {
	t.Parallel()
	srv := sshtest.StartSSHD(t)
	host, port, _ := net.SplitHostPort(srv.Addr)
	cfg, err := orchestrator.Parse("cluster.toml", fmt.Appendf(nil, `[[nodes]]
name = "w1"
net_remote_ip = %q
ssh_port = %s
ssh_username = %q
work_dir = %q
`, host, port, srv.User, t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	knownHosts := srv.KnownHosts(t)
	fleet := &orchestrator.Fleet{Config: cfg, SSH: func(n orchestrator.Node) (sshx.Config, error) {
		return sshx.Config{Host: n.Host, Port: n.Port, User: n.User, KeyFiles: []string{srv.ClientKeyFile},
			KnownHostsFile: knownHosts, SSHConfigFile: "none"}, nil
	}}
	noBuild := func(goos, goarch string) (string, error) { return "", fmt.Errorf("no build for %s/%s", goos, goarch) }
	res, err := fleet.Check(t.Context(), nil, noBuild, nil)
	if err != nil || len(res) != 1 || res[0].Systemd == nil {
		t.Fatalf("Check = %+v, %v", res, err)
	}
	_, statErr := os.Stat("/run/systemd/system")
	booted := statErr == nil
	if got := res[0].Systemd; got.Booted != booted || !booted && *got != (deploy.Systemd{}) {
		t.Errorf("systemd %+v; /run/systemd/system exists: %v", *got, booted)
	}
	b, err := json.Marshal(res[0])
	if err != nil {
		t.Fatal(err)
	}
	var row struct {
		Systemd map[string]bool `json:"systemd"`
	}
	if err := json.Unmarshal(b, &row); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"booted", "user_manager", "linger", "kill_user_processes"} {
		if v, ok := row.Systemd[k]; !ok || k == "booted" && v != booted {
			t.Errorf("JSON %s: systemd.%s = %v, %v", b, k, v, ok)
		}
	}
}
