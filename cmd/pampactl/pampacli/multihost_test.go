package pampacli_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pampa-go/pampa/internal/syncbuf"

	polling "github.com/pampa-go/pampa/internal/poll"

	"github.com/jackc/pgx/v5"

	"github.com/pampa-go/pampa/cmd/pampactl/pampacli"
	"github.com/pampa-go/pampa/internal/netnstest"
	"github.com/pampa-go/pampa/internal/pgtest"
)

// TestMultiHostCutLink is the acceptance test of SSH fleets: three hosts in
// network namespaces, each with its own address and sshd, run real pampactl
// workers deployed and started over SSH, which reach the dispatcher on the
// control host over the worker protocol. One host's link is cut mid-run:
// its rows go to the others, every row succeeds and no row's step succeeds
// twice, `nodes check` reports the host down, and `workers start` brings it
// back once the link returns.
//
// The dispatcher listens on the control host's loopback; netnstest.Forward
// listens on every host's gateway, on one port. A host routes all of
// 198.18.0.0/15 to its gateway, so each of them reaches the first host's
// gateway address too (a local address of the root namespace): [dispatcher]
// addresses names it, and the cut host is never the first one, whose link
// carries that address.
func TestMultiHostCutLink(t *testing.T) {
	t.Parallel()
	const (
		rows    = 3000
		victim  = 2 // index of the host whose link is cut; not 0, see above
		job     = "mh"
		perNode = 2
		// queueSize bounds the rows that run twice: those the cut node
		// had in hand.
		queueSize = 10
	)
	nt := netnstest.New(t, 3)
	bin := pampactlBinary(t)

	direct := pgtest.Schema(t)
	listen := freeAddr(t)
	port := nt.Forward(t, listen)
	nodesDial := net.JoinHostPort(nt.Hosts[0].Gateway, strconv.Itoa(port))
	// Each successful step appends its key: a key twice is a row that
	// succeeded twice. The namespaces share the file system.
	hits := filepath.Join(t.TempDir(), "hits")
	if err := os.MkdirAll(hits, 0o777); err != nil {
		t.Fatal(err)
	}
	hitsFile := filepath.Join(hits, "ok.log")

	conn, err := pgx.Connect(t.Context(), direct)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	if _, err := conn.Exec(t.Context(), fmt.Sprintf(`
create table items (id int primary key);
insert into items select generate_series(1, %d)`, rows)); err != nil {
		t.Fatal(err)
	}

	// Worker ids are <node>.N; node i is "h<i>".
	var b strings.Builder
	fmt.Fprintf(&b, `[database]
url = %q
url_env = ""

[dispatcher]
delay = "100ms"
heartbeat_timeout = "3s"
log_file = ""
listen = %q
addresses = [%q]

[worker]
heartbeat_interval = "500ms"
grace_period = "1s"

[[jobs]]
name = %q
table = "items"
queue_size = %d
command = ["sh", "-c", %q]
`, direct, listen, nodesDial, job, queueSize, "sleep 0.01; echo $PAMPA_TASK_ID >> "+hitsFile)
	for i, h := range nt.Hosts {
		fmt.Fprintf(&b, `
[[nodes]]
name = "h%d"
net_remote_ip = %q
ssh_port = %d
ssh_username = %q
ssh_private_key_file = %q
known_hosts_file = %q
work_dir = %q
max_workers = %d
`, i, h.Addr, h.SSHPort, h.User, nt.ClientKeyFile, nt.KnownHostsFile, filepath.Join(t.TempDir(), "work"), perNode)
	}
	cfg := filepath.Join(t.TempDir(), "cluster.toml")
	if err := os.WriteFile(cfg, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	cli := func(ctx context.Context, args ...string) result {
		t.Helper()
		return pampactl(ctx, t, nil, append([]string{"--config", cfg}, args...)...)
	}
	must := func(args ...string) result {
		t.Helper()
		r := cli(t.Context(), args...)
		if r.code != 0 {
			t.Fatalf("pampactl %s:\n%s", strings.Join(args, " "), r)
		}
		return r
	}

	must("db", "setup")
	must("nodes", "deploy", "--binary", bin)
	// Stopped before the schema is dropped (cleanups run last first); the
	// namespaces' teardown kills whatever is left.
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		cli(ctx, "--ssh-timeout", "2s", "workers", "stop")
	})

	dctx, stopDispatcher := context.WithCancel(context.Background())
	var dlog syncbuf.Buffer
	dispatcherDone := make(chan int, 1)
	go func() { dispatcherDone <- runTo(dctx, &dlog, "--config", cfg, "dispatcher", "run") }()
	t.Cleanup(func() {
		stopDispatcher()
		if code := <-dispatcherDone; code != pampacli.ExitInterrupted && !t.Failed() {
			t.Errorf("dispatcher run exited %d:\n%s", code, dlog.String())
		}
		if t.Failed() {
			t.Logf("dispatcher log:\n%s", dlog.String())
		}
	})

	r := must("workers", "start")
	if got := strings.Count(r.stdout, "\tstarted"); got != perNode*len(nt.Hosts) {
		t.Fatalf("workers start started %d workers, want %d:\n%s", got, perNode*len(nt.Hosts), r)
	}

	// done counts completed rows: all, and those ended by the victim's
	// workers (a row keeps the id of the worker that ended it).
	victimPrefix := fmt.Sprintf("h%d.", victim)
	count := func(where string, args ...any) int {
		t.Helper()
		var n int
		if err := conn.QueryRow(t.Context(), "select count(*) from items where "+where, args...).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	poll(t, "rows are processed on every node, the victim included", func() string {
		all := count("mh_end_time is not null")
		byVictim := count("mh_end_time is not null and starts_with(mh_reservation_id, $1)", victimPrefix)
		if all >= rows {
			return "" // checked below: the run must not be over yet
		}
		if all < 200 || byVictim < 20 {
			return fmt.Sprintf("%d rows done, %d of them by %s", all, byVictim, victimPrefix)
		}
		return ""
	})
	var cutAt time.Time
	if err := conn.QueryRow(t.Context(), "select clock_timestamp()").Scan(&cutAt); err != nil {
		t.Fatal(err)
	}
	h := nt.Hosts[victim]
	h.Cut(t)
	if done := count("mh_end_time is not null"); done >= rows {
		t.Fatalf("all %d rows were done before the cut; make the step slower", done)
	}
	t.Logf("cut %s after %d rows", h, count("mh_end_time is not null"))

	// nodes check: the victim fails fast (no route to host), the others
	// are fine, and the exit code says some nodes failed.
	checkRows, r := check(t, cfg, "--ssh-timeout", "2s")
	if r.code != 3 {
		t.Errorf("nodes check with %s cut: exit %d, want 3:\n%s", h, r.code, r)
	}
	for _, c := range checkRows {
		if want := c.Node != fmt.Sprintf("h%d", victim); c.OK != want {
			t.Errorf("nodes check: node %s ok=%v, want %v (error %q)", c.Node, c.OK, want, c.Error)
		}
	}
	if len(checkRows) != len(nt.Hosts) {
		t.Errorf("nodes check reported %d nodes, want %d:\n%s", len(checkRows), len(nt.Hosts), r)
	}

	// Every row completes: the victim's reserved and running rows go back
	// to the queue once its heartbeat is 3s old, and the others take them.
	polling.Until(t, "every row completed within 40 s of the cut", 40*time.Second, func() string {
		if done := count("mh_end_time is not null and mh_success"); done != rows {
			return fmt.Sprintf("%d of %d rows completed; by state:\n%s", done, rows, states(t, conn))
		}
		return ""
	})
	// No row's step succeeded twice: the cut node gave up its queue when
	// its stream dropped, and its running step was short.
	data, err := os.ReadFile(hitsFile)
	if err != nil {
		t.Fatal(err)
	}
	perKey := map[string]int{}
	for _, k := range strings.Fields(string(data)) {
		perKey[k]++
	}
	maxPerKey := 0
	for _, n := range perKey {
		maxPerKey = max(maxPerKey, n)
	}
	twice := 0
	for _, n := range perKey {
		if n > 1 {
			twice++
		}
	}
	// No row's step succeeded twice, but for the rows the victim had in
	// hand as its link went (it cannot know at once, and runs its queue):
	// at most queue_size + 1 per worker. Each of those has one success in
	// the bookkeeping, a survivor's: the victim's outcome, late, is fenced.
	t.Logf("rows whose step succeeded twice: %d", twice)
	if bound := perNode * (queueSize + 1); len(perKey) != rows || maxPerKey > 2 || twice > bound {
		t.Errorf("steps: %d distinct keys succeeded, at most %d times each, %d twice; want %d keys, at most %d twice",
			len(perKey), maxPerKey, twice, rows, bound)
	}
	for k, n := range perKey {
		if n > 1 && count("id = $1::int and starts_with(mh_reservation_id, $2)", k, victimPrefix) != 0 {
			t.Errorf("row %s ran twice and its bookkeeping names the cut node", k)
		}
	}
	after := count("mh_end_time > $1 and not starts_with(mh_reservation_id, $2)", cutAt, victimPrefix)
	if after == 0 {
		t.Errorf("no row was ended by the surviving nodes after the cut")
	}
	t.Logf("rows ended by the victim: %d; by the others after the cut: %d",
		count("starts_with(mh_reservation_id, $1)", victimPrefix), after)

	// The link returns: workers start on the victim is idempotent — its
	// old workers, if they survived the cut, are reported running, and
	// missing ones are started — and status lists them running.
	h.Restore(t)
	node := fmt.Sprintf("h%d", victim)
	r = must("--ssh-timeout", "5s", "workers", "start", "--node", node)
	for i := 1; i <= perNode; i++ {
		id := fmt.Sprintf("%s.%d", node, i)
		if !strings.Contains(r.stdout, id+"\trunning") && !strings.Contains(r.stdout, id+"\tstarted") {
			t.Errorf("workers start --node %s did not report %s running or started:\n%s", node, id, r)
		}
	}
	poll(t, "workers status shows the victim's workers running", func() string {
		r := cli(t.Context(), "workers", "status", "--json", "--node", node)
		var ws []struct {
			ID, Process string
		}
		if err := json.Unmarshal([]byte(r.stdout), &ws); err != nil {
			return fmt.Sprintf("workers status --json: %v\n%s", err, r)
		}
		running := 0
		for _, w := range ws {
			if strings.HasPrefix(w.ID, node+".") && w.Process == "running" {
				running++
			}
		}
		if running != perNode {
			return fmt.Sprintf("%d of %d running:\n%s", running, perNode, r)
		}
		return ""
	})
	if checkRows, r := check(t, cfg, "--ssh-timeout", "5s"); r.code != 0 || len(checkRows) != len(nt.Hosts) {
		t.Errorf("nodes check after restore:\n%s", r)
	}
}

// states summarises the task table for a failure message.
func states(t *testing.T, conn *pgx.Conn) string {
	rows, err := conn.Query(context.Background(), `select coalesce(mh_reservation_id, '-'),
  case when mh_end_time is not null then 'ended' when mh_start_time is not null then 'running'
       when mh_reservation_id is not null then 'queued' else 'available' end, count(*)
from items group by 1, 2 order by 1, 2`)
	if err != nil {
		return err.Error()
	}
	defer rows.Close()
	var b strings.Builder
	for rows.Next() {
		var id, state string
		var n int
		if err := rows.Scan(&id, &state, &n); err != nil {
			return err.Error()
		}
		fmt.Fprintf(&b, "  %s %s: %d\n", id, state, n)
	}
	return b.String()
}
