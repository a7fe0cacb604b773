package pampacli_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/pampa-go/pampa/internal/syncbuf"

	"github.com/pampa-go/pampa/cmd/pampactl/pampacli"
	"github.com/pampa-go/pampa/dispatcher"
)

// pampactl console serves the jobs of jobs status --json, and a console
// off loopback asks for the token it prints.
func TestConsoleCommand(t *testing.T) {
	t.Parallel()
	r := newRig(t, 7, 1, 1, "true")
	addr := freeAddr(t)
	ctx, stop := context.WithCancel(context.Background())
	var out syncbuf.Buffer
	done := make(chan int, 1)
	go func() { done <- runTo(ctx, &out, "--config", r.cfg, "console", "--listen", addr) }()
	defer func() {
		stop()
		if code := <-done; code != pampacli.ExitInterrupted {
			t.Errorf("console exited %d:\n%s", code, out.String())
		}
	}()
	var got []dispatcher.JobStatus
	poll(t, "the console to answer", func() string {
		resp, err := http.Get("http://" + addr + "/api/jobs")
		if err != nil {
			return err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if err := json.Unmarshal(b, &got); err != nil {
			return string(b)
		}
		return ""
	})
	res := pampactl(t.Context(), t, nil, "--config", r.cfg, "jobs", "status", "--json")
	var want []dispatcher.JobStatus
	if err := json.Unmarshal([]byte(res.stdout), &want); err != nil || len(got) != 1 || got[0] != want[0] || got[0].Pending != 7 {
		t.Fatalf("console /api/jobs = %+v; jobs status --json = %+v (%v)", got, want, err)
	}
	if !strings.Contains(out.String(), "console at http://"+addr+"/") || strings.Contains(out.String(), "token=") {
		t.Errorf("a loopback console should say where it is, with no token:\n%s", out.String())
	}
}

// dispatcher run serves the console beside it: with its assignment
// decisions and its metrics.
func TestDispatcherServesTheConsole(t *testing.T) {
	t.Parallel()
	r := newRig(t, 20, 1, 1, "echo $PAMPA_TASK_ID >> OK")
	addr := freeAddr(t)
	r.dispatcher(0, "--console-listen", addr)
	r.worker("local.1")
	r.waitSucceeded(20, 60*time.Second)
	var ds []dispatcher.Decision
	poll(t, "the console's decisions", func() string {
		resp, err := http.Get("http://" + addr + "/api/decisions")
		if err != nil {
			return err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if err := json.Unmarshal(b, &ds); err != nil || len(ds) == 0 {
			return string(b)
		}
		return ""
	})
	if d := ds[len(ds)-1]; d.Job != "work" || d.Worker != "local.1" || !d.Assigned {
		t.Errorf("first decision %+v; want local.1 assigned to work", d)
	}
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(b), `pampa_rows_succeeded_total{job="work"} 20`) {
		t.Errorf("the console's /metrics lacks the dispatcher's counters:\n%.2000s", b)
	}
}
