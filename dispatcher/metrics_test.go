package dispatcher

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// The metrics count what the bookkeeping says happened, their names pass
// client_golang's lint, and the row gauges equal Report.
func TestMetrics(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 10, func(j *Job) { j.MaxTryTimes = 1; j.QueueSize = 5 })
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	rows := NewRowGauges(e.url, []Job{e.job}, time.Millisecond)
	t.Cleanup(rows.Close)
	reg.MustRegister(rows)
	e.register("n1.1")
	d := e.dispatcher(func(c *Config) { c.Metrics = m })
	e.cycle(d)
	e.work("n1.1", 2, true)
	e.work("n1.1", 1, false)
	e.start("n1.1", 1)
	job := e.job.Name
	for name, tc := range map[string]struct {
		c    prometheus.Collector
		want float64
	}{
		"started":   {m.started.WithLabelValues(job), 4},
		"succeeded": {m.succeeded.WithLabelValues(job), 2},
		"failed":    {m.failed.WithLabelValues(job), 1},
		"alive":     {m.alive.WithLabelValues("n1"), 1},
		"leader":    {m.leader, 1},
	} {
		if got := testutil.ToFloat64(tc.c); got != tc.want {
			t.Errorf("%s = %v; want %v", name, got, tc.want)
		}
	}
	if n := testutil.CollectAndCount(m.stepDuration); n != 1 {
		t.Errorf("step duration: %d series; want 1 (the job)", n)
	}
	if got := testutil.ToFloat64(m.statements); got < 5 {
		t.Errorf("statements counted: %v; want every statement of the cycles", got)
	}
	problems, err := testutil.GatherAndLint(reg)
	if err != nil || len(problems) > 0 {
		t.Fatalf("lint: %v %+v", err, problems)
	}
	st, err := Report(context.Background(), e.pool, []Job{e.job})
	if err != nil {
		t.Fatal(err)
	}
	want := `# HELP pampa_rows Rows of each job by state, as jobs status counts them.
# TYPE pampa_rows gauge
`
	for _, s := range []struct {
		state string
		n     int64
	}{{"completed", st[0].Completed}, {"failed", st[0].Failed}, {"pending", st[0].Pending}, {"queued", st[0].Queued},
		{"retrying", st[0].Retrying}, {"running", st[0].Running}, {"scheduled", st[0].Scheduled}} {
		want += "pampa_rows{job=\"" + job + "\",state=\"" + s.state + "\"} " + strconv.FormatInt(s.n, 10) + "\n"
	}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "pampa_rows"); err != nil {
		t.Fatal(err)
	}
}

// /metrics answers loopback peers, and others only with the secret.
func TestMetricsHandlerAuth(t *testing.T) {
	t.Parallel()
	h := LoopbackOrBearer([]byte("s3cret"), http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) }))
	for _, tc := range []struct {
		addr, auth string
		want       int
	}{
		{"127.0.0.1:5000", "", http.StatusOK},
		{"[::1]:5000", "", http.StatusOK},
		{"198.18.0.7:5000", "", http.StatusUnauthorized},
		{"198.18.0.7:5000", "Bearer wrong", http.StatusUnauthorized},
		{"198.18.0.7:5000", "Bearer s3cret", http.StatusOK},
	} {
		r := httptest.NewRequest(http.MethodGet, "/metrics", nil)
		r.RemoteAddr = tc.addr
		if tc.auth != "" {
			r.Header.Set("Authorization", tc.auth)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != tc.want {
			t.Errorf("%s with %q: %d; want %d", tc.addr, tc.auth, w.Code, tc.want)
		}
	}
}

// The example Grafana dashboard queries only metrics the dispatcher has.
func TestGrafanaDashboardNamesExistingMetrics(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile("../examples/grafana-dashboard.json")
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
	m := NewMetrics(reg)
	reg.MustRegister(NewRowGauges("", nil, time.Hour))
	// Vectors appear in Gather once they have a series.
	m.started.WithLabelValues("j").Inc()
	for _, v := range []*prometheus.CounterVec{m.succeeded, m.failed, m.relaunched, m.released} {
		v.WithLabelValues("j").Inc()
	}
	m.stepDuration.WithLabelValues("j").Observe(1)
	m.queueWait.WithLabelValues("j").Observe(1)
	m.alive.WithLabelValues("n").Set(1)
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
