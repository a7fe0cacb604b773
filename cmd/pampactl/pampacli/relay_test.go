package pampacli_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pampa-go/pampa/internal/syncbuf"

	polling "github.com/pampa-go/pampa/internal/poll"

	"github.com/jackc/pgx/v5"

	"github.com/pampa-go/pampa/cmd/pampactl/pampacli"
	"github.com/pampa-go/pampa/internal/netnstest"
	"github.com/pampa-go/pampa/internal/pgtest"
)

// TestRelayUpstreamCut: a site (a network namespace) holds a relay and
// three nodes of two workers each, which reach the dispatcher on the
// control host only through the relay, whose one connection crosses the
// site's link. The link is cut mid-run and restored before the workers
// would be judged dead: every row succeeds and no row's step runs twice.
func TestRelayUpstreamCut(t *testing.T) {
	t.Parallel()
	const rows, perNode = 1500, 2
	nt := netnstest.New(t, 1)
	site := nt.Hosts[0]
	bin := pampactlBinary(t)
	url := pgtest.Schema(t)
	listen := freeAddr(t)
	port := nt.Forward(t, listen)
	upstream := net.JoinHostPort(site.Gateway, strconv.Itoa(port))
	dir := t.TempDir()
	hits := filepath.Join(dir, "hits.log")

	conn, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	if _, err := conn.Exec(t.Context(), fmt.Sprintf(`create table items (id int primary key);
insert into items select generate_series(1, %d)`, rows)); err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	fmt.Fprintf(&b, `[database]
url = %q
url_env = ""

[dispatcher]
delay = "100ms"
heartbeat_timeout = "20s"
log_file = ""
listen = %q

[[relays]]
name = "site"
listen = "127.0.0.1:17600"
dispatchers = [%q]

[[jobs]]
name = "rl"
table = "items"
queue_size = 5
command = ["sh", "-c", %q]
`, url, listen, upstream, "sleep 0.02; echo $PAMPA_TASK_ID >> "+hits)
	for i := 1; i <= 3; i++ {
		fmt.Fprintf(&b, "\n[[nodes]]\nname = \"n%d\"\nnet_remote_ip = \"local\"\nrelay = \"site\"\nmax_workers = %d\nwork_dir = %q\n",
			i, perNode, filepath.Join(dir, "work"))
	}
	if err := os.MkdirAll(filepath.Join(dir, "work"), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "cluster.toml")
	if err := os.WriteFile(cfg, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "pampa.secret"), []byte(strings.Repeat("r", 32)), 0o600); err != nil {
		t.Fatal(err)
	}
	if r := pampactl(t.Context(), t, nil, "--config", cfg, "db", "setup"); r.code != 0 {
		t.Fatalf("db setup: %s", r)
	}

	dctx, stopDispatcher := context.WithCancel(context.Background())
	var dlog syncbuf.Buffer
	dispatcherDone := make(chan int, 1)
	go func() { dispatcherDone <- runTo(dctx, &dlog, "--config", cfg, "dispatcher", "run") }()
	t.Cleanup(func() {
		stopDispatcher()
		if code := <-dispatcherDone; code != pampacli.ExitInterrupted && !t.Failed() {
			t.Errorf("dispatcher run exited %d:\n%s", code, dlog.String())
		}
	})
	inSite := func(name string, args ...string) (*exec.Cmd, *syncbuf.Buffer) {
		var out syncbuf.Buffer
		cmd := site.Command(t.Context(), bin, append([]string{"--config", cfg}, args...)...)
		cmd.Stdout, cmd.Stderr = &out, &out
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			_ = cmd.Wait()
			if t.Failed() {
				t.Logf("%s:\n%s", name, out.String())
			}
		})
		return cmd, &out
	}
	// The relay's one connection is counted from when the dispatcher leads:
	// before, it refuses streams, and may close their connection.
	poll(t, "the dispatcher to lead", func() string {
		if !strings.Contains(dlog.String(), "dispatcher is the leader") {
			return dlog.String()
		}
		return ""
	})
	// The line is logged just before the dispatcher starts serving as the
	// leader: a stream that came in between would get a 503.
	time.Sleep(500 * time.Millisecond)
	_, relayLog := inSite("relay", "relay", "run", "--name", "site")
	for i := 1; i <= 3; i++ {
		for k := 1; k <= perNode; k++ {
			id := fmt.Sprintf("n%d.%d", i, k)
			inSite(id, "worker", "run", "--no-log-file", "--id", id)
		}
	}
	count := func(where string) int {
		t.Helper()
		var n int
		if err := conn.QueryRow(t.Context(), "select count(*) from items where "+where).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	poll(t, "rows to flow through the relay", func() string {
		if n := count("rl_end_time is not null"); n < 200 {
			return fmt.Sprintf("%d rows done", n)
		}
		return ""
	})
	if n := strings.Count(relayLog.String(), "relay connected to the dispatcher"); n != 1 {
		t.Fatalf("the relay opened %d connections for %d workers; want 1:\n%s", n, 3*perNode, relayLog)
	}
	site.Cut(t)
	before := count("rl_end_time is not null")
	if before >= rows {
		t.Fatalf("all rows were done before the cut; make the step slower")
	}
	time.Sleep(4 * time.Second) // long enough for every stream to drop, well within heartbeat_timeout
	site.Restore(t)
	t.Logf("cut after %d rows, restored after 4 s", before)

	polling.Until(t, "every row completed within 60 s of the restore", 60*time.Second, func() string {
		if done := count("rl_end_time is not null and rl_success"); done < rows {
			return fmt.Sprintf("%d of %d rows completed; by state:\n%s", done, rows, states(t, conn))
		}
		return ""
	})
	data, err := os.ReadFile(hits)
	if err != nil {
		t.Fatal(err)
	}
	perKey := map[string]int{}
	for _, k := range strings.Fields(string(data)) {
		perKey[k]++
	}
	var twice []string
	for k, n := range perKey {
		if n > 1 {
			twice = append(twice, k)
		}
	}
	if len(perKey) != rows || len(twice) > 0 {
		t.Fatalf("%d keys succeeded; %d of them more than once (%v); want %d, none twice", len(perKey), len(twice), twice, rows)
	}
	if n := strings.Count(relayLog.String(), "relay connected to the dispatcher"); n < 2 {
		t.Errorf("the relay did not reconnect after the cut (%d connections):\n%s", n, relayLog)
	}
}
