package console

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/pampa-go/pampa/dispatcher"
)

// chart is a job's rows ended per minute over the last hour, from the
// rows' own end times: history survives restarts of the console and the
// dispatcher.
type chart struct {
	PerMinute []int64   `json:"per_minute"` // oldest first; the last is the current minute
	At        time.Time `json:"at"`
	Max       int64     `json:"max"`
}

// rate is rows per minute over the last ten full minutes.
func (ch chart) rate() float64 {
	n := len(ch.PerMinute)
	if n < 2 {
		return 0
	}
	var sum int64
	k := 0
	for i := max(0, n-11); i < n-1; i++ {
		sum += ch.PerMinute[i]
		k++
	}
	return float64(sum) / float64(k)
}

// Bars are the chart's bars in SVG coordinates, 60 × 100.
func (ch chart) Bars() []struct{ X, Y, H float64 } {
	var out []struct{ X, Y, H float64 }
	for i, v := range ch.PerMinute {
		h := 0.0
		if ch.Max > 0 {
			h = 100 * float64(v) / float64(ch.Max)
		}
		out = append(out, struct{ X, Y, H float64 }{float64(i), 100 - h, h})
	}
	return out
}

// chartEvery bounds how often a job's chart is read: it scans the ended
// rows of the last hour.
const chartEvery = 15 * time.Second

func (c *Console) throughput(ctx context.Context, j dispatcher.Job) chart {
	c.mu.Lock()
	ch, ok := c.charts[j.Name]
	c.mu.Unlock()
	if ok && time.Since(ch.At) < chartEvery {
		return ch
	}
	ch = chart{At: time.Now()}
	ch.PerMinute, _ = dispatcher.EndedPerMinute(ctx, c.cfg.DB, j, 60) // none on error: the chart is left empty
	if ch.PerMinute == nil {
		ch.PerMinute = make([]int64, 60)
	}
	for _, n := range ch.PerMinute {
		ch.Max = max(ch.Max, n)
	}
	c.mu.Lock()
	c.charts[j.Name] = ch
	c.mu.Unlock()
	return ch
}

func (c *Console) pause(on bool) func(w http.ResponseWriter, r *http.Request) (string, error) {
	return func(w http.ResponseWriter, r *http.Request) (string, error) {
		j, err := c.job(r)
		verb := map[bool]string{true: "pause", false: "resume"}[on]
		what := verb + " job " + r.PathValue("job")
		if err != nil {
			return what, err
		}
		if err := dispatcher.SetPaused(r.Context(), c.cfg.DB, flavor(c), []string{j.Name}, on, "console "+c.who(r)); err != nil {
			return what, err
		}
		c.invalidate()
		writeJSON(w, http.StatusOK, map[string]any{"job": j.Name, "paused": on})
		return what, nil
	}
}

// rowsRequest is the body of rows/retry and rows/cancel: keys, or a
// filter of rows list (all its rows, up to maxFilterRows), and dry_run to
// count first.
type rowsRequest struct {
	Keys   []string `json:"keys"`
	Filter *struct {
		State string `json:"state"`
		Key   string `json:"key"`
	} `json:"filter"`
	DryRun bool `json:"dry_run"`
}

// maxFilterRows bounds the rows one filtered action takes.
const maxFilterRows = 100000

func (c *Console) rowsAction(op string) func(w http.ResponseWriter, r *http.Request) (string, error) {
	return func(w http.ResponseWriter, r *http.Request) (string, error) {
		what := op + " rows of job " + r.PathValue("job")
		j, err := c.job(r)
		if err != nil {
			return what, err
		}
		var req rowsRequest
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 8<<20)).Decode(&req); err != nil {
			return what, badRequest("body: %v; send {\"keys\": [...]} or {\"filter\": {\"state\": \"failed\"}}", err)
		}
		keys := req.Keys
		switch {
		case len(keys) > 0 && req.Filter != nil:
			return what, badRequest("give keys or a filter, not both")
		case req.Filter != nil:
			rows, err := dispatcher.ListRows(r.Context(), c.cfg.DB, j, dispatcher.RowFilter{State: req.Filter.State, Key: req.Filter.Key, Limit: maxFilterRows})
			if err != nil {
				return what, badRequest("%v", err)
			}
			for _, row := range rows {
				keys = append(keys, row.Key)
			}
			what += fmt.Sprintf(" matching state=%q key=%q", req.Filter.State, req.Filter.Key)
		case len(keys) == 0:
			return what, badRequest("no keys and no filter")
		}
		what += fmt.Sprintf(" (%d)", len(keys))
		if req.DryRun {
			writeJSON(w, http.StatusOK, map[string]any{"job": j.Name, "dry_run": true, "rows": len(keys)})
			return what + ", dry run", nil
		}
		kt, err := dispatcher.KeyType(r.Context(), c.cfg.DB, j)
		if err != nil {
			return what, err
		}
		q := dispatcher.NewQueries(j, kt)
		var done []string
		if op == "retry" {
			done, err = dispatcher.Retry(r.Context(), c.cfg.DB, flavor(c), q, keys)
		} else {
			var res dispatcher.CancelResult
			res, err = dispatcher.Cancel(r.Context(), c.cfg.DB, flavor(c), q, keys)
			done = res.Cancelled
		}
		if err != nil {
			return what, badRequest("%v", err)
		}
		c.invalidate()
		writeJSON(w, http.StatusOK, map[string]any{"job": j.Name, "asked": len(keys), "done": len(done), "keys": done})
		return what, nil
	}
}

func (c *Console) workersAction(w http.ResponseWriter, r *http.Request) (string, error) {
	node, op := r.PathValue("node"), r.PathValue("op")
	what := op + " the workers of node " + node
	if c.cfg.Fleet == nil {
		return what, userError{http.StatusNotFound, "this console does not reach the nodes"}
	}
	if _, ok := c.cfg.Cluster.Node(node); !ok {
		return what, userError{http.StatusNotFound, fmt.Sprintf("no node %q", node)}
	}
	ctx := r.Context()
	var err error
	switch op {
	case "start":
		_, err = c.cfg.Fleet.StartWorkers(ctx, []string{node})
	case "stop":
		_, err = c.cfg.Fleet.StopWorkers(ctx, []string{node})
	case "restart":
		if _, err = c.cfg.Fleet.StopWorkers(ctx, []string{node}); err == nil {
			_, err = c.cfg.Fleet.StartWorkers(ctx, []string{node})
		}
	default:
		return what, badRequest("no worker action %q: start, stop or restart", op)
	}
	if err != nil {
		return what, err
	}
	writeJSON(w, http.StatusOK, map[string]string{"node": node, "done": op})
	return what, nil
}

// invalidate makes the next report read the database.
func (c *Console) invalidate() {
	c.mu.Lock()
	c.reportAt = time.Time{}
	c.mu.Unlock()
}

func flavor(c *Console) dispatcher.Flavor {
	if c.cfg.Cluster.Database.Flavor == "crdb" {
		return dispatcher.CockroachDB
	}
	return dispatcher.Postgres
}
