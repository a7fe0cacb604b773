// Command pampa-worker is a worker and nothing else: `pampactl worker run`
// and `worker limits` without the controller, the dispatcher, the console
// or SSH, so that an idle worker holds fewer of the binary's pages (see
// workercli). Push it to nodes with `pampactl nodes deploy --binary`.
package main

import "github.com/pampa-go/pampa/cmd/pampa-worker/workercli"

func main() { workercli.Main(workercli.Options{}) }
