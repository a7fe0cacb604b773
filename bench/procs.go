package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pampa-go/pampa/dispatcher"
)

// benchctl is the pampactl build of bench/benchctl: pampacli.Main with the
// no-op handler registered for the bench job. The fan-in, load and idle
// scenarios run it as the dispatcher and as worker processes. It is built
// as `make dist` builds what `nodes deploy` pushes (CGO_ENABLED=0,
// -trimpath); the idle scenario also runs a default (cgo) build, as `make
// build` makes bin/pampactl, and bench/leanworker, a worker and nothing
// else.
type benchctl struct {
	bin     string // CGO_ENABLED=0 -trimpath, as make dist
	cgoBin  string // go build's defaults, as make build
	leanBin string // bench/leanworker, CGO_ENABLED=0 -trimpath
	dir     string // temporary directory of the builds, the configs and the secrets
	// profileDir, when set, receives CPU and heap profiles of the
	// dispatcher processes, named after their cluster.
	profileDir string
}

// buildBenchctl builds bench/benchctl and bench/leanworker into a
// temporary directory.
func buildBenchctl(ctx context.Context) (*benchctl, error) {
	dir, err := os.MkdirTemp("", "pampabench-")
	if err != nil {
		return nil, err
	}
	b := &benchctl{bin: filepath.Join(dir, "benchctl"), cgoBin: filepath.Join(dir, "benchctl-cgo"),
		leanBin: filepath.Join(dir, "leanworker"), dir: dir}
	for _, t := range []struct {
		out, pkg string
		static   bool
	}{{b.bin, "./benchctl", true}, {b.cgoBin, "./benchctl", false}, {b.leanBin, "./leanworker", true}} {
		args := []string{"build", "-o", t.out}
		if t.static {
			args = append(args, "-trimpath")
		}
		build := exec.CommandContext(ctx, "go", append(args, t.pkg)...)
		if t.static {
			build.Env = append(os.Environ(), "CGO_ENABLED=0")
		}
		if out, err := build.CombinedOutput(); err != nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("go %s: %w\n%s", strings.Join(build.Args[1:], " "), err, out)
		}
	}
	return b, nil
}

func (b *benchctl) close() { os.RemoveAll(b.dir) }

// childConfig is the cluster.toml of the child processes: fmt verbs are the
// database URL, the listen address, the secret file, max_workers, the work
// directory and queue_size.
const childConfig = `[database]
url = %q
url_env = ""

[dispatcher]
delay = %q
log_file = ""
listen = %q
secret_file = %q
secret_env = ""

[worker]
log_file = ""
grace_period = "5s"

[[nodes]]
name = "local"
net_remote_ip = "local"
max_workers = %d
work_dir = %q

[[jobs]]
name = "bench"
table = "tasks"
field_prefix = "bench"
queue_size = %d
`

// cluster files for one scenario: config, secret, listen address.
type childCluster struct {
	dir, config, addr string
	secret            []byte
}

// writeChildCluster writes a config and a secret (mode 0600, before any
// process starts) for a dispatcher listening on a free loopback port.
func (b *benchctl) writeChildCluster(name, dbURL string, maxWorkers, queueSize int) (*childCluster, error) {
	dir := filepath.Join(b.dir, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	addr, err := freePort()
	if err != nil {
		return nil, err
	}
	raw := make([]byte, 32)
	_, _ = rand.Read(raw)
	secret := []byte(base64.RawURLEncoding.EncodeToString(raw))
	secretFile := filepath.Join(dir, "pampa.secret")
	if err := os.WriteFile(secretFile, secret, 0o600); err != nil {
		return nil, err
	}
	cfg := filepath.Join(dir, "cluster.toml")
	text := fmt.Sprintf(childConfig, dbURL, dispatcherDelay.String(), addr, secretFile, maxWorkers, dir, queueSize)
	if err := os.WriteFile(cfg, []byte(text), 0o600); err != nil {
		return nil, err
	}
	return &childCluster{dir: dir, config: cfg, addr: addr, secret: secret}, nil
}

// freePort returns a loopback address nobody listens on just now.
func freePort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// child is a process the harness started; it dies with the harness
// (Pdeathsig).
type child struct {
	cmd    *exec.Cmd
	exited chan struct{}
	err    error // after exited
}

func startChild(bin string, args, env []string, stderr io.Writer) (*child, error) {
	cmd := exec.Command(bin, args...)
	cmd.Env = env
	cmd.Stdout = stderr
	cmd.Stderr = stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	c := &child{cmd: cmd, exited: make(chan struct{})}
	go func() { c.err = cmd.Wait(); close(c.exited) }()
	return c, nil
}

func (c *child) pid() int { return c.cmd.Process.Pid }

func (c *child) alive() bool {
	select {
	case <-c.exited:
		return false
	default:
		return true
	}
}

// stop sends SIGTERM and waits up to grace, then kills.
func (c *child) stop(grace time.Duration) {
	if !c.alive() {
		return
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.exited:
	case <-time.After(grace):
		_ = c.cmd.Process.Kill()
		<-c.exited
	}
}

// stopAll stops many children at once: SIGTERM to all, then wait.
func stopAll(cs []*child, grace time.Duration) {
	for _, c := range cs {
		if c.alive() {
			_ = c.cmd.Process.Signal(syscall.SIGTERM)
		}
	}
	deadline := time.After(grace)
	for _, c := range cs {
		select {
		case <-c.exited:
		case <-deadline:
			for _, c := range cs {
				if c.alive() {
					_ = c.cmd.Process.Kill()
				}
			}
			for _, c := range cs {
				<-c.exited
			}
			return
		}
	}
}

// dispatcherChild is `benchctl dispatcher run` with its stderr watched:
// the protocol server logs each stream it accepts and ends, which is how
// the harness counts connected workers while the dispatcher's loop waits
// for the table lock.
type dispatcherChild struct {
	*child
	connected atomic.Int64
	leader    atomic.Bool
	mu        sync.Mutex
	tail      []string // last lines of its log
	done      chan struct{}
}

func (b *benchctl) startDispatcher(cc *childCluster, env []string) (*dispatcherChild, error) {
	if b.profileDir != "" {
		name := filepath.Base(cc.dir)
		env = append(env, "BENCHCTL_CPUPROFILE="+filepath.Join(b.profileDir, "cpu-"+name+".prof"),
			"BENCHCTL_HEAPPROFILE="+filepath.Join(b.profileDir, "heap-"+name+".prof"))
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	c, err := startChild(b.bin, []string{"--config", cc.config, "dispatcher", "run", "--no-log-file", "--no-tunnels"}, env, pw)
	pw.Close()
	if err != nil {
		pr.Close()
		return nil, err
	}
	d := &dispatcherChild{child: c, done: make(chan struct{})}
	go func() {
		defer close(d.done)
		defer pr.Close()
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			switch {
			case strings.Contains(line, `msg="`+msgConnected+`"`):
				d.connected.Add(1)
			case strings.Contains(line, `msg="`+msgDisconnected+`"`):
				d.connected.Add(-1)
			case strings.Contains(line, `msg="`+msgLeader+`"`):
				d.leader.Store(true)
			}
			d.mu.Lock()
			d.tail = append(d.tail, line)
			if len(d.tail) > 40 {
				d.tail = d.tail[len(d.tail)-40:]
			}
			d.mu.Unlock()
		}
	}()
	return d, nil
}

// heapProfile asks the dispatcher for a heap profile (when profiling).
func (d *dispatcherChild) heapProfile(b *benchctl) {
	if b.profileDir != "" && d.alive() {
		_ = d.cmd.Process.Signal(syscall.SIGUSR1)
		time.Sleep(time.Second)
	}
}

func (d *dispatcherChild) log() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return strings.Join(d.tail, "\n")
}

// waitLeading waits until the dispatcher has taken the lease and accepts
// workers (its log says so): workers that came earlier would be refused and
// back off.
func waitLeading(ctx context.Context, d *dispatcherChild, limit time.Duration) error {
	wctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	err := waitFor(wctx, 5*time.Millisecond, func() (bool, error) {
		if !d.alive() {
			return false, fmt.Errorf("dispatcher exited: %v\n%s", d.err, d.log())
		}
		return d.leader.Load(), nil
	})
	if err != nil {
		return fmt.Errorf("wait for the dispatcher to lead: %w\n%s", err, d.log())
	}
	return nil
}

// waitStreams waits until the dispatcher has accepted n worker streams.
func (d *dispatcherChild) waitStreams(ctx context.Context, n int, limit time.Duration, check func() error) error {
	wctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	err := waitFor(wctx, 20*time.Millisecond, func() (bool, error) {
		if !d.alive() {
			return false, fmt.Errorf("dispatcher exited: %v\n%s", d.err, d.log())
		}
		if check != nil {
			if err := check(); err != nil {
				return false, err
			}
		}
		return d.connected.Load() >= int64(n), nil
	})
	if err != nil {
		return fmt.Errorf("wait for %d worker streams (%d up): %w", n, d.connected.Load(), err)
	}
	return nil
}

// childEnv is this process's environment without PAMPA_ variables, so the
// children read only the generated config, plus extra.
func childEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PAMPA_") && !strings.HasPrefix(kv, "GOGC=") &&
			!strings.HasPrefix(kv, "GOMEMLIMIT=") && !strings.HasPrefix(kv, "GOMAXPROCS=") {
			env = append(env, kv)
		}
	}
	return append(env, extra...)
}

// procMem is the memory of a process from /proc/PID/status and
// smaps_rollup, in KiB.
type procMem struct {
	RSS, HWM, Anon, File, Pss int64
}

func readProcMem(pid int) (procMem, error) {
	var m procMem
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return m, err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		switch k {
		case "VmRSS":
			m.RSS = n
		case "VmHWM":
			m.HWM = n
		case "RssAnon":
			m.Anon = n
		case "RssFile":
			m.File = n
		}
	}
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid)); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if rest, ok := strings.CutPrefix(line, "Pss:"); ok {
				m.Pss, _ = strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			}
		}
	}
	return m, nil
}

// meanMem averages the memory of processes.
func meanMem(pids []int) (procMem, int, error) {
	var sum procMem
	n := 0
	for _, pid := range pids {
		m, err := readProcMem(pid)
		if err != nil {
			continue
		}
		sum.RSS += m.RSS
		sum.HWM += m.HWM
		sum.Anon += m.Anon
		sum.File += m.File
		sum.Pss += m.Pss
		n++
	}
	if n == 0 {
		return sum, 0, fmt.Errorf("no process of %d to read", len(pids))
	}
	k := int64(n)
	return procMem{RSS: sum.RSS / k, HWM: sum.HWM / k, Anon: sum.Anon / k, File: sum.File / k, Pss: sum.Pss / k}, n, nil
}

// procCPU is utime+stime of a process.
func procCPU(pid int) (time.Duration, error) {
	st, err := readProcStat(pid)
	if err != nil {
		return 0, err
	}
	return ticks(st.utime + st.stime), nil
}

// sessionPoller counts the client sessions of PostgreSQL other than the
// harness's own (application_name pampabench) every interval, and keeps
// the peak.
type sessionPoller struct {
	peak, last atomic.Int64
	stop       context.CancelFunc
	done       chan struct{}
	err        error
}

const harnessApp = "pampabench"

func pollSessions(ctx context.Context, url string, interval time.Duration) (*sessionPoller, error) {
	conn, err := connectHarness(ctx, url)
	if err != nil {
		return nil, err
	}
	pctx, stop := context.WithCancel(ctx)
	p := &sessionPoller{stop: stop, done: make(chan struct{})}
	go func() {
		defer close(p.done)
		defer conn.Close(context.WithoutCancel(ctx))
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			var n int64
			err := conn.QueryRow(pctx, `select count(*) from pg_stat_activity
where backend_type = 'client backend' and application_name is distinct from $1`, harnessApp).Scan(&n)
			if err != nil {
				if pctx.Err() == nil {
					p.err = err
				}
				return
			}
			p.last.Store(n)
			if n > p.peak.Load() {
				p.peak.Store(n)
			}
			select {
			case <-pctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return p, nil
}

func (p *sessionPoller) close() {
	p.stop()
	<-p.done
}

// tailFile returns the last n lines of a file, for error messages.
func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	return lastLines(bytes.TrimSpace(b), n)
}

// window is what drain measured.
type window struct {
	rows          int64
	elapsed       time.Duration
	samples       []sample
	dispatcherCPU time.Duration
}

// drain lifts the lock on the tasks table and waits, within e.timeout,
// until rows rows have ended, sampling progress and the dispatcher
// process's CPU. A timeout is returned as context.DeadlineExceeded with
// what was measured so far.
func (e *env) drain(ctx context.Context, d *dispatcherChild, lock *tableLock, conn *pgx.Conn, rows int) (window, error) {
	var w window
	tctx, cancel := context.WithTimeout(ctx, e.timeout)
	defer cancel()
	cpu0, err := procCPU(d.pid())
	if err != nil {
		return w, err
	}
	if err := e.resetPGStats(ctx); err != nil {
		return w, err
	}
	if err := lock.release(ctx); err != nil {
		return w, err
	}
	start := time.Now()
	err = waitFor(tctx, 20*time.Millisecond, func() (bool, error) {
		if !d.alive() {
			return false, fmt.Errorf("dispatcher exited: %v\n%s", d.err, d.log())
		}
		n, err := rowsDone(tctx, conn)
		w.rows = n
		w.samples = append(w.samples, sample{time.Since(start), n})
		return n >= int64(rows), err
	})
	w.elapsed = time.Since(start)
	cpu1, _ := procCPU(d.pid())
	w.dispatcherCPU = cpu1 - cpu0
	return w, err
}

// childRun is what the process scenarios share: a fresh schema holding
// rows rows, a child cluster config for up to workers workers on it, the
// harness's own session, the tasks table locked when asked (so the clock
// starts with every stream up; drain lifts it), and a dispatcher process
// that leads.
type childRun struct {
	url  string
	cc   *childCluster
	conn *pgx.Conn
	lock *tableLock // nil when not locked
	d    *dispatcherChild
	undo []func() // in reverse order at close
}

func startChildRun(ctx context.Context, e *env, b *benchctl, schema string, rows, workers int, locked bool) (*childRun, error) {
	r := &childRun{}
	fail := func(err error) (*childRun, error) { r.close(); return nil, err }
	var err error
	if r.url, err = e.freshSchema(ctx, schema); err != nil {
		return nil, err
	}
	r.undo = append(r.undo, func() { e.dropSchema(schema) })
	if err := prepareTasks(ctx, r.url, "", rows, benchJob(dispatcher.DefaultQueueSize)); err != nil {
		return fail(err)
	}
	if r.cc, err = b.writeChildCluster(schema, r.url, workers, dispatcher.DefaultQueueSize); err != nil {
		return fail(err)
	}
	if r.conn, err = connectHarness(ctx, r.url); err != nil {
		return fail(err)
	}
	r.undo = append(r.undo, func() { r.conn.Close(context.WithoutCancel(ctx)) })
	if locked {
		if r.lock, err = lockTasks(ctx, r.url); err != nil {
			return fail(err)
		}
		r.undo = append(r.undo, func() { r.lock.release(context.WithoutCancel(ctx)) })
	}
	if r.d, err = b.startDispatcher(r.cc, childEnv()); err != nil {
		return fail(err)
	}
	r.undo = append(r.undo, func() { r.d.stop(30 * time.Second) })
	if err := waitLeading(ctx, r.d, 30*time.Second); err != nil {
		return fail(err)
	}
	return r, nil
}

func (r *childRun) close() {
	for i := len(r.undo) - 1; i >= 0; i-- {
		r.undo[i]()
	}
	r.undo = nil
}
