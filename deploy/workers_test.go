package deploy_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pampa-go/pampa/deploy"
)

// Status calls a running worker stale when one of the files it loads is
// newer than its pid file; a tie is not stale, nor is a worker that does
// not run, nor a file that is not there. Real workers (shell stand-ins)
// run under this machine's sh (dash on Debian); the mtimes are set whole
// seconds apart, so the answers hold for shells that compare whole seconds
// (BusyBox, TestStatusStaleUnderBusybox) as for those that compare
// nanoseconds (dash 0.5.12, bash).
func TestStatusStale(t *testing.T) {
	t.Parallel()
	testStatusStale(t)
}

// Not parallel: it sets PATH for the whole process.
func TestStatusStaleUnderBusybox(t *testing.T) {
	t.Setenv("PATH", busyboxPath(t))
	testStatusStale(t)
}

func testStatusStale(t *testing.T) {
	ctx := t.Context()
	node := deploy.Local{}
	wd := filepath.Join(t.TempDir(), "work dir")
	bin := filepath.Join(wd, deploy.BinaryFile)
	cfg := filepath.Join(t.TempDir(), "my cluster.toml") // absolute, with a space, as a local node's may be
	for _, f := range []string{bin, cfg} {
		if err := os.MkdirAll(filepath.Dir(f), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(f, []byte("v1"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// A worker stand-in: a shell that stays, so its command line keeps
	// the "--id ID" the scripts look for.
	layout := deploy.Node{
		WorkDir: wd,
		Command: []string{"sh", "-c", `while :; do sleep 1; done`, "worker"},
		Files:   []string{deploy.BinaryFile, cfg, "not/there"},
	}
	ids := []string{"s.1", "s.2", "s.3"}
	if _, err := deploy.Start(ctx, node, layout, ids); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { deploy.Stop(context.Background(), node, layout, ids, time.Second) })
	// s.9 left a pid file behind: its process is gone.
	if err := os.WriteFile(filepath.Join(wd, deploy.PidFile("s.9")), []byte("999999999\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	base := time.Now().Add(-time.Hour).Truncate(time.Second)
	touch := func(path string, at time.Time) {
		t.Helper()
		if err := os.Chtimes(path, at, at); err != nil {
			t.Fatal(err)
		}
	}
	// s.1 started before the binary was replaced, s.2 in the same second
	// (a tie: not stale), s.3 after.
	touch(bin, base)
	touch(cfg, base.Add(-time.Hour))
	touch(filepath.Join(wd, deploy.PidFile("s.1")), base.Add(-time.Second))
	touch(filepath.Join(wd, deploy.PidFile("s.2")), base)
	touch(filepath.Join(wd, deploy.PidFile("s.3")), base.Add(time.Second))
	touch(filepath.Join(wd, deploy.PidFile("s.9")), base.Add(-time.Hour))

	status := func() map[string]deploy.ProcessState {
		t.Helper()
		st, err := deploy.Status(ctx, node, layout, append(ids, "s.9", "s.10"))
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]deploy.ProcessState{}
		for _, s := range st {
			out[s.ID] = s
		}
		return out
	}
	check := func(when string, want map[string]string) {
		t.Helper()
		got := status()
		for id, w := range want {
			s := got[id]
			if g := s.State + map[bool]string{true: " stale"}[s.Stale]; g != w {
				t.Errorf("%s: %s is %q, want %q (all: %+v)", when, id, g, w, got)
			}
		}
	}
	check("binary replaced", map[string]string{"s.1": "running stale", "s.2": "running", "s.3": "running", "s.9": "dead", "s.10": "none"})

	// The config (absolute path, with a space) changes after all of them.
	touch(cfg, base.Add(2*time.Second))
	check("config changed", map[string]string{"s.1": "running stale", "s.2": "running stale", "s.3": "running stale", "s.9": "dead"})

	// Without files to compare, nothing is stale.
	layout.Files = nil
	check("no files", map[string]string{"s.1": "running", "s.2": "running", "s.3": "running"})

	// A work dir that is not there: every worker is none.
	st, err := deploy.Status(ctx, node, deploy.Node{WorkDir: filepath.Join(wd, "nowhere"), Files: []string{cfg}}, ids)
	if err != nil || len(st) != len(ids) || st[0].State != "none" || st[0].Stale {
		t.Fatalf("status in a missing work dir: %+v, %v", st, err)
	}
}

// A node without the binary its workers run (nothing deployed yet, or an
// older pampactl's layout) gets a start refused with what to do, and no
// pid file.
func TestStartWithoutTheBinary(t *testing.T) {
	t.Parallel()
	wd := t.TempDir()
	layout := deploy.Node{WorkDir: wd, Command: []string{"./" + deploy.BinaryFile, "worker", "run"}}
	_, err := deploy.Start(t.Context(), deploy.Local{}, layout, []string{"n.1"})
	if err == nil || !strings.Contains(err.Error(), "run pampactl nodes deploy") {
		t.Fatalf("start without a binary: %v", err)
	}
	if _, err := os.Stat(filepath.Join(wd, deploy.PidFile("n.1"))); !os.IsNotExist(err) {
		t.Fatalf("a pid file was written: %v", err)
	}
}
