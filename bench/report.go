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
	RSSKB              int64 // harness VmRSS after the run (Pampa only)
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
	targetVsRiver   = 1.5
	targetVsCeiling = 0.60
	targetMedian    = 5 * time.Millisecond
	targetP99       = 50 * time.Millisecond
)

// report is everything one run measured.
type report struct {
	Machine    machine
	Rows       int
	Flags      string
	Results    []result
	RiverBest  int // index into Results, -1 if none
	Latency    *latencyResult
	Idle       *idleResult
	Fleet      *fleetResult
	Errors     []string
	WallClock  time.Duration
	InProcRSS  int64
	InProcDesc string
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

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "**missed**"
}

// markdown renders the results section.
func (rp *report) markdown() string {
	var b strings.Builder
	m := rp.Machine
	fmt.Fprintf(&b, "Run %s, %s. Machine: %d CPUs (%s), %s RAM, load average %s at the start; "+
		"PostgreSQL %s (throwaway server, fsync off); %s; River %s.\n\n",
		m.Date, rp.Flags, m.NumCPU, m.CPU, m.Memory, m.Load, m.Postgres, m.Go, m.River)
	fmt.Fprintf(&b, "Pampa's dispatcher and workers run as goroutines of the harness, each worker with its own "+
		"connection pool and notification connection (as separate `pampactl worker run` processes would have); "+
		"dispatcher delay %s, worker delay %s. Everything, PostgreSQL included, shares the same %d CPUs.\n\n",
		dispatcherDelay, workerDelay, m.NumCPU)

	b.WriteString("| Scenario | Rows | Seconds | Rows/s | Harness CPU s | PostgreSQL CPU s | Note |\n")
	b.WriteString("|---|---:|---:|---:|---:|---:|---|\n")
	for i, r := range rp.Results {
		note := r.Note
		if r.Kind == kindRiver && i == rp.RiverBest {
			note = strings.TrimPrefix(note+"; best River setting", "; ")
		}
		rate := fmt.Sprintf("%.0f", r.rate())
		if r.Partial {
			rate += " (partial)"
		}
		fmt.Fprintf(&b, "| %s | %d | %.2f | %s | %.1f | %.1f | %s |\n", r.Name, r.Rows, r.Elapsed.Seconds(), rate,
			r.CPU.self.Seconds(), r.CPU.pg.Seconds(), note)
	}
	b.WriteString("\n")

	b.WriteString("| Ratio | Value | Target | Verdict |\n|---|---:|---:|---|\n")
	pampa, okP := rp.best(kindPampa)
	if okP && rp.RiverBest >= 0 {
		river := rp.Results[rp.RiverBest]
		x := pampa.rate() / river.rate()
		fmt.Fprintf(&b, "| Pampa best (%s) / River best | %.2f× | ≥ %.1f× | %s |\n", pampa.Name, x, targetVsRiver, verdict(x >= targetVsRiver))
	}
	if c, ok := rp.ceiling(); ok && okP {
		x := pampa.rate() / c.rate()
		fmt.Fprintf(&b, "| Pampa best (%s) / raw-SQL ceiling | %.0f%% | ≥ %.0f%% | %s |\n", pampa.Name, 100*x, 100*targetVsCeiling, verdict(x >= targetVsCeiling))
		for _, r := range rp.Results {
			if r.Kind == kindPampa && r.Name != pampa.Name {
				fmt.Fprintf(&b, "| %s / raw-SQL ceiling | %.0f%% | | for reference |\n", r.Name, 100*r.rate()/c.rate())
			}
		}
	}
	if l := rp.Latency; l != nil {
		fmt.Fprintf(&b, "| Insert-to-start latency, median (%d inserts) | %.1f ms | < %d ms | %s |\n",
			l.Inserts, ms(l.Median), targetMedian.Milliseconds(), verdict(l.Median < targetMedian))
		fmt.Fprintf(&b, "| Insert-to-start latency, p99 (max %.1f ms) | %.1f ms | < %d ms | %s |\n",
			ms(l.Max), ms(l.P99), targetP99.Milliseconds(), verdict(l.P99 < targetP99))
	}
	b.WriteString("\n")

	if rp.Idle != nil || rp.InProcRSS > 0 {
		b.WriteString("Idle worker footprint:\n\n")
		if i := rp.Idle; i != nil {
			fmt.Fprintf(&b, "- one `pampactl worker run` process, idle (no job assigned, no dispatcher, worker delay 1s, heartbeat 5s): "+
				"VmRSS %.1f MiB; CPU %s over %s\n", float64(i.RSSKB)/1024, cpuText(i.CPU, i.Window), i.Window)
		}
		if rp.InProcRSS > 0 {
			fmt.Fprintf(&b, "- the harness process itself (%s): VmRSS %.1f MiB; not a per-worker figure\n",
				rp.InProcDesc, float64(rp.InProcRSS)/1024)
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

` + "`make bench`" + ` (or ` + "`cd bench && go run . -out ../BENCHMARKS.md`" + `) runs every scenario
in one go on one throwaway PostgreSQL server (internal/pgserver: fsync off, on
127.0.0.1) and rewrites the results section below. The harness is its own Go
module in bench/, so the main module never depends on River.

Flags: ` + "`-rows N`" + ` (default 200000), ` + "`-only pampa,latency,river,ceiling,idle,fleet`" + `,
` + "`-timeout`" + ` per scenario (default 2m; a scenario that runs out reports the rate
over what it finished, marked partial), ` + "`-repeat 3`" + ` (short scenarios run this
often and the best run counts: the machine is shared), ` + "`-cpuprofile FILE`" + `
(Go profile of the Pampa throughput scenarios), ` + "`-pgstats`" + ` (load
pg_stat_statements and print each Pampa scenario's costliest statements),
` + "`-fleet-runs N`" + `, ` + "`-out FILE`" + `, ` + "`-v`" + ` (logs). A whole run takes about 6 minutes on 2 cores.

What the numbers mean:

- **Pampa throughput**: a table of N rows, a no-op sql step (` + "`select $1::bigint`" + `),
  one fresh schema per scenario. Workers start and register first; the clock
  runs from the dispatcher's start until the workers have ended all N rows
  (rows_done in pampa_workers, checked against dispatcher.Report). Rows per
  second from reserved to ended, with 1, 2 and 8 workers at queue_size 1000 and
  2 workers at the default queue_size 5.
- **Insert-to-start latency**: 2 idle workers, queue_size 5; rows inserted one
  per statement ~15 ms apart; start_time − inserted_at per row, both from the
  database clock (start_time is the start of the worker's statement).
- **River**: github.com/riverqueue/river with riverpgxv5, migrated into its own
  schema; N no-op jobs inserted with InsertManyFast, then timed from client
  start until N JobCompleted events (checked against river_job). A few client
  settings are tried; the best is the baseline.
- **Raw-SQL ceiling**: a queue written by hand in three statements, the
  same three state changes Pampa makes (reserve, start, end), 1,000 rows per
  statement, two connections: each reserves the next 1,000 free rows in key
  order (` + "`for update skip locked`" + `, returning their keys), starts them and
  ends them by key, until no free row is left. It runs on a table with the
  partial indexes dispatcher.Setup creates; the ratios use this figure. Two
  references beside it: the same without the partial indexes (finding free
  rows then walks past every row already taken, which is why Pampa creates
  them), and the three updates over key ranges handed out by the harness,
  which skips finding the rows at all; no queue can do that, so it only
  bounds what the updates themselves cost.
- **CPU columns**: CPU seconds used during the timed window by the harness
  process (dispatcher, workers or River client, and the harness's polling) and
  by the PostgreSQL server. On a small machine their sum against wall time
  shows who was the bottleneck.
- **Idle worker**: one real ` + "`pampactl worker run`" + ` process with nothing to do:
  VmRSS and CPU time (utime+stime) over a 5 s window.
- **Fleet**: the Go benchmarks in cmd/pampactl/pampacli/fleet_bench_test.go,
  run by the harness with ` + "`go test -bench Fleet`" + ` against 8 real OpenSSH sshd
  on loopback (` + "`-fleet-runs`" + `, default 3, the mean counts): ` + "`nodes deploy`" + ` of
  the pampactl build, cold (empty work dirs) and unchanged, against 8 ` + "`scp`" + `
  of the same file at once; ` + "`workers start`" + ` of 8 nodes × 4 workers;
  ` + "`nodes check`" + ` against GNU parallel running ` + "`uname`" + ` over ` + "`ssh`" + ` on each node (not
  measured, and said so, without the parallel package). sshd runs every
  remote command through the login shell of the user, and bash reads
  ~/.bashrc even then: a slow one (pyenv init is ~150 ms) is paid per
  command by pampactl and the reference tools alike. ` + "`PAMPA_BENCH_USER`" + `
  names another user for the nodes (run as root; for example
  ` + "`useradd -r -M -s /bin/sh pampabench && usermod -p '*' pampabench`" + `);
  the results say which user it was.

Targets: Pampa ≥ 1.5× River and ≥ 60% of the raw-SQL ceiling, both for
Pampa's best scenario (large queue_size values are how users ask for
throughput); insert-to-start latency median < 5 ms and p99 < 50 ms; cold deploy no
slower than parallel scp, unchanged redeploy under 10% of a cold one, 32
workers started in under 2 s, ` + "`nodes check`" + ` at least 5× faster than GNU
parallel. The other scenarios' ratios are printed for reference: one worker is one connection
doing one thing at a time, against the ceiling's two, and queue_size 5 pays
a dispatcher round per 5 rows by design.

Reading the numbers: on a small machine PostgreSQL is the bottleneck (its CPU
seconds exceed the wall time), so rows/s mostly measures how much server work
each row costs. The "first quarter / last quarter" note shows whether the rate
falls as rows are processed: every state change leaves a dead entry in
Pampa's partial indexes until VACUUM, and statements that walk those indexes
from the start (the pending count, reservation, a worker's queue) get slower
with every row done since the last vacuum. The dispatcher therefore resumes
reservation after the last key it reserved and walks from the first key
only once per delay (or when the resumed walk comes up short); the pending
count still walks from the start, once per delay.

## Results

`

// writeReport writes path: the intro above, which says what the numbers
// mean, and the results of this run below the marker.
func writeReport(path, results string) error {
	return os.WriteFile(path, []byte(defaultIntro+resultsMarker+"\n\n"+results), 0o644)
}
