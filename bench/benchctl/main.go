// Command benchctl is pampactl with a no-op Go handler registered for the
// benchmark's job, "bench": the harness builds it and runs it as the
// dispatcher (`benchctl dispatcher run`) and as the worker processes of the
// fan-in and idle scenarios (`benchctl worker run --id local.N`).
package main

import (
	"context"

	"github.com/pampa-go/pampa/cmd/pampactl/pampacli"
	"github.com/pampa-go/pampa/worker"
)

func main() {
	pampacli.Main(pampacli.Options{Handlers: map[string]worker.Handler{
		"bench": func(context.Context, *worker.Task) (any, error) { return nil, nil },
	}})
}
