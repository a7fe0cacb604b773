package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"strconv"
	"strings"
	"time"
)

// The fleet scenarios are Go benchmarks of the main module
// (cmd/pampactl/pampacli/fleet_bench_test.go): they need the main module's
// test helpers (real sshd on loopback, a PostgreSQL per test binary), so
// the harness runs them with `go test -bench` and reads their metrics.
const fleetPackage = "./cmd/pampactl/pampacli/"

// fleetResult holds the metrics of each fleet benchmark, by name and unit,
// and why a benchmark did not run.
type fleetResult struct {
	Metrics map[string]map[string]float64 // "FleetDeploy" → "cold-ms" → 1102
	Skipped map[string]string
	Runs    int
	User    string // the SSH user of the nodes
}

func runFleet(ctx context.Context, moduleDir string, runs int) (fleetResult, error) {
	res := fleetResult{Metrics: map[string]map[string]float64{}, Skipped: map[string]string{}, Runs: runs, User: fleetUser()}
	cmd := exec.CommandContext(ctx, "go", "test", "-v", "-run", "^$", "-bench", "^BenchmarkFleet",
		"-benchtime", fmt.Sprintf("%dx", runs), "-count", "1", "-timeout", "20m", fleetPackage)
	cmd.Dir = moduleDir
	cmd.WaitDelay = 10 * time.Second
	out, err := cmd.CombinedOutput()
	parseFleet(out, &res)
	if err != nil {
		return res, fmt.Errorf("go test -bench Fleet in %s: %w\n%s", moduleDir, err, lastLines(out, 40))
	}
	if len(res.Metrics) == 0 && len(res.Skipped) == 0 {
		return res, fmt.Errorf("go test -bench Fleet printed no results:\n%s", lastLines(out, 40))
	}
	return res, nil
}

// parseFleet reads lines such as
//
//	BenchmarkFleetDeploy-2  3  2310286261 ns/op  1102 cold-ms  1.071 cold/scp
//	--- SKIP: BenchmarkFleetCheck
//	    fleet_bench_test.go:220: GNU parallel is not installed ...
func parseFleet(out []byte, res *fleetResult) {
	sc := bufio.NewScanner(bytes.NewReader(out))
	skipped := ""
	for sc.Scan() {
		line := sc.Text()
		if name, ok := strings.CutPrefix(line, "--- SKIP: Benchmark"); ok {
			skipped = strings.TrimSpace(name)
			continue
		}
		if skipped != "" {
			if _, why, ok := strings.Cut(strings.TrimSpace(line), ": "); ok {
				res.Skipped[skipped] = why
			}
			skipped = ""
			continue
		}
		f := strings.Fields(line)
		if len(f) < 4 || !strings.HasPrefix(f[0], "BenchmarkFleet") {
			continue
		}
		name, _, _ := strings.Cut(strings.TrimPrefix(f[0], "Benchmark"), "-")
		m := map[string]float64{}
		for i := 2; i+1 < len(f); i += 2 {
			if v, err := strconv.ParseFloat(f[i], 64); err == nil {
				m[f[i+1]] = v
			}
		}
		res.Metrics[name] = m
	}
}

// fleetUser names the SSH user the fleet benchmarks log in as.
func fleetUser() string {
	if u := os.Getenv("PAMPA_BENCH_USER"); u != "" {
		return u
	}
	if u, err := user.Current(); err == nil {
		return u.Username
	}
	return "the current user"
}

func lastLines(b []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// Fleet targets.
const (
	targetColdVsSCP       = 1.0
	targetUnchangedVsCold = 0.10
	targetStart           = 2 * time.Second
	targetCheckVsParallel = 5.0
)

func (f *fleetResult) markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "Fleet: 8 OpenSSH sshd on loopback, logged in as %s; each figure is the mean of %d runs.\n\n", f.User, f.Runs)
	b.WriteString("| Fleet operation | pampactl | Reference | Ratio | Target | Verdict |\n|---|---:|---:|---:|---:|---|\n")
	if m, ok := f.Metrics["FleetDeploy"]; ok {
		fmt.Fprintf(&b, "| `nodes deploy`, cold, %.1f MB binary | %.0f ms | scp ×8 in parallel: %.0f ms | %.2f× | ≤ %.1f× | %s |\n",
			m["MB"], m["cold-ms"], m["scp-ms"], m["cold/scp"], targetColdVsSCP, verdict(m["cold/scp"] <= targetColdVsSCP))
		fmt.Fprintf(&b, "| `nodes deploy`, unchanged | %.0f ms | the cold deploy | %.0f%% | < %.0f%% | %s |\n",
			m["unchanged-ms"], 100*m["unchanged/cold"], 100*targetUnchangedVsCold, verdict(m["unchanged/cold"] < targetUnchangedVsCold))
	}
	if m, ok := f.Metrics["FleetWorkersStart"]; ok {
		d := time.Duration(m["ns/op"])
		fmt.Fprintf(&b, "| `workers start`, 8 nodes × 4 workers | %.0f ms | | | < %s | %s |\n",
			ms(d), targetStart, verdict(d < targetStart))
	}
	if m, ok := f.Metrics["FleetCheck"]; ok {
		fmt.Fprintf(&b, "| `nodes check`, 8 nodes | %.0f ms | GNU parallel --nonall uname: %.0f ms | %.1f× faster | ≥ %.0f× | %s |\n",
			m["check-ms"], m["parallel-ms"], m["parallel/check"], targetCheckVsParallel, verdict(m["parallel/check"] >= targetCheckVsParallel))
	}
	for name, why := range f.Skipped {
		fmt.Fprintf(&b, "| %s | not measured: %s | | | | |\n", name, why)
	}
	b.WriteString("\n")
	return b.String()
}
