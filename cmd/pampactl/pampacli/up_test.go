package pampacli_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
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
	"github.com/pampa-go/pampa/orchestrator"
)

// upJob is the job of these tests: a command step over the items table,
// run by the nodes' workers. The step appends its key and its worker's id
// to steps.log in the work dir it runs in (the node's) and prints its
// worker's id; result_sql, in the transaction that records the step's
// success, marks the row done and stores that output in ran_by.
const upJob = "tick"

// stepsLog is the file the step appends to, in the node's work dir.
const stepsLog = "steps.log"

// createItems makes the items table with rows 1..n.
func createItems(t *testing.T, dbURL string, n int) {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(t.Context(), fmt.Sprintf(`
create table items (id int primary key, done boolean not null default false, ran_by text);
insert into items (id) select generate_series(1, %d)`, n)); err != nil {
		t.Fatal(err)
	}
}

// tunnelNode is a node of clusterConfig; with port > 0 its workers reach
// the dispatcher through a tunnel listening there on the node.
type tunnelNode struct {
	node
	port int
}

// tunnelAddr is where the workers of a tunnel node dial the dispatcher.
func (n tunnelNode) tunnelAddr() string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(n.port))
}

// clusterConfig is a cluster file with SSH nodes on srv and the items job;
// the dispatcher listens on listen. [dispatcher] addresses is left unset,
// so it defaults to listen: the node is this machine, so a node without a
// tunnel reaches the dispatcher there, and a config that handed that
// address to a tunnel node would let its workers bypass the tunnel.
func clusterConfig(dbURL, listen string, srv *sshtest.Server, nodes ...tunnelNode) string {
	var b strings.Builder
	fmt.Fprintf(&b, `[database]
url = %q
url_env = ""

[dispatcher]
delay = "100ms"
log_file = ""
listen = %q

[worker]
delay = "100ms"
heartbeat_interval = "200ms"
grace_period = "1s"

[[jobs]]
name = %q
table = "items"
queue_size = 20
command = ["sh", "-c", "echo $PAMPA_TASK_ID $PAMPA_WORKER_ID >> %s; printf %%s $PAMPA_WORKER_ID"]
result_sql = "update items set done = true, ran_by = $2 where id = $1::int"
`, dbURL, listen, upJob, stepsLog)
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

// cluster is a cluster file of clusterConfig, its database set up.
type cluster struct {
	t      *testing.T
	path   string // cluster.toml; pampa.secret is beside it
	text   string // what path holds
	dbURL  string
	listen string // [dispatcher] listen, a free port of this test's
	conn   *pgx.Conn
}

// newCluster writes the cluster file for the nodes, on the database at
// dbURL, runs db setup, and stops the nodes' workers when the test ends.
func newCluster(t *testing.T, srv *sshtest.Server, dbURL string, nodes ...tunnelNode) *cluster {
	t.Helper()
	for _, n := range nodes {
		dumpLogs(t, n.workDir)
	}
	c := &cluster{t: t, path: filepath.Join(t.TempDir(), "cluster.toml"), dbURL: dbURL, listen: freeAddr(t)}
	c.write(clusterConfig(dbURL, c.listen, srv, nodes...))
	if r := c.cli(t.Context(), "db", "setup"); r.code != 0 {
		t.Fatalf("db setup:\n%s", r)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		c.cli(ctx, "down")
	})
	conn, err := pgx.Connect(t.Context(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	c.conn = conn
	return c
}

func (c *cluster) write(text string) {
	c.t.Helper()
	c.text = text
	writeFile(c.t, c.path, text)
}

// cli runs pampactl on the cluster file, with an empty environment.
func (c *cluster) cli(ctx context.Context, args ...string) result {
	c.t.Helper()
	return pampactl(ctx, c.t, nil, append([]string{"--config", c.path}, args...)...)
}

// must runs pampactl and fails the test unless it exits 0.
func (c *cluster) must(args ...string) result {
	c.t.Helper()
	r := c.cli(c.t.Context(), args...)
	if r.code != 0 {
		c.t.Fatalf("pampactl %s:\n%s", strings.Join(args, " "), r)
	}
	return r
}

// secret is the cluster's worker secret, which must be in pampa.secret
// beside cluster.toml, mode 0600.
func (c *cluster) secret() string {
	c.t.Helper()
	path := filepath.Join(filepath.Dir(c.path), "pampa.secret")
	fi, err := os.Stat(path)
	if err != nil {
		c.t.Fatalf("the worker secret: %v", err)
	}
	if fi.Mode().Perm() != 0o600 {
		c.t.Errorf("%s has mode %04o; want 0600", path, fi.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		c.t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// checkNodeConfig checks the config deploy pushed to node n (its work
// dir's cluster.toml): mode 0600, the cluster's worker secret, no
// database URL nor anything of it, and dispatchers exactly [want]. Unless
// want is the dispatcher's listen address, that address is nowhere in it:
// the node's workers have no way to the dispatcher but want.
func (c *cluster) checkNodeConfig(n node, want string) {
	t := c.t
	t.Helper()
	path := filepath.Join(n.workDir, "cluster.toml")
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatalf("node %s: its config: %v", n.name, err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("node %s: %s has mode %04o; want 0600 (it holds the worker secret)", n.name, path, fi.Mode().Perm())
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	text := string(data)
	if bytes.Equal(data, []byte(c.text)) {
		t.Fatalf("node %s got cluster.toml as is, not a config of its own:\n%s", n.name, text)
	}
	u, err := url.Parse(c.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	leaks := []string{c.dbURL, "postgres://", "postgresql://", "[database]", u.Host}
	if p, ok := u.User.Password(); ok && p != "" {
		leaks = append(leaks, p)
	}
	for _, s := range leaks {
		if s != "" && strings.Contains(text, s) {
			t.Errorf("node %s: its config holds %q:\n%s", n.name, s, text)
		}
	}
	if want != c.listen {
		_, port, _ := net.SplitHostPort(c.listen)
		if regexp.MustCompile(`:` + port + `\b`).MatchString(text) {
			t.Errorf("node %s: its config names the dispatcher's listen port %s:\n%s", n.name, port, text)
		}
	}
	cfg, err := orchestrator.Parse(path, data)
	if err != nil {
		t.Fatalf("node %s: its config does not parse: %v\n%s", n.name, err, text)
	}
	if cfg.Database.URL != "" {
		t.Errorf("node %s: its config has a database URL", n.name)
	}
	if len(cfg.Nodes) != 1 || cfg.Nodes[0].Name != n.name {
		t.Fatalf("node %s: its config has nodes %+v; want itself alone", n.name, cfg.Nodes)
	}
	if got := cfg.WorkerDispatchers(cfg.Nodes[0]); !slices.Equal(got, []string{want}) || !slices.Equal(cfg.Worker.Dispatchers, []string{want}) {
		t.Errorf("node %s: its workers dial %v ([worker] dispatchers %v); want [%s] alone", n.name, got, cfg.Worker.Dispatchers, want)
	}
	if cfg.Worker.Secret != c.secret() {
		t.Errorf("node %s: its config does not hold the cluster's worker secret", n.name)
	}
	if _, ok := cfg.Job(upJob); !ok {
		t.Errorf("node %s: its config lacks the job %s its workers run:\n%s", n.name, upJob, text)
	}
}

// background is a pampactl command that runs until cancelled (up,
// dispatcher run). It is cancelled, and waited for, when the test ends.
type background struct {
	t      *testing.T
	name   string
	cancel context.CancelFunc
	done   chan struct{} // closed once it returned, res set
	res    result
}

func startBackground(t *testing.T, cli func(ctx context.Context, args ...string) result, args ...string) *background {
	ctx, cancel := context.WithCancel(context.Background())
	b := &background{t: t, name: strings.Join(args[:min(2, len(args))], " "), cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(b.done)
		b.res = cli(ctx, args...)
	}()
	// Before the workers are stopped and the schema dropped (cleanups run
	// last first), so that it does not run on without them.
	t.Cleanup(func() {
		cancel()
		select {
		case <-b.done:
		case <-time.After(30 * time.Second):
			t.Errorf("%s did not return within 30s of being cancelled", b.name)
		}
		if t.Failed() {
			select {
			case <-b.done:
				t.Logf("%s:\n%s", b.name, b.res)
			default:
			}
		}
	})
	return b
}

// running fails the test if the command returned already.
func (b *background) running() {
	b.t.Helper()
	select {
	case <-b.done:
		b.t.Fatalf("%s returned before it was cancelled:\n%s", b.name, b.res)
	default:
	}
}

// stop cancels the command and returns what it did; it must end, as
// interrupted commands do, with exit 0 or ExitInterrupted.
func (b *background) stop() result {
	b.t.Helper()
	b.cancel()
	select {
	case <-b.done:
	case <-time.After(30 * time.Second):
		b.t.Fatalf("%s did not return within 30s of being cancelled", b.name)
	}
	r := b.res
	if r.code != 0 && r.code != pampacli.ExitInterrupted {
		b.t.Fatalf("%s after cancel: want exit 0 or %d\n%s", b.name, pampacli.ExitInterrupted, r)
	}
	return r
}

// waitRowsDoneBy waits until every one of the rows of items ended with
// success, all reserved by workers of node n and their output (result_sql)
// naming one, while b runs; then checks that the step ran in n's work dir
// for each row, by n's workers.
func waitRowsDoneBy(t *testing.T, conn *pgx.Conn, rows int, n node, b *background) {
	t.Helper()
	count := fmt.Sprintf(`select count(*) filter (where done and ran_by like $1),
  count(*) filter (where %[1]s_success and %[1]s_end_time is not null),
  count(*) filter (where %[1]s_reservation_id like $1) from items`, upJob)
	poll(t, n.name+"'s workers process every row", func() string {
		b.running()
		var nDone, nOK, nByNode int
		if err := conn.QueryRow(t.Context(), count, n.name+".%").Scan(&nDone, &nOK, &nByNode); err != nil {
			t.Fatal(err)
		}
		if nDone != rows || nOK != rows || nByNode != rows {
			return fmt.Sprintf("of %d rows, %d done by %s's workers (their output stored by result_sql), %d ended with success, %d reserved by %s's workers",
				rows, nDone, n.name, nOK, nByNode, n.name)
		}
		return ""
	})
	// The step writes before it reports: every row is in the log by now.
	data, err := os.ReadFile(filepath.Join(n.workDir, stepsLog))
	if err != nil {
		t.Fatalf("the step's log in %s's work dir: %v", n.name, err)
	}
	ran := map[int]bool{}
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		key, worker, _ := strings.Cut(line, " ")
		k, err := strconv.Atoi(key)
		if err != nil || !strings.HasPrefix(worker, n.name+".") {
			t.Fatalf("%s's %s: line %q; want a key and a worker of %s", n.name, stepsLog, line, n.name)
		}
		ran[k] = true
	}
	for k := 1; k <= rows; k++ {
		if !ran[k] {
			t.Fatalf("the step of row %d did not run in %s's work dir (%d of %d rows did)", k, n.name, len(ran), rows)
		}
	}
}

// waitOnlyThroughTunnel waits until each worker holds a connection to
// the tunnel's end on the node, 127.0.0.1:port, and to nothing else (not
// the dispatcher's listener, not the database): the tunnel is their way
// to the dispatcher.
func waitOnlyThroughTunnel(t *testing.T, port int, pids map[string]int) {
	t.Helper()
	want := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	for id, pid := range pids {
		poll(t, "worker "+id+" is connected through the tunnel alone", func() string {
			peers, err := tcpPeers(pid)
			if err != nil {
				t.Fatalf("worker %s (pid %d): %v", id, pid, err)
			}
			if len(peers) == 0 || slices.ContainsFunc(peers, func(p string) bool { return p != want }) {
				return fmt.Sprintf("pid %d's TCP peers are %v; want %s alone", pid, peers, want)
			}
			return ""
		})
	}
}

// waitTunnelClosed waits until nothing accepts connections on the
// node's end of a tunnel.
func waitTunnelClosed(t *testing.T, what string, port int) {
	t.Helper()
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	poll(t, what, func() string {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return ""
		}
		c.Close()
		return addr + " still accepts connections"
	})
}

// tcpPeers lists the remote addresses of pid's established TCP
// connections, IPv4 and IPv6, from /proc.
func tcpPeers(pid int) ([]string, error) {
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
	var peers []string
	for _, table := range []string{"tcp", "tcp6"} {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", pid, table))
		if errors.Is(err, fs.ErrNotExist) && table == "tcp6" {
			continue // no IPv6
		}
		if err != nil {
			return nil, fmt.Errorf("read %s table: %w", table, err)
		}
		for _, line := range strings.Split(string(data), "\n")[1:] {
			f := strings.Fields(line)
			// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
			if len(f) < 10 || !inodes[f[9]] || f[3] != "01" { // 01: ESTABLISHED
				continue
			}
			addr, err := procAddr(f[2])
			if err != nil {
				return nil, fmt.Errorf("%s table line %q: %w", table, line, err)
			}
			peers = append(peers, addr)
		}
	}
	return peers, nil
}

// procAddr decodes an address of /proc/net/tcp{,6}: hex 32-bit words in
// host (here little-endian) order, a colon, the port in hex.
func procAddr(s string) (string, error) {
	hexIP, hexPort, ok := strings.Cut(s, ":")
	if !ok {
		return "", fmt.Errorf("address %q: no port", s)
	}
	ip, err := hex.DecodeString(hexIP)
	if err != nil || (len(ip) != net.IPv4len && len(ip) != net.IPv6len) {
		return "", fmt.Errorf("address %q: bad IP", s)
	}
	for i := 0; i < len(ip); i += 4 {
		ip[i], ip[i+1], ip[i+2], ip[i+3] = ip[i+3], ip[i+2], ip[i+1], ip[i]
	}
	port, err := strconv.ParseUint(hexPort, 16, 16)
	if err != nil {
		return "", fmt.Errorf("address %q: bad port", s)
	}
	return net.JoinHostPort(net.IP(ip).String(), strconv.Itoa(int(port))), nil
}

// TestUp runs `pampactl up` against a node whose workers can reach the
// dispatcher only through the tunnel: the config deployed to the node
// names 127.0.0.1:tunnel_port alone, holds no database URL, and the
// workers' only TCP connections go there. Every row completing, its step
// run in the node's work dir by the node's workers, proves the tunnel
// carried the worker protocol. Cancelling up stops the dispatcher and
// closes the tunnel; the workers keep running, as documented, until
// `pampactl down`.
func TestUp(t *testing.T) {
	t.Parallel()
	const rows = 300
	bin := pampactlBinary(t)
	srv := sshtest.StartSSHD(t)
	dbURL := pgtest.Schema(t)
	createItems(t, dbURL, rows)

	n := tunnelNode{sshNode(t, "w1", srv), unusedPort(t)}
	c := newCluster(t, srv, dbURL, n)
	up := startBackground(t, c.cli, "up", "--binary", bin)
	waitRowsDoneBy(t, c.conn, rows, n.node, up)

	// The workers that did it are the ones up started on the node, and they
	// are registered under the pids of their pid files.
	pids := map[string]int{}
	for _, id := range []string{"w1.1", "w1.2"} {
		pids[id] = pidOf(t, n.workDir, id)
		if !alive(pids[id]) {
			t.Fatalf("worker %s (pid %d) is not running", id, pids[id])
		}
	}
	// One may have done every row before the other reached the dispatcher.
	poll(t, "both workers registered under their pids", func() string {
		reg := workerRows(t, dbURL)
		for id, pid := range pids {
			if w := reg[id]; w.State != dispatcher.StateAlive || w.PID != pid {
				return fmt.Sprintf("registry has %s as %+v; want alive with pid %d", id, w, pid)
			}
		}
		return ""
	})
	// up created the worker secret and deployed the node a config of its
	// own: the tunnel is the one way to the dispatcher it names, and it
	// holds nothing of the database. The workers hold their stream through
	// the tunnel, and no other connection.
	c.checkNodeConfig(n.node, n.tunnelAddr())
	waitOnlyThroughTunnel(t, n.port, pids)

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
	waitTunnelClosed(t, "the tunnel closes with up", n.port)
	// ...and the workers keep running (usage: "workers keep running when it
	// stops: pampactl down stops them").
	st := c.cli(t.Context(), "workers", "status", "--json")
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

	down := c.cli(t.Context(), "down")
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

// TestUpTunnelPortTaken: one node's tunnel cannot open, as something else
// holds its port on the node. up warns, naming that node, starts no worker
// there (a worker would hand the worker secret to whatever holds the
// port), keeps the other node's tunnel open, and that node's workers
// process every row.
func TestUpTunnelPortTaken(t *testing.T) {
	t.Parallel()
	const rows = 200
	bin := pampactlBinary(t)
	srv := sshtest.StartSSHD(t)
	dbURL := pgtest.Schema(t)
	createItems(t, dbURL, rows)

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
	w1 := tunnelNode{sshNode(t, "w1", srv), unusedPort(t)}
	w2 := tunnelNode{sshNode(t, "w2", srv), squatter.Addr().(*net.TCPAddr).Port}
	c := newCluster(t, srv, dbURL, w1, w2)
	up := startBackground(t, c.cli, "up", "--binary", bin)
	waitRowsDoneBy(t, c.conn, rows, w1.node, up)
	pids := map[string]int{"w1.1": pidOf(t, w1.workDir, "w1.1"), "w1.2": pidOf(t, w1.workDir, "w1.2")}
	waitOnlyThroughTunnel(t, w1.port, pids)
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
	if reg := workerRows(t, dbURL); len(reg) != 2 || reg["w1.1"].ID == "" || reg["w1.2"].ID == "" {
		t.Errorf("registry %+v; want w1.1 and w1.2 alone", reg)
	}
	if n := squatted.Load(); n != 0 {
		t.Errorf("%d connections reached what holds w2's tunnel port", n)
	}
	if down := c.cli(t.Context(), "down"); down.code != 0 {
		t.Fatalf("down:\n%s", down)
	}
	waitGone(t, "down", pids)
}

// TestDeployRestart: `nodes deploy` of a changed config and binary leaves
// running workers alone, and `workers status` calls them stale; a later
// `nodes deploy --restart` with nothing to upload restarts exactly the
// stale ones (new pids, which register with the dispatcher and
// heart-beat); with --restart a change restarts every running worker;
// with --restart, nothing changed and nothing stale, it restarts nothing.
// The node has no tunnel: its workers dial [dispatcher] addresses, by
// default the listen address, which works as the node is this machine.
func TestDeployRestart(t *testing.T) {
	t.Parallel()
	bin := pampactlBinary(t)
	srv := sshtest.StartSSHD(t)
	dbURL := pgtest.Schema(t)
	createItems(t, dbURL, 10)
	n := sshNode(t, "w1", srv)
	c := newCluster(t, srv, dbURL, tunnelNode{node: n})
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
		r := c.must(append([]string{"nodes", "deploy", "--json"}, args...)...)
		var d []deployed
		if err := json.Unmarshal([]byte(r.stdout), &d); err != nil || len(d) != 1 {
			t.Fatalf("nodes deploy --json: %v\n%s", err, r)
		}
		return d[0]
	}
	// change edits what the node's config is made of: the grace period,
	// which is in it.
	grace := 1
	change := func() {
		t.Helper()
		old := fmt.Sprintf("grace_period = %q", strconv.Itoa(grace)+"s")
		grace++
		text := strings.Replace(c.text, old, fmt.Sprintf("grace_period = %q", strconv.Itoa(grace)+"s"), 1)
		if text == c.text {
			t.Fatalf("no %s in the cluster file", old)
		}
		c.write(text)
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
	var disp *background
	// registered waits until the dispatcher has each worker alive in the
	// registry under the given pid and heart-beating since it registered.
	registered := func(what string, pids map[string]int) {
		t.Helper()
		poll(t, what, func() string {
			disp.running()
			for _, id := range ids {
				var pid int
				var state string
				var beat bool
				err := c.conn.QueryRow(t.Context(), `select pid, state, heartbeat_at > started_at from pampa_workers where id = $1`, id).Scan(&pid, &state, &beat)
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
	remoteBin := filepath.Join(n.workDir, orchestrator.RemoteBinary)

	if d := deploy("--binary", bin); !d.BinaryUploaded || !d.ConfigUploaded || len(d.Restarted) != 0 {
		t.Fatalf("first deploy: %+v", d)
	}
	c.checkNodeConfig(n, c.listen)
	disp = startBackground(t, c.cli, "dispatcher", "run")
	c.must("workers", "start")
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
	change()
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
		r := c.must("workers", "status", "--json")
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
	r := c.must("workers", "status")
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
	c.must("workers", "start")
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
	change()
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
	// The workers did their work through the dispatcher all along.
	waitRowsDoneBy(t, c.conn, 10, n, disp)
	disp.stop()
}
