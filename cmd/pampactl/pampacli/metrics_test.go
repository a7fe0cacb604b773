package pampacli_test

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// dispatcher run serves /metrics beside the worker protocol: the
// leader's gauge, the rows by state, and the runtime's own.
func TestDispatcherServesMetrics(t *testing.T) {
	t.Parallel()
	r := newRig(t, 5, 1, 1, "true")
	r.dispatcher(0)
	r.waitLog("dispatcher0", "dispatcher is the leader", 30*time.Second)
	var body string
	poll(t, "metrics of a leader with 5 pending rows", func() string {
		resp, err := http.Get("http://" + r.listen[0] + "/metrics")
		if err != nil {
			return err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		body = string(b)
		for _, want := range []string{"pampa_dispatcher_leader 1", `pampa_rows{job="work",state="pending"} 5`, "go_goroutines"} {
			if !strings.Contains(body, want) {
				return "no " + want
			}
		}
		return ""
	})
}

// dispatcher run --progress (the default on a terminal) prints a status
// line every second: its role, rows/s, rows waiting, workers.
func TestDispatcherProgressLine(t *testing.T) {
	t.Parallel()
	r := newRig(t, 50, 1, 1, "echo $PAMPA_TASK_ID >> OK")
	r.dispatcher(0, "--progress")
	r.worker("local.1")
	r.waitSucceeded(50, 60*time.Second)
	r.waitLog("dispatcher0", "0 waiting, 0 running, 1 workers, 50 ended", 30*time.Second)
	r.waitLog("dispatcher0", "leader: ", 5*time.Second)
}
