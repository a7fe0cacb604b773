package worker_test

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/pampa-go/pampa/worker"
)

// A stand-alone process: run a function every Delay, from start to start.
// An error is logged and the loop goes on.
func ExamplePeriodic() {
	ctx, cancel := context.WithCancel(context.Background())
	runs := 0
	p := worker.Periodic{
		Delay: 10 * time.Millisecond,
		Func: func(ctx context.Context, log *slog.Logger) error {
			runs++
			fmt.Println("run", runs)
			if runs == 2 {
				return fmt.Errorf("this error does not stop the loop")
			}
			if runs == 3 {
				cancel()
			}
			return nil
		},
	}
	_ = p.Run(ctx)
	// Output:
	// run 1
	// run 2
	// run 3
}

// A Go step: register a handler under the job's name. With
// pampacli.Main(pampacli.Options{Handlers: handlers}) the same binary is the
// controller, the dispatcher and the worker deployed to nodes. The value a
// handler returns is the step's output: the job's result_sql stores it in
// the transaction that marks the row done, so the worker needs no database
// session.
func ExampleHandler() {
	handlers := map[string]worker.Handler{
		// result_sql: update numbers set is_odd = $2::boolean where value = $1::bigint
		"search_odd_numbers": func(ctx context.Context, t *worker.Task) (any, error) {
			var row struct {
				Value int64 `json:"value"`
			}
			if err := t.Decode(&row); err != nil {
				return nil, err
			}
			return row.Value%2 == 1, nil
		},
	}
	fmt.Println(len(handlers), "handler")
	// Output: 1 handler
}
