package dispatcher

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Worker states in pampa_workers.state.
const (
	StateAlive   = "alive"
	StateStopped = "stopped" // exited gracefully
	StateDead    = "dead"    // stopped heart-beating; its rows were taken back
)

// WorkerStatus is a row of the worker registry as `workers status` shows it.
type WorkerStatus struct {
	ID           string        `json:"id"`
	Node         string        `json:"node"`
	Hostname     string        `json:"hostname"`
	PID          int           `json:"pid"`
	State        string        `json:"state"`
	Job          string        `json:"job"`
	HeartbeatAge time.Duration `json:"heartbeat_age_ns"`
	RowsDone     int64         `json:"rows_done"`
	RowsFailed   int64         `json:"rows_failed"`
}

// ListWorkers returns the registry ordered by id.
func ListWorkers(ctx context.Context, db DB) ([]WorkerStatus, error) {
	rows, err := db.Query(ctx, `select id, node, hostname, pid, state, coalesce(job, ''),
  extract(epoch from now() - heartbeat_at)::float8, rows_done, rows_failed
from pampa_workers order by id`)
	if err != nil {
		return nil, fmt.Errorf("list workers: %w", err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (WorkerStatus, error) {
		var w WorkerStatus
		var age float64
		err := r.Scan(&w.ID, &w.Node, &w.Hostname, &w.PID, &w.State, &w.Job, &age, &w.RowsDone, &w.RowsFailed)
		w.HeartbeatAge = time.Duration(age * float64(time.Second))
		return w, err
	})
}
