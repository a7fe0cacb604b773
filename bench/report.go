package main

import (
	"fmt"
	"os"
	"strings"
	"time"
)

type kind int

const (
	kindPampa kind = iota
	kindRiver
	kindCeiling
	kindPampaFeature // Pampa with a feature that costs per round: not a target's figure
)

// result is one throughput measurement.
type result struct {
	Kind               kind
	Name               string
	Workers, QueueSize int
	Rows               int64 // rows (or jobs) ended within Elapsed
	Elapsed            time.Duration
	Partial            bool // the scenario's timeout came first
	Reference          bool // shown for comparison only (raw-SQL variants)
	CPU                cpuMeter
	Note               string
}

func (r result) rate() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Rows) / r.Elapsed.Seconds()
}

// Targets.
const (
	targetVsRiver    = 1.5  // Pampa, 8 workers at the default queue_size 5, against River's best setting
	targetVsCeiling  = 0.90 // Pampa's best scenario against the raw-SQL ceiling
	targetMedian     = 2 * time.Millisecond
	targetP99        = 20 * time.Millisecond
	targetSessions   = 10        // client sessions at peak with 1,000 worker processes
	targetIdleRSSKB  = 10 * 1024 // VmRSS of an idle worker process
	targetFaninCount = 1000      // worker processes of the fan-in target
	riverTargetQueue = 5         // the seed's default queue_size
	riverTargetW     = 8         // workers of the River target
)

// report is everything one run measured.
type report struct {
	Machine        machine
	Rows           int
	Flags          string
	MaxConnections int
	Results        []result
	RiverBest      int // index into Results, -1 if none
	Latency        *latencyResult
	Idle           *idleResult
	Fanin          *faninResult
	Load           []loadStep
	Fleet          *fleetResult
	Errors         []string
	WallClock      time.Duration
}

func (rp *report) best(k kind) (result, bool) {
	var b result
	found := false
	for _, r := range rp.Results {
		if r.Kind == k && (!found || r.rate() > b.rate()) {
			b, found = r, true
		}
	}
	return b, found
}

func (rp *report) ceiling() (result, bool) {
	for _, r := range rp.Results {
		if r.Kind == kindCeiling && !r.Reference {
			return r, true
		}
	}
	return result{}, false
}

func (rp *report) river() (result, bool) {
	if rp.RiverBest < 0 {
		return result{}, false
	}
	return rp.Results[rp.RiverBest], true
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "**missed**"
}

func mib(kb int64) float64 { return float64(kb) / 1024 }

func envName(env string) string {
	if env == "" {
		return "Go defaults"
	}
	return "`" + env + "`"
}

func binaryName(bin string) string {
	switch bin {
	case binBenchctl:
		return "benchctl (pampactl as the worker, CGO_ENABLED=0, as make dist)"
	case binBenchctlCgo:
		return "benchctl (pampactl as the worker, cgo, as make build)"
	case binLean:
		return "leanworker (the worker-only build, what nodes deploy pushes by default, CGO_ENABLED=0)"
	}
	return bin
}

// per100k scales a figure measured over rows to 100,000 rows.
func per100k(d time.Duration, rows int64) float64 {
	if rows <= 0 {
		return 0
	}
	return d.Seconds() * 100_000 / float64(rows)
}

// markdown renders the results section.
func (rp *report) markdown() string {
	var b strings.Builder
	m := rp.Machine
	fmt.Fprintf(&b, "Run %s, %s. Machine: %d CPUs (%s), %s RAM, load average %s at the start; "+
		"PostgreSQL %s (throwaway server, fsync off, max_connections %d); %s; River %s.\n\n",
		m.Date, rp.Flags, m.NumCPU, m.CPU, m.Memory, m.Load, m.Postgres, rp.MaxConnections, m.Go, m.River)

	river, okR := rp.river()
	ceil, okC := rp.ceiling()
	if len(rp.Results) > 0 {
		fmt.Fprintf(&b, "Throughput. Pampa: the dispatcher and the workers are goroutines of the harness; each worker has its "+
			"own protocol client, TCP connection and HTTP/2 stream to the dispatcher on 127.0.0.1, and runs the no-op Go "+
			"step; dispatcher delay %s. Everything, PostgreSQL included, shares the same %d CPUs. "+
			"Ratios are against River's best setting and the raw-SQL ceiling of this run. "+
			"The queue_size 5 scenarios run fewer rows (-small-queue-rows): they are slow.\n\n", dispatcherDelay, m.NumCPU)
		b.WriteString("| Scenario | Rows | Seconds | Rows/s | × River best | × ceiling | Harness CPU s | PostgreSQL CPU s | Note |\n")
		b.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---|\n")
		for i, r := range rp.Results {
			note := r.Note
			if r.Kind == kindRiver && i == rp.RiverBest {
				note = strings.TrimPrefix(note+"; best River setting", "; ")
			}
			rate := fmt.Sprintf("%.0f", r.rate())
			if r.Partial {
				rate += " (partial)"
			}
			vsR, vsC := "", ""
			if okR && river.rate() > 0 {
				vsR = fmt.Sprintf("%.2f×", r.rate()/river.rate())
			}
			if okC && ceil.rate() > 0 {
				vsC = fmt.Sprintf("%.0f%%", 100*r.rate()/ceil.rate())
			}
			fmt.Fprintf(&b, "| %s | %d | %.2f | %s | %s | %s | %.1f | %.1f | %s |\n", r.Name, r.Rows, r.Elapsed.Seconds(), rate,
				vsR, vsC, r.CPU.self.Seconds(), r.CPU.pg.Seconds(), note)
		}
		b.WriteString("\n")
	}

	b.WriteString("| Target | Measured | Target | Verdict |\n|---|---:|---:|---|\n")
	var target result
	okT := false
	for _, r := range rp.Results {
		if r.Kind == kindPampa && r.Workers == riverTargetW && r.QueueSize == riverTargetQueue {
			target, okT = r, true
		}
	}
	if okT && okR {
		x := target.rate() / river.rate()
		fmt.Fprintf(&b, "| %s / River best (%s) | %.2f× | ≥ %.1f× | %s |\n", target.Name, strings.TrimPrefix(river.Name, "River, "),
			x, targetVsRiver, verdict(x >= targetVsRiver && !target.Partial))
	}
	if pampa, ok := rp.best(kindPampa); ok && okC {
		x := pampa.rate() / ceil.rate()
		fmt.Fprintf(&b, "| Pampa best (%s) / raw-SQL ceiling | %.0f%% | ≥ %.0f%% | %s |\n", pampa.Name, 100*x, 100*targetVsCeiling,
			verdict(x >= targetVsCeiling))
	}
	if l := rp.Latency; l != nil {
		fmt.Fprintf(&b, "| Insert-to-start latency, median (%d inserts, %d idle workers) | %.2f ms | < %d ms | %s |\n",
			l.Inserts, l.Workers, ms(l.Median), targetMedian.Milliseconds(), verdict(l.Median < targetMedian))
		fmt.Fprintf(&b, "| Insert-to-start latency, p99 (max %.1f ms) | %.2f ms | < %d ms | %s |\n",
			ms(l.Max), ms(l.P99), targetP99.Milliseconds(), verdict(l.P99 < targetP99))
	}
	if f := rp.Fanin; f != nil {
		all := f.Rows == f.Total && !f.Partial && f.Connected == f.Workers
		fmt.Fprintf(&b, "| Fan-in: %d worker processes end every row | %d of %d rows, by %d workers | %d workers, every row | %s |\n",
			f.Workers, f.Rows, f.Total, f.WorkersWithRows, targetFaninCount, verdict(all && f.Workers >= targetFaninCount))
		fmt.Fprintf(&b, "| Fan-in: PostgreSQL client sessions at peak | %d | ≤ %d | %s |\n", f.PeakSessions, targetSessions,
			verdict(f.PeakSessions <= targetSessions))
		fmt.Fprintf(&b, "| Fan-in: idle worker VmRSS (the worker-only build, %s, mean of %d) | %.1f MiB | < %d MiB | %s |\n", envName(f.WorkerEnv),
			f.Connected, mib(f.IdleBefore.RSS), targetIdleRSSKB/1024, verdict(f.IdleBefore.RSS < targetIdleRSSKB))
	}
	for _, l := range rp.Load {
		if l.Relay {
			fmt.Fprintf(&b, "| Relay: %d workers behind one relay, connections at the dispatcher | %d | 1 | %s |\n",
				l.Connected, l.DispatcherConns, verdict(l.DispatcherConns == 1 && l.Connected == l.Clients && l.Rows == l.Total))
		}
	}
	if i := rp.Idle; i != nil {
		// Both are shipped: the worker-only build, which nodes deploy
		// pushes by default, and pampactl, which a pampactl built with Go
		// handlers of its own pushes (README: build the worker from
		// workercli instead); the target is the default's.
		for _, bin := range []string{binLean, binBenchctl} {
			var best *idleVariant
			for k, v := range i.Variants {
				if v.Binary == bin && (best == nil || v.Mem.RSS < best.Mem.RSS) {
					best = &i.Variants[k]
				}
			}
			if best == nil {
				continue
			}
			v := verdict(best.Mem.RSS < targetIdleRSSKB)
			if bin != binLean {
				v = "reference: not the default worker"
			}
			fmt.Fprintf(&b, "| Idle worker VmRSS, %s, best setting (%s, mean of %d) | %.1f MiB | < %d MiB | %s |\n",
				binaryName(bin), envName(best.Env), i.Workers, mib(best.Mem.RSS), targetIdleRSSKB/1024, v)
		}
	}
	b.WriteString("\n")

	if f := rp.Fanin; f != nil {
		fmt.Fprintf(&b, "Fan-in: one `benchctl dispatcher run` process and %d `leanworker worker run --id local.N` processes "+
			"(bench/leanworker: the worker-only build, workercli with the no-op Go handler, CGO_ENABLED=0, what nodes deploy pushes by default; worker env %s), queue_size %d, %d rows:\n\n",
			f.Workers, envName(f.WorkerEnv), 5, f.Total)
		b.WriteString("| Fan-in figure | Value |\n|---|---:|\n")
		rate := fmt.Sprintf("%.0f", f.rate())
		if f.Partial {
			rate += " (partial)"
		}
		fmt.Fprintf(&b, "| worker streams up (start of the first process to the last stream) | %d in %.1f s |\n", f.Connected, f.StartUp.Seconds())
		fmt.Fprintf(&b, "| rows ended / seconds / rows/s | %d / %.2f / %s |\n", f.Rows, f.Elapsed.Seconds(), rate)
		fmt.Fprintf(&b, "| steady rows/s (10%% to 90%% of the rows) | %.0f |\n", f.Steady)
		fmt.Fprintf(&b, "| workers that ended rows | %d |\n", f.WorkersWithRows)
		fmt.Fprintf(&b, "| PostgreSQL client sessions at peak (the harness's own left out) | %d |\n", f.PeakSessions)
		fmt.Fprintf(&b, "| dispatcher CPU per 100,000 rows | %.2f s |\n", per100k(f.DispatcherCPU, f.Rows))
		fmt.Fprintf(&b, "| PostgreSQL CPU per 100,000 rows | %.2f s |\n", per100k(f.PGCPU, f.Rows))
		fmt.Fprintf(&b, "| dispatcher VmRSS, all workers connected and idle | %.1f MiB |\n", mib(f.DispatcherIdle.RSS))
		fmt.Fprintf(&b, "| dispatcher VmHWM (peak) / VmRSS after the %d rows | %.1f / %.1f MiB |\n", f.Total,
			mib(f.DispatcherEnd.HWM), mib(f.DispatcherEnd.RSS))
		fmt.Fprintf(&b, "| idle worker, mean VmRSS (anon + file) / PSS, before any row | %.1f (%.1f + %.1f) / %.1f MiB |\n",
			mib(f.IdleBefore.RSS), mib(f.IdleBefore.Anon), mib(f.IdleBefore.File), mib(f.IdleBefore.Pss))
		fmt.Fprintf(&b, "| idle worker, mean VmRSS (anon + file) / PSS, after the rows | %.1f (%.1f + %.1f) / %.1f MiB |\n",
			mib(f.IdleAfter.RSS), mib(f.IdleAfter.Anon), mib(f.IdleAfter.File), mib(f.IdleAfter.Pss))
		if f.Note != "" {
			fmt.Fprintf(&b, "| note | %s |\n", f.Note)
		}
		b.WriteString("\n")
	}
	if i := rp.Idle; i != nil {
		fmt.Fprintf(&b, "Idle worker processes by binary and Go runtime setting: %d worker processes each, connected to a "+
			"dispatcher process with no row to give; means per process after 5 s of settling, CPU over the next %s.\n\n",
			i.Workers, i.Window)
		b.WriteString("| Worker binary | Env | VmRSS MiB | RssAnon MiB | RssFile MiB | PSS MiB | CPU |\n|---|---|---:|---:|---:|---:|---|\n")
		for _, v := range i.Variants {
			fmt.Fprintf(&b, "| %s | %s | %.1f | %.1f | %.1f | %.1f | %s |\n", binaryName(v.Binary), envName(v.Env), mib(v.Mem.RSS), mib(v.Mem.Anon),
				mib(v.Mem.File), mib(v.Mem.Pss), cpuText(v.CPU, i.Window))
		}
		b.WriteString("\n")
	}
	if len(rp.Load) > 0 {
		b.WriteString("Load generator: simulated workers (protocol.Client, each its own TCP connection) in the harness process, " +
			"each reporting every row as done the moment it arrives, against one `benchctl dispatcher run` process; " +
			"queue_size 5. The streams come up a few hundred at a time while the table is locked; then the clock runs.\n\n")
		b.WriteString("The relay row: the clients dial a protocol.Relay in the harness, which carries their streams to the dispatcher; " +
			"connections at the dispatcher: established TCP connections to its port once every stream is up (/proc/net/tcp).\n\n")
		b.WriteString("| Clients | Via | Streams up | Connections at the dispatcher | Connect s | Rows | Seconds | Rows/s | Steady rows/s | Dispatcher CPU s / 100k rows | " +
			"Harness CPU s | PostgreSQL CPU s | Dispatcher VmHWM MiB | Note |\n")
		b.WriteString("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n")
		for _, l := range rp.Load {
			rate := fmt.Sprintf("%.0f", l.rate())
			if l.Partial {
				rate += " (partial)"
			}
			via := "direct"
			if l.Relay {
				via = fmt.Sprintf("one relay (%d dials)", l.RelayDials)
			}
			fmt.Fprintf(&b, "| %d | %s | %d | %d | %.1f | %d | %.2f | %s | %.0f | %.2f | %.1f | %.1f | %.1f | %s |\n", l.Clients, via, l.Connected,
				l.DispatcherConns, l.ConnectTime.Seconds(), l.Rows, l.Elapsed.Seconds(), rate, l.Steady, per100k(l.DispatcherCPU, l.Rows),
				l.HarnessCPU.Seconds(), l.PGCPU.Seconds(), mib(l.DispatcherMem.HWM), l.Note)
		}
		b.WriteString("\n")
	}
	if rp.Fleet != nil {
		b.WriteString(rp.Fleet.markdown())
	}
	if len(rp.Errors) > 0 {
		b.WriteString("Scenarios that failed:\n\n")
		for _, e := range rp.Errors {
			fmt.Fprintf(&b, "- %s\n", strings.ReplaceAll(e, "\n", " "))
		}
		b.WriteString("\n")
	}
	fmt.Fprintf(&b, "Whole run: %s.\n", rp.WallClock.Round(time.Second))
	return b.String()
}

// cpuText shows CPU time over a window; /proc counts in 10 ms ticks.
func cpuText(cpu, window time.Duration) string {
	if cpu == 0 {
		return "< 10 ms (below the 10 ms clock tick of /proc)"
	}
	return fmt.Sprintf("%.0f ms (%.2f%% of one CPU)", ms(cpu), 100*cpu.Seconds()/window.Seconds())
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// resultsMarker separates the hand-written intro of BENCHMARKS.md from the
// results the harness rewrites.
const resultsMarker = "<!-- pampabench results: everything below is rewritten by `make bench` -->"

const defaultIntro = `# Benchmarks

` + "`" + `make bench` + "`" + ` (or ` + "`" + `cd bench && go run . -out ../BENCHMARKS.md` + "`" + `) runs every scenario
in one go on one throwaway PostgreSQL server (internal/pgserver: fsync off, on
127.0.0.1, max_connections at PostgreSQL's default of 100) and rewrites the
results section below. The harness is its own Go module in bench/, so the
main module never depends on River. All traffic is loopback; child
processes die with the harness (Pdeathsig) and every schema, server and
process is removed at the end. A whole run takes 6 to 8 minutes on 2
cores; ` + "`" + `-quick` + "`" + ` (fewer rows, workers and runs) about 2.5.

Flags: ` + "`" + `-quick` + "`" + `, ` + "`" + `-only pampa,ceiling,river,latency,idle,fanin,load,fleet` + "`" + `,
` + "`" + `-rows N` + "`" + ` (default 200000), ` + "`" + `-small-queue-rows N` + "`" + ` (50000: Pampa at
queue_size 5 runs a few thousand rows/s), ` + "`" + `-workers 1,8,64` + "`" + `,
` + "`" + `-queue-sizes 5,1000` + "`" + `, ` + "`" + `-timeout` + "`" + ` per scenario (default 2m; a scenario that
runs out reports the rate over what it finished, marked partial),
` + "`" + `-repeat 3` + "`" + ` (short scenarios run this often and the best run counts: the
machine is shared), ` + "`" + `-fanin-workers 1000` + "`" + `, ` + "`" + `-fanin-rows 100000` + "`" + `,
` + "`" + `-worker-env "GOMAXPROCS=1 ..."` + "`" + ` (fan-in workers), ` + "`" + `-idle-workers 20` + "`" + `,
` + "`" + `-load-clients 1000,2000,4000` + "`" + `, ` + "`" + `-load-rows 100000` + "`" + `, ` + "`" + `-latency-workers 64` + "`" + `,
` + "`" + `-cpuprofile FILE` + "`" + ` (the in-process scenarios), ` + "`" + `-dispatcher-profile DIR` + "`" + ` (CPU
and heap profiles of the dispatcher processes), ` + "`" + `-pgstats` + "`" + ` (load
pg_stat_statements and print each scenario's costliest statements),
` + "`" + `-max-connections` + "`" + `, ` + "`" + `-fleet-runs N` + "`" + `, ` + "`" + `-out FILE` + "`" + `, ` + "`" + `-v` + "`" + ` (logs).

Method:

- **Pampa throughput**: a table of N rows, a job with no sql step and no
  command, so workers run the Go handler registered under its name, a
  no-op (the no-op step); one fresh schema per scenario. The dispatcher
  (dispatcher.Serve on a free loopback port) and the workers (worker.New,
  each with its own protocol client, TCP connection and HTTP/2 stream) are
  goroutines of the harness. The tasks table is locked (LOCK TABLE ... IN
  EXCLUSIVE MODE, in a transaction of the harness) while the dispatcher
  takes the lease and every worker connects: the dispatcher's first write
  to the table waits for it. The clock starts as the lock is lifted and
  stops when the dispatcher has written every end mark (its count of end
  marks committed, dispatcher.Progress, read in memory every 10 ms and
  checked against dispatcher.Report), so it includes the
  workers' registration and the first reservations. 1, 8 and 64 workers at
  queue_size 5 (the seed's default) and 1000.
- **Raw-SQL ceiling**: a queue written by hand in three statements, the
  same three state changes Pampa makes (reserve, start, end), 1,000 rows per
  statement, two connections: each reserves the next 1,000 free rows in key
  order (` + "`" + `for update skip locked` + "`" + `, returning their keys), starts them and
  ends them by key, until no free row is left, on a table with the partial
  indexes dispatcher.Setup creates. The ratios use this figure. Two
  references beside it: the same without the partial indexes, and the three
  updates over key ranges handed out by the harness (no row selection at
  all, which no queue can do).
- **River**: github.com/riverqueue/river with riverpgxv5, migrated into its own
  schema; N no-op jobs inserted with InsertManyFast, then timed from client
  start until N JobCompleted events (checked against river_job). A few client
  settings are tried; the best is the baseline.
- **Insert-to-start latency**: 64 idle workers connected and registered,
  queue_size 5; rows inserted one per statement ~15 ms apart; from the
  row's ` + "`" + `clock_timestamp()` + "`" + ` at insert to the start of the Go handler that
  runs it (time.Now() on the worker; both are the host's realtime clock).
  The start mark the dispatcher writes (now() of the transaction that
  records the worker's start) is printed beside it.
- **Idle worker processes**: worker processes connected to a
  ` + "`" + `benchctl dispatcher run` + "`" + ` process with no row to give: mean VmRSS, its
  anonymous and file-backed parts, PSS, and CPU over 5 s. Of
  bench/leanworker, the worker-only build (cmd/pampa-worker's workercli
  with the no-op handler, CGO_ENABLED=0), what nodes deploy pushes by
  default; and of bench/benchctl (pampacli.Main with the no-op handler),
  pampactl as the worker, which a pampactl with Go handlers of its own
  pushes, under Go runtime settings (GOGC, GOMEMLIMIT, GOMAXPROCS) and as
  a cgo build: it shows what pampactl's other commands cost.
- **Fan-in**: 1,000 ` + "`" + `leanworker worker run --id local.N` + "`" + ` processes and one
  ` + "`" + `benchctl dispatcher run` + "`" + ` process (config: [[nodes]] local with
  max_workers 1000, [dispatcher] listen on a free loopback port, the secret
  file written beforehand, mode 0600), the table locked until every stream
  is up as above. Peak client sessions: pg_stat_activity's client backends
  other than the harness's own (application_name pampabench), polled every
  20 ms from before the dispatcher starts to after it stops. Dispatcher CPU:
  utime+stime from /proc/PID/stat over the timed window, per 100,000 rows;
  VmHWM and VmRSS from /proc/PID/status. Idle worker RSS: the mean over all
  worker processes, connected, before any row and again after the rows.
- **Load generator**: thousands of simulated workers in the harness process
  (protocol.NewClient, each its own TCP connection; Deliver reports every
  row as done at once with Client.Report) against one dispatcher process,
  to find its ceiling in rows/s and in connected workers; the rate is also
  given between 10% and 90% of the rows (steady), leaving out the
  registration of thousands of workers at the start.
- **CPU columns**: CPU seconds used during the timed window by the harness
  process (dispatcher and workers in-process, or River's client, or the
  load generator) and by the PostgreSQL server. On a small machine their
  sum against wall time shows who was the bottleneck.
- **Fleet**: the Go benchmarks in cmd/pampactl/pampacli/fleet_bench_test.go,
  run by the harness with ` + "`" + `go test -bench Fleet` + "`" + ` against 8 real OpenSSH sshd
  on loopback (` + "`" + `-fleet-runs` + "`" + `, default 3, the mean counts): ` + "`" + `nodes deploy` + "`" + ` of
  the worker-only build (what it pushes by default), cold (empty work dirs) and unchanged, against 8 ` + "`" + `scp` + "`" + `
  of the same file at once; ` + "`" + `workers start` + "`" + ` of 8 nodes × 4 workers;
  ` + "`" + `nodes check` + "`" + ` against GNU parallel running ` + "`" + `uname` + "`" + ` over ` + "`" + `ssh` + "`" + ` on each node (not
  measured, and said so, without the parallel package). ` + "`" + `PAMPA_BENCH_USER` + "`" + `
  names another user for the nodes (run as root; for example
  ` + "`" + `useradd -r -M -s /bin/sh pampabench && usermod -p '*' pampabench` + "`" + `).

Targets: Pampa with 8 workers at the default queue_size 5 at least 1.5×
River's best setting; Pampa's best scenario at least 90% of the raw-SQL
ceiling; insert-to-start latency median < 2 ms and p99 < 20 ms with 64 idle
workers; 1,000 worker processes end every row with at most 10 PostgreSQL
client sessions at peak; an idle worker under 10 MiB VmRSS; cold deploy no
slower than parallel scp, unchanged redeploy under 10% of a cold one, 32
workers started in under 2 s, ` + "`" + `nodes check` + "`" + ` at least 5× faster than GNU
parallel.

Reading the numbers: Machines are noisy; the load average at the start is
printed. Everything, PostgreSQL included, shares the same CPUs, so a
rate is bounded by the sum of the harness's and PostgreSQL's CPU per row.
At queue_size 5 a worker holds at most 5 rows, so W workers have at most 5W
rows in flight and the rate is 5W rows per dispatcher round (a transaction
of marks, then a reservation statement per hungry worker). VmRSS counts
the binary's file-backed pages, which all worker processes share; PSS
divides those among them.

## Results

`

// writeReport writes path: the intro above, which says what the numbers
// mean, and the results of this run below the marker.
func writeReport(path, results string) error {
	return os.WriteFile(path, []byte(defaultIntro+resultsMarker+"\n\n"+results), 0o644)
}
