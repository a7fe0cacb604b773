package pampacli_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pampa-go/pampa/internal/pgserver"
)

// 200 worker processes against a PostgreSQL that takes 20 sessions: the
// workers hold none, the dispatcher a fixed three (its loop, its
// reservations and LISTEN), so every row completes and the server never
// sees more than those.
func TestTwoHundredWorkersOnTwentySessions(t *testing.T) {
	t.Parallel()
	const workers, rows = 200, 2000
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	srv, err := pgserver.Start(ctx, "max_connections=20")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	r := newRigAt(t, srv.URL(), rows, workers, 1, "echo $PAMPA_TASK_ID >> OK")
	r.dispatcher(0)
	for i := 1; i <= workers; i++ {
		r.worker(fmt.Sprintf("local.%d", i))
	}
	// Sessions are sampled while the rows run, on a session of the test's
	// own beside the one the rig checks rows with.
	sampler, err := pgx.Connect(ctx, srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer sampler.Close(context.Background())
	peak := 0
	done := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			select {
			case <-done:
				return
			case <-time.After(20 * time.Millisecond):
			}
			var n int
			if err := sampler.QueryRow(ctx, `select count(*) from pg_stat_activity where backend_type = 'client backend'`).Scan(&n); err == nil {
				peak = max(peak, n)
			}
		}
	}()
	r.check()
	close(done)
	<-sampled
	// The test's two and the dispatcher's three.
	if peak > 5 {
		t.Errorf("peak client sessions %d while 200 workers ran; want at most 5 (the test's two and the dispatcher's three)", peak)
	}
	var alive int
	if err := r.conn.QueryRow(ctx, `select count(*) from pampa_workers where state = 'alive'`).Scan(&alive); err != nil || alive != workers {
		t.Errorf("%d workers registered alive, want %d (%v)", alive, workers, err)
	}
	t.Logf("peak client sessions: %d", peak)
}
