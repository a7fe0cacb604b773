package dispatcher

import (
	"context"
	"errors"
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

// WorkerInfo identifies a worker process.
type WorkerInfo struct {
	ID       string
	Node     string
	Hostname string
	PID      int
}

// RegisterWorker records a worker as alive. Rows that an earlier process of
// the same id left running died with it: they go back to the pool (their
// attempt counted), while its queued rows stay reserved for the newcomer.
func RegisterWorker(ctx context.Context, db DB, w WorkerInfo, jobs []*Queries) error {
	_, err := db.Exec(ctx, `insert into pampa_workers (id, node, hostname, pid)
values ($1, $2, $3, $4)
on conflict (id) do update set node = excluded.node, hostname = excluded.hostname, pid = excluded.pid,
  state = 'alive', started_at = now(), heartbeat_at = now(), stopped_at = null`,
		w.ID, w.Node, w.Hostname, w.PID)
	if err != nil {
		return fmt.Errorf("register worker %s: %w", w.ID, err)
	}
	return releaseRunning(ctx, db, []string{w.ID}, jobs)
}

func releaseRunning(ctx context.Context, db DB, ids []string, jobs []*Queries) error {
	for _, q := range jobs {
		if _, err := db.Exec(ctx, q.ReleaseRunning, ids, q.job.MaxTryTimes); err != nil {
			return fmt.Errorf("job %q: release rows of stopped workers: %w", q.job.Name, err)
		}
		if _, err := db.Exec(ctx, q.FailRunning, ids, q.job.MaxTryTimes); err != nil {
			return fmt.Errorf("job %q: fail rows of stopped workers: %w", q.job.Name, err)
		}
	}
	return nil
}

// Heartbeat tells the dispatcher the worker is alive. A worker presumed dead
// that heart-beats again becomes alive, with no job until one is assigned.
func Heartbeat(ctx context.Context, db DB, id string) error {
	tag, err := db.Exec(ctx, `update pampa_workers set heartbeat_at = now(), state = 'alive' where id = $1`, id)
	if err != nil {
		return fmt.Errorf("heartbeat of worker %s: %w", id, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("heartbeat of worker %s: %w", id, ErrUnknownWorker)
	}
	return nil
}

// ErrUnknownWorker means the worker's registry row is gone; register again.
var ErrUnknownWorker = errors.New("worker is not registered")

// StopWorker records a graceful exit after the worker released its rows.
func StopWorker(ctx context.Context, db DB, id string) error {
	_, err := db.Exec(ctx, `update pampa_workers set state = 'stopped', stopped_at = now(), job = null, assigned_at = null
where id = $1`, id)
	if err != nil {
		return fmt.Errorf("record stop of worker %s: %w", id, err)
	}
	return nil
}

// AssignedJob returns the job the dispatcher assigned to the worker, or "".
func AssignedJob(ctx context.Context, db DB, id string) (string, error) {
	var job *string
	err := db.QueryRow(ctx, `select job from pampa_workers where id = $1`, id).Scan(&job)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", fmt.Errorf("read job of worker %s: %w", id, ErrUnknownWorker)
	}
	if err != nil {
		return "", fmt.Errorf("read job of worker %s: %w", id, err)
	}
	if job == nil {
		return "", nil
	}
	return *job, nil
}

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
