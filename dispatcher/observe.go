package dispatcher

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"
)

// Observer hears what the dispatcher does, for metrics: package
// dispatcher/metrics exports it to Prometheus. Its methods are called
// from the dispatcher's loop and sessions, and must not block. Kept apart
// so that what links the dispatcher's types (the worker-only build does,
// through the config) does not link a metrics library.
type Observer interface {
	RowStarted(job string, wait time.Duration)       // a step began, this long after its row was sent
	RowEnded(job string, ok bool, ran time.Duration) // an end mark committed
	Cycled(took time.Duration, stats map[string]Stats)
	Workers(byNode map[string]int) // connected workers, at each full cycle
	Leading(on bool)
	Statement() // one more statement on a session of the dispatcher's
}

type noObserver struct{}

func (noObserver) RowStarted(string, time.Duration)       {}
func (noObserver) RowEnded(string, bool, time.Duration)   {}
func (noObserver) Cycled(time.Duration, map[string]Stats) {}
func (noObserver) Workers(map[string]int)                 {}
func (noObserver) Leading(bool)                           {}
func (noObserver) Statement()                             {}

// tracer counts every statement of every session the dispatcher opens.
type tracer struct{ o Observer }

func (t tracer) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	t.o.Statement()
	return ctx
}
func (tracer) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}
func (tracer) TraceBatchStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceBatchStartData) context.Context {
	return ctx
}
func (t tracer) TraceBatchQuery(context.Context, *pgx.Conn, pgx.TraceBatchQueryData) { t.o.Statement() }
func (tracer) TraceBatchEnd(context.Context, *pgx.Conn, pgx.TraceBatchEndData)       {}
