package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// Periodic is the seed's stand-alone process: Func runs every Delay, measured
// from one start to the next; a run that takes longer than Delay is followed
// at once by the next. Unlike the original, an error or a panic in one run is
// logged and does not end the loop.
type Periodic struct {
	Delay   time.Duration
	RunOnce bool
	Logger  *slog.Logger
	Func    func(ctx context.Context, log *slog.Logger) error
	// Now and After default to the real clock; tests inject their own.
	Now   func() time.Time
	After func(time.Duration) <-chan time.Time
}

// Run loops until ctx ends (or after one run with RunOnce) and returns the
// error of the last run when RunOnce is set, else nil.
func (p Periodic) Run(ctx context.Context) error {
	if p.Func == nil {
		return errors.New("periodic: no function to run")
	}
	if p.Logger == nil {
		p.Logger = slog.New(slog.DiscardHandler)
	}
	if p.Now == nil {
		p.Now = time.Now
	}
	if p.After == nil {
		p.After = time.After
	}
	for n := 1; ; n++ {
		start := p.Now()
		err := p.call(ctx, n)
		if err != nil {
			p.Logger.Error("run failed", "run", n, "err", err)
		} else {
			p.Logger.Info("run done", "run", n, "took", p.Now().Sub(start))
		}
		if p.RunOnce {
			return err
		}
		wait := p.Delay - p.Now().Sub(start)
		if wait <= 0 {
			wait = 0
		}
		select {
		case <-ctx.Done():
			return nil
		case <-p.After(wait):
		}
	}
}

func (p Periodic) call(ctx context.Context, n int) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("run %d panicked: %v", n, r)
		}
	}()
	return p.Func(ctx, p.Logger.With("run", n))
}

// CommandFunc returns a Periodic function that runs argv in dir, logging its
// output; the command gets TERM, then KILL, when ctx ends.
func CommandFunc(argv []string, dir string, env []string) func(context.Context, *slog.Logger) error {
	return func(ctx context.Context, log *slog.Logger) error {
		return runCommand(ctx, argv, dir, env, 5*time.Second, log)
	}
}
