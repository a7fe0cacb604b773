package main

import (
	"context"
	"fmt"
	"io"
	"math"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pampa-go/pampa/dispatcher"
	"github.com/pampa-go/pampa/internal/pgurl"
)

// env is what every scenario shares: the throwaway server's URL and an
// administrative connection to it.
type env struct {
	baseURL string
	admin   *pgx.Conn
	rows    int
	timeout time.Duration
	pgstats io.Writer // when set, pg_stat_statements' top statements per Pampa scenario go here
}

// connectHarness connects as the harness (application_name pampabench), so
// that the session counts of the fan-in scenario leave these sessions out.
func connectHarness(ctx context.Context, url string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		return nil, err
	}
	cfg.RuntimeParams["application_name"] = harnessApp
	return pgx.ConnectConfig(ctx, cfg)
}

// freshSchema drops and creates schema and returns a URL whose search_path
// points at it, so that Pampa's tables and the task table of a scenario
// live in their own schema.
func (e *env) freshSchema(ctx context.Context, schema string) (string, error) {
	id := pgx.Identifier{schema}.Sanitize()
	if _, err := e.admin.Exec(ctx, "drop schema if exists "+id+" cascade"); err != nil {
		return "", fmt.Errorf("drop schema %s: %w", schema, err)
	}
	if _, err := e.admin.Exec(ctx, "create schema "+id); err != nil {
		return "", fmt.Errorf("create schema %s: %w", schema, err)
	}
	u, err := pgurl.WithSearchPath(e.baseURL, schema)
	if err != nil {
		return "", fmt.Errorf("parse server URL: %w", err)
	}
	return u, nil
}

// dropSchema removes a scenario's schema so that autovacuum of its dead
// rows does not steal CPU from the next scenario.
func (e *env) dropSchema(schema string) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, _ = e.admin.Exec(ctx, "drop schema if exists "+pgx.Identifier{schema}.Sanitize()+" cascade")
}

// benchJob is the job every Pampa scenario runs over the tasks table: no
// sql step and no command, so workers run the Go handler registered under
// its name (the no-op step), with the seed's defaults but queue_size.
func benchJob(queueSize int) dispatcher.Job {
	return dispatcher.Job{
		Name:      benchJobName,
		Table:     "tasks",
		Fields:    dispatcher.FieldsFor(benchJobName, "id"),
		QueueSize: queueSize,
	}.WithDefaults()
}

// prepareTasks creates the tasks table (with extra column definitions),
// inserts rows 1..n, runs dispatcher.Setup for job and analyzes the table.
func prepareTasks(ctx context.Context, dbURL string, extraCols string, n int, job dispatcher.Job) error {
	conn, err := connectHarness(ctx, dbURL)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "create table tasks (id bigint primary key"+extraCols+")"); err != nil {
		return fmt.Errorf("create table tasks: %w", err)
	}
	if n > 0 {
		if _, err := conn.Exec(ctx, "insert into tasks (id) select generate_series(1, $1::bigint)", n); err != nil {
			return fmt.Errorf("insert %d rows: %w", n, err)
		}
	}
	if err := dispatcher.Setup(ctx, conn, dispatcher.Postgres, []dispatcher.Job{job}); err != nil {
		return err
	}
	if _, err := conn.Exec(ctx, "vacuum analyze tasks"); err != nil {
		return fmt.Errorf("vacuum tasks: %w", err)
	}
	return nil
}

// cpuMeter measures CPU time spent by this process and by the PostgreSQL
// server (the postmaster child of this process and its backends).
type cpuMeter struct {
	self, pg time.Duration
}

func readCPU() cpuMeter {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	self := time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	return cpuMeter{self: self, pg: postgresCPU()}
}

func (m cpuMeter) since(start cpuMeter) cpuMeter {
	return cpuMeter{self: m.self - start.self, pg: m.pg - start.pg}
}

// clockTick is USER_HZ, the unit of CPU times in /proc/PID/stat; it is 100
// on every Linux architecture Go supports.
const clockTick = 100

// procStat is the part of /proc/PID/stat the harness reads.
type procStat struct {
	pid, ppid                   int
	comm                        string
	utime, stime, cutime, cstim int64 // clock ticks
}

func readProcStat(pid int) (procStat, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procStat{}, err
	}
	s := string(b)
	open, closing := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || closing < open {
		return procStat{}, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	// Fields after the command: state(3) ppid(4) ... utime(14) stime(15) cutime(16) cstime(17).
	f := strings.Fields(s[closing+1:])
	if len(f) < 15 {
		return procStat{}, fmt.Errorf("/proc/%d/stat: too few fields", pid)
	}
	num := func(i int) int64 { v, _ := strconv.ParseInt(f[i-3], 10, 64); return v }
	return procStat{pid: pid, ppid: int(num(4)), comm: s[open+1 : closing],
		utime: num(14), stime: num(15), cutime: num(16), cstim: num(17)}, nil
}

func ticks(n int64) time.Duration { return time.Duration(n) * time.Second / clockTick }

// postgresCPU sums the CPU time of the postmaster started by this process,
// of the backends it reaped and of its live children.
func postgresCPU() time.Duration {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	var all []procStat
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if st, err := readProcStat(pid); err == nil {
			all = append(all, st)
		}
	}
	self := os.Getpid()
	var total int64
	for _, pm := range all {
		if pm.ppid != self || pm.comm != "postgres" {
			continue
		}
		total += pm.utime + pm.stime + pm.cutime + pm.cstim
		for _, c := range all {
			if c.ppid == pm.pid {
				total += c.utime + c.stime
			}
		}
	}
	return ticks(total)
}

// machine describes where the benchmark ran.
type machine struct {
	Date, CPU, Memory, Postgres, Go, River string
	Load                                   string // 1, 5 and 15 minute load averages
	NumCPU                                 int
}

func describeMachine(ctx context.Context, admin *pgx.Conn) machine {
	m := machine{Date: time.Now().UTC().Format("2006-01-02 15:04 MST"), NumCPU: runtime.NumCPU(),
		Go: runtime.Version(), CPU: "unknown", Memory: "unknown", River: riverVersion()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if rest, ok := strings.CutPrefix(line, "MemTotal:"); ok {
				kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
				m.Memory = fmt.Sprintf("%.1f GiB", float64(kb)/(1<<20))
			}
		}
	}
	m.Load = "unknown"
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		if f := strings.Fields(string(b)); len(f) >= 3 {
			m.Load = strings.Join(f[:3], " ")
		}
	}
	if err := admin.QueryRow(ctx, "show server_version").Scan(&m.Postgres); err != nil {
		m.Postgres = "unknown"
	}
	return m
}

// waitFor polls cond every interval until it returns true, an error, or ctx
// ends.
func waitFor(ctx context.Context, interval time.Duration, cond func() (bool, error)) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		ok, err := cond()
		if err != nil || ok {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// enablePGStats loads pg_stat_statements, which needs a server restart.
func enablePGStats(ctx context.Context, admin *pgx.Conn, restart func(context.Context) error) error {
	if _, err := admin.Exec(ctx, "alter system set shared_preload_libraries = 'pg_stat_statements'"); err != nil {
		return fmt.Errorf("enable pg_stat_statements: %w", err)
	}
	return restart(ctx)
}

// resetPGStats forgets the statistics gathered so far.
func (e *env) resetPGStats(ctx context.Context) error {
	if e.pgstats == nil {
		return nil
	}
	_, err := e.admin.Exec(ctx, "select public.pg_stat_statements_reset()")
	return err
}

// printPGStats writes the statements that took the most server time since
// the last reset.
func (e *env) printPGStats(ctx context.Context, title string) error {
	if e.pgstats == nil {
		return nil
	}
	rows, err := e.admin.Query(ctx, `select calls, total_exec_time, total_exec_time / calls,
  shared_blks_hit / calls, rows / calls, regexp_replace(query, '\s+', ' ', 'g')
from public.pg_stat_statements where calls > 0 order by total_exec_time desc limit 12`)
	if err != nil {
		return fmt.Errorf("read pg_stat_statements: %w", err)
	}
	defer rows.Close()
	fmt.Fprintf(e.pgstats, "    pg_stat_statements, %s (calls, total ms, mean ms, buffers/call, rows/call, query):\n", title)
	for rows.Next() {
		var calls, blks, nrows int64
		var total, mean float64
		var q string
		if err := rows.Scan(&calls, &total, &mean, &blks, &nrows, &q); err != nil {
			return err
		}
		if len(q) > 110 {
			q = q[:110] + "..."
		}
		fmt.Fprintf(e.pgstats, "    %8d %9.0f %8.3f %8d %6d  %s\n", calls, total, mean, blks, nrows, q)
	}
	return rows.Err()
}

// percentile returns the p-quantile of ds (nearest rank; p = 1 is the
// maximum). ds is sorted in place.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	slices.Sort(ds)
	i := int(math.Ceil(p*float64(len(ds)))) - 1
	return ds[min(max(i, 0), len(ds)-1)]
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
