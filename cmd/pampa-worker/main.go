// Command pampa-worker is a worker and nothing else: `pampactl worker run`
// and `worker limits` without the controller, the dispatcher, the console
// or SSH, so that an idle worker holds fewer of the binary's pages (see
// workercli). It is what `pampactl nodes deploy` pushes and `workers
// start --node local` runs when it sits beside pampactl (make build).
package main

import "github.com/pampa-go/pampa/cmd/pampa-worker/workercli"

func main() { workercli.Main(workercli.Options{}) }
