package dispatcher

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// RowStates are the states RowList filters on, as jobs status counts them.
var RowStates = []string{"pending", "retrying", "scheduled", "queued", "running", "completed", "failed"}

// RowInfo is one row as `rows list` shows it. The JSON field names are
// stable.
type RowInfo struct {
	Key      string     `json:"key"`
	State    string     `json:"state"`
	Attempts int        `json:"attempts"`
	Worker   *string    `json:"worker"`
	Start    *time.Time `json:"started_at"`
	End      *time.Time `json:"ended_at"`
	Error    *string    `json:"error"`
}

// RowFilter selects rows for ListRows.
type RowFilter struct {
	State string // one of RowStates; "" for any
	Key   string // only the row with this key; "" for any
	Limit int
}

// ListRows returns up to f.Limit rows of the job in key order, those in
// f.State only unless it is "". Each state's filter is the predicate of
// its partial index, so a big table is not read whole.
// statePredicates are the SQL conditions of each row state, with $1 =
// max_try_times: the one definition jobs status, rows list and the
// console count and filter by. Each is its partial index's predicate.
func statePredicates(j Job) map[string]string {
	fl := j.Fields
	id, ts, st, en, ok, fin := quote(fl.ID), quote(fl.Times), quote(fl.StartTime), quote(fl.EndTime), quote(fl.Success), quote(fl.Final)
	scheduled := "false"
	if fl.RunAt != "" {
		scheduled = fmt.Sprintf("(%s is null and %s is null and %s > now())", id, en, quote(fl.RunAt))
	}
	failed := fmt.Sprintf("(%s is not null and %s = false and (coalesce(%s, 0) >= $1 or coalesce(%s, false)))", en, ok, ts, fin)
	return map[string]string{
		"failed":    failed,
		"completed": fmt.Sprintf("(%s is not null and %s)", en, ok),
		"running":   fmt.Sprintf("(%s is not null and %s is null)", st, en),
		"queued":    fmt.Sprintf("(%s is not null and %s is null)", id, st),
		"scheduled": scheduled,
		"retrying":  fmt.Sprintf("(%s is not null and %s = false and not %s)", en, ok, failed),
		"pending":   fmt.Sprintf("(%s is null and %s is null and not %s)", id, en, scheduled),
	}
}

func ListRows(ctx context.Context, db DB, j Job, f RowFilter) ([]RowInfo, error) {
	state, limit := f.State, f.Limit
	fl := j.Fields
	pk, id, ts, st, en, er := quote(fl.PrimaryKey), quote(fl.ID), quote(fl.Times), quote(fl.StartTime), quote(fl.EndTime), quote(fl.ErrorDescription)
	where := statePredicates(j)
	filter := "true"
	if state != "" {
		if !slices.Contains(RowStates, state) {
			return nil, fmt.Errorf("no row state %q; the states are %s", state, strings.Join(RowStates, ", "))
		}
		filter = where[state]
	}
	args := []any{j.MaxTryTimes, limit}
	if f.Key != "" {
		kt, err := KeyType(ctx, db, j)
		if err != nil {
			return nil, err
		}
		filter += fmt.Sprintf(" and %s = $3::text::%s", pk, kt)
		args = append(args, f.Key)
	}
	stateOf := fmt.Sprintf(`case when %s then 'completed' when %s then 'failed' when %s then 'running'
  when %s then 'queued' when %s then 'scheduled' when %s then 'retrying' else 'pending' end`,
		where["completed"], where["failed"], where["running"], where["queued"], where["scheduled"], where["retrying"])
	rows, err := db.Query(ctx, fmt.Sprintf(`select %s::text, %s, coalesce(%s, 0), %s, %s, %s, %s from %s
where %s order by %s limit $2`, pk, stateOf, ts, id, st, en, er, quoteTable(j.Table), filter, pk), args...)
	if err != nil {
		return nil, fmt.Errorf("job %q: list rows: %w", j.Name, err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowToStructByPos[RowInfo])
	if err != nil {
		return nil, fmt.Errorf("job %q: list rows: %w", j.Name, err)
	}
	return out, nil
}

// EndedPerMinute counts the job's rows that ended in each of the last
// minutes minutes, oldest first (the last is the current minute), from
// their own end times: a history that survives restarts. It reads the
// rows ended since, a scan where no index covers the end time.
func EndedPerMinute(ctx context.Context, db DB, j Job, minutes int) ([]int64, error) {
	en := quote(j.Fields.EndTime)
	rows, err := db.Query(ctx, fmt.Sprintf(`select least(floor(extract(epoch from now() - %[1]s) / 60)::int, $1 - 1), count(*)
from %[2]s where %[1]s > now() - $1 * interval '1 minute' group by 1`, en, quoteTable(j.Table)), minutes)
	if err != nil {
		return nil, fmt.Errorf("job %q: count rows ended per minute: %w", j.Name, err)
	}
	out := make([]int64, minutes)
	for rows.Next() {
		var ago int
		var n int64
		if err := rows.Scan(&ago, &n); err != nil {
			return nil, err
		}
		if ago >= 0 && ago < minutes {
			out[minutes-1-ago] = n
		}
	}
	return out, rows.Err()
}
