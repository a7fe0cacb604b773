package dispatcher

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"
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
// from validated, quoted identifiers (again when the table's columns change,
// see readColumns); every value is a parameter.
//
// The states of a row, read from its bookkeeping columns:
//
//	available  id null, end null                 (fresh, relaunched or released)
//	queued     id set, start null                (reserved for worker id; attempt = times + 1)
//	running    id set, start set, end null       (attempt = times)
//	completed  end set, success true
//	failed     end set, success false            (relaunched while times < max_try_times,
//	                                              after the retry delay, unless final)
//	scheduled  available, run_at in the future  (with field_run_at)
//
// Keys travel as text (the protocol carries them so); statements that take
// keys cast them back to the key's own type, so that the primary key's index
// is used.
type Queries struct {
	job        Job
	keyType    string   // SQL type of the primary key, for casts from text
	intKey     bool     // the key is an integer: reservations resume after the highest
	user       []string // the columns workers receive; nil for all but Pampa's
	resultArgs int      // how many of $1 (key) and $2 (output) result_sql takes
	limitLock  string   // names the job's advisory lock: its table and name

	// Reserve: $1 how many, $2 worker id, $3 max tries → (key as text,
	// attempt, row, 1). With a selecting_sql snippet, one statement per
	// worker.
	Reserve string
	// ReserveMany serves every hungry worker of the job at once: $1 worker
	// ids, $2 a slot per row wanted, each the place in $1 (from 1) of the
	// worker it is for (see slots), $3 max tries → the rows as Reserve
	// returns them, each with its worker's place in $1. One walk of the
	// available index for them all: a statement per worker would each walk
	// past the rows the ones before took. ReserveManyAfter only takes keys
	// above $4, a cursor that spares walking past every row taken since the
	// last VACUUM. "" with a selecting_sql snippet, which chooses its own
	// order.
	ReserveMany, ReserveManyAfter string
	PendingCount                  string // $1 cap, $2 max tries
	ReleaseQueued                 string // $1 worker ids: queued rows back to the pool, no attempt spent
	ReleaseRunning                string // $1 worker ids, $2 max tries: running rows of dead workers
	FailRunning                   string // $1 worker ids, $2 max tries: same, out of tries
	// Reconcile*: $1 worker id, $2 keys the worker still holds; the rows it
	// no longer holds go back (queued: free; running: relaunched, or failed
	// when out of tries, $3 max tries).
	ReconcileQueued, ReconcileRunning, ReconcileFail string
	// GiveBack: $1 worker id, $2 keys it gives back unfinished; their
	// attempt, if started, is refunded (a stop is not the row's fault).
	GiveBack string
	// Start: $1 keys, $2 workers, $3 attempts: the rows' attempts began.
	Start string
	// End: $1 keys, $2 workers, $3 attempts, $4 success, $5 error
	// descriptions, $6 step milliseconds, $7 final (a failure not to be
	// tried again; a row cancelled meanwhile is final anyway), $8 the
	// outcomes' indexes. Fenced: a row ends only while it is still held by
	// that worker, at that attempt, and not ended; returns (index, worker,
	// success) of the outcomes it applied, EndCounted the index alone:
	// numbers are cheaper to send and to look up than keys.
	End, EndCounted string
	// RelaunchFailed: $1 max tries, or how many for a relaunching
	// snippet; with a retry delay, $2 its seconds and $3 the cap's.
	RelaunchFailed string
	// RepeatDone: $1 seconds: rows that succeeded that long ago start a
	// new series of attempts. "" without repeat_every.
	RepeatDone   string
	RelaunchLate string // $1 max tries, $2 seconds
	FailLate     string // $1 max tries, $2 seconds
	// Rows out of tries are never relaunched by the dispatcher; an operator
	// resets them after fixing the cause (pampactl jobs retry).
	CountFailedForGood string // $1 max tries → how many
	RetryFailed        string // $1 max tries: back to available, attempts from 0

	// The sql step, run by the dispatcher itself: Take locks $1 available
	// rows (above $3 for TakeAfter; $2 max tries) → (key, key text);
	// Done marks keys $1 done by $2 in the step's transaction; FailOne
	// marks key $1 failed by $2 with error $3.
	Take, TakeAfter, Done, FailOne string
	LockOne                        string // $1 key: lock it while it is available
	// FailResult: key $1, just ended well by worker $3 at attempt $4, but
	// its result_sql failed with $2.
	FailResult string

	// Operators' orders (see Cancel and Retry). CancelKeys: $1 keys, $2
	// max tries → the keys cancelled. EndCancelled ends the cancelled rows
	// no worker holds; CancelledHeld → (key, worker) of those held.
	// RetryKeys: $1 keys → the failed ones reset. Existing: $1 keys →
	// those that are rows.
	CancelKeys, EndCancelled, CancelledHeld, RetryKeys, Existing string
}

// NewQueries builds the statements of a validated job whose primary key has
// SQL type keyType (such as "bigint"; see KeyType).
func NewQueries(j Job, keyType string) *Queries { return newQueries(j, keyType, nil) }

// maxUserColumns is the most columns json_build_object can name (it takes
// at most 100 arguments).
const maxUserColumns = 50

// newQueries builds the statements; the reservations send workers the
// columns named in user (see UserColumns), or, with none given, every
// column of the row but Pampa's.
func newQueries(j Job, keyType string, user []string) *Queries {
	f := j.Fields
	t, pk := quoteTable(j.Table), quote(f.PrimaryKey)
	id, tm, ts, fin := quote(f.ID), quote(f.Time), quote(f.Times), quote(f.Final)
	st, en, ok, er := quote(f.StartTime), quote(f.EndTime), quote(f.Success), quote(f.ErrorDescription)
	// The row's own columns, without Pampa's: what a worker receives.
	// Named one by one rather than to_jsonb(t) minus Pampa's keys, which
	// formats the bookkeeping columns only to remove them: in a no-op run
	// that was a tenth of PostgreSQL's work. The dispatcher reads the
	// names again every full cycle (see readColumns).
	var userJSON string
	if len(user) > 0 && len(user) <= maxUserColumns {
		var pairs []string
		for _, c := range user {
			pairs = append(pairs, quoteLiteral(c)+", t."+quote(c))
		}
		userJSON = "json_build_object(" + strings.Join(pairs, ", ") + ")"
	} else {
		var keys []string
		for _, c := range f.bookkeeping() {
			keys = append(keys, quoteLiteral(c))
		}
		userJSON = "(to_jsonb(t) - array[" + strings.Join(keys, ", ") + "]::text[])"
	}
	r := strings.NewReplacer(
		"{T}", t, "{PK}", pk, "{ID}", id, "{TM}", tm, "{TS}", ts,
		"{ST}", st, "{EN}", en, "{OK}", ok, "{ER}", er, "{PKT}", keyType, "{FIN}", fin,
		"{USER}", userJSON,
	)
	q := &Queries{job: j, keyType: keyType, user: user, limitLock: j.Table + "/" + j.Name}
	switch strings.Trim(keyType, `"`) {
	case "int2", "int4", "int8", "smallint", "integer", "bigint":
		q.intKey = true
	}
	sql := func(s string) string { return r.Replace(s) }
	// due keeps back cancelled rows whose worker let them go (until the
	// next control pass ends them) and scheduled rows (run_at ahead).
	dueOf := func(alias string) string {
		due := " and " + alias + fin + " is not true"
		if f.RunAt != "" {
			c := alias + quote(f.RunAt)
			due += " and (" + c + " is null or " + c + " <= now())"
		}
		return due
	}
	due := dueOf("")
	const reset = `{ID} = null, {TM} = null, {ST} = null, {EN} = null, {OK} = null`

	if s := j.Snippets.SelectingSQL; s != "" {
		// The snippet chooses; the guard keeps a row from being reserved twice:
		// a concurrent reservation makes the re-checked "id is null" false.
		q.Reserve = sql(`with sel as (` + s + `)
update {T} as t set {ID} = $2, {TM} = now()
where t.{PK} in (select {PK} from sel) and t.{ID} is null and t.{EN} is null
  and coalesce(t.{TS}, 0) < $3 and $1::bigint >= 0` + dueOf("t.") + `
returning t.{PK}::text, coalesce(t.{TS}, 0) + 1, {USER}, 1`)
		q.PendingCount = `select count(*) from (` + s + `) sel where $2::int >= 0`
	} else {
		// The candidates are an array computed once (an InitPlan): as a
		// subquery PostgreSQL may re-run it per row, and with SKIP LOCKED
		// each run finds other rows, reserving far more than asked.
		candidates := func(after string) string {
			if !j.Limits.Any() {
				return `select {PK} from {T}
  where {ID} is null and {EN} is null and coalesce({TS}, 0) < $3` + due + after + `
  order by {PK} limit (select coalesce(sum(n), 0) from want)
  for update skip locked`
			}
			return limitedCandidates(j.Limits, `{ID} is null and {EN} is null and coalesce({TS}, 0) < $3`+due+after)
		}
		// The candidates come in key order, numbered by ordinality; the
		// i-th goes to the worker $2[i] names, an index into $1. An array of
		// integers, not of ids: subscripting an array of text walks it from
		// its start.
		many := func(after string) string {
			return sql(`with want as (select cardinality($2::int[]) as n)
update {T} as t set {ID} = ($1::text[])[($2::int[])[c.i::int]], {TM} = now()
from unnest(array(
  ` + candidates(after) + `)) with ordinality as c(k, i)
where t.{PK} = c.k and t.{ID} is null and t.{EN} is null
returning t.{PK}::text, coalesce(t.{TS}, 0) + 1, {USER}, ($2::int[])[c.i::int]`)
		}
		q.ReserveMany, q.ReserveManyAfter = many(""), many(` and {PK} > $4`)
		q.PendingCount = sql(`select count(*) from (
  select 1 from {T} where {ID} is null and {EN} is null and coalesce({TS}, 0) < $2` + due + `
  order by {PK} limit $1) s`) // the order makes the planner walk the available index
	}
	q.ReleaseQueued = sql(`update {T} set {ID} = null, {TM} = null where {ID} = any($1) and {ST} is null`)
	running := func(who, maxTries string) (relaunch, fail string) {
		return sql(`update {T} set ` + reset + `,
  {ER} = 'worker ' || {ID} || ' stopped during attempt ' || coalesce({TS}, 0)
where ` + who + ` and {ST} is not null and {EN} is null and coalesce({TS}, 0) < ` + maxTries + ` and {FIN} is not true`),
			sql(`update {T} set {EN} = now(), {OK} = false,
  {ER} = case when {FIN} then 'cancelled' else 'worker ' || {ID} || ' stopped during attempt ' || coalesce({TS}, 0) || ', the last allowed' end
where ` + who + ` and {ST} is not null and {EN} is null and (coalesce({TS}, 0) >= ` + maxTries + ` or {FIN})`)
	}
	q.ReleaseRunning, q.FailRunning = running(`{ID} = any($1)`, "$2")
	const notHeld = `{ID} = $1 and not ({PK} = any($2::text[]::{PKT}[]))`
	q.ReconcileQueued = sql(`update {T} set {ID} = null, {TM} = null where ` + notHeld + ` and {ST} is null`)
	q.ReconcileRunning, q.ReconcileFail = running(notHeld, "$3")
	q.GiveBack = sql(`update {T} set {ID} = null, {TM} = null, {ST} = null,
  {TS} = case when {ST} is not null then greatest(coalesce({TS}, 0) - 1, 0) else {TS} end
where {ID} = $1 and {EN} is null and {PK} = any($2::text[]::{PKT}[])`)

	q.Start = sql(`update {T} as t set {ST} = now(), {TS} = o.a, {EN} = null, {OK} = null
from unnest($1::text[]::{PKT}[], $2::text[], $3::int[]) as o(k, w, a)
where t.{PK} = o.k and t.{ID} = o.w and t.{ST} is null and coalesce(t.{TS}, 0) = o.a - 1`)
	// A row whose start mark never reached the database (the dispatcher
	// died between) is still fenced by its attempt: times is one less.
	q.End = sql(`update {T} as t set
  {ST} = coalesce(t.{ST}, now() - o.ms * interval '1 millisecond'), {TS} = o.a,
  {EN} = now(), {OK} = o.ok, {ER} = case when t.{FIN} and not o.ok then 'cancelled' else o.e end,
  {FIN} = case when o.fin or t.{FIN} then true end
from unnest($1::text[]::{PKT}[], $2::text[], $3::int[], $4::bool[], $5::text[], $6::float8[], $7::bool[], $8::int[]) as o(k, w, a, ok, e, ms, fin, i)
where t.{PK} = o.k and t.{ID} = o.w and t.{EN} is null
  and ((t.{ST} is not null and coalesce(t.{TS}, 0) = o.a) or (t.{ST} is null and coalesce(t.{TS}, 0) = o.a - 1))
returning o.i as i, o.w as w, o.ok as ok`)
	// EndCounted is End that also adds its rows to the workers' counters
	// in pampa_workers, in the same statement.
	q.EndCounted = `with e as (` + q.End + `),
c as (update pampa_workers as pw set rows_done = pw.rows_done + x.d, rows_failed = pw.rows_failed + x.f
  from (select w, sum(case when ok then 1 else 0 end) as d, sum(case when ok then 0 else 1 end) as f from e group by w) as x
  where pw.id = x.w returning 1)
select i from e`

	if s := j.Snippets.RelaunchingSQL; s != "" {
		// A relaunch after a success starts a new series of attempts.
		q.RelaunchFailed = sql(`with sel as (` + s + `)
update {T} set ` + reset + `, {TS} = case when {OK} then 0 else {TS} end
where {PK} in (select {PK} from sel) and ({EN} is not null or {ID} is null) and {FIN} is not true
  and $1::bigint >= 0`)
	} else {
		// The delay doubles per attempt ended (the exponent capped, so that
		// power stays a finite float8) up to the cap; the jitter comes from
		// the end time's microseconds, so it is fixed per attempt rather
		// than drawn again each cycle.
		backoff := ""
		if j.RetryDelay > 0 {
			backoff = `
  and {EN} <= now() - least($2::float8 * power(2::float8, least(greatest(coalesce({TS}, 0) - 1, 0), 60)), $3::float8)
    * (0.9 + 0.2 * (mod(extract(microseconds from {EN})::bigint, 1000)::float8 / 1000)) * interval '1 second'`
		}
		q.RelaunchFailed = sql(`update {T} set ` + reset + `
where {EN} is not null and {OK} = false and coalesce({TS}, 0) < $1 and {FIN} is not true` + backoff)
	}
	if j.RepeatEvery > 0 {
		q.RepeatDone = sql(`update {T} set ` + reset + `, {TS} = 0, {ER} = null
where {EN} is not null and {OK} = true and {FIN} is not true
  and {EN} <= now() - ($1::float8 * interval '1 second')`)
	}
	// Lateness is measured from the start of the attempt, not the reservation.
	q.RelaunchLate = sql(`update {T} set ` + reset + `,
  {ER} = 'attempt ' || coalesce({TS}, 0) || ' ran past max_job_duration'
where {ST} is not null and {EN} is null and coalesce({TS}, 0) < $1 and {FIN} is not true
  and {ST} < now() - ($2::float8 * interval '1 second')`)
	q.FailLate = sql(`update {T} set {EN} = now(), {OK} = false,
  {ER} = case when {FIN} then 'cancelled' else 'attempt ' || coalesce({TS}, 0) || ' ran past max_job_duration, the last allowed' end
where {ST} is not null and {EN} is null and (coalesce({TS}, 0) >= $1 or {FIN})
  and {ST} < now() - ($2::float8 * interval '1 second')`)

	// Same predicate as the report's failed count and the failed index. The
	// error description is kept: it is the row's last word until an attempt
	// ends again.
	const outOfTries = `
where {EN} is not null and {OK} = false and (coalesce({TS}, 0) >= $1 or {FIN})`
	q.CountFailedForGood = sql(`select count(*) from {T}` + outOfTries)
	q.RetryFailed = sql(`update {T} set ` + reset + `, {TS} = 0, {FIN} = null` + outOfTries)

	// The text column needs a name of its own: both would be called after
	// the key, and "order by" a name two output columns share is an error.
	take := func(after string) string {
		return sql(`select {PK}, {PK}::text as pampa_key_text from {T}
where {ID} is null and {EN} is null and coalesce({TS}, 0) < $2` + due + after + `
order by {PK} limit $1 for update skip locked`)
	}
	q.Take, q.TakeAfter = take(""), take(` and {PK} > $3`)
	q.Done = sql(`update {T} set {ID} = $2, {TM} = now(), {ST} = now(), {EN} = now(), {OK} = true, {ER} = null,
  {TS} = coalesce({TS}, 0) + 1
where {PK} = any($1::text[]::{PKT}[]) and {ID} is null and {EN} is null`)
	q.FailOne = sql(`update {T} set {ID} = $2, {TM} = now(), {ST} = now(), {EN} = now(), {OK} = false, {ER} = $3,
  {TS} = coalesce({TS}, 0) + 1
where {PK} = $1::text::{PKT} and {ID} is null and {EN} is null`)
	q.LockOne = sql(`select 1 from {T} where {PK} = $1::text::{PKT} and {ID} is null and {EN} is null for update skip locked`)
	q.FailResult = sql(`update {T} set {OK} = false, {ER} = $2
where {PK} = $1::text::{PKT} and {ID} = $3 and coalesce({TS}, 0) = $4`)
	q.CancelKeys = sql(`update {T} set {FIN} = true,
  {EN} = case when {ID} is null and {EN} is null then now() else {EN} end,
  {OK} = case when {ID} is null or {EN} is not null then false else {OK} end,
  {ER} = case when {ID} is null or {EN} is not null then 'cancelled' else {ER} end
where {PK} = any($1::text[]::{PKT}[]) and {FIN} is not true
  and ({EN} is null or ({OK} = false and coalesce({TS}, 0) < $2))
returning {PK}::text`)
	q.EndCancelled = sql(`update {T} set {EN} = now(), {OK} = false, {ER} = 'cancelled'
where {FIN} and {EN} is null and {ID} is null`)
	q.CancelledHeld = sql(`select {PK}::text, {ID} from {T} where {FIN} and {EN} is null and {ID} is not null`)
	q.RetryKeys = sql(`update {T} set ` + reset + `, {TS} = 0, {FIN} = null
where {PK} = any($1::text[]::{PKT}[]) and {EN} is not null and {OK} = false
returning {PK}::text`)
	q.Existing = sql(`select {PK}::text from {T} where {PK} = any($1::text[]::{PKT}[])`)
	return q
}

// limitedCandidates selects the keys to reserve under the job's limits,
// counting the rows held (queued or running) and reserved in the last
// minute, per job and per limit_key value, with the rows picked in the same
// statement. Window functions rule out SKIP LOCKED: the update re-checks
// each row under its lock, and the dispatcher serializes limited
// reservations per job (see limitLock), so neither two statements nor two
// dispatchers exceed a limit. The candidates are the first available rows
// in key order, limitScan times the rows wanted (at least 100): rows of other keys behind
// a long run of one saturated key wait until it drains.
func limitedCandidates(l Limits, available string) string {
	const held = `{ID} is not null and {EN} is null`
	const recent = `{TM} > now() - interval '1 minute'`
	var b strings.Builder
	b.WriteString(`select cand.k from (
    select c0.k, c0.lk, row_number() over (partition by c0.lk order by c0.k) as rn from (
      select {PK} as k, ` + l.keyExpr() + ` as lk from {T} where ` + available + `
      order by {PK} limit (select greatest(coalesce(sum(n), 0) * ` + strconv.Itoa(limitScan) + `, 100) from want)) as c0) as cand`)
	var where []string
	if l.Key != "" && l.MaxRunningPerKey > 0 {
		b.WriteString(`
  left join (select (` + l.Key + `) as lk, count(*) as c from {T} where ` + held + ` group by 1) as h on h.lk is not distinct from cand.lk`)
		where = append(where, fmt.Sprintf("cand.rn + coalesce(h.c, 0) <= %d", l.MaxRunningPerKey))
	}
	if l.Key != "" && l.MaxPerMinute > 0 {
		b.WriteString(`
  left join (select (` + l.Key + `) as lk, count(*) as c from {T} where ` + recent + ` group by 1) as r on r.lk is not distinct from cand.lk`)
		where = append(where, fmt.Sprintf("cand.rn + coalesce(r.c, 0) <= %d", l.MaxPerMinute))
	}
	if len(where) > 0 {
		b.WriteString("\n  where " + strings.Join(where, " and "))
	}
	cap := "coalesce(sum(n), 0)"
	if l.MaxRunning > 0 {
		cap = fmt.Sprintf("least(%s, greatest(%d - (select count(*) from {T} where %s), 0))", cap, l.MaxRunning, held)
	}
	if l.MaxPerMinute > 0 && l.Key == "" {
		cap = fmt.Sprintf("least(%s, greatest(%d - (select count(*) from {T} where %s), 0))", cap, l.MaxPerMinute, recent)
	}
	b.WriteString("\n  order by cand.k limit (select " + cap + " from want)")
	return b.String()
}

// limitScan is how many candidate rows a limited reservation reads per row
// it wants.
const limitScan = 4

// Job returns the job the statements were built for.
func (q *Queries) Job() Job { return q.job }

// channelName derives a LISTEN channel from parts, short and safe whatever
// the schema, so tenants of one database never hear each other.
func channelName(kind string, parts ...string) string {
	h := sha256.Sum256([]byte(strings.Join(parts, "\x00")))
	return fmt.Sprintf("pampa_%s_%s", kind, hex.EncodeToString(h[:8]))
}

// DispatcherChannel is where the insert trigger and `jobs retry` wake the
// dispatcher.
func DispatcherChannel(namespace string) string { return channelName("d", namespace) }
