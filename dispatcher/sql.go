package dispatcher

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// DB is what Pampa needs of a connection: *pgx.Conn, *pgxpool.Pool and pgx.Tx
// all satisfy it.
type DB interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults
}

// Queries holds every statement Pampa runs on one job's table. They are built
// once from validated, quoted identifiers; every value is a parameter.
//
// The states of a row, read from its bookkeeping columns:
//
//	available  id null, end null                 (fresh, relaunched or released)
//	queued     id set, start null                (reserved for worker id)
//	running    id set, start set, end null       (attempt = times)
//	completed  end set, success true
//	failed     end set, success false            (relaunched while times < max_try_times)
type Queries struct {
	job Job

	Reserve        string // $1 how many, $2 worker id, $3 max tries (an update: CockroachDB)
	ReserveAndWake string // same, then notifies channel $4 with payload $5 if it reserved
	// ReserveAfterAndWake is ReserveAndWake for rows whose key is above $6:
	// a cursor that spares walking past every row already taken. "" with a
	// selecting_sql snippet, which chooses its own order. Both return how
	// many rows they reserved and the highest key among them (null for
	// none). PostgreSQL only.
	ReserveAfterAndWake string
	// TopUp fills worker $2's queue up to $1 rows, counting what it holds
	// itself, and wakes it as ReserveAndWake does ($3 max tries, $4 and $5
	// the wake-up); TopUpAfter only takes keys above $6. They return how
	// many rows they reserved, the highest key, and how many were wanted.
	// PostgreSQL only; "" with a selecting_sql snippet.
	TopUp, TopUpAfter string
	QueueCounts       string // $1 worker ids → (id, queued)
	PendingCount      string // $1 cap, $2 max tries
	ReleaseQueued     string // $1 worker ids: queued rows back to the pool, no attempt spent
	ReleaseRunning    string // $1 worker ids, $2 max tries: running rows of dead workers
	FailRunning       string // $1 worker ids, $2 max tries: same, out of tries
	RelaunchFailed    string // $1 max tries, or how many for a relaunching snippet
	RelaunchLate      string // $1 max tries, $2 seconds
	FailLate          string // $1 max tries, $2 seconds
	// Rows out of tries are never relaunched by the dispatcher; an operator
	// resets them after fixing the cause (pampactl jobs retry).
	CountFailedForGood string // $1 max tries → how many
	RetryFailed        string // $1 max tries: back to available, attempts from 0

	StartChunk     string // $1 worker id, $2 how many → (key, key text, attempt, rows queued before)
	StartChunkRows string // same, plus the row as JSON
	EndChunk       string // $1 worker id, $2 expected rows: errors unless all end
	EndOne         string // $1 worker id, $2 key
	EndOneGuarded  string // same, but errors unless the row ends
	FailOne        string // $1 worker id, $2 key, $3 error description
	Unstart        string // $1 worker id: running rows back to queued (graceful stop)
}

// NewQueries builds the statements of a validated job.
func NewQueries(j Job) *Queries {
	f := j.Fields
	t, pk := quoteTable(j.Table), quote(f.PrimaryKey)
	id, tm, ts := quote(f.ID), quote(f.Time), quote(f.Times)
	st, en, ok, er := quote(f.StartTime), quote(f.EndTime), quote(f.Success), quote(f.ErrorDescription)
	r := strings.NewReplacer(
		"{T}", t, "{PK}", pk, "{ID}", id, "{TM}", tm, "{TS}", ts,
		"{ST}", st, "{EN}", en, "{OK}", ok, "{ER}", er,
	)
	q := &Queries{job: j}
	sql := func(s string) string { return r.Replace(s) }
	const reset = `{ID} = null, {TM} = null, {ST} = null, {EN} = null, {OK} = null`

	// counted reports how many rows the update u reserved and the highest
	// key, and notifies channel $4 with payload $5 when there were any, so
	// the worker hears of its rows in the same round trip.
	counted := func(u string) string {
		return sql(`with r as (` + u + ` returning {PK}), n as (select count(*) as c from r)
select n.c, (select {PK} from r order by {PK} desc limit 1) from n
left join lateral (select pg_notify($4, $5) where n.c > 0) w on true`)
	}
	if s := j.Snippets.SelectingSQL; s != "" {
		// The snippet chooses; the guard keeps a row from being reserved twice:
		// a concurrent reservation makes the re-checked "id is null" false.
		u := `with sel as (` + s + `)
update {T} set {ID} = $2, {TM} = now()
where {PK} in (select {PK} from sel) and {ID} is null and {EN} is null
  and coalesce({TS}, 0) < $3 and $1::bigint >= 0`
		q.Reserve, q.ReserveAndWake = sql(u), counted(u)
		q.PendingCount = `select count(*) from (` + s + `) sel where $2::int >= 0`
	} else {
		// The candidates are an array computed once (an InitPlan): as a
		// subquery PostgreSQL may re-run it per row, and with SKIP LOCKED
		// each run finds other rows, reserving far more than asked.
		u := func(after string) string {
			return `update {T} set {ID} = $2, {TM} = now()
where {PK} = any(array(
  select {PK} from {T}
  where {ID} is null and {EN} is null and coalesce({TS}, 0) < $3` + after + `
  order by {PK} limit $1
  for update skip locked))
and {ID} is null and {EN} is null`
		}
		q.Reserve, q.ReserveAndWake = sql(u("")), counted(u(""))
		q.ReserveAfterAndWake = counted(u(` and {PK} > $6`))
		// The queue is counted in the same statement, so a worker's request
		// costs the dispatcher one statement; the snapshot sees at least as
		// many queued rows as there are by the end, so it never overfills.
		topUp := func(after string) string {
			return sql(`with want as (select greatest($1 - count(*), 0) as n from {T} where {ID} = $2 and {ST} is null),
r as (update {T} set {ID} = $2, {TM} = now()
where {PK} = any(array(
  select {PK} from {T}
  where {ID} is null and {EN} is null and coalesce({TS}, 0) < $3` + after + `
  order by {PK} limit (select n from want)
  for update skip locked))
and {ID} is null and {EN} is null
returning {PK}), n as (select count(*) as c from r)
select n.c, (select {PK} from r order by {PK} desc limit 1), (select n from want) from n
left join lateral (select pg_notify($4, $5) where n.c > 0) w on true`)
		}
		q.TopUp, q.TopUpAfter = topUp(""), topUp(` and {PK} > $6`)
		q.PendingCount = sql(`select count(*) from (
  select 1 from {T} where {ID} is null and {EN} is null and coalesce({TS}, 0) < $2
  order by {PK} limit $1) s`) // the order makes the planner walk the available index
	}
	q.QueueCounts = sql(`select {ID}, count(*) from {T} where {ID} = any($1) and {ST} is null group by {ID}`)
	q.ReleaseQueued = sql(`update {T} set {ID} = null, {TM} = null where {ID} = any($1) and {ST} is null`)
	q.ReleaseRunning = sql(`update {T} set ` + reset + `,
  {ER} = 'worker ' || {ID} || ' stopped during attempt ' || coalesce({TS}, 0)
where {ID} = any($1) and {ST} is not null and {EN} is null and coalesce({TS}, 0) < $2`)
	q.FailRunning = sql(`update {T} set {EN} = now(), {OK} = false,
  {ER} = 'worker ' || {ID} || ' stopped during attempt ' || coalesce({TS}, 0) || ', the last allowed'
where {ID} = any($1) and {ST} is not null and {EN} is null and coalesce({TS}, 0) >= $2`)

	if s := j.Snippets.RelaunchingSQL; s != "" {
		// A relaunch after a success starts a new series of attempts.
		q.RelaunchFailed = sql(`with sel as (` + s + `)
update {T} set ` + reset + `, {TS} = case when {OK} then 0 else {TS} end
where {PK} in (select {PK} from sel) and ({EN} is not null or {ID} is null)
  and $1::bigint >= 0`)
	} else {
		q.RelaunchFailed = sql(`update {T} set ` + reset + `
where {EN} is not null and {OK} = false and coalesce({TS}, 0) < $1`)
	}
	// Lateness is measured from the start of the attempt, not the reservation.
	q.RelaunchLate = sql(`update {T} set ` + reset + `,
  {ER} = 'attempt ' || coalesce({TS}, 0) || ' ran past max_job_duration'
where {ST} is not null and {EN} is null and coalesce({TS}, 0) < $1
  and {ST} < now() - ($2::float8 * interval '1 second')`)
	q.FailLate = sql(`update {T} set {EN} = now(), {OK} = false,
  {ER} = 'attempt ' || coalesce({TS}, 0) || ' ran past max_job_duration, the last allowed'
where {ST} is not null and {EN} is null and coalesce({TS}, 0) >= $1
  and {ST} < now() - ($2::float8 * interval '1 second')`)

	// Same predicate as the report's failed count and the failed index. The
	// error description is kept: it is the row's last word until an attempt
	// ends again.
	const outOfTries = `
where {EN} is not null and {OK} = false and coalesce({TS}, 0) >= $1`
	q.CountFailedForGood = sql(`select count(*) from {T}` + outOfTries)
	q.RetryFailed = sql(`update {T} set ` + reset + `, {TS} = 0` + outOfTries)

	start := `update {T} as t set {ST} = now(), {TS} = coalesce({TS}, 0) + 1, {EN} = null, {OK} = null
where {PK} = any(array(select {PK} from {T} where {ID} = $1 and {ST} is null order by {PK} limit $2))
  and {ID} = $1 and {ST} is null
returning {PK}, {PK}::text, {TS}, (select count(*) from {T} where {ID} = $1 and {ST} is null)`
	q.StartChunk = sql(start)
	q.StartChunkRows = sql(start + `, to_json(t.*)`)
	// Division by zero is the portable way to abort the transaction when a
	// row was taken from this worker meanwhile (timeout or presumed death).
	q.EndChunk = sql(`with u as (
  update {T} set {EN} = now(), {OK} = true, {ER} = null
  where {ID} = $1 and {ST} is not null and {EN} is null returning 1)
select 1 / ((select count(*) from u) = $2)::int`)
	q.EndOne = sql(`update {T} set {EN} = now(), {OK} = true, {ER} = null
where {PK} = $2 and {ID} = $1 and {ST} is not null and {EN} is null`)
	q.EndOneGuarded = sql(`with u as (
  update {T} set {EN} = now(), {OK} = true, {ER} = null
  where {PK} = $2 and {ID} = $1 and {ST} is not null and {EN} is null returning 1)
select 1 / ((select count(*) from u) = 1)::int`)
	q.FailOne = sql(`update {T} set {EN} = now(), {OK} = false, {ER} = $3
where {PK} = $2 and {ID} = $1 and {ST} is not null and {EN} is null`)
	q.Unstart = sql(`update {T} set {ST} = null, {TS} = greatest(coalesce({TS}, 0) - 1, 0)
where {ID} = $1 and {ST} is not null and {EN} is null`)
	return q
}

// Job returns the job the statements were built for.
func (q *Queries) Job() Job { return q.job }

// channelName derives a LISTEN channel from parts, short and safe whatever
// the schema or worker id, so tenants of one database never hear each other.
func channelName(kind string, parts ...string) string {
	h := sha256.Sum256([]byte(strings.Join(parts, "\x00")))
	return fmt.Sprintf("pampa_%s_%s", kind, hex.EncodeToString(h[:8]))
}

// DispatcherChannel is where workers ask the dispatcher for rows.
func DispatcherChannel(namespace string) string { return channelName("d", namespace) }

// WorkerChannel is where the dispatcher tells a worker it has rows.
func WorkerChannel(namespace, workerID string) string {
	return channelName("w", namespace, workerID)
}
