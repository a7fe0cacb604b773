package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/pampa-go/pampa/dispatcher"
)

// faninResult is one run of many real worker processes against one
// dispatcher process.
type faninResult struct {
	Workers, Connected int
	Rows, Total        int64 // rows ended in the window, rows in the table
	Elapsed            time.Duration
	Partial            bool
	Steady             float64       // rows/s between 10% and 90% of the rows
	StartUp            time.Duration // from the first worker's start to every stream up
	PeakSessions       int64         // client sessions of PostgreSQL at peak, the harness's own left out
	DispatcherCPU      time.Duration // utime+stime of the dispatcher process over the window
	PGCPU              time.Duration
	DispatcherIdle     procMem // with every worker connected, before the rows
	DispatcherEnd      procMem // after the rows (HWM is the peak)
	IdleBefore         procMem // mean per worker, connected, before any row
	IdleAfter          procMem // mean per worker, after the rows
	WorkersWithRows    int64
	WorkerEnv          string
	Note               string
}

func (r faninResult) rate() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Rows) / r.Elapsed.Seconds()
}

// Worker binaries.
const (
	binBenchctl    = "benchctl"     // pampactl as the worker, CGO_ENABLED=0 as make dist
	binBenchctlCgo = "benchctl-cgo" // the same with go build's defaults, as make build
	binLean        = "leanworker"   // the worker-only build: what nodes deploy pushes by default
)

// worker returns the binary and the arguments that run worker local.i
// of cc.
func (b *benchctl) worker(bin string, cc *childCluster, i int) (string, []string) {
	id := fmt.Sprintf("local.%d", i)
	switch bin {
	case binLean:
		return b.leanBin, []string{"--config", cc.config, "worker", "run", "--id", id, "--no-log-file"}
	case binBenchctlCgo:
		return b.cgoBin, []string{"--config", cc.config, "worker", "run", "--id", id, "--no-log-file"}
	}
	return b.bin, []string{"--config", cc.config, "worker", "run", "--id", id, "--no-log-file"}
}

// startWorkers starts worker processes local.from .. local.to of binary
// bin with env, their logs appended to one file.
func (b *benchctl) startWorkers(bin string, cc *childCluster, from, to int, env []string, logFile *os.File) ([]*child, error) {
	var cs []*child
	for i := from; i <= to; i++ {
		path, args := b.worker(bin, cc, i)
		c, err := startChild(path, args, env, logFile)
		if err != nil {
			stopAll(cs, 10*time.Second)
			return nil, fmt.Errorf("start worker local.%d: %w", i, err)
		}
		cs = append(cs, c)
	}
	return cs, nil
}

func pidsOf(cs []*child) []int {
	pids := make([]int, len(cs))
	for i, c := range cs {
		pids[i] = c.pid()
	}
	return pids
}

// anyExited fails when a worker process ended.
func anyExited(cs []*child, logPath string) func() error {
	return func() error {
		for i, c := range cs {
			if !c.alive() {
				return fmt.Errorf("worker process %d exited: %v\n%s", i+1, c.err, tailFile(logPath, 20))
			}
		}
		return nil
	}
}

// runFanin starts a dispatcher process and n worker processes of the
// worker-only build with the no-op Go handler on a table of rows rows locked (lockTasks) until every
// stream is up; then it lifts the lock and times the rows.
func runFanin(ctx context.Context, e *env, b *benchctl, n, rows int, workerEnv string) (faninResult, error) {
	res := faninResult{Workers: n, Total: int64(rows), WorkerEnv: workerEnv}
	job := benchJob(dispatcher.DefaultQueueSize)
	// From before the dispatcher starts; the harness's own sessions are
	// left out.
	sessions, err := pollSessions(ctx, e.baseURL, 20*time.Millisecond)
	if err != nil {
		return res, err
	}
	defer sessions.close()
	run, err := startChildRun(ctx, e, b, "bench_fanin", rows, n, true)
	if err != nil {
		return res, err
	}
	defer run.close()
	cc, conn, lock, d := run.cc, run.conn, run.lock, run.d
	logPath := filepath.Join(cc.dir, "workers.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return res, err
	}
	defer logFile.Close()
	began := time.Now()
	workers, err := b.startWorkers(binLean, cc, 1, n, childEnv(strings.Fields(workerEnv)...), logFile)
	if err != nil {
		return res, err
	}
	defer stopAll(workers, 60*time.Second) // again, in case of an early return
	err = d.waitStreams(ctx, n, 5*time.Minute, anyExited(workers, logPath))
	res.Connected = int(d.connected.Load())
	if err != nil {
		return res, err
	}
	res.StartUp = time.Since(began)

	// Idle: every stream up, nothing to do (the dispatcher waits for the
	// lock, the streams ping).
	if err := sleep(ctx, 5*time.Second); err != nil {
		return res, err
	}
	if res.IdleBefore, _, err = meanMem(pidsOf(workers)); err != nil {
		return res, err
	}
	res.DispatcherIdle, _ = readProcMem(d.pid())

	pg0 := postgresCPU()
	w, err := e.drain(ctx, d, lock, conn, rows)
	res.Rows, res.Elapsed, res.DispatcherCPU = w.rows, w.elapsed, w.dispatcherCPU
	samples := w.samples
	res.PGCPU = postgresCPU() - pg0
	res.DispatcherEnd, _ = readProcMem(d.pid())
	res.Steady = steadyRate(samples, int64(rows))
	d.heapProfile(b)
	if err := e.printPGStats(ctx, fmt.Sprintf("fan-in, %d workers", n)); err != nil {
		return res, err
	}
	if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
		res.Partial = true
		res.Rows, _ = rowsDone(ctx, conn)
		res.Note = fmt.Sprintf("timed out after %s with %d of %d rows ended", e.timeout, res.Rows, rows)
	} else if err != nil {
		return res, fmt.Errorf("wait for the rows to end: %w", err)
	}
	if err := sleep(ctx, 3*time.Second); err != nil {
		return res, err
	}
	res.IdleAfter, _, _ = meanMem(pidsOf(workers))
	if !res.Partial {
		st, err := dispatcher.Report(ctx, conn, []dispatcher.Job{job})
		if err != nil {
			return res, err
		}
		if st[0].Completed != int64(rows) {
			return res, fmt.Errorf("report says %d of %d rows completed (%+v)", st[0].Completed, rows, st[0])
		}
	}
	if err := conn.QueryRow(ctx, `select count(distinct bench_reservation_id) from tasks where bench_success`).
		Scan(&res.WorkersWithRows); err != nil {
		return res, err
	}
	stopAll(workers, 60*time.Second)
	d.stop(30 * time.Second)
	sessions.close()
	res.PeakSessions = sessions.peak.Load()
	if sessions.err != nil {
		return res, fmt.Errorf("poll pg_stat_activity: %w", sessions.err)
	}
	return res, nil
}

// idleVariant is a worker binary and a Go runtime setting tried on idle
// worker processes.
type idleVariant struct {
	Binary string
	Env    string // "" for Go's defaults
	Mem    procMem
	CPU    time.Duration // mean per worker over the window
}

// idleVariants are the binaries and environments tried: the deployed
// build with Go's defaults and with the knobs that trade GC work for a
// smaller heap or fewer per-P caches and threads; the cgo build; and a
// worker-only binary.
var idleVariants = []idleVariant{
	{Binary: binBenchctl},
	{Binary: binBenchctl, Env: "GOGC=50"},
	{Binary: binBenchctl, Env: "GOMEMLIMIT=4MiB"},
	{Binary: binBenchctl, Env: "GOMAXPROCS=1"},
	{Binary: binBenchctl, Env: "GOMAXPROCS=1 GOGC=50 GOMEMLIMIT=4MiB"},
	{Binary: binBenchctlCgo},
	{Binary: binLean},
	{Binary: binLean, Env: "GOMAXPROCS=1"},
}

// idleResult is the footprint of idle worker processes.
type idleResult struct {
	Workers  int // per variant
	Window   time.Duration
	Variants []idleVariant
}

// runIdle measures idle worker processes connected to a dispatcher process
// over an empty table: per variant, k processes, VmRSS (and its anonymous
// part, and PSS) after they settle, and the CPU they use over a window.
func runIdle(ctx context.Context, e *env, b *benchctl, k int, settle, window time.Duration) (idleResult, error) {
	res := idleResult{Workers: k, Window: window}
	run, err := startChildRun(ctx, e, b, "bench_idle", 0, k*len(idleVariants), false)
	if err != nil {
		return res, err
	}
	defer run.close()
	cc, d := run.cc, run.d
	logPath := filepath.Join(cc.dir, "workers.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return res, err
	}
	defer logFile.Close()
	for vi, v := range idleVariants {
		from := vi*k + 1
		ws, err := b.startWorkers(v.Binary, cc, from, from+k-1, childEnv(strings.Fields(v.Env)...), logFile)
		if err != nil {
			return res, err
		}
		err = func() error {
			defer stopAll(ws, 30*time.Second)
			if err := d.waitStreams(ctx, k, time.Minute, anyExited(ws, logPath)); err != nil {
				return err
			}
			if err := sleep(ctx, settle); err != nil {
				return err
			}
			var cpu0 time.Duration
			for _, w := range ws {
				c, _ := procCPU(w.pid())
				cpu0 += c
			}
			if err := sleep(ctx, window); err != nil {
				return err
			}
			var cpu1 time.Duration
			for _, w := range ws {
				c, _ := procCPU(w.pid())
				cpu1 += c
			}
			m, _, err := meanMem(pidsOf(ws))
			if err != nil {
				return err
			}
			v.Mem, v.CPU = m, (cpu1-cpu0)/time.Duration(k)
			res.Variants = append(res.Variants, v)
			return nil
		}()
		if err != nil {
			return res, fmt.Errorf("%s %s: %w", v.Binary, envName(v.Env), err)
		}
		// Their streams end as they stop: wait so the next count starts at 0.
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		_ = waitFor(wctx, 20*time.Millisecond, func() (bool, error) { return d.connected.Load() == 0, nil })
		cancel()
	}
	return res, nil
}
