// Command pampactl drives a Pampa cluster: database setup, the dispatcher,
// workers on every node, logs, job progress and the demo.
package main

import "github.com/pampa-go/pampa/cmd/pampactl/pampacli"

func main() { pampacli.Main(pampacli.Options{}) }
