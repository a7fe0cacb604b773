package main

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/errgroup"
)

// Raw-SQL ceiling: the three state changes Pampa makes per row, by hand.
const (
	ceilingBatch = 1000
	ceilingConns = 2
)

// ceilingVariant is one way of doing the three state changes by hand.
type ceilingVariant struct {
	name, schema string
	indexes      bool // keep the partial indexes dispatcher.Setup creates
	// keyRanges: each batch is a key range handed out by the harness, so
	// no statement has to find the rows to reserve. No queue can do that
	// (it must find rows nobody holds); the figure bounds what the three
	// updates alone cost.
	keyRanges bool
	reference bool // shown for comparison, not the ceiling of the ratios
}

var ceilingVariants = []ceilingVariant{
	{name: "Raw SQL ceiling, Pampa's partial indexes", schema: "bench_ceiling", indexes: true},
	{name: "Raw SQL, no partial indexes (reference)", schema: "bench_ceiling_noidx", reference: true},
	{name: "Raw SQL by key ranges, no row selection (reference)", schema: "bench_ceiling_keys", indexes: true, keyRanges: true, reference: true},
}

// The queue-shaped steps: a hand-written queue over the same table, as
// lean as SQL allows. $1 = holder, $2 = batch size or the reserved keys.
// Each runs in its own implicit transaction, as Pampa's three steps do.
var queueSteps = struct{ reserve, start, end string }{
	reserve: `update tasks set bench_reservation_id = $1, bench_reservation_time = now()
where id = any(array(
  select id from tasks where bench_reservation_id is null and bench_end_time is null
  order by id limit $2 for update skip locked))
returning id`,
	start: `update tasks set bench_start_time = now(), bench_reservation_times = coalesce(bench_reservation_times, 0) + 1
where id = any($2) and bench_reservation_id = $1 and bench_start_time is null`,
	end: `update tasks set bench_end_time = now(), bench_success = true, bench_error_description = null
where id = any($2) and bench_reservation_id = $1 and bench_start_time is not null and bench_end_time is null`,
}

// The key-range steps take $1 = holder, ($2, $3] = a key range of one batch.
var keyRangeSteps = []string{
	`update tasks set bench_reservation_id = $1, bench_reservation_time = now()
where id > $2 and id <= $3 and bench_reservation_id is null and bench_end_time is null`,
	`update tasks set bench_start_time = now(), bench_reservation_times = coalesce(bench_reservation_times, 0) + 1
where id > $2 and id <= $3 and bench_reservation_id = $1 and bench_start_time is null`,
	`update tasks set bench_end_time = now(), bench_success = true, bench_error_description = null
where id > $2 and id <= $3 and bench_reservation_id = $1 and bench_start_time is not null and bench_end_time is null`,
}

// runCeiling reserves, starts and ends all rows in batches of 1,000 over two
// connections, the way variant v says.
func runCeiling(ctx context.Context, e *env, v ceilingVariant) (result, error) {
	res := result{Kind: kindCeiling, Name: v.name, Workers: ceilingConns, Reference: v.reference}
	dbURL, err := e.freshSchema(ctx, v.schema)
	if err != nil {
		return res, err
	}
	defer e.dropSchema(v.schema)
	if err := prepareTasks(ctx, dbURL, "", e.rows, benchJob(1000)); err != nil {
		return res, err
	}
	if !v.indexes {
		if _, err := e.admin.Exec(ctx, `do $$ declare i text; begin
  for i in select quote_ident(schemaname) || '.' || quote_ident(indexname) from pg_indexes
    where schemaname = '`+v.schema+`' and tablename = 'tasks' and indexname like 'pampa\_bench\_%' loop
    execute 'drop index ' || i;
  end loop; end $$`); err != nil {
			return res, fmt.Errorf("drop partial indexes: %w", err)
		}
	}
	conns := make([]*pgx.Conn, ceilingConns)
	for i := range conns {
		if conns[i], err = pgx.Connect(ctx, dbURL); err != nil {
			return res, err
		}
		defer conns[i].Close(context.WithoutCancel(ctx))
	}
	tctx, cancel := context.WithTimeout(ctx, e.timeout)
	defer cancel()
	var ended atomic.Int64
	work := queueWork
	if v.keyRanges {
		work = keyRangeWork(int64(e.rows))
	}
	if err := e.resetPGStats(ctx); err != nil {
		return res, err
	}
	cpu0 := readCPU()
	start := time.Now()
	g, gctx := errgroup.WithContext(tctx)
	for i, conn := range conns {
		holder := fmt.Sprintf("raw.%d", i+1)
		g.Go(func() error { return work(gctx, conn, holder, &ended) })
	}
	err = g.Wait()
	res.Elapsed = time.Since(start)
	res.CPU = readCPU().since(cpu0)
	res.Rows = ended.Load()
	if perr := e.printPGStats(ctx, v.name); perr != nil && err == nil {
		err = perr
	}
	if err == nil && res.Rows != int64(e.rows) {
		err = fmt.Errorf("%d rows ended, want %d", res.Rows, e.rows)
	}
	if err != nil {
		if tctx.Err() != nil && ctx.Err() == nil {
			res.Partial = true
			res.Note = fmt.Sprintf("timed out after %s with %d of %d rows ended", e.timeout, res.Rows, e.rows)
			return res, nil
		}
		return res, err
	}
	return res, nil
}

// queueWork reserves the next free rows until none are left, then starts
// and ends the batch it got.
func queueWork(ctx context.Context, conn *pgx.Conn, holder string, ended *atomic.Int64) error {
	for {
		rows, err := conn.Query(ctx, queueSteps.reserve, holder, ceilingBatch)
		if err != nil {
			return err
		}
		keys, err := pgx.CollectRows(rows, pgx.RowTo[int64])
		if err != nil {
			return err
		}
		if len(keys) == 0 {
			return nil
		}
		for _, sql := range []string{queueSteps.start, queueSteps.end} {
			tag, err := conn.Exec(ctx, sql, holder, keys)
			if err != nil {
				return err
			}
			if tag.RowsAffected() != int64(len(keys)) {
				return fmt.Errorf("%d rows changed, want %d", tag.RowsAffected(), len(keys))
			}
		}
		ended.Add(int64(len(keys)))
	}
}

// keyRangeWork takes disjoint key ranges of 1,000 rows from a shared counter.
func keyRangeWork(rows int64) func(context.Context, *pgx.Conn, string, *atomic.Int64) error {
	batches := (rows + ceilingBatch - 1) / ceilingBatch
	var next atomic.Int64
	return func(ctx context.Context, conn *pgx.Conn, holder string, ended *atomic.Int64) error {
		for {
			b := next.Add(1) - 1
			if b >= batches {
				return nil
			}
			lo, hi := b*ceilingBatch, min((b+1)*ceilingBatch, rows)
			for _, sql := range keyRangeSteps {
				tag, err := conn.Exec(ctx, sql, holder, lo, hi)
				if err != nil {
					return err
				}
				if tag.RowsAffected() != hi-lo {
					return fmt.Errorf("batch (%d, %d]: %d rows changed, want %d", lo, hi, tag.RowsAffected(), hi-lo)
				}
			}
			ended.Add(hi - lo)
		}
	}
}
