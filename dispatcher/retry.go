package dispatcher

import (
	"context"
	"fmt"
)

// CountFailedForGood counts the job's rows that failed on their last allowed
// attempt: the rows RetryFailed would reset.
func CountFailedForGood(ctx context.Context, db DB, q *Queries) (int64, error) {
	var n int64
	if err := db.QueryRow(ctx, q.CountFailedForGood, q.job.MaxTryTimes).Scan(&n); err != nil {
		return 0, fmt.Errorf("count failed rows of job %q: %w", q.job.Name, err)
	}
	return n, nil
}

// RetryFailed gives the job's rows that failed on their last allowed attempt
// a new series of max_try_times attempts: they become available as if never
// tried, keeping their last error description. Rows with tries left, and
// queued, running or completed rows, are untouched. It returns how many rows
// it reset; one statement, so a job's rows are reset all or none.
func RetryFailed(ctx context.Context, db DB, q *Queries) (int64, error) {
	tag, err := db.Exec(ctx, q.RetryFailed, q.job.MaxTryTimes)
	if err != nil {
		return 0, fmt.Errorf("reset failed rows of job %q: %w", q.job.Name, err)
	}
	return tag.RowsAffected(), nil
}

// WakeDispatcher notifies the dispatcher serving db's schema, as a worker or
// the insert trigger does, so that rows made available from outside start
// now rather than after its poll delay. PostgreSQL only: CockroachDB has no
// NOTIFY and its dispatcher polls.
func WakeDispatcher(ctx context.Context, db DB, reason string) error {
	ns, err := Namespace(ctx, db)
	if err != nil {
		return err
	}
	if _, err := db.Exec(ctx, `select pg_notify($1, $2)`, DispatcherChannel(ns), reason); err != nil {
		return fmt.Errorf("wake the dispatcher: %w", err)
	}
	return nil
}
