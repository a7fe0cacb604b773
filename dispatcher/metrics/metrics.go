// Package metrics exports what the dispatcher does (dispatcher.Observer)
// and its tables' row counts to Prometheus, with client_golang.
package metrics

import (
	"context"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pampa-go/pampa/dispatcher"
)

var _ dispatcher.Observer = (*Metrics)(nil)

// Metrics are the dispatcher's Prometheus metrics. Labels are jobs, nodes
// and row states, never workers: a fleet of thousands would make
// thousands of series.
type Metrics struct {
	started, succeeded, failed, relaunched, released *prometheus.CounterVec
	stepDuration, queueWait                          *prometheus.HistogramVec
	cycle                                            prometheus.Histogram
	statements                                       prometheus.Counter
	leader                                           prometheus.Gauge
	alive                                            *prometheus.GaugeVec
}

// NewMetrics registers the dispatcher's metrics on reg (a registry of the
// caller's: no global state).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	rows := func(name, help string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "pampa", Name: name, Help: help}, []string{"job"})
	}
	m := &Metrics{
		started:    rows("rows_started_total", "Attempts that began, by job."),
		succeeded:  rows("rows_succeeded_total", "Attempts that ended well and were marked so, by job."),
		failed:     rows("rows_failed_total", "Attempts that ended in failure and were marked so, by job."),
		relaunched: rows("rows_relaunched_total", "Rows made available again: failed, late, or held by a dead worker, by job."),
		released:   rows("rows_released_total", "Queued rows given back unstarted, by job."),
		stepDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: "pampa", Name: "step_duration_seconds",
			Help: "How long steps ran, as their workers measured, by job.", Buckets: prometheus.ExponentialBuckets(0.001, 4, 12)}, []string{"job"}),
		queueWait: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: "pampa", Name: "queue_wait_seconds",
			Help: "From a row's reservation to the start of its step, by job.", Buckets: prometheus.ExponentialBuckets(0.001, 4, 12)}, []string{"job"}),
		cycle: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: "pampa", Subsystem: "dispatcher", Name: "cycle_duration_seconds",
			Help: "How long one dispatcher cycle took.", Buckets: prometheus.ExponentialBuckets(0.0005, 4, 10)}),
		statements: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "pampa", Subsystem: "dispatcher", Name: "statements_total",
			Help: "SQL statements the dispatcher sent, on every session."}),
		leader: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "pampa", Subsystem: "dispatcher", Name: "leader",
			Help: "1 while this dispatcher holds the lease and serves workers."}),
		alive: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "pampa", Name: "workers_alive",
			Help: "Workers with a live stream to this dispatcher, by node."}, []string{"node"}),
	}
	reg.MustRegister(m.started, m.succeeded, m.failed, m.relaunched, m.released, m.stepDuration, m.queueWait,
		m.cycle, m.statements, m.leader, m.alive)
	return m
}

func (m *Metrics) RowStarted(job string, wait time.Duration) {
	if m != nil {
		m.started.WithLabelValues(job).Inc()
		m.queueWait.WithLabelValues(job).Observe(wait.Seconds())
	}
}

func (m *Metrics) RowEnded(job string, ok bool, ran time.Duration) {
	if m == nil {
		return
	}
	if ok {
		m.succeeded.WithLabelValues(job).Inc()
	} else {
		m.failed.WithLabelValues(job).Inc()
	}
	m.stepDuration.WithLabelValues(job).Observe(ran.Seconds())
}

func (m *Metrics) Cycled(took time.Duration, stats map[string]dispatcher.Stats) {
	if m == nil {
		return
	}
	m.cycle.Observe(took.Seconds())
	for job, s := range stats {
		m.relaunched.WithLabelValues(job).Add(float64(s.Relaunched + s.Repeated))
		m.released.WithLabelValues(job).Add(float64(s.Released))
		m.failed.WithLabelValues(job).Add(float64(s.Failed)) // out of tries while late or abandoned
	}
}

func (m *Metrics) Workers(byNode map[string]int) {
	if m == nil {
		return
	}
	m.alive.Reset()
	for node, n := range byNode {
		m.alive.WithLabelValues(node).Set(float64(n))
	}
}

func (m *Metrics) Leading(on bool) {
	if m == nil {
		return
	}
	if on {
		m.leader.Set(1)
	} else {
		m.leader.Set(0)
		m.alive.Reset()
	}
}

// Statement counts one statement of the dispatcher's sessions.
func (m *Metrics) Statement() { m.statements.Inc() }

// RowGauges is a collector of the rows of each job by state, from Report
// on a session of its own, opened at the first scrape. A scrape reads at
// most once per interval: the counts walk the table.
type RowGauges struct {
	url      string
	jobs     []dispatcher.Job
	interval time.Duration
	desc     *prometheus.Desc

	mu   sync.Mutex
	conn *pgx.Conn
	at   time.Time
	last []dispatcher.JobStatus
}

// NewRowGauges counts the jobs' rows on the database at url.
func NewRowGauges(url string, jobs []dispatcher.Job, interval time.Duration) *RowGauges {
	return &RowGauges{url: url, jobs: jobs, interval: interval,
		desc: prometheus.NewDesc("pampa_rows", "Rows of each job by state, as jobs status counts them.", []string{"job", "state"}, nil)}
}

func (g *RowGauges) Describe(ch chan<- *prometheus.Desc) { ch <- g.desc }

func (g *RowGauges) Collect(ch chan<- prometheus.Metric) {
	for _, s := range g.read() {
		for state, n := range map[string]int64{"pending": s.Pending, "retrying": s.Retrying, "scheduled": s.Scheduled, "queued": s.Queued,
			"running": s.Running, "completed": s.Completed, "failed": s.Failed} {
			ch <- prometheus.MustNewConstMetric(g.desc, prometheus.GaugeValue, float64(n), s.Job, state)
		}
	}
}

// Counts returns the jobs' rows by state, read at most once per interval.
func (g *RowGauges) Counts() []dispatcher.JobStatus { return g.read() }

func (g *RowGauges) read() []dispatcher.JobStatus {
	g.mu.Lock()
	defer g.mu.Unlock()
	if time.Since(g.at) < g.interval {
		return g.last
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if g.conn == nil || g.conn.IsClosed() {
		conn, err := pgx.Connect(ctx, g.url)
		if err != nil {
			return g.last // the last counts, or none
		}
		g.conn = conn
	}
	st, err := dispatcher.Report(ctx, g.conn, g.jobs)
	if err != nil {
		g.conn.Close(ctx)
		g.conn = nil
		return g.last
	}
	g.at, g.last = time.Now(), st
	return st
}

// Close closes the gauges' session.
func (g *RowGauges) Close() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.conn != nil {
		g.conn.Close(context.Background())
		g.conn = nil
	}
}
