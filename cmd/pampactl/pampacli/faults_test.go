package pampacli_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	polling "github.com/pampa-go/pampa/internal/poll"

	"github.com/jackc/pgx/v5"

	"github.com/pampa-go/pampa/internal/pgtest"
)

// These tests kill or cut real processes mid-run and count what ran. The
// step appends its row's key to ok.log as its last act, so a key twice in
// ok.log is a row whose step succeeded twice.

// rig is a table of rows, a config whose job runs step, and the processes
// (dispatchers, workers) a test starts: this test binary run as pampactl.
type rig struct {
	t      *testing.T
	dir    string
	cfg    string
	conn   *pgx.Conn
	rows   int
	listen []string // dispatcher addresses, in order
	procs  []*exec.Cmd
}

const rigConfig = `[database]
url = %q
url_env = ""

[dispatcher]
listen = %q
addresses = [%s]
delay = "200ms"
log_file = ""
heartbeat_timeout = "4s"

[worker]
heartbeat_interval = "200ms"
grace_period = "2s"

[[nodes]]
name = "local"
net_remote_ip = "local"
max_workers = %d
work_dir = %q

[[jobs]]
name = "work"
table = "tasks"
queue_size = 20
max_pending_tasks = 10
max_try_times = 5
command = ["sh", "-c", %q]
`

func newRig(t *testing.T, rows, workers, dispatchers int, step string) *rig {
	t.Helper()
	return newRigAt(t, pgtest.Schema(t), rows, workers, dispatchers, step)
}

// newRigAt is newRig on the database at url.
func newRigAt(t *testing.T, url string, rows, workers, dispatchers int, step string) *rig {
	t.Helper()
	ctx := t.Context()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	if _, err := conn.Exec(ctx, fmt.Sprintf(`create table tasks (id bigint primary key);
insert into tasks select generate_series(1, %d)`, rows)); err != nil {
		t.Fatal(err)
	}
	r := &rig{t: t, dir: t.TempDir(), conn: conn, rows: rows}
	var quoted []string
	for range dispatchers {
		a := freeAddr(t)
		r.listen = append(r.listen, a)
		quoted = append(quoted, strconv.Quote(a))
	}
	step = strings.ReplaceAll(step, "OK", filepath.Join(r.dir, "ok.log"))
	r.cfg = filepath.Join(r.dir, "cluster.toml")
	text := fmt.Sprintf(rigConfig, url, r.listen[0], strings.Join(quoted, ", "), workers, r.dir, step)
	if err := os.WriteFile(r.cfg, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	// The secret `dispatcher run` would create: workers may start first.
	if err := os.WriteFile(filepath.Join(r.dir, "pampa.secret"), []byte(strings.Repeat("k", 32)), 0o600); err != nil {
		t.Fatal(err)
	}
	if res := pampactl(ctx, t, nil, "--config", r.cfg, "db", "setup"); res.code != 0 {
		t.Fatalf("db setup: %s", res)
	}
	t.Cleanup(func() {
		for _, p := range r.procs {
			_ = p.Process.Kill()
			_ = p.Wait()
		}
	})
	return r
}

// start runs pampactl as a child process that dies with the test, its
// output in dir/name.log.
func (r *rig) start(name string, args ...string) *exec.Cmd {
	r.t.Helper()
	cmd := exec.Command(os.Args[0], append([]string{"--config", r.cfg}, args...)...)
	cmd.Dir = r.dir
	cmd.Env = append(os.Environ(), quickLogEnv+"="+filepath.Join(r.dir, "ok.log"))
	logf, err := os.OpenFile(filepath.Join(r.dir, name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		r.t.Fatal(err)
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		r.t.Fatal(err)
	}
	r.procs = append(r.procs, cmd)
	return cmd
}

func (r *rig) dispatcher(i int, extra ...string) *exec.Cmd {
	return r.start(fmt.Sprintf("dispatcher%d", i), append([]string{"dispatcher", "run", "--no-log-file", "--no-tunnels", "--listen", r.listen[i]}, extra...)...)
}

func (r *rig) worker(id string) *exec.Cmd {
	return r.start("worker."+id, "worker", "run", "--no-log-file", "--id", id)
}

func (r *rig) kill(cmd *exec.Cmd) {
	r.t.Helper()
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		r.t.Fatal(err)
	}
	_ = cmd.Wait()
}

func (r *rig) count(sql string) int {
	r.t.Helper()
	var n int
	if err := r.conn.QueryRow(r.t.Context(), sql).Scan(&n); err != nil {
		r.t.Fatal(err)
	}
	return n
}

func (r *rig) succeeded() int {
	return r.count(`select count(*) from tasks where work_end_time is not null and work_success`)
}

func (r *rig) logs() string {
	files, _ := filepath.Glob(filepath.Join(r.dir, "*.log"))
	var b strings.Builder
	for _, f := range files {
		if filepath.Base(f) == "ok.log" {
			continue
		}
		data, _ := os.ReadFile(f)
		if len(data) > 3000 {
			data = data[len(data)-3000:]
		}
		fmt.Fprintf(&b, "==> %s <==\n%s\n", filepath.Base(f), data)
	}
	// Where the rows stand, to tell a step that never ran from an outcome
	// that never got written.
	ok, _ := os.ReadFile(filepath.Join(r.dir, "ok.log"))
	fmt.Fprintf(&b, "==> ok.log: %d successful steps <==\n", strings.Count(string(ok), "\n"))
	if rows, err := r.conn.Query(context.Background(), `select work_reservation_id is not null, work_start_time is not null,
  work_end_time is not null, coalesce(work_success, false), coalesce(work_reservation_times, 0), count(*)
from tasks group by 1, 2, 3, 4, 5 order by 1, 2, 3, 4, 5`); err == nil {
		b.WriteString("reserved started ended success attempts rows\n")
		for rows.Next() {
			var reserved, started, ended, success bool
			var attempts, n int
			if rows.Scan(&reserved, &started, &ended, &success, &attempts, &n) == nil {
				fmt.Fprintf(&b, "%v %v %v %v %d %d\n", reserved, started, ended, success, attempts, n)
			}
		}
		rows.Close()
	}
	return b.String()
}

func (r *rig) waitSucceeded(n int, within time.Duration) {
	r.t.Helper()
	polling.Until(r.t, fmt.Sprintf("%d rows succeeded within %s", n, within), within, func() string {
		if got := r.succeeded(); got < n {
			return fmt.Sprintf("%d succeeded\n%s", got, r.logs())
		}
		return ""
	})
}

// check asserts what users depend on: every row succeeded, none is left
// queued or running, and no row's step succeeded twice.
func (r *rig) check() {
	r.t.Helper()
	r.waitSucceeded(r.rows, 90*time.Second)
	if n := r.count(`select count(*) from tasks where work_reservation_id is not null and work_end_time is null`); n != 0 {
		r.t.Errorf("%d rows are still queued or running", n)
	}
	if n := r.count(`select count(*) from tasks where work_start_time is null or work_start_time > work_end_time`); n != 0 {
		r.t.Errorf("%d rows have no start mark, or one after their end", n)
	}
	f, err := os.Open(filepath.Join(r.dir, "ok.log"))
	if err != nil {
		r.t.Fatal(err)
	}
	defer f.Close()
	runs := map[string]int{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		runs[strings.TrimSpace(sc.Text())]++
	}
	twice := 0
	for key, n := range runs {
		if n > 1 {
			twice++
			if twice <= 5 {
				r.t.Errorf("row %s: its step succeeded %d times", key, n)
			}
		}
	}
	if twice > 0 || len(runs) != r.rows {
		r.t.Fatalf("%d rows succeeded more than once; %d distinct rows ran, want %d\n%s", twice, len(runs), r.rows, r.logs())
	}
}

// A dispatcher killed with SIGKILL mid-run and started again: the workers
// keep their rows and outcomes, reconnect, and nothing is lost or doubled.
func TestFaultDispatcherKilledAndRestarted(t *testing.T) {
	t.Parallel()
	r := newRig(t, 1500, 4, 1, "sleep 0.005; echo $PAMPA_TASK_ID >> OK")
	d := r.dispatcher(0)
	for i := 1; i <= 4; i++ {
		r.worker(fmt.Sprintf("local.%d", i))
	}
	r.waitSucceeded(300, 60*time.Second)
	r.kill(d)
	before := r.succeeded()
	time.Sleep(500 * time.Millisecond) // workers go on with their rows meanwhile
	r.dispatcher(0)
	r.check()
	t.Logf("%d rows had succeeded when the dispatcher was killed", before)
}

// The same with a step that takes no time, so that the workers hold spare
// rows when the dispatcher dies: those rows are reserved for them in the
// table and were never sent; the restarted dispatcher frees them, and
// still no row is lost or doubled.
func TestFaultDispatcherKilledWhileWorkersHoldSpares(t *testing.T) {
	t.Parallel()
	r := newRig(t, 30000, 4, 1, "")
	text, _ := os.ReadFile(r.cfg)
	quick := strings.Replace(strings.Replace(string(text), `command = ["sh", "-c", ""]`+"\n", "", 1),
		`name = "work"`, "name = \"quick\"\nfield_prefix = \"work\"", 1)
	if err := os.WriteFile(r.cfg, []byte(quick), 0o600); err != nil {
		t.Fatal(err)
	}
	d := r.dispatcher(0)
	for i := 1; i <= 4; i++ {
		r.worker(fmt.Sprintf("local.%d", i))
	}
	// Far more rows reserved for a worker than its queue_size (20): spares
	// (100). Up to twice the queue can look reserved without them, while
	// ended rows' marks and the next queue's reservation commit apart.
	polling.Until(t, "a worker with spare rows", 60*time.Second, func() string {
		most := r.count(`select coalesce(max(n), 0) from (select count(*) as n from tasks
  where work_reservation_id is not null and work_start_time is null group by work_reservation_id) as q`)
		if most <= 2*20+50 {
			return fmt.Sprintf("at most %d rows reserved per worker, %d rows succeeded", most, r.succeeded())
		}
		return ""
	})
	r.kill(d)
	before := r.succeeded()
	time.Sleep(500 * time.Millisecond)
	r.dispatcher(0)
	r.check()
	t.Logf("%d rows had succeeded when the dispatcher was killed with spares out", before)
}

// Two dispatchers at once: the second stands by, and takes over when the
// leader is killed; workers move to it by themselves.
func TestFaultStandbyTakesOverFromKilledLeader(t *testing.T) {
	t.Parallel()
	r := newRig(t, 1200, 3, 2, "sleep 0.005; echo $PAMPA_TASK_ID >> OK")
	leader := r.dispatcher(0)
	r.waitLog("dispatcher0", "dispatcher is the leader", 30*time.Second)
	r.dispatcher(1)
	r.waitLog("dispatcher1", "standing by", 30*time.Second)
	for i := 1; i <= 3; i++ {
		r.worker(fmt.Sprintf("local.%d", i))
	}
	r.waitSucceeded(200, 60*time.Second)
	r.kill(leader)
	r.check()
	r.waitLog("dispatcher1", "dispatcher is the leader", time.Second)
}

func (r *rig) waitLog(name, text string, within time.Duration) {
	r.t.Helper()
	polling.Until(r.t, fmt.Sprintf("%s logged %q within %s", name, text, within), within, func() string {
		if b, _ := os.ReadFile(filepath.Join(r.dir, name+".log")); !strings.Contains(string(b), text) {
			return "not yet\n" + r.logs()
		}
		return ""
	})
}

// A worker killed with SIGKILL during a long step: the step's processes die
// with it (its grandchild too, killed by the next worker under that id),
// and the row runs again to one success.
func TestFaultWorkerKilledDuringLongStep(t *testing.T) {
	t.Parallel()
	// Row 1's first attempt hangs with a grandchild; the others are quick.
	const step = `if [ "$PAMPA_TASK_ID" = 1 ] && [ "$PAMPA_ATTEMPT" = 1 ]; then
  sleep 120 & echo $! > GRANDCHILD; echo $$ > LEADER; wait; fi
echo $PAMPA_TASK_ID >> OK`
	r := newRig(t, 6, 1, 1, "")
	s := strings.NewReplacer("GRANDCHILD", filepath.Join(r.dir, "grandchild.pid"), "LEADER", filepath.Join(r.dir, "leader.pid"),
		"OK", filepath.Join(r.dir, "ok.log")).Replace(step)
	text, _ := os.ReadFile(r.cfg)
	text = []byte(strings.Replace(string(text), `command = ["sh", "-c", ""]`, `command = ["sh", "-c", `+strconv.Quote(s)+`]`, 1))
	if err := os.WriteFile(r.cfg, text, 0o600); err != nil {
		t.Fatal(err)
	}
	r.dispatcher(0)
	w := r.worker("local.1")
	pidIn := func(name string) int {
		var pid int
		polling.Until(t, "a pid in "+name, 30*time.Second, func() string {
			b, _ := os.ReadFile(filepath.Join(r.dir, name))
			first, _, _ := strings.Cut(strings.TrimSpace(string(b)), " ")
			if pid, _ = strconv.Atoi(first); pid <= 0 {
				return "none yet\n" + r.logs()
			}
			return ""
		})
		return pid
	}
	leader, grandchild := pidIn("leader.pid"), pidIn("grandchild.pid")
	pidIn("run/local.1.steps") // the worker recorded the step's process group
	// and the dispatcher its start: an attempt it never heard of may run
	// again under the same number (at-least-once), and this one hangs.
	polling.Until(t, "row 1's start mark", 30*time.Second, func() string {
		if r.count(`select count(*) from tasks where id = 1 and work_start_time is not null`) == 0 {
			return "not yet\n" + r.logs()
		}
		return ""
	})
	r.kill(w)
	waitGone := func(what string, pid int) {
		polling.Until(t, what+" died with its worker", 10*time.Second, func() string {
			if alive(pid) {
				return fmt.Sprintf("pid %d still runs", pid)
			}
			return ""
		})
	}
	waitGone("the step", leader)
	if !alive(grandchild) {
		t.Log("the step's grandchild died with it already")
	}
	r.worker("local.1")
	waitGone("the step's grandchild", grandchild)
	r.check()
	if n := r.count(`select work_reservation_times from tasks where id = 1`); n != 2 {
		t.Errorf("row 1 took %d attempts, want 2 (the killed one and the one that succeeded)", n)
	}
}
