package metrics_test

import (
	"context"
	"encoding/json"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pampa-go/pampa/dispatcher"
	"github.com/pampa-go/pampa/dispatcher/metrics"
	"github.com/pampa-go/pampa/internal/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.RunMain(m)) }

// What the dispatcher tells the Observer becomes the metrics, whose names
// pass client_golang's lint.
func TestMetricsCountWhatTheyHear(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	m := metrics.NewMetrics(reg)
	var o dispatcher.Observer = m
	o.Leading(true)
	for range 4 {
		o.RowStarted("j", 10*time.Millisecond)
	}
	o.RowEnded("j", true, time.Second)
	o.RowEnded("j", true, time.Second)
	o.RowEnded("j", false, time.Second)
	o.Cycled(time.Millisecond, map[string]dispatcher.Stats{"j": {Relaunched: 2, Released: 3, Failed: 1}})
	o.Workers(map[string]int{"n1": 2})
	o.Statement()
	got := gather(t, reg)
	for name, n := range map[string]float64{
		"pampa_rows_started_total": 4, "pampa_rows_succeeded_total": 2, "pampa_rows_failed_total": 2,
		"pampa_rows_relaunched_total": 2, "pampa_rows_released_total": 3, "pampa_step_duration_seconds": 3,
		"pampa_queue_wait_seconds": 4, "pampa_workers_alive": 2, "pampa_dispatcher_leader": 1,
		"pampa_dispatcher_statements_total": 1, "pampa_dispatcher_cycle_duration_seconds": 1,
	} {
		if got[name] != n {
			t.Errorf("%s = %v; want %v (all: %v)", name, got[name], n, got)
		}
	}
	problems, err := testutil.GatherAndLint(reg)
	if err != nil || len(problems) > 0 {
		t.Fatalf("lint: %v %+v", err, problems)
	}
	o.Leading(false)
	if got := gather(t, reg); got["pampa_dispatcher_leader"] != 0 || got["pampa_workers_alive"] != 0 {
		t.Errorf("after losing the lease: leader %v, workers alive %v; want 0 and 0", got["pampa_dispatcher_leader"], got["pampa_workers_alive"])
	}
}

// gather sums each metric of reg over its series: counters and gauges by
// value, histograms by sample count.
func gather(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, mt := range mf.GetMetric() {
			switch {
			case mt.GetCounter() != nil:
				got[mf.GetName()] += mt.GetCounter().GetValue()
			case mt.GetGauge() != nil:
				got[mf.GetName()] += mt.GetGauge().GetValue()
			case mt.GetHistogram() != nil:
				got[mf.GetName()] += float64(mt.GetHistogram().GetSampleCount())
			}
		}
	}
	return got
}

// The row gauges equal dispatcher.Report on the same table.
func TestRowGaugesEqualReport(t *testing.T) {
	t.Parallel()
	pool, url := pgtest.Pool(t)
	ctx := context.Background()
	if _, err := pool.Exec(ctx, `create table pages (id bigint primary key)`); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `insert into pages select generate_series(1, 20)`); err != nil {
		t.Fatal(err)
	}
	job := dispatcher.Job{Name: "scrape", Table: "pages", Fields: dispatcher.FieldsFor("scrape", "id"), MaxTryTimes: 2}.WithDefaults()
	if err := job.Validate(); err != nil {
		t.Fatal(err)
	}
	if err := dispatcher.Setup(ctx, pool, dispatcher.Postgres, []dispatcher.Job{job}); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `update pages set scrape_reservation_id = 'n.1', scrape_reservation_times = case when id <= 3 then 2 else 1 end,
  scrape_start_time = now(), scrape_end_time = case when id <= 8 then now() end, scrape_success = case when id <= 8 then id > 5 end
where id <= 10`); err != nil {
		t.Fatal(err)
	}
	st, err := dispatcher.Report(ctx, pool, []dispatcher.Job{job})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	rows := metrics.NewRowGauges(url, []dispatcher.Job{job}, time.Millisecond)
	t.Cleanup(rows.Close)
	reg.MustRegister(rows)
	want := "# HELP pampa_rows Rows of each job by state, as jobs status counts them.\n# TYPE pampa_rows gauge\n"
	s := st[0]
	for _, c := range []struct {
		state string
		n     int64
	}{{"completed", s.Completed}, {"failed", s.Failed}, {"pending", s.Pending}, {"queued", s.Queued},
		{"retrying", s.Retrying}, {"running", s.Running}, {"scheduled", s.Scheduled}} {
		want += `pampa_rows{job="scrape",state="` + c.state + `"} ` + strconv.FormatInt(c.n, 10) + "\n"
	}
	if s.Failed != 3 || s.Retrying != 2 || s.Running != 2 || s.Completed != 3 {
		t.Fatalf("report %+v; the test wants rows in every state", s)
	}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "pampa_rows"); err != nil {
		t.Fatal(err)
	}
}

// The example Grafana dashboard queries only metrics the dispatcher has.
func TestGrafanaDashboardNamesExistingMetrics(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile("../../examples/grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatalf("dashboard JSON: %v", err)
	}
	reg := prometheus.NewRegistry()
	m := metrics.NewMetrics(reg)
	reg.MustRegister(metrics.NewRowGauges("", nil, time.Hour))
	// Vectors appear in Gather once they have a series.
	m.RowStarted("j", time.Second)
	m.RowEnded("j", true, time.Second)
	m.RowEnded("j", false, time.Second)
	m.Cycled(time.Second, map[string]dispatcher.Stats{"j": {Relaunched: 1, Released: 1}})
	m.Workers(map[string]int{"n": 1})
	known := map[string]bool{"pampa_rows": true}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		known[mf.GetName()] = true
	}
	name := regexp.MustCompile(`pampa_[a-z_]+`)
	uses := 0
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			for _, n := range name.FindAllString(tg.Expr, -1) {
				uses++
				if base := strings.TrimSuffix(n, "_bucket"); !known[base] {
					t.Errorf("panel %q queries %s, which the dispatcher does not export", p.Title, n)
				}
			}
		}
	}
	if uses == 0 {
		t.Fatal("the dashboard queries no pampa metric")
	}
}
