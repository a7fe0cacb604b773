package dispatcher

import (
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"
)

// recorder is an Observer that keeps what it heard.
type recorder struct {
	mu                                sync.Mutex
	started, succeeded, failed, stmts int
	leading                           bool
	workers                           map[string]int
}

func (r *recorder) RowStarted(string, time.Duration) { r.mu.Lock(); r.started++; r.mu.Unlock() }
func (r *recorder) RowEnded(_ string, ok bool, _ time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if ok {
		r.succeeded++
	} else {
		r.failed++
	}
}
func (r *recorder) Cycled(time.Duration, map[string]Stats) {} // from Run, which the tests drive by hand
func (r *recorder) Workers(byNode map[string]int)          { r.mu.Lock(); r.workers = byNode; r.mu.Unlock() }
func (r *recorder) Leading(on bool)                        { r.mu.Lock(); r.leading = on; r.mu.Unlock() }
func (r *recorder) Statement()                             { r.mu.Lock(); r.stmts++; r.mu.Unlock() }

// The Observer hears what the bookkeeping says happened: each start and
// end mark, the lead, the workers by node, every statement.
func TestObserverHearsTheBookkeeping(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 10, func(j *Job) { j.MaxTryTimes = 1; j.QueueSize = 5 })
	rec := &recorder{}
	e.register("n1.1")
	d := e.dispatcher(func(c *Config) { c.Metrics = rec })
	e.cycle(d)
	e.work("n1.1", 2, true)
	e.work("n1.1", 1, false)
	e.start("n1.1", 1)
	e.cycle(d)
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if rec.started != 4 || rec.succeeded != 2 || rec.failed != 1 {
		t.Errorf("heard %d starts, %d successes, %d failures; want 4, 2, 1", rec.started, rec.succeeded, rec.failed)
	}
	if !rec.leading || rec.workers["n1"] != 1 {
		t.Errorf("leading %v, workers %v; want leading, n1: 1", rec.leading, rec.workers)
	}
	if rec.stmts < 5 {
		t.Errorf("heard %d statements; want every statement of the cycles", rec.stmts)
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
