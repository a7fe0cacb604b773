package pampacli_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pampa-go/pampa/cmd/pampactl/pampacli"
	"github.com/pampa-go/pampa/dispatcher"
	"github.com/pampa-go/pampa/internal/pgtest"
	"github.com/pampa-go/pampa/internal/sshtest"
)

// upJob is the job of these tests: an sql step over the items table.
const upJob = "tick"

// createItems makes the items table with rows 1..n.
func createItems(t *testing.T, dbURL string, n int) {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(t.Context(), fmt.Sprintf(`
create table items (id int primary key, done boolean not null default false);
insert into items (id) select generate_series(1, %d)`, n)); err != nil {
		t.Fatal(err)
	}
}

// tunnelNode is a node of clusterConfig; with port > 0 its workers reach
// the database through a db tunnel there.
type tunnelNode struct {
	node
	port int
}

// clusterConfig is a cluster file with SSH nodes on srv and the items job.
// When a node has a db tunnel, the URL may be overridden by
// $PAMPA_DATABASE_URL: on the control host only, as the node's SSH
// sessions do not have it.
func clusterConfig(dbURL string, srv *sshtest.Server, nodes ...tunnelNode) string {
	var b strings.Builder
	urlEnv := ""
	for _, n := range nodes {
		if n.port > 0 {
			urlEnv = "PAMPA_DATABASE_URL"
		}
	}
	fmt.Fprintf(&b, `[database]
url = %q
url_env = %q

[dispatcher]
delay = "100ms"
log_file = ""

[worker]
delay = "100ms"
heartbeat_interval = "200ms"
grace_period = "1s"

[[jobs]]
name = %q
table = "items"
queue_size = 20
sql = "update items set done = true where id = $1"
`, dbURL, urlEnv, upJob)
	for _, n := range nodes {
		fmt.Fprintf(&b, `
[[nodes]]
name = %q
net_remote_ip = "127.0.0.1"
ssh_port = %d
ssh_username = %q
ssh_private_key_file = %q
known_hosts_file = %q
work_dir = %q
max_workers = %d
`, n.name, srv.Port, srv.User, n.keyFile, n.knownHosts, n.workDir, max(n.maxWorkers, 1))
		if n.port > 0 {
			fmt.Fprintf(&b, "tunnel = true\ntunnel_port = %d\n", n.port)
		}
	}
	return b.String()
}

func writeFile(t *testing.T, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
}

// unusedPort is a loopback TCP port nothing listens on (the kernel just
// handed it out and it was closed).
func unusedPort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// withPort is dbURL with its host replaced by 127.0.0.1:port.
func withPort(t *testing.T, dbURL string, port int) string {
	t.Helper()
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	u.Host = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	return u.String()
}

// alive says whether pid is a process that has not exited (a zombie
// waiting for its reaper has exited).
func alive(pid int) bool {
	if syscall.Kill(pid, 0) != nil {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	return err == nil && !strings.Contains(string(b), ") Z ")
}

func waitGone(t *testing.T, what string, pids map[string]int) {
	t.Helper()
	for id, pid := range pids {
		poll(t, what+": worker "+id+" exits", func() string {
			if alive(pid) {
				return fmt.Sprintf("pid %d still running", pid)
			}
			return ""
		})
	}
}

// dumpLogs logs the node's worker logs if t fails.
func dumpLogs(t *testing.T, workDir string) {
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		files, _ := filepath.Glob(filepath.Join(workDir, "worker.*.log"))
		for _, f := range files {
			b, _ := os.ReadFile(f)
			t.Logf("%s:\n%s", filepath.Base(f), b)
		}
	})
}

// workerRows reads the registry: id to state, pid and heartbeat.
func workerRows(t *testing.T, dbURL string) map[string]dispatcher.WorkerStatus {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	ws, err := dispatcher.ListWorkers(t.Context(), conn)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]dispatcher.WorkerStatus{}
	for _, w := range ws {
		out[w.ID] = w
	}
	return out
}

// tunnelCluster writes a cluster file whose workers can reach the
// database only through their nodes' db tunnels: it names a port nothing
// listens on, and only the control host has the real URL (direct), in
// $PAMPA_DATABASE_URL, which the nodes' SSH sessions do not get. It sets
// the database up and returns the CLI on that cluster (workers are
// stopped at the end of the test) and a connection to the database.
func tunnelCluster(t *testing.T, srv *sshtest.Server, direct string, nodes ...tunnelNode) (func(ctx context.Context, args ...string) result, *pgx.Conn) {
	t.Helper()
	for _, n := range nodes {
		dumpLogs(t, n.workDir)
	}
	cfg := filepath.Join(t.TempDir(), "cluster.toml")
	writeFile(t, cfg, clusterConfig(withPort(t, direct, unusedPort(t)), srv, nodes...))
	env := map[string]string{"PAMPA_DATABASE_URL": direct}
	cli := func(ctx context.Context, args ...string) result {
		t.Helper()
		return pampactl(ctx, t, env, append([]string{"--config", cfg}, args...)...)
	}
	if r := cli(t.Context(), "db", "setup"); r.code != 0 {
		t.Fatalf("db setup:\n%s", r)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		cli(ctx, "down")
	})
	conn, err := pgx.Connect(t.Context(), direct)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return cli, conn
}

// background is a pampactl command that runs until cancelled (up,
// dispatcher run).
type background struct {
	t      *testing.T
	name   string
	cancel context.CancelFunc
	done   chan result
}

func startBackground(t *testing.T, cli func(ctx context.Context, args ...string) result, args ...string) *background {
	ctx, cancel := context.WithCancel(t.Context())
	b := &background{t: t, name: strings.Join(args[:min(2, len(args))], " "), cancel: cancel, done: make(chan result, 1)}
	t.Cleanup(cancel)
	go func() { b.done <- cli(ctx, args...) }()
	return b
}

// running fails the test if the command returned already.
func (b *background) running() {
	b.t.Helper()
	select {
	case r := <-b.done:
		b.t.Fatalf("%s returned before it was cancelled:\n%s", b.name, r)
	default:
	}
}

// stop cancels the command and returns what it did; it must end, as
// interrupted commands do, with exit 0 or ExitInterrupted.
func (b *background) stop() result {
	b.t.Helper()
	b.cancel()
	var r result
	select {
	case r = <-b.done:
	case <-time.After(30 * time.Second):
		b.t.Fatalf("%s did not return within 30s of being cancelled", b.name)
	}
	if r.code != 0 && r.code != pampacli.ExitInterrupted {
		b.t.Fatalf("%s after cancel: want exit 0 or %d\n%s", b.name, pampacli.ExitInterrupted, r)
	}
	return r
}

// waitRowsDoneBy waits until the step ran on every one of the rows of
// items and each ended successfully, all by workers of the node, while b
// runs.
func waitRowsDoneBy(t *testing.T, conn *pgx.Conn, rows int, node string, b *background) {
	t.Helper()
	count := fmt.Sprintf(`select count(*) filter (where done), count(*) filter (where %[1]s_success and %[1]s_end_time is not null),
  count(*) filter (where %[1]s_reservation_id like $1) from items`, upJob)
	poll(t, node+"'s workers process every row", func() string {
		b.running()
		var nDone, nOK, nByNode int
		if err := conn.QueryRow(t.Context(), count, node+".%").Scan(&nDone, &nOK, &nByNode); err != nil {
			t.Fatal(err)
		}
		if nDone != rows || nOK != rows || nByNode != rows {
			return fmt.Sprintf("%d of %d rows done, %d ended with success, %d by %s's workers", nDone, rows, nOK, nByNode, node)
		}
		return ""
	})
}

// TestUp runs `pampactl up` against a node whose workers can reach the
// database only through the db tunnel: the URL in cluster.toml names a port
// nothing listens on, and only the control host has the real URL (in
// $PAMPA_DATABASE_URL, which the node's SSH sessions do not get). Every row
// completing proves the workers went through 127.0.0.1:tunnel_port on
// the node. Cancelling up stops the dispatcher and closes the tunnel; the
// workers keep running, as documented, until `pampactl down`.
func TestUp(t *testing.T) {
	t.Parallel()
	const rows = 300
	bin := pampactlBinary(t)
	srv := sshtest.StartSSHD(t)
	direct := pgtest.Schema(t)
	createItems(t, direct, rows)

	tunnelPort := unusedPort(t)
	n := sshNode(t, "w1", srv)
	cli, conn := tunnelCluster(t, srv, direct, tunnelNode{n, tunnelPort})
	up := startBackground(t, cli, "up", "--binary", bin)
	waitRowsDoneBy(t, conn, rows, "w1", up)

	// The workers that did it are the ones up started on the node, and they
	// are registered under the pids of their pid files.
	pids := map[string]int{}
	reg := workerRows(t, direct)
	for _, id := range []string{"w1.1", "w1.2"} {
		pids[id] = pidOf(t, n.workDir, id)
		if !alive(pids[id]) {
			t.Fatalf("worker %s (pid %d) is not running", id, pids[id])
		}
		if w := reg[id]; w.State != dispatcher.StateAlive || w.PID != pids[id] {
			t.Errorf("registry has %s as %+v; want alive with pid %d", id, w, pids[id])
		}
	}
	// Nothing on the node but the tunnel leads to the database, and the
	// workers hold their connections to it.
	if err := tunnelClients(tunnelPort, pids); err != nil {
		t.Error(err)
	}

	r := up.stop()
	for _, want := range []string{"w1\t", "w1.1\tstarted", "w1.2\tstarted"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("up did not print %q:\n%s", want, r)
		}
	}
	if !strings.Contains(r.stderr, "workers keep running") {
		t.Errorf("up did not say the workers keep running:\n%s", r)
	}

	// The tunnel closes with up...
	poll(t, "the tunnel closes with up", func() string {
		c, err := net.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(tunnelPort)))
		if err != nil {
			return ""
		}
		c.Close()
		return "127.0.0.1:" + strconv.Itoa(tunnelPort) + " still accepts connections"
	})
	// ...and the workers keep running (usage: "workers keep running when it
	// stops: pampactl down stops them").
	st := cli(t.Context(), "workers", "status", "--json")
	var ws []struct {
		ID      string `json:"id"`
		PID     int    `json:"pid"`
		Process string `json:"process"`
	}
	if err := json.Unmarshal([]byte(st.stdout), &ws); err != nil || len(ws) != 2 {
		t.Fatalf("workers status --json after up: %v\n%s", err, st)
	}
	for _, w := range ws {
		if w.Process != "running" || w.PID != pids[w.ID] || !alive(w.PID) {
			t.Errorf("after up stopped, worker %+v should still run with pid %d", w, pids[w.ID])
		}
	}

	down := cli(t.Context(), "down")
	if down.code != 0 {
		t.Fatalf("down:\n%s", down)
	}
	for id := range pids {
		if !strings.Contains(down.stdout, id+"\tstopped") && !strings.Contains(down.stdout, id+"\tkilled") {
			t.Errorf("down did not stop %s:\n%s", id, down)
		}
	}
	waitGone(t, "down", pids)
	for id := range pids {
		if _, err := os.Stat(filepath.Join(n.workDir, "run", id+".pid")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("pid file of %s left behind after down: %v", id, err)
		}
	}
}

// TestUpTunnelPortTaken: one node's db tunnel cannot open, as something
// else holds its port on the node. up warns, naming that node, starts no
// worker there (a worker would hand the database credentials to whatever
// holds the port), keeps the other node's tunnel open, and that node's
// workers process every row.
func TestUpTunnelPortTaken(t *testing.T) {
	t.Parallel()
	const rows = 200
	bin := pampactlBinary(t)
	srv := sshtest.StartSSHD(t)
	direct := pgtest.Schema(t)
	createItems(t, direct, rows)

	squatter, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { squatter.Close() })
	var squatted atomic.Int32
	go func() {
		for {
			c, err := squatter.Accept()
			if err != nil {
				return
			}
			squatted.Add(1)
			c.Close()
		}
	}()
	w1, w2 := sshNode(t, "w1", srv), sshNode(t, "w2", srv)
	cli, conn := tunnelCluster(t, srv, direct,
		tunnelNode{w1, unusedPort(t)}, tunnelNode{w2, squatter.Addr().(*net.TCPAddr).Port})
	up := startBackground(t, cli, "up", "--binary", bin)
	waitRowsDoneBy(t, conn, rows, "w1", up)
	r := up.stop()
	if !strings.Contains(r.stderr, `node "w2"`) || !strings.Contains(r.stderr, "tunnel_port") || !strings.Contains(r.stderr, "going on with w1 only") {
		t.Errorf("up does not explain that w2's tunnel failed and it went on with w1:\n%s", r)
	}
	if !strings.Contains(r.stdout, "w1.1\tstarted") || !strings.Contains(r.stdout, "w1.2\tstarted") || strings.Contains(r.stdout, "w2.") {
		t.Errorf("up should start w1's workers and none of w2's:\n%s", r)
	}
	for _, id := range []string{"w2.1", "w2.2"} {
		if _, err := os.Stat(filepath.Join(w2.workDir, "run", id+".pid")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s has a pid file: %v", id, err)
		}
	}
	if n := squatted.Load(); n != 0 {
		t.Errorf("%d connections reached what holds w2's tunnel port", n)
	}
	pids := map[string]int{"w1.1": pidOf(t, w1.workDir, "w1.1"), "w1.2": pidOf(t, w1.workDir, "w1.2")}
	if down := cli(t.Context(), "down"); down.code != 0 {
		t.Fatalf("down:\n%s", down)
	}
	waitGone(t, "down", pids)
}

// tunnelClients checks that each worker process holds a connection to the
// tunnel's port on the node.
func tunnelClients(tunnelPort int, pids map[string]int) error {
	for id, pid := range pids {
		ports, err := remotePorts(pid)
		if err != nil {
			return fmt.Errorf("worker %s: %w", id, err)
		}
		if !ports[tunnelPort] {
			return fmt.Errorf("worker %s (pid %d) has no connection to the tunnel port %d; its TCP peers' ports: %v", id, pid, tunnelPort, ports)
		}
	}
	return nil
}

// remotePorts lists the peer ports of pid's established TCP connections
// to 127.0.0.1, from /proc.
func remotePorts(pid int) (map[int]bool, error) {
	inodes := map[string]bool{}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return nil, fmt.Errorf("list fds: %w", err)
	}
	for _, fd := range fds {
		l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if err == nil && strings.HasPrefix(l, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")] = true
		}
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/tcp", pid))
	if err != nil {
		return nil, fmt.Errorf("read tcp table: %w", err)
	}
	ports := map[int]bool{}
	for _, line := range strings.Split(string(data), "\n")[1:] {
		f := strings.Fields(line)
		// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
		if len(f) < 10 || !inodes[f[9]] || f[3] != "01" { // 01: ESTABLISHED
			continue
		}
		host, port, ok := strings.Cut(f[2], ":")
		if !ok || host != "0100007F" { // 127.0.0.1
			continue
		}
		p, err := strconv.ParseInt(port, 16, 32)
		if err != nil {
			return nil, fmt.Errorf("tcp table line %q: %w", line, err)
		}
		ports[int(p)] = true
	}
	return ports, nil
}

// TestDeployRestart: `nodes deploy` of a changed config and binary leaves
// running workers alone, and `workers status` calls them stale; a later
// `nodes deploy --restart` with nothing to upload restarts exactly the
// stale ones (new pids, which register and heart-beat); with --restart a
// change restarts every running worker; with --restart, nothing changed
// and nothing stale, it restarts nothing.
func TestDeployRestart(t *testing.T) {
	t.Parallel()
	bin := pampactlBinary(t)
	srv := sshtest.StartSSHD(t)
	dbURL := pgtest.Schema(t)
	createItems(t, dbURL, 10)
	n := sshNode(t, "w1", srv)
	dumpLogs(t, n.workDir)
	cfg := filepath.Join(t.TempDir(), "cluster.toml")
	text := clusterConfig(dbURL, srv, tunnelNode{node: n})
	writeFile(t, cfg, text)
	must := func(args ...string) result {
		t.Helper()
		r := pampactl(t.Context(), t, nil, append([]string{"--config", cfg}, args...)...)
		if r.code != 0 {
			t.Fatalf("pampactl %s:\n%s", strings.Join(args, " "), r)
		}
		return r
	}
	type deployed struct {
		Node           string `json:"node"`
		BinaryUploaded bool   `json:"binary_uploaded"`
		ConfigUploaded bool   `json:"config_uploaded"`
		Restarted      []struct {
			ID    string `json:"id"`
			PID   int    `json:"pid"`
			State string `json:"state"`
		} `json:"restarted"`
	}
	deploy := func(args ...string) deployed {
		t.Helper()
		r := must(append([]string{"nodes", "deploy", "--json"}, args...)...)
		var d []deployed
		if err := json.Unmarshal([]byte(r.stdout), &d); err != nil || len(d) != 1 {
			t.Fatalf("nodes deploy --json: %v\n%s", err, r)
		}
		return d[0]
	}
	ids := []string{"w1.1", "w1.2"}
	pidFiles := func() map[string]int {
		t.Helper()
		out := map[string]int{}
		for _, id := range ids {
			out[id] = pidOf(t, n.workDir, id)
		}
		return out
	}
	// registered waits until the registry has each worker alive under the
	// given pid and heart-beating since it registered.
	registered := func(what string, pids map[string]int) {
		t.Helper()
		conn, err := pgx.Connect(t.Context(), dbURL)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(context.Background())
		poll(t, what, func() string {
			for _, id := range ids {
				var pid int
				var state string
				var beat bool
				err := conn.QueryRow(t.Context(), `select pid, state, heartbeat_at > started_at from pampa_workers where id = $1`, id).Scan(&pid, &state, &beat)
				if errors.Is(err, pgx.ErrNoRows) {
					return id + " not registered"
				}
				if err != nil {
					t.Fatal(err)
				}
				if pid != pids[id] || state != dispatcher.StateAlive || !beat {
					return fmt.Sprintf("%s: pid %d (want %d), state %s, heartbeat since registration: %v", id, pid, pids[id], state, beat)
				}
			}
			return ""
		})
	}
	exe := func(pid int) string {
		t.Helper()
		l, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
		if err != nil {
			t.Fatalf("pid %d: %v", pid, err)
		}
		return l
	}
	remoteBin := filepath.Join(n.workDir, "bin", "pampactl")

	must("db", "setup")
	if d := deploy("--binary", bin); !d.BinaryUploaded || !d.ConfigUploaded || len(d.Restarted) != 0 {
		t.Fatalf("first deploy: %+v", d)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		pampactl(ctx, t, nil, "--config", cfg, "workers", "stop")
	})
	must("workers", "start")
	first := pidFiles()
	registered("workers register", first)

	// A new binary (trailing bytes change its checksum, not what it does)
	// and a new config, without --restart: the workers keep running the
	// old ones.
	bin2 := filepath.Join(t.TempDir(), "pampactl")
	data, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, bin2, string(data)+"\x00pampa test build 2\n")
	if err := os.Chmod(bin2, 0o755); err != nil {
		t.Fatal(err)
	}
	text += "\n# revision 2\n"
	writeFile(t, cfg, text)
	if d := deploy("--binary", bin2); !d.BinaryUploaded || !d.ConfigUploaded || len(d.Restarted) != 0 {
		t.Fatalf("deploy of a change without --restart: %+v", d)
	}
	if got := pidFiles(); got["w1.1"] != first["w1.1"] || got["w1.2"] != first["w1.2"] {
		t.Fatalf("deploy without --restart changed the pids: %v, before %v", got, first)
	}
	for id, pid := range first {
		if !alive(pid) {
			t.Fatalf("deploy without --restart stopped %s (pid %d)", id, pid)
		}
		if e := exe(pid); e != remoteBin+" (deleted)" {
			t.Errorf("after deploy without --restart, %s runs %q; want the replaced binary", id, e)
		}
	}
	registered("workers still registered after deploy without --restart", first)

	// The pid files, written as the workers started, go a minute back: the
	// files deployed since are then newer beyond doubt, even for a shell
	// that compares whole seconds.
	for id := range first {
		at := time.Now().Add(-time.Minute)
		if err := os.Chtimes(filepath.Join(n.workDir, "run", id+".pid"), at, at); err != nil {
			t.Fatal(err)
		}
	}
	type statusRow struct {
		PID     int    `json:"pid"`
		Process string `json:"process"`
		Stale   bool   `json:"stale"`
	}
	status := func() map[string]statusRow {
		t.Helper()
		r := must("workers", "status", "--json")
		var rows []struct {
			ID string `json:"id"`
			statusRow
		}
		if err := json.Unmarshal([]byte(r.stdout), &rows); err != nil || len(rows) != len(ids) {
			t.Fatalf("workers status --json: %v\n%s", err, r)
		}
		out := map[string]statusRow{}
		for _, w := range rows {
			out[w.ID] = w.statusRow
		}
		return out
	}
	for id, w := range status() {
		if w.Process != "running" || !w.Stale || w.PID != first[id] {
			t.Errorf("workers status --json after deploy without --restart: %s is %+v; want running, stale, pid %d", id, w, first[id])
		}
	}
	r := must("workers", "status")
	for _, line := range strings.Split(r.stdout, "\n") {
		if f := strings.Fields(line); len(f) > 3 && strings.HasPrefix(f[0], "w1.") && (f[2] != "running" || f[3] != "yes") {
			t.Errorf("workers status after deploy without --restart: want running and STALE yes:\n%s", r)
		}
	}
	if !strings.Contains(r.stderr, "2 workers on SSH nodes run a binary or config replaced") || !strings.Contains(r.stderr, "nodes deploy --restart") {
		t.Errorf("workers status does not tell how to restart stale workers:\n%s", r)
	}

	// w1.2 dies and `workers start` starts it again, with the files now
	// deployed: only w1.1 is stale.
	if err := syscall.Kill(first["w1.2"], syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitGone(t, "TERM", map[string]int{"w1.2": first["w1.2"]})
	must("workers", "start")
	fresh := pidFiles()
	if fresh["w1.1"] != first["w1.1"] || fresh["w1.2"] == first["w1.2"] {
		t.Fatalf("workers start after w1.2 died: pids %v, before %v", fresh, first)
	}
	if st := status(); !st["w1.1"].Stale || st["w1.2"].Stale || st["w1.2"].Process != "running" {
		t.Fatalf("workers status: %+v; want w1.1 stale, w1.2 running and current", st)
	}

	// --restart with nothing to upload restarts exactly the stale worker.
	d := deploy("--binary", bin2, "--restart")
	if d.BinaryUploaded || d.ConfigUploaded || len(d.Restarted) != 1 || d.Restarted[0].ID != "w1.1" {
		t.Fatalf("deploy --restart with nothing new and w1.1 stale: %+v", d)
	}
	second := pidFiles()
	if s := d.Restarted[0]; s.State != "started" || s.PID == 0 || s.PID != second["w1.1"] || s.PID == first["w1.1"] {
		t.Errorf("restarted %+v; pid file says %d, old pid %d", s, second["w1.1"], first["w1.1"])
	}
	if second["w1.2"] != fresh["w1.2"] {
		t.Errorf("deploy --restart restarted w1.2, which was not stale: pid %d, before %d", second["w1.2"], fresh["w1.2"])
	}
	waitGone(t, "deploy --restart", map[string]int{"w1.1": first["w1.1"]})
	for id, pid := range second {
		if !alive(pid) {
			t.Fatalf("%s (pid %d) is not running after deploy --restart", id, pid)
		}
		if e := exe(pid); e != remoteBin {
			t.Errorf("after deploy --restart, %s runs %q; want %s", id, e, remoteBin)
		}
	}
	registered("restarted workers register and heart-beat", second)
	for id, w := range status() {
		if w.Process != "running" || w.Stale || w.PID != second[id] {
			t.Errorf("workers status after deploy --restart: %s is %+v; want running, not stale, pid %d", id, w, second[id])
		}
	}

	// Another change, with --restart: every running worker restarts.
	text += "# revision 3\n"
	writeFile(t, cfg, text)
	d = deploy("--binary", bin2, "--restart")
	if d.BinaryUploaded || !d.ConfigUploaded || len(d.Restarted) != 2 {
		t.Fatalf("deploy --restart of a changed config: %+v", d)
	}
	third := pidFiles()
	for _, s := range d.Restarted {
		if s.State != "started" || s.PID == 0 || s.PID != third[s.ID] || s.PID == second[s.ID] {
			t.Errorf("restarted %+v; pid file says %d, old pid %d", s, third[s.ID], second[s.ID])
		}
	}
	waitGone(t, "deploy --restart of a change", second)
	registered("workers restarted for a change register and heart-beat", third)

	// --restart with nothing new and nothing stale restarts nothing.
	if d := deploy("--binary", bin2, "--restart"); d.BinaryUploaded || d.ConfigUploaded || len(d.Restarted) != 0 {
		t.Fatalf("deploy --restart of unchanged files: %+v", d)
	}
	if got := pidFiles(); got["w1.1"] != third["w1.1"] || got["w1.2"] != third["w1.2"] {
		t.Fatalf("deploy --restart of unchanged files changed the pids: %v, before %v", got, third)
	}
}
