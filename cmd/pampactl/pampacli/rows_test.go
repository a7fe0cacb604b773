package pampacli_test

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pampa-go/pampa/cmd/pampactl/pampacli"
	"github.com/pampa-go/pampa/dispatcher"
)

// An operator's day, through the CLI: a job paused before anything runs
// stays idle with a dispatcher and a worker up, resumes, a running row is
// cancelled (its sleep stopped), a failed one retried; rows list shows
// each state.
func TestPauseCancelRetryAndListRows(t *testing.T) {
	t.Parallel()
	// Row 3 fails (retry_delay keeps it waiting), row 4 sleeps, the rest succeed.
	r := newRig(t, 6, 1, 1, `case $PAMPA_TASK_ID in 3) exit 1;; 4) exec sleep 30;; esac; echo $PAMPA_TASK_ID >> OK`)
	ctx := t.Context()
	cli := func(want int, args ...string) string {
		t.Helper()
		res := pampactl(ctx, t, nil, append([]string{"--config", r.cfg}, args...)...)
		if res.code != want {
			t.Fatalf("pampactl %s: want exit %d\n%s", strings.Join(args, " "), want, res)
		}
		return res.stdout + res.stderr
	}
	list := func(args ...string) map[string]dispatcher.RowInfo {
		t.Helper()
		var rows []dispatcher.RowInfo
		if err := json.Unmarshal([]byte(cli(0, append([]string{"rows", "list", "--job", "work", "--json"}, args...)...)), &rows); err != nil {
			t.Fatal(err)
		}
		out := map[string]dispatcher.RowInfo{}
		for _, row := range rows {
			out[row.Key] = row
		}
		return out
	}

	for _, bad := range [][]string{
		{"jobs", "pause"}, {"jobs", "pause", "nosuch"}, {"rows", "cancel", "--job", "work"},
		{"rows", "list", "--job", "work", "--state", "bogus"}, {"rows", "list", "--job", "nosuch"},
		{"rows", "retry", "--job", "work", "--all-failed", "3"},
	} {
		out := cli(pampacli.ExitUsage, bad...)
		if !strings.Contains(out, "pampactl") {
			t.Errorf("pampactl %s: %q says nothing", strings.Join(bad, " "), out)
		}
	}

	if out := cli(0, "jobs", "pause", "work"); !strings.Contains(out, "work: paused") {
		t.Fatalf("jobs pause: %q", out)
	}
	if out := cli(0, "rows", "cancel", "--job", "work", "6"); !strings.Contains(out, "1 row cancelled") {
		t.Fatalf("rows cancel 6: %q", out)
	}
	r.dispatcher(0)
	r.worker("local.1")
	r.waitLog("dispatcher0", "job paused", 30*time.Second)
	poll(t, "the worker to register", func() string {
		if r.count(`select count(*) from pampa_workers where id = 'local.1' and state = 'alive'`) == 0 {
			return "not registered"
		}
		return ""
	})
	time.Sleep(time.Second) // a few cycles
	if n := r.count(`select count(*) from tasks where work_reservation_id is not null`); n != 0 {
		t.Fatalf("%d rows of a paused job were reserved", n)
	}
	var st []dispatcher.JobStatus
	if err := json.Unmarshal([]byte(cli(0, "jobs", "status", "--json")), &st); err != nil || !st[0].Paused || st[0].Failed != 1 {
		t.Fatalf("jobs status --json: %+v, %v; want paused with the cancelled row failed", st, err)
	}

	cli(0, "jobs", "resume", "work")
	r.waitSucceeded(2, 60*time.Second) // rows 1 and 2; 3 fails; 4 sleeps, holding the one worker
	poll(t, "row 4 to run", func() string {
		if rows := list("--state", "running"); rows["4"].Key == "" {
			return "not running"
		}
		return ""
	})
	if out := cli(0, "rows", "cancel", "--job", "work", "4", "1"); !strings.Contains(out, "already ended, left as they are: 1") {
		t.Fatalf("rows cancel 4 1: %q", out)
	}
	poll(t, "row 4 to end cancelled", func() string {
		if row := list()["4"]; row.State != "failed" || row.Error == nil || *row.Error != "cancelled" {
			return "row 4 is " + row.State
		}
		return ""
	})

	r.waitSucceeded(3, 60*time.Second) // row 5, once row 4 no longer holds the worker
	rows := list()
	for key, want := range map[string]string{"1": "completed", "2": "completed", "5": "completed", "3": "retrying", "4": "failed", "6": "failed"} {
		if rows[key].State != want {
			t.Errorf("row %s is %s; want %s", key, rows[key].State, want)
		}
	}
	if row := rows["3"]; row.Attempts != 1 || row.Error == nil || !strings.Contains(*row.Error, "exit status 1") {
		t.Errorf("row 3: %+v; want 1 attempt with its error", row)
	}

	// Row 1 succeeded: named with row 3, it is reported and left alone.
	out := cli(pampacli.ExitFailure, "rows", "retry", "--job", "work", "3", "4", "1")
	if !strings.Contains(out, "2 rows reset") || !strings.Contains(out, "left as they are: 1") {
		t.Fatalf("rows retry 3 4 1: %q", out)
	}
	rows = list("--state", "failed")
	if keys := slices.Sorted(func(yield func(string) bool) {
		for k := range rows {
			if !yield(k) {
				return
			}
		}
	}); !slices.Equal(keys, []string{"6"}) {
		t.Fatalf("failed rows after the retry: %v; want only 6", keys)
	}
}
