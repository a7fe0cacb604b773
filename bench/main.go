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
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pampa-go/pampa/internal/pgserver"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

var allScenarios = []string{"pampa", "latency", "river", "ceiling", "idle", "fleet"}

type options struct {
	rows           int
	only           []string
	out            string
	timeout        time.Duration
	workers        []int
	cpuProfile     string
	moduleDir      string
	verbose        bool
	latencyInserts int
	latencySpacing time.Duration
	pgstats        bool
	repeat         int
	fleetRuns      int
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("pampabench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.IntVar(&o.rows, "rows", 200_000, "rows (tasks, jobs) per throughput scenario")
	only := fs.String("only", strings.Join(allScenarios, ","), "scenarios to run, comma-separated: "+strings.Join(allScenarios, ","))
	fs.StringVar(&o.out, "out", "", "rewrite the results section of this markdown file (BENCHMARKS.md)")
	fs.DurationVar(&o.timeout, "timeout", 2*time.Minute, "limit per scenario; the rate over the finished part is reported")
	workers := fs.String("workers", "1,2,8", "worker counts of the queue_size 1000 Pampa scenarios")
	fs.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of the Pampa throughput scenarios to this file")
	fs.StringVar(&o.moduleDir, "module", "..", "directory of the main module (to build cmd/pampactl)")
	fs.BoolVar(&o.verbose, "v", false, "log dispatcher, worker and River messages")
	fs.IntVar(&o.latencyInserts, "latency-inserts", 300, "rows inserted one by one for the latency scenario")
	fs.DurationVar(&o.latencySpacing, "latency-spacing", 15*time.Millisecond, "time between two latency inserts")
	fs.IntVar(&o.repeat, "repeat", 3, "runs of each short scenario (Pampa at queue_size 1000, raw SQL); the best counts")
	fs.IntVar(&o.fleetRuns, "fleet-runs", 3, "runs of each fleet benchmark; the mean counts")
	fs.BoolVar(&o.pgstats, "pgstats", false, "load pg_stat_statements and print the costliest statements of each Pampa scenario")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	if o.repeat < 1 {
		return o, errors.New("-repeat must be at least 1")
	}
	if o.rows < 1 {
		return o, errors.New("-rows must be at least 1")
	}
	for s := range strings.SplitSeq(*only, ",") {
		s = strings.TrimSpace(s)
		if !slices.Contains(allScenarios, s) {
			return o, fmt.Errorf("-only: unknown scenario %q; want some of %s", s, strings.Join(allScenarios, ","))
		}
		o.only = append(o.only, s)
	}
	for s := range strings.SplitSeq(*workers, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			return o, fmt.Errorf("-workers: %q is not a positive number", s)
		}
		o.workers = append(o.workers, n)
	}
	return o, nil
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

	progress("starting a throwaway PostgreSQL server...")
	srv, err := pgserver.Start(ctx)
	if err != nil {
		return err
	}
	defer srv.Close()
	admin, err := pgx.Connect(ctx, srv.URL())
	if err != nil {
		return err
	}
	var pgstats io.Writer
	if o.pgstats {
		if err := enablePGStats(ctx, admin, srv.Restart); err != nil {
			return err
		}
		admin.Close(ctx) // broken by the restart
		if admin, err = pgx.Connect(ctx, srv.URL()); err != nil {
			return err
		}
		if _, err := admin.Exec(ctx, "create extension pg_stat_statements schema public"); err != nil {
			return err
		}
		pgstats = stderr
	}
	defer admin.Close(context.WithoutCancel(ctx))
	e := &env{baseURL: srv.URL(), admin: admin, rows: o.rows, timeout: o.timeout, pgstats: pgstats}

	rp := &report{Machine: describeMachine(ctx, admin), Rows: o.rows, RiverBest: -1,
		Flags: fmt.Sprintf("-rows %d -timeout %s -repeat %d", o.rows, o.timeout, o.repeat)}
	want := func(s string) bool { return slices.Contains(o.only, s) }
	failed := func(name string, err error) {
		progress("  %s: FAILED: %v", name, err)
		rp.Errors = append(rp.Errors, fmt.Sprintf("%s: %v", name, err))
	}
	done := func(r result) {
		progress("  %s: %d rows in %.2fs = %.0f rows/s (CPU harness %.1fs, PostgreSQL %.1fs) %s",
			r.Name, r.Rows, r.Elapsed.Seconds(), r.rate(), r.CPU.self.Seconds(), r.CPU.pg.Seconds(), r.Note)
	}

	if want("pampa") {
		progress("Pampa throughput, %d rows per scenario:", o.rows)
		stopProfile, err := startProfile(o.cpuProfile)
		if err != nil {
			return err
		}
		maxWorkers := 0
		var scenarios []pampaScenario
		for _, n := range o.workers {
			scenarios = append(scenarios, pampaScenario{workers: n, queueSize: 1000})
		}
		scenarios = append(scenarios, pampaScenario{workers: 2, queueSize: 5})
		for _, s := range scenarios {
			runs := o.repeat
			if s.queueSize < 100 {
				runs = 1 // long; its rate is not noise-bound
			}
			r, err := bestOf(ctx, runs, done, func() (result, error) { return runPampa(ctx, e, s, log) })
			if ctx.Err() != nil {
				stopProfile()
				return ctx.Err()
			}
			if err != nil {
				failed(s.name(), err)
				continue
			}
			rp.Results = append(rp.Results, r)
			if s.workers > maxWorkers {
				maxWorkers = s.workers
				rp.InProcRSS = r.RSSKB
				rp.InProcDesc = fmt.Sprintf("dispatcher and %d in-process workers, after %s", s.workers, s.name())
			}
		}
		stopProfile()
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
		rs, best, err := runRiverBest(ctx, e, log, done)
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
		progress("Insert-to-start latency, %d inserts:", o.latencyInserts)
		l, err := runLatency(ctx, e, o.latencyInserts, o.latencySpacing, log)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil {
			failed("latency", err)
		} else {
			progress("  median %.1f ms, p99 %.1f ms, max %.1f ms", ms(l.Median), ms(l.P99), ms(l.Max))
			rp.Latency = &l
		}
	}
	if want("idle") {
		progress("Idle worker process:")
		i, err := runIdle(ctx, e, o.moduleDir, 5*time.Second, 5*time.Second)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil {
			failed("idle worker", err)
		} else {
			progress("  VmRSS %d KiB, CPU %s over %s", i.RSSKB, i.CPU, i.Window)
			rp.Idle = &i
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
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}
