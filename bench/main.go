// Command pampabench measures Pampa end to end against River and against
// hand-written SQL, on one throwaway PostgreSQL server, and writes the
// results into BENCHMARKS.md. See BENCHMARKS.md for what each number means.
//
//	cd bench && go run . -out ../BENCHMARKS.md
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/pampa-go/pampa/internal/pgserver"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

var allScenarios = []string{"pampa", "ceiling", "river", "latency", "idle", "fanin", "load", "relay", "fleet"}

type options struct {
	rows           int
	smallQueueRows int
	only           []string
	out            string
	timeout        time.Duration
	workers        []int
	queueSizes     []int
	cpuProfile     string
	moduleDir      string
	verbose        bool
	latencyInserts int
	latencySpacing time.Duration
	latencyWorkers int
	pgstats        bool
	repeat         int
	fleetRuns      int
	faninWorkers   int
	faninRows      int
	workerEnv      string
	idleWorkers    int
	loadClients    []int
	loadRows       int
	relayClients   int
	maxConnections int
	quick          bool
	profileDir     string
}

// quickDefaults are the settings -quick changes, unless given explicitly.
var quickDefaults = map[string]string{
	"rows": "20000", "small-queue-rows": "10000", "repeat": "1", "timeout": "1m", "latency-inserts": "50", "fleet-runs": "1",
	"fanin-workers": "100", "fanin-rows": "10000", "idle-workers": "4", "load-clients": "200,400", "load-rows": "20000",
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("pampabench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.IntVar(&o.rows, "rows", 200_000, "rows (tasks, jobs) per throughput scenario")
	fs.IntVar(&o.smallQueueRows, "small-queue-rows", 50_000, "rows of the Pampa scenarios with queue_size below 100 (at most -rows): they run at a few thousand rows/s")
	only := fs.String("only", strings.Join(allScenarios, ","), "scenarios to run, comma-separated: "+strings.Join(allScenarios, ","))
	fs.StringVar(&o.out, "out", "", "rewrite the results section of this markdown file (BENCHMARKS.md)")
	fs.DurationVar(&o.timeout, "timeout", 2*time.Minute, "limit per scenario; the rate over the finished part is reported")
	workers := fs.String("workers", "1,8,64", "worker counts of the Pampa throughput scenarios")
	queueSizes := fs.String("queue-sizes", "5,1000", "queue_size values of the Pampa throughput scenarios")
	fs.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of the in-process Pampa scenarios (throughput, latency) to this file")
	fs.StringVar(&o.moduleDir, "module", "..", "directory of the main module (for the fleet benchmarks)")
	fs.BoolVar(&o.verbose, "v", false, "log dispatcher, worker and River messages")
	fs.IntVar(&o.latencyInserts, "latency-inserts", 300, "rows inserted one by one for the latency scenario")
	fs.DurationVar(&o.latencySpacing, "latency-spacing", 15*time.Millisecond, "time between two latency inserts")
	fs.IntVar(&o.latencyWorkers, "latency-workers", 64, "idle workers connected in the latency scenario")
	fs.IntVar(&o.repeat, "repeat", 3, "runs of each short scenario (Pampa throughput, raw SQL); the best counts")
	fs.IntVar(&o.fleetRuns, "fleet-runs", 3, "runs of each fleet benchmark; the mean counts")
	fs.IntVar(&o.faninWorkers, "fanin-workers", 1000, "worker processes of the fan-in scenario")
	fs.IntVar(&o.faninRows, "fanin-rows", 100_000, "rows of the fan-in scenario")
	fs.StringVar(&o.workerEnv, "worker-env", "", "environment of the fan-in worker processes, such as \"GOMAXPROCS=1 GOGC=50\"")
	fs.IntVar(&o.idleWorkers, "idle-workers", 20, "worker processes per runtime setting of the idle scenario")
	fs.IntVar(&o.relayClients, "relay-clients", 100, "simulated workers behind the relay of the relay scenario")
	loadClients := fs.String("load-clients", "1000,2000,4000", "simulated workers of each load generator run")
	fs.IntVar(&o.loadRows, "load-rows", 100_000, "rows of each load generator run")
	fs.IntVar(&o.maxConnections, "max-connections", 100, "max_connections of the PostgreSQL server (100 is its default)")
	fs.BoolVar(&o.pgstats, "pgstats", false, "load pg_stat_statements and print the costliest statements of each Pampa scenario")
	fs.StringVar(&o.profileDir, "dispatcher-profile", "", "directory for CPU and heap profiles of the dispatcher processes (fan-in, load)")
	fs.BoolVar(&o.quick, "quick", false, "a quick run: "+quickText())
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	if o.quick {
		set := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
		for name, v := range quickDefaults {
			if !set[name] {
				if err := fs.Set(name, v); err != nil {
					return o, err
				}
			}
		}
	}
	if o.repeat < 1 {
		return o, errors.New("-repeat must be at least 1")
	}
	for _, n := range []struct {
		name string
		v    int
	}{{"rows", o.rows}, {"small-queue-rows", o.smallQueueRows}, {"fanin-workers", o.faninWorkers}, {"fanin-rows", o.faninRows}, {"idle-workers", o.idleWorkers},
		{"load-rows", o.loadRows}, {"latency-workers", o.latencyWorkers}, {"latency-inserts", o.latencyInserts}} {
		if n.v < 1 {
			return o, fmt.Errorf("-%s must be at least 1", n.name)
		}
	}
	for s := range strings.SplitSeq(*only, ",") {
		s = strings.TrimSpace(s)
		if !slices.Contains(allScenarios, s) {
			return o, fmt.Errorf("-only: unknown scenario %q; want some of %s", s, strings.Join(allScenarios, ","))
		}
		o.only = append(o.only, s)
	}
	var err error
	if o.workers, err = positiveList("workers", *workers); err != nil {
		return o, err
	}
	if o.queueSizes, err = positiveList("queue-sizes", *queueSizes); err != nil {
		return o, err
	}
	if o.loadClients, err = positiveList("load-clients", *loadClients); err != nil {
		return o, err
	}
	return o, nil
}

func quickText() string {
	var parts []string
	for k, v := range quickDefaults {
		parts = append(parts, "-"+k+" "+v)
	}
	slices.Sort(parts)
	return strings.Join(parts, ", ")
}

func positiveList(name, s string) ([]int, error) {
	var out []int
	for f := range strings.SplitSeq(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("-%s: %q is not a positive number", name, f)
		}
		out = append(out, n)
	}
	return out, nil
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	o, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "pampabench:", err)
		return 2
	}
	if err := bench(ctx, o, stdout, stderr); err != nil {
		fmt.Fprintln(stderr, "pampabench:", err)
		if ctx.Err() != nil {
			return 130
		}
		return 1
	}
	return 0
}

func bench(ctx context.Context, o options, stdout, stderr io.Writer) error {
	began := time.Now()
	level := slog.LevelWarn
	if o.verbose {
		level = slog.LevelInfo
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	progress := func(format string, args ...any) { fmt.Fprintf(stderr, format+"\n", args...) }

	progress("starting a throwaway PostgreSQL server (max_connections %d)...", o.maxConnections)
	srv, err := pgserver.Start(ctx, fmt.Sprintf("max_connections=%d", o.maxConnections))
	if err != nil {
		return err
	}
	defer srv.Close()
	admin, err := connectHarness(ctx, srv.URL())
	if err != nil {
		return err
	}
	var pgstats io.Writer
	if o.pgstats {
		if err := enablePGStats(ctx, admin, srv.Restart); err != nil {
			return err
		}
		admin.Close(ctx) // broken by the restart
		if admin, err = connectHarness(ctx, srv.URL()); err != nil {
			return err
		}
		if _, err := admin.Exec(ctx, "create extension pg_stat_statements schema public"); err != nil {
			return err
		}
		pgstats = stderr
	}
	defer admin.Close(context.WithoutCancel(ctx))
	e := &env{baseURL: srv.URL(), admin: admin, rows: o.rows, timeout: o.timeout, pgstats: pgstats}

	flags := fmt.Sprintf("-rows %d -small-queue-rows %d -timeout %s -repeat %d", o.rows, o.smallQueueRows, o.timeout, o.repeat)
	if o.quick {
		flags = "-quick " + flags
	}
	rp := &report{Machine: describeMachine(ctx, admin), Rows: o.rows, RiverBest: -1, Flags: flags, MaxConnections: o.maxConnections}
	want := func(s string) bool { return slices.Contains(o.only, s) }
	failed := func(name string, err error) {
		progress("  %s: FAILED: %v", name, err)
		rp.Errors = append(rp.Errors, fmt.Sprintf("%s: %v", name, err))
	}
	done := func(r result) {
		progress("  %s: %d rows in %.2fs = %.0f rows/s (CPU harness %.1fs, PostgreSQL %.1fs) %s",
			r.Name, r.Rows, r.Elapsed.Seconds(), r.rate(), r.CPU.self.Seconds(), r.CPU.pg.Seconds(), r.Note)
	}
	stopProfile, err := startProfile(o.cpuProfile)
	if err != nil {
		return err
	}
	defer stopProfile()

	if want("pampa") {
		progress("Pampa throughput, %d rows per scenario, no-op Go step on in-process workers over loopback:", o.rows)
		// The plain job at every shape, then each per-round feature at 8
		// workers.
		var scenarios []pampaScenario
		for _, q := range o.queueSizes {
			for _, n := range o.workers {
				scenarios = append(scenarios, pampaScenario{workers: n, queueSize: q})
			}
		}
		for i := range features {
			for _, q := range o.queueSizes {
				scenarios = append(scenarios, pampaScenario{workers: 8, queueSize: q, feature: &features[i]})
			}
		}
		for _, s := range scenarios {
			rows, runs := o.rows, o.repeat
			if s.queueSize < 100 {
				rows = min(o.rows, o.smallQueueRows)
				if s.workers == 1 {
					runs = 1 // long; one worker at a time is not noise-bound
				}
			}
			r, err := bestOf(ctx, runs, done, func() (result, error) { return runPampa(ctx, e, s, rows, log) })
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if err != nil {
				failed(s.name(), err)
				continue
			}
			rp.Results = append(rp.Results, r)
		}
	}
	if want("ceiling") {
		progress("Raw-SQL ceiling:")
		for _, v := range ceilingVariants {
			runs := o.repeat
			if !v.indexes {
				runs = 1 // long; its rate is not noise-bound
			}
			r, err := bestOf(ctx, runs, done, func() (result, error) { return runCeiling(ctx, e, v) })
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if err != nil {
				failed(v.name, err)
				continue
			}
			rp.Results = append(rp.Results, r)
		}
	}
	if want("river") {
		progress("River baseline (%s):", rp.Machine.River)
		rs, best, err := runRiverBest(ctx, e, log, done, o.repeat)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil {
			failed("River", err)
		}
		if best >= 0 {
			rp.RiverBest = len(rp.Results) + best
		}
		rp.Results = append(rp.Results, rs...)
	}
	if want("latency") {
		progress("Insert-to-start latency, %d inserts, %d idle workers:", o.latencyInserts, o.latencyWorkers)
		l, err := runLatency(ctx, e, o.latencyInserts, o.latencyWorkers, o.latencySpacing, log)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil {
			failed("latency", err)
		} else {
			progress("  to the handler: median %.2f ms, p99 %.2f ms, max %.2f ms; to the start mark: median %.2f ms, p99 %.2f ms",
				ms(l.Median), ms(l.P99), ms(l.Max), ms(l.MarkMedian), ms(l.MarkP99))
			rp.Latency = &l
		}
	}
	stopProfile()

	var bc *benchctl
	if want("idle") || want("fanin") || want("load") {
		progress("building bench/benchctl (pampactl with a no-op Go handler) and bench/leanworker...")
		if bc, err = buildBenchctl(ctx); err != nil {
			return err
		}
		bc.profileDir = o.profileDir
		defer bc.close()
	}
	if want("idle") {
		progress("Idle worker processes, %d per runtime setting:", o.idleWorkers)
		i, err := runIdle(ctx, e, bc, o.idleWorkers, 5*time.Second, 5*time.Second)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		for _, v := range i.Variants {
			progress("  %-12s %-40s VmRSS %.1f MiB (anon %.1f, file %.1f), PSS %.1f MiB, CPU %s",
				v.Binary, envName(v.Env), mib(v.Mem.RSS), mib(v.Mem.Anon), mib(v.Mem.File), mib(v.Mem.Pss), cpuText(v.CPU, i.Window))
		}
		if err != nil {
			failed("idle workers", err)
		}
		if len(i.Variants) > 0 {
			rp.Idle = &i
		}
	}
	if want("fanin") {
		progress("Fan-in: %d worker processes, %d rows, env %q:", o.faninWorkers, o.faninRows, o.workerEnv)
		f, err := runFanin(ctx, e, bc, o.faninWorkers, o.faninRows, o.workerEnv)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil {
			failed("fan-in", err)
		} else {
			progress("  %d streams up in %s; %d rows in %.2fs = %.0f rows/s (steady %.0f); peak sessions %d; "+
				"dispatcher CPU %.1fs, VmHWM %.1f MiB; idle worker VmRSS %.1f MiB (after the rows %.1f)",
				f.Connected, f.StartUp.Round(time.Millisecond), f.Rows, f.Elapsed.Seconds(), f.rate(), f.Steady, f.PeakSessions,
				f.DispatcherCPU.Seconds(), mib(f.DispatcherEnd.HWM), mib(f.IdleBefore.RSS), mib(f.IdleAfter.RSS))
			rp.Fanin = &f
		}
	}
	if want("load") {
		progress("Load generator: simulated workers in this process, %d rows per run:", o.loadRows)
		for _, n := range o.loadClients {
			l, err := runLoad(ctx, e, bc, n, o.loadRows, false, 2*time.Minute, log)
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if err != nil {
				failed(fmt.Sprintf("load generator, %d clients", n), err)
				continue
			}
			progress("  %d clients: %d up in %s; %d rows in %.2fs = %.0f rows/s (steady %.0f); dispatcher CPU %.1fs, VmHWM %.1f MiB %s",
				n, l.Connected, l.ConnectTime.Round(time.Millisecond), l.Rows, l.Elapsed.Seconds(), l.rate(), l.Steady,
				l.DispatcherCPU.Seconds(), mib(l.DispatcherMem.HWM), l.Note)
			rp.Load = append(rp.Load, l)
		}
	}
	if want("relay") {
		progress("Relay: %d simulated workers through one protocol.Relay, %d rows:", o.relayClients, o.loadRows)
		l, err := runLoad(ctx, e, bc, o.relayClients, o.loadRows, true, 2*time.Minute, log)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil {
			failed("relay", err)
		} else {
			progress("  %d up; %d rows in %.2fs = %.0f rows/s; the relay dialed %d connections; %d established at the dispatcher's port",
				l.Connected, l.Rows, l.Elapsed.Seconds(), l.rate(), l.RelayDials, l.DispatcherConns)
			rp.Load = append(rp.Load, l)
		}
	}
	if want("fleet") {
		progress("Fleet over SSH (go test -bench Fleet %s, %d runs each):", fleetPackage, o.fleetRuns)
		f, err := runFleet(ctx, o.moduleDir, o.fleetRuns)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil {
			failed("fleet", err)
		} else {
			progress("%s", f.markdown())
			rp.Fleet = &f
		}
	}
	rp.WallClock = time.Since(began)

	md := rp.markdown()
	fmt.Fprint(stdout, md)
	if o.out != "" {
		if err := writeReport(o.out, md); err != nil {
			return fmt.Errorf("write %s: %w", o.out, err)
		}
		progress("wrote %s", o.out)
	}
	if len(rp.Errors) > 0 {
		return fmt.Errorf("%d scenario(s) failed", len(rp.Errors))
	}
	return nil
}

// bestOf runs a scenario n times and returns the fastest complete run; the
// machine is shared, so the best of a few short runs is the least noisy.
func bestOf(ctx context.Context, n int, done func(result), run func() (result, error)) (result, error) {
	var best result
	found := false
	for i := 0; i < n && ctx.Err() == nil; i++ {
		r, err := run()
		if err != nil {
			return r, err
		}
		done(r)
		if !found || r.rate() > best.rate() {
			best, found = r, true
		}
	}
	if n > 1 {
		best.Note = strings.TrimPrefix(best.Note+fmt.Sprintf("; best of %d runs", n), "; ")
	}
	return best, ctx.Err()
}

// startProfile starts a CPU profile into path ("" for none) and returns the
// function that stops it.
func startProfile(path string) (func(), error) {
	if path == "" {
		return func() {}, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	var once sync.Once
	return func() { once.Do(func() { pprof.StopCPUProfile(); f.Close() }) }, nil
}
