// Command benchctl is pampactl with a no-op Go handler registered for the
// benchmark's job, "bench": the harness builds it and runs it as the
// dispatcher (`benchctl dispatcher run`) and as the worker processes of the
// fan-in and idle scenarios (`benchctl worker run --id local.N`).
//
// BENCHCTL_CPUPROFILE names a file for a CPU profile of the whole run;
// BENCHCTL_HEAPPROFILE one for a heap profile, written at each SIGUSR1
// (the harness's -dispatcher-profile sets them for its dispatcher
// processes and signals them once the rows are done).
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"syscall"

	"github.com/pampa-go/pampa/cmd/pampactl/pampacli"
	"github.com/pampa-go/pampa/worker"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	stopProfiles := startProfiles()
	code := pampacli.Run(ctx, os.Args, os.Stdin, os.Stdout, os.Stderr, os.Getenv, pampacli.Options{
		Handlers: map[string]worker.Handler{
			"bench": func(context.Context, *worker.Task) (any, error) { return nil, nil },
		},
	})
	stop()
	stopProfiles()
	os.Exit(code)
}

func startProfiles() func() {
	cpuPath, heapPath := os.Getenv("BENCHCTL_CPUPROFILE"), os.Getenv("BENCHCTL_HEAPPROFILE")
	var cpu *os.File
	if cpuPath != "" {
		f, err := os.Create(cpuPath)
		if err == nil {
			err = pprof.StartCPUProfile(f)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "benchctl: cpu profile:", err)
		} else {
			cpu = f
		}
	}
	if heapPath != "" {
		usr1 := make(chan os.Signal, 1)
		signal.Notify(usr1, syscall.SIGUSR1)
		go func() {
			for range usr1 {
				f, err := os.Create(heapPath)
				if err == nil {
					runtime.GC()
					err = pprof.Lookup("heap").WriteTo(f, 0)
					f.Close()
				}
				if err != nil {
					fmt.Fprintln(os.Stderr, "benchctl: heap profile:", err)
				}
			}
		}()
	}
	return func() {
		if cpu != nil {
			pprof.StopCPUProfile()
			cpu.Close()
		}
	}
}
