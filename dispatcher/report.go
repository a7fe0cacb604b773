package dispatcher

import (
	"context"
	"fmt"
)

// JobStatus counts a job's rows by state. Without snippets the states
// partition the table: Total = Pending + Retrying + Scheduled + Queued +
// Running + Completed + Failed.
// The JSON field names are stable.
type JobStatus struct {
	Job       string `json:"job"`
	Total     int64  `json:"total"`
	Pending   int64  `json:"pending"`   // waiting for a worker
	Retrying  int64  `json:"retrying"`  // ended unsuccessfully with tries left: run again after its retry_delay
	Scheduled int64  `json:"scheduled"` // not to start before its run_at, in the future
	Queued    int64  `json:"queued"`    // reserved for a worker, not started
	Running   int64  `json:"running"`   // started, not ended
	Completed int64  `json:"completed"` // ended successfully
	Failed    int64  `json:"failed"`    // ended unsuccessfully with no tries left, or for good
	Paused    bool   `json:"paused"`    // pampactl jobs pause: no new reservations
}

// Report counts the rows of every job in one statement each, honouring the
// total_sql, completed_sql, pending_sql and failed_sql snippets.
func Report(ctx context.Context, db DB, jobs []Job) ([]JobStatus, error) {
	out := make([]JobStatus, 0, len(jobs))
	paused, err := Paused(ctx, db)
	if err != nil {
		return nil, err
	}
	for _, j := range jobs {
		s, err := reportJob(ctx, db, j)
		if err != nil {
			return nil, fmt.Errorf("report job %q: %w", j.Name, err)
		}
		s.Paused = paused[j.Name]
		out = append(out, s)
	}
	return out, nil
}

func reportJob(ctx context.Context, db DB, j Job) (JobStatus, error) {
	p := statePredicates(j)
	count := func(state string) string { return "coalesce(sum(case when " + p[state] + " then 1 else 0 end), 0)" }
	s := JobStatus{Job: j.Name}
	err := db.QueryRow(ctx, fmt.Sprintf(`select count(*), %s, %s, %s, %s, %s, %s from %s`,
		count("queued"), count("running"), count("completed"), count("failed"), count("scheduled"), count("retrying"), quoteTable(j.Table)), j.MaxTryTimes).
		Scan(&s.Total, &s.Queued, &s.Running, &s.Completed, &s.Failed, &s.Scheduled, &s.Retrying)
	if err != nil {
		return s, err
	}
	s.Pending = s.Total - s.Queued - s.Running - s.Completed - s.Failed - s.Scheduled - s.Retrying
	sn := j.Snippets
	for _, o := range []struct {
		sql string
		dst *int64
	}{{sn.TotalSQL, &s.Total}, {sn.CompletedSQL, &s.Completed}, {sn.PendingSQL, &s.Pending}, {sn.FailedSQL, &s.Failed}} {
		if o.sql == "" {
			continue
		}
		if err := db.QueryRow(ctx, o.sql).Scan(o.dst); err != nil {
			return s, fmt.Errorf("snippet %q: %w", firstLine(o.sql), err)
		}
	}
	return s, nil
}
