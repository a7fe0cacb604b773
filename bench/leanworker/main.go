// Command leanworker is the worker-only build (cmd/pampa-worker's
// workercli) with the no-op Go handler for the bench job: what a node
// runs when `nodes deploy --binary` pushes that build. The idle scenario
// runs it beside benchctl (pampactl) to show what pampactl's other
// commands cost an idle worker in resident memory.
package main

import (
	"context"

	"github.com/pampa-go/pampa/cmd/pampa-worker/workercli"
	"github.com/pampa-go/pampa/worker"
)

func main() {
	workercli.Main(workercli.Options{Handlers: map[string]worker.Handler{
		"bench": func(context.Context, *worker.Task) (any, error) { return nil, nil },
	}})
}
