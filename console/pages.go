package console

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/pampa-go/pampa/dispatcher"
	"github.com/pampa-go/pampa/orchestrator"
)

// page is what every template gets.
type page struct {
	Title    string
	Nav      string
	ReadOnly bool
	HasFleet bool
	Error    string
	Data     any
}

func (c *Console) render(w http.ResponseWriter, name string, p page) {
	p.ReadOnly, p.HasFleet = c.cfg.ReadOnly, c.cfg.Fleet != nil
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	if err := c.pages.ExecuteTemplate(w, name, p); err != nil {
		c.log.Error("render a console page", "page", name, "err", err)
	}
}

// jobRow is a job on the jobs page.
type jobRow struct {
	dispatcher.JobStatus
	Done    float64 // % completed or failed
	Chart   chart
	ETA     string
	PerMin  float64
	Pending int64 // everything not ended
}

func (c *Console) jobsPage(w http.ResponseWriter, r *http.Request) {
	st, err := c.Report(r.Context())
	p := page{Title: "Jobs", Nav: "jobs"}
	if err != nil {
		p.Error = err.Error()
	}
	var rows []jobRow
	for _, s := range st {
		j, _ := c.cfg.Cluster.Job(s.Job)
		ch := c.throughput(r.Context(), j)
		jr := jobRow{JobStatus: s, Done: percent(s.Completed+s.Failed, s.Total), Chart: ch,
			Pending: s.Pending + s.Retrying + s.Scheduled + s.Queued + s.Running}
		jr.PerMin, jr.ETA = ch.rate(), eta(jr.Pending, ch.rate())
		rows = append(rows, jr)
	}
	p.Data = rows
	c.render(w, "jobs.html", p)
}

// eta is how long the rows left take at perMin.
func eta(left int64, perMin float64) string {
	switch {
	case left == 0:
		return "done"
	case perMin <= 0:
		return "—"
	}
	return (time.Duration(float64(left)/perMin*float64(time.Minute)) + time.Second/2).Round(time.Second).String()
}

func (c *Console) apiJobs(w http.ResponseWriter, r *http.Request) {
	st, err := c.Report(r.Context())
	if err != nil {
		writeJSON(w, http.StatusInternalServerError, map[string]string{"error": err.Error()})
		return
	}
	if st == nil {
		st = []dispatcher.JobStatus{}
	}
	writeJSON(w, http.StatusOK, st)
}

func (c *Console) apiThroughput(w http.ResponseWriter, r *http.Request) {
	j, err := c.job(r)
	if err != nil {
		writeJSON(w, http.StatusNotFound, map[string]string{"error": err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, c.throughput(r.Context(), j))
}

// rowsFilter is the rows page's query.
type rowsFilter struct {
	Job, State, Key string
	Limit           int
}

func (c *Console) filter(r *http.Request) (rowsFilter, error) {
	q := r.URL.Query()
	f := rowsFilter{Job: q.Get("job"), State: q.Get("state"), Key: q.Get("key"), Limit: 100}
	if f.Job == "" {
		f.Job = r.PathValue("job")
	}
	if f.State != "" && !slices.Contains(dispatcher.RowStates, f.State) {
		return f, badRequest("no row state %q", f.State)
	}
	if l := q.Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n < 1 {
			return f, badRequest("limit %q: give a positive number", l)
		}
		f.Limit = min(n, 10000)
	}
	return f, nil
}

func (c *Console) rowsPage(w http.ResponseWriter, r *http.Request) {
	p := page{Title: "Rows", Nav: "rows"}
	f, err := c.filter(r)
	if f.Job == "" && len(c.cfg.Cluster.Jobs) > 0 {
		f.Job = c.cfg.Cluster.Jobs[0].Name
	}
	data := struct {
		Filter rowsFilter
		Jobs   []string
		States []string
		Rows   []dispatcher.RowInfo
	}{Filter: f, States: dispatcher.RowStates}
	for _, j := range c.cfg.Cluster.Jobs {
		data.Jobs = append(data.Jobs, j.Name)
	}
	if err == nil {
		var j dispatcher.Job
		if j, err = c.job(requestWithJob(r, f.Job)); err == nil {
			data.Rows, err = dispatcher.ListRows(r.Context(), c.cfg.DB, j, dispatcher.RowFilter{State: f.State, Key: f.Key, Limit: f.Limit})
		}
	}
	if err != nil {
		p.Error = err.Error()
	}
	p.Data = data
	c.render(w, "rows.html", p)
}

// requestWithJob lets c.job find a job named in the query.
func requestWithJob(r *http.Request, job string) *http.Request {
	r2 := r.Clone(r.Context())
	r2.SetPathValue("job", job)
	return r2
}

func (c *Console) apiRows(w http.ResponseWriter, r *http.Request) {
	j, err := c.job(r)
	if err != nil {
		writeJSON(w, http.StatusNotFound, map[string]string{"error": err.Error()})
		return
	}
	f, err := c.filter(r)
	if err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
		return
	}
	rows, err := dispatcher.ListRows(r.Context(), c.cfg.DB, j, dispatcher.RowFilter{State: f.State, Key: f.Key, Limit: f.Limit})
	if err != nil {
		writeJSON(w, http.StatusInternalServerError, map[string]string{"error": err.Error()})
		return
	}
	if rows == nil {
		rows = []dispatcher.RowInfo{}
	}
	writeJSON(w, http.StatusOK, rows)
}

// workerRow is a worker on the workers page and in /api/workers: the row
// of `workers status --json`, and two figures only a live view has.
type workerRow struct {
	orchestrator.WorkerStatus
	// Unheard: the registry says alive, but no heartbeat came within
	// heartbeat_timeout.
	Unheard       bool    `json:"unheard"`
	RowsPerSecond float64 `json:"rows_per_second"` // since the last look
}

// workers lists the configured workers that registered or run, in node
// order (orchestrator.JoinWorkers), with what their nodes say when the
// console reaches them.
func (c *Console) workers(ctx context.Context) ([]workerRow, error) {
	reg, err := dispatcher.ListWorkers(ctx, c.cfg.DB)
	if err != nil {
		return nil, err
	}
	var procs []orchestrator.NodeWorkers
	if c.cfg.Fleet != nil && c.cfg.ProcessTimeout > 0 {
		pctx, cancel := context.WithTimeout(ctx, c.cfg.ProcessTimeout)
		procs, _ = c.cfg.Fleet.WorkerProcesses(pctx, nil)
		cancel()
	}
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	prev, prevAt := c.lastDone, c.lastDoneAt
	c.lastDone, c.lastDoneAt = map[string]int64{}, now
	rows := []workerRow{}
	for _, w := range orchestrator.JoinWorkers(c.cfg.Cluster.Nodes, procs, reg) {
		if w.State == "" && w.Process != "running" {
			continue // a slot of max_workers that never ran
		}
		wr := workerRow{WorkerStatus: w,
			Unheard: w.State == "alive" && time.Duration(w.HeartbeatAge*float64(time.Second)) > c.cfg.Cluster.Dispatcher.HeartbeatTimeout}
		ended := w.RowsDone + w.RowsFailed
		if p, ok := prev[w.ID]; ok && now.Sub(prevAt) > 0 {
			wr.RowsPerSecond = float64(ended-p) / now.Sub(prevAt).Seconds()
		}
		c.lastDone[w.ID] = ended
		rows = append(rows, wr)
	}
	return rows, nil
}

func (c *Console) workersPage(w http.ResponseWriter, r *http.Request) {
	p := page{Title: "Workers", Nav: "workers"}
	rows, err := c.workers(r.Context())
	if err != nil {
		p.Error = err.Error()
	}
	byNode := map[string][]workerRow{}
	for _, w := range rows {
		byNode[w.Node] = append(byNode[w.Node], w)
	}
	var nodes []string
	for _, n := range c.cfg.Cluster.Nodes {
		nodes = append(nodes, n.Name)
	}
	var decisions []dispatcher.Decision
	if c.cfg.Decisions != nil {
		decisions = c.cfg.Decisions()
		decisions = decisions[:min(len(decisions), 50)]
	}
	p.Data = struct {
		Nodes        []string
		ByNode       map[string][]workerRow
		HasDecisions bool
		Decisions    []dispatcher.Decision
	}{nodes, byNode, c.cfg.Decisions != nil, decisions}
	c.render(w, "workers.html", p)
}

func (c *Console) apiDecisions(w http.ResponseWriter, r *http.Request) {
	if c.cfg.Decisions == nil {
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "no dispatcher beside this console: run it with dispatcher run or up"})
		return
	}
	ds := c.cfg.Decisions()
	if ds == nil {
		ds = []dispatcher.Decision{}
	}
	writeJSON(w, http.StatusOK, ds)
}

func (c *Console) apiWorkers(w http.ResponseWriter, r *http.Request) {
	rows, err := c.workers(r.Context())
	if err != nil {
		writeJSON(w, http.StatusInternalServerError, map[string]string{"error": err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, rows)
}

func (c *Console) nodesPage(w http.ResponseWriter, r *http.Request) {
	p := page{Title: "Nodes", Nav: "nodes"}
	var checks []orchestrator.NodeCheck
	if c.cfg.Check == nil {
		p.Error = "this console does not reach the nodes"
	} else if r.URL.Query().Get("check") != "" {
		var err error
		if checks, err = c.cfg.Check(r.Context()); err != nil {
			p.Error = err.Error()
		}
	}
	p.Data = struct {
		Nodes  []orchestrator.Node
		Checks []orchestrator.NodeCheck
	}{c.cfg.Cluster.Nodes, checks}
	c.render(w, "nodes.html", p)
}

// logsPage shows a worker's or a node's log; the page follows it over
// /logs?stream=1 (server-sent events, the SSH streams of logs tail -f).
func (c *Console) logsPage(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	node, workerID := q.Get("node"), q.Get("worker")
	if q.Get("stream") != "" {
		c.streamLogs(w, r, node, workerID)
		return
	}
	p := page{Title: "Logs", Nav: "logs"}
	if c.cfg.Fleet == nil {
		p.Error = "this console does not reach the nodes"
	}
	var nodes []string
	for _, n := range c.cfg.Cluster.Nodes {
		nodes = append(nodes, n.Name)
	}
	p.Data = struct {
		Node, Worker, Query string
		Nodes               []string
	}{node, workerID, r.URL.RawQuery, nodes}
	c.render(w, "logs.html", p)
}

func (c *Console) streamLogs(w http.ResponseWriter, r *http.Request, node, workerID string) {
	if c.cfg.Fleet == nil {
		http.Error(w, "this console does not reach the nodes", http.StatusNotFound)
		return
	}
	opts := orchestrator.TailOptions{Lines: 200, Follow: true}
	if workerID != "" {
		n, _, _ := cutDot(workerID)
		opts.Names, opts.Workers = []string{n}, []string{workerID}
	} else if node != "" {
		opts.Names = []string{node}
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	rc := http.NewResponseController(w)
	opts.Emit = func(node, worker, line string) {
		b, _ := json.Marshal(map[string]string{"node": node, "worker": worker, "line": line})
		fmt.Fprintf(w, "data: %s\n\n", b)
		_ = rc.Flush()
	}
	_ = rc.Flush()
	if err := c.cfg.Fleet.TailLogs(r.Context(), opts); err != nil && r.Context().Err() == nil {
		b, _ := json.Marshal(map[string]string{"error": err.Error()})
		fmt.Fprintf(w, "event: failure\ndata: %s\n\n", b)
	}
}

func cutDot(id string) (string, string, bool) {
	for i := range len(id) {
		if id[i] == '.' {
			return id[:i], id[i+1:], true
		}
	}
	return id, "", false
}
