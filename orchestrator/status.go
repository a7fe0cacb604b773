package orchestrator

import (
	"context"
	"sync"
	"time"

	"github.com/pampa-go/pampa/dispatcher"
)

// WorkerStatus is a configured worker as its node and the registry
// (pampa_workers) see it: a row of `workers status`.
type WorkerStatus struct {
	ID   string `json:"id"`
	Node string `json:"node"`
	PID  int    `json:"pid"`
	// Process is what the node says: running, dead, none, or unknown
	// (the node did not answer).
	Process string `json:"process"`
	// Stale: running, but the node's binary or config was replaced since
	// it started.
	Stale bool `json:"stale"`
	// State is the registry's: alive, stopped, dead, or "" if the id never
	// registered (or the registry could not be read).
	State        string  `json:"state"`
	Job          string  `json:"job"`
	HeartbeatAge float64 `json:"heartbeat_age_seconds"`
	// RowsDone and RowsFailed count the attempts this worker id ended, over
	// its life.
	RowsDone   int64 `json:"rows_done"`
	RowsFailed int64 `json:"rows_failed"`
}

// WorkersReport is Fleet.WorkersStatus's answer. Either side may be
// missing: the other is reported all the same.
type WorkersReport struct {
	Workers     []WorkerStatus
	NodesErr    error // nodes that did not answer; their workers' Process is "unknown"
	RegistryErr error // the registry was not read; State, Job, heartbeat and counts are empty
}

// WorkersStatus asks the named nodes (all when names is empty) which of
// their workers run and, at the same time, reads the registry with
// registry; it returns one row per configured worker id.
func (f *Fleet) WorkersStatus(ctx context.Context, names []string, registry func(context.Context) ([]dispatcher.WorkerStatus, error)) (WorkersReport, error) {
	nodes, err := f.Nodes(names)
	if err != nil {
		return WorkersReport{}, err
	}
	var rep WorkersReport
	var reg []dispatcher.WorkerStatus
	var wg sync.WaitGroup
	wg.Go(func() { reg, rep.RegistryErr = registry(ctx) })
	procs, nodesErr := f.WorkerProcesses(ctx, names)
	wg.Wait()
	rep.NodesErr = nodesErr
	rep.Workers = JoinWorkers(nodes, procs, reg)
	return rep, nil
}

// JoinWorkers returns a row per configured worker id of nodes, with what
// the nodes (procs) and the registry (reg) say of it.
func JoinWorkers(nodes []Node, procs []NodeWorkers, reg []dispatcher.WorkerStatus) []WorkerStatus {
	byID := make(map[string]dispatcher.WorkerStatus, len(reg))
	for _, w := range reg {
		byID[w.ID] = w
	}
	type proc struct {
		pid   int
		state string
		stale bool
	}
	seen := map[string]proc{}
	for _, n := range procs {
		for _, p := range n.Workers {
			seen[p.ID] = proc{p.PID, p.State, p.Stale}
		}
	}
	var rows []WorkerStatus
	for _, n := range nodes {
		for _, id := range n.WorkerIDs() {
			r := WorkerStatus{ID: id, Node: n.Name, Process: "unknown"}
			if p, ok := seen[id]; ok {
				r.PID, r.Process, r.Stale = p.pid, p.state, p.stale
			}
			if w, ok := byID[id]; ok {
				r.State, r.Job, r.RowsDone, r.RowsFailed = w.State, w.Job, w.RowsDone, w.RowsFailed
				r.HeartbeatAge = w.HeartbeatAge.Round(100 * time.Millisecond).Seconds()
			}
			rows = append(rows, r)
		}
	}
	return rows
}
