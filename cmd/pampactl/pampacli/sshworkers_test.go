package pampacli_test

import (
	"bytes"
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

	"github.com/pampa-go/pampa/internal/syncbuf"

	"github.com/jackc/pgx/v5"

	"github.com/pampa-go/pampa/cmd/pampactl/pampacli"
	"github.com/pampa-go/pampa/deploy"
	"github.com/pampa-go/pampa/dispatcher"
	"github.com/pampa-go/pampa/internal/pgtest"
	polling "github.com/pampa-go/pampa/internal/poll"
	"github.com/pampa-go/pampa/internal/sshtest"
)

// poll waits for cond (see polling.Until).
func poll(t *testing.T, what string, cond func() string) {
	t.Helper()
	polling.Until(t, what, 30*time.Second, cond)
}

func registry(t *testing.T, url string) map[string]string {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	ws, err := dispatcher.ListWorkers(t.Context(), conn)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, w := range ws {
		out[w.ID] = w.State
	}
	return out
}

func pidOf(t *testing.T, workDir, id string) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(workDir, "run", id+".pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

// TestWorkersOverSSH deploys real workers to an SSH node, starts them,
// sees them register and run, and stops them with TERM: with the build
// deploy picks by default (make build's bin/: the worker-only build beside
// pampactl), and with each build pushed by --binary.
func TestWorkersOverSSH(t *testing.T) {
	t.Parallel()
	ctl, lean := pampactlBinary(t), workerOnlyBinary(t)
	paired := pairedBuild(t)
	inProcess := func(bin string) deployer {
		return func(t *testing.T, cfg string, args ...string) result {
			return pampactl(t.Context(), t, nil, append([]string{"--config", cfg}, append(args, "--binary", bin)...)...)
		}
	}
	for _, s := range servers {
		for _, v := range []struct {
			build  string
			deploy deployer
			pushed string
		}{
			{"default", runBinary(paired), lean},
			{"pampactl", inProcess(ctl), ctl},
			{"pampa-worker", inProcess(lean), lean},
		} {
			t.Run(s.name+"/"+v.build, func(t *testing.T) { testWorkersOverSSH(t, s.start, v.deploy, v.pushed) })
		}
	}
}

// deployer runs a nodes command (deploy, check) as one variant does.
type deployer func(t *testing.T, cfg string, args ...string) result

// runBinary runs a built pampactl as the user would, with no --binary.
func runBinary(bin string) deployer {
	return func(t *testing.T, cfg string, args ...string) result {
		t.Helper()
		cmd := exec.CommandContext(t.Context(), bin, append([]string{"--config", cfg}, args...)...)
		var stdout, stderr strings.Builder
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		code := cmd.ProcessState.ExitCode()
		if err != nil && code <= 0 {
			t.Fatalf("run %s: %v", bin, err)
		}
		return result{code, stdout.String(), stderr.String()}
	}
}

// pairedBuild is make build's bin/: pampactl with pampa-worker beside it.
func pairedBuild(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for name, src := range map[string]string{"pampactl": pampactlBinary(t), "pampa-worker": workerOnlyBinary(t)} {
		if err := os.Link(src, filepath.Join(dir, name)); err != nil {
			copyFile(t, src, filepath.Join(dir, name)) // no hard links here
		}
	}
	return filepath.Join(dir, "pampactl")
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o755); err != nil {
		t.Fatal(err)
	}
}

func sameFile(t *testing.T, got, want string) bool {
	t.Helper()
	a, err := os.ReadFile(got)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(want)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Equal(a, b)
}

func testWorkersOverSSH(t *testing.T, startServer func(testing.TB) *sshtest.Server, nodes deployer, pushed string) {
	t.Parallel()
	srv := startServer(t)
	url := pgtest.Schema(t)
	n := sshNode(t, "w1", srv)
	n.workDir = filepath.Join(t.TempDir(), "work dir")
	cfg := writeConfig(t, url, n)
	must := func(args ...string) result {
		t.Helper()
		r := pampactl(t.Context(), t, nil, append([]string{"--config", cfg}, args...)...)
		if r.code != 0 {
			t.Fatalf("pampactl %v:\n%s", args, r)
		}
		return r
	}
	must("db", "setup")
	if r := nodes(t, cfg, "nodes", "deploy"); r.code != 0 || !strings.Contains(r.stdout, "binary uploaded ("+filepath.Base(pushed)+")") {
		t.Fatalf("nodes deploy (exit %d) does not say it pushed %s:\n%s", r.code, filepath.Base(pushed), r)
	}
	// The node is this machine: its work dir is ours to read.
	if !sameFile(t, filepath.Join(n.workDir, deploy.BinaryFile), pushed) {
		t.Fatalf("the node's %s is not %s", deploy.BinaryFile, pushed)
	}
	// The node's binary answers nodes check's questions (worker limits).
	if r := nodes(t, cfg, "nodes", "check"); r.code != 0 || !strings.Contains(r.stdout, "current") {
		t.Errorf("nodes check (exit %d) does not find the deployed binary current:\n%s", r.code, r)
	}
	t.Cleanup(func() { pampactl(context.Background(), t, nil, "--config", cfg, "workers", "stop") })
	// The node is this machine, so its workers dial the listener directly.
	dctx, stopDispatcher := context.WithCancel(t.Context())
	dispatched := make(chan result, 1)
	go func() {
		dispatched <- pampactl(dctx, t, nil, "--config", cfg, "dispatcher", "run", "--no-log-file", "--no-tunnels")
	}()
	defer func() { stopDispatcher(); <-dispatched }()

	start := time.Now()
	r := must("workers", "start")
	took := time.Since(start)
	for _, id := range []string{"w1.1", "w1.2"} {
		if !strings.Contains(r.stdout, id+"\tstarted") {
			t.Errorf("workers start did not start %s:\n%s", id, r)
		}
	}
	t.Logf("workers start took %s", took)
	poll(t, "workers register", func() string {
		reg := registry(t, url)
		if reg["w1.1"] != dispatcher.StateAlive || reg["w1.2"] != dispatcher.StateAlive {
			return fmt.Sprintf("registry %v", reg)
		}
		return ""
	})
	pids := map[string]int{}
	for _, id := range []string{"w1.1", "w1.2"} {
		pids[id] = pidOf(t, n.workDir, id)
		if err := syscall.Kill(pids[id], 0); err != nil {
			t.Fatalf("worker %s (pid %d) is not running: %v", id, pids[id], err)
		}
	}
	if r := must("workers", "start"); !strings.Contains(r.stdout, "w1.1\trunning") {
		t.Errorf("second start is not idempotent:\n%s", r)
	}
	if r := must("workers", "status"); strings.Count(r.stdout, "running") != 2 {
		t.Errorf("workers status:\n%s", r)
	}

	r = must("workers", "stop")
	if strings.Count(r.stdout, "stopped") != 2 {
		t.Errorf("workers stop did not TERM both workers:\n%s", r)
	}
	for id, pid := range pids {
		poll(t, "worker "+id+" exits", func() string {
			if syscall.Kill(pid, 0) == nil {
				if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil && !strings.Contains(string(b), ") Z ") {
					return "still running"
				}
			}
			return ""
		})
	}
	poll(t, "workers deregister", func() string {
		reg := registry(t, url)
		if reg["w1.1"] != dispatcher.StateStopped || reg["w1.2"] != dispatcher.StateStopped {
			return fmt.Sprintf("registry %v", reg)
		}
		return ""
	})
}

// TestLogsTail reads the last lines of two workers' logs, then follows
// them: every line once, in order (a reconnection resuming mid-log is
// TestFollowLogsReconnects in orchestrator).
func TestLogsTail(t *testing.T) {
	t.Parallel()
	for _, s := range servers {
		t.Run(s.name, func(t *testing.T) {
			t.Parallel()
			testLogsTail(t, s.start(t))
		})
	}
}

func testLogsTail(t *testing.T, srv *sshtest.Server) {
	n := sshNode(t, "w1", srv)
	if err := os.MkdirAll(n.workDir, 0o755); err != nil {
		t.Fatal(err)
	}
	appendLog := func(id, text string) {
		f, err := os.OpenFile(filepath.Join(n.workDir, "worker."+id+".log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := f.WriteString(text); err != nil {
			t.Fatal(err)
		}
	}
	appendLog("w1.1", "one\ntwo\nthree\n")
	appendLog("w1.2", "alpha\n\nbeta\n")
	cfg := writeConfig(t, "postgres://x@127.0.0.1/db", n)

	r := pampactl(t.Context(), t, nil, "--config", cfg, "logs", "tail", "-l", "2")
	want := "w1.1 | two\nw1.1 | three\nw1.2 | \nw1.2 | beta\n"
	if r.code != 0 || r.stdout != want {
		t.Fatalf("logs tail -n 2: got\n%s\nwant stdout:\n%s", r, want)
	}
	if r := pampactl(t.Context(), t, nil, "--config", cfg, "logs", "tail", "-l", "1", "--worker", "w1.2"); r.stdout != "w1.2 | beta\n" {
		t.Fatalf("logs tail --worker w1.2:\n%s", r)
	}
	if r := pampactl(t.Context(), t, nil, "--config", cfg, "logs", "tail", "--worker", "w9.1"); r.code != 2 {
		t.Fatalf("logs tail of an unknown worker:\n%s", r)
	}

	ctx, cancel := context.WithCancel(t.Context())
	var out syncbuf.Buffer
	done := make(chan int)
	go func() {
		done <- runTo(ctx, &out, "--config", cfg, "logs", "tail", "-l", "1", "-f")
	}()
	poll(t, "follow prints the last lines", func() string {
		if !strings.Contains(out.String(), "w1.1 | three\n") {
			return fmt.Sprintf("output %q", out.String())
		}
		return ""
	})
	appendLog("w1.2", "gamma\n")
	appendLog("w1.1", "four\nfi")
	appendLog("w1.1", "ve\n")
	appendLog("w1.3", "not followed\n")
	poll(t, "follow prints new lines", func() string {
		s := out.String()
		if !strings.Contains(s, "w1.2 | gamma\n") || !strings.Contains(s, "w1.1 | five\n") {
			return fmt.Sprintf("output %q", s)
		}
		return ""
	})
	cancel()
	if code := <-done; code != pampacli.ExitInterrupted {
		t.Fatalf("logs tail -f ended with %d, want %d (interrupted):\n%s", code, pampacli.ExitInterrupted, out.String())
	}
	// Lines of different workers interleave as they come; each worker's
	// own lines are in order, each once.
	perWorker := map[string][]string{}
	for _, l := range strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n") {
		id, _, _ := strings.Cut(l, " | ")
		perWorker[id] = append(perWorker[id], l)
	}
	for id, want := range map[string]string{"w1.1": "w1.1 | three\nw1.1 | four\nw1.1 | five", "w1.2": "w1.2 | beta\nw1.2 | gamma"} {
		if got := strings.Join(perWorker[id], "\n"); got != want {
			t.Errorf("logs tail -f printed for %s:\n%s\nwant:\n%s\n(all output:\n%s)", id, got, want, out.String())
		}
	}
	if len(perWorker) != 2 {
		t.Errorf("logs tail -f printed lines of other workers or unprefixed lines:\n%s", out.String())
	}
}

// TestLocalWorkersRunTheWorkerOnlyBuild: workers start --node local runs
// pampa-worker where it sits beside pampactl (make build), else pampactl
// itself.
func TestLocalWorkersRunTheWorkerOnlyBuild(t *testing.T) {
	t.Parallel()
	cfg, _, dir := localNumbers(t, 200)
	paired := pairedBuild(t)
	for _, v := range []struct{ ctl, worker string }{
		{pampactlBinary(t), pampactlBinary(t)},
		{paired, filepath.Join(filepath.Dir(paired), "pampa-worker")},
	} {
		run := runBinary(v.ctl)
		t.Cleanup(func() { pampactl(context.Background(), t, nil, "--config", cfg, "workers", "stop") })
		if r := run(t, cfg, "workers", "start", "--node", "local"); r.code != 0 || strings.Count(r.stdout, "started") != 2 {
			t.Fatalf("%s workers start: exit %d\n%s", v.ctl, r.code, r)
		}
		want, err := filepath.EvalSymlinks(v.worker) // as the kernel names it
		if err != nil {
			t.Fatal(err)
		}
		for _, id := range []string{"local.1", "local.2"} {
			pid := pidOf(t, dir, id)
			if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err != nil || exe != want {
				t.Errorf("%s started %s running %q (%v), want %s", v.ctl, id, exe, err, v.worker)
			}
		}
		if r := run(t, cfg, "workers", "stop"); r.code != 0 {
			t.Fatalf("workers stop: exit %d\n%s", r.code, r)
		}
		poll(t, "workers exit", func() string {
			if r := pampactl(t.Context(), t, nil, "--config", cfg, "workers", "status"); strings.Contains(r.stdout, "running") {
				return r.stdout
			}
			return ""
		})
	}
}
