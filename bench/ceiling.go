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

// The statements take $1 = holder, ($2, $3] = a key range of one batch.
// Each runs in its own implicit transaction, as Pampa's three steps do.
var ceilingSteps = []string{
	// reserve
	`update tasks set bench_reservation_id = $1, bench_reservation_time = now()
where id > $2 and id <= $3 and bench_reservation_id is null and bench_end_time is null`,
	// start
	`update tasks set bench_start_time = now(), bench_reservation_times = coalesce(bench_reservation_times, 0) + 1
where id > $2 and id <= $3 and bench_reservation_id = $1 and bench_start_time is null`,
	// end
	`update tasks set bench_end_time = now(), bench_success = true, bench_error_description = null
where id > $2 and id <= $3 and bench_reservation_id = $1 and bench_start_time is not null and bench_end_time is null`,
}

// runCeiling reserves, starts and ends all rows in batches of 1,000 over two
// connections that take disjoint key ranges, with or without the partial
// indexes dispatcher.Setup creates.
func runCeiling(ctx context.Context, e *env, withIndexes bool) (result, error) {
	name, schema := "Raw SQL ceiling, Pampa's partial indexes", "bench_ceiling"
	if !withIndexes {
		name, schema = "Raw SQL, no partial indexes (reference)", "bench_ceiling_noidx"
	}
	res := result{Kind: kindCeiling, Name: name, Workers: ceilingConns}
	dbURL, err := e.freshSchema(ctx, schema)
	if err != nil {
		return res, err
	}
	defer e.dropSchema(schema)
	if err := prepareTasks(ctx, dbURL, "", e.rows, benchJob(1000)); err != nil {
		return res, err
	}
	if !withIndexes {
		if _, err := e.admin.Exec(ctx, `do $$ declare i text; begin
  for i in select quote_ident(schemaname) || '.' || quote_ident(indexname) from pg_indexes
    where schemaname = '`+schema+`' and tablename = 'tasks' and indexname like 'pampa\_bench\_%' loop
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
	batches := int64((e.rows + ceilingBatch - 1) / ceilingBatch)
	var next, ended atomic.Int64
	cpu0 := readCPU()
	start := time.Now()
	g, gctx := errgroup.WithContext(tctx)
	for i, conn := range conns {
		holder := fmt.Sprintf("raw.%d", i+1)
		g.Go(func() error {
			for {
				b := next.Add(1) - 1
				if b >= batches {
					return nil
				}
				lo, hi := b*ceilingBatch, min((b+1)*ceilingBatch, int64(e.rows))
				for _, sql := range ceilingSteps {
					tag, err := conn.Exec(gctx, sql, holder, lo, hi)
					if err != nil {
						return err
					}
					if tag.RowsAffected() != hi-lo {
						return fmt.Errorf("batch (%d, %d]: %d rows changed, want %d", lo, hi, tag.RowsAffected(), hi-lo)
					}
				}
				ended.Add(hi - lo)
			}
		})
	}
	err = g.Wait()
	res.Elapsed = time.Since(start)
	res.CPU = readCPU().since(cpu0)
	res.Rows = ended.Load()
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
