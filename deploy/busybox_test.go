package deploy_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/pampa-go/pampa/deploy"
)

// busyboxPath makes a directory holding every BusyBox applet and nothing
// else, for PATH: the tools of a minimal node (Alpine, containers,
// embedded boards), with no coreutils, util-linux or openssl.
func busyboxPath(t *testing.T) string {
	t.Helper()
	bb, err := exec.LookPath("busybox")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("busybox is not installed (apt-get install busybox); .ci/run installs it")
		}
		t.Skip("busybox is not installed")
	}
	dir := t.TempDir()
	if out, err := exec.Command(bb, "--install", "-s", dir).CombinedOutput(); err != nil {
		t.Fatalf("busybox --install: %v\n%s", err, out)
	}
	return dir
}

// Every script a node runs (probe, push, start, status, stop, logs) works
// with BusyBox's shell and tools alone. Not parallel: it sets PATH for the
// whole process, which parallel tests would see.
func TestNodeScriptsUnderBusybox(t *testing.T) {
	t.Setenv("PATH", busyboxPath(t))
	ctx := t.Context()
	node := deploy.Local{}
	wd := filepath.Join(t.TempDir(), "work")

	p, err := deploy.ProbeNode(ctx, node, wd)
	if err != nil || p.OS != "linux" || p.FreeKiB <= 0 || len(p.MissingTools) > 0 {
		t.Fatalf("probe: %+v, %v", p, err)
	}

	bin, cfg := bytes.Repeat([]byte("binary "), 100000), []byte("[database]\n")
	file := func(rel string, mode os.FileMode, data []byte) deploy.File {
		sum := sha256.Sum256(data)
		return deploy.File{Rel: rel, Mode: mode, SHA256: hex.EncodeToString(sum[:]), Open: func() (io.ReadCloser, error) {
			return io.NopCloser(bytes.NewReader(data)), nil
		}}
	}
	_, installed, err := deploy.Push(ctx, node, wd, func(deploy.Probe) ([]deploy.File, error) {
		return []deploy.File{file(deploy.ConfigFile, 0o600, cfg), file(deploy.BinaryFile, 0o755, bin)}, nil
	})
	if err != nil || len(installed) != 2 {
		t.Fatalf("push: installed %q, %v", installed, err)
	}
	if got, _ := os.ReadFile(filepath.Join(wd, deploy.BinaryFile)); !bytes.Equal(got, bin) {
		t.Fatal("the pushed binary differs")
	}
	if p, err = deploy.ProbeNode(ctx, node, wd); err != nil || p.BinarySHA256 != file("", 0, bin).SHA256 {
		t.Fatalf("probe after push: %+v, %v", p, err)
	}

	// A worker stand-in: a shell that stays, so its command line keeps
	// the "--id ID" the scripts look for.
	layout := deploy.Node{WorkDir: wd, Command: []string{"sh", "-c", `echo started; while :; do sleep 1; done`, "worker"}}
	ids := []string{"bb.1", "bb.2"}
	done := make(chan error, 1)
	go func() {
		_, err := deploy.Start(ctx, node, layout, ids)
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("start did not return: the workers were not detached")
	}
	t.Cleanup(func() { deploy.Stop(context.Background(), node, layout, ids, time.Second) })
	states := func() []string {
		t.Helper()
		st, err := deploy.Status(ctx, node, layout, ids)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, s := range st {
			out = append(out, s.ID+" "+s.State)
		}
		return out
	}
	if got := states(); !slices.Equal(got, []string{"bb.1 running", "bb.2 running"}) {
		t.Fatalf("status after start: %q", got)
	}
	var logged []string
	r := &deploy.LogReader{Emit: func(file, line string) { logged = append(logged, file+"|"+line) }}
	files := []string{deploy.LogFile("bb.1"), deploy.LogFile("bb.2")}
	if err := node.Stream(ctx, deploy.TailCommand(wd, files, nil, 10, false), nil, r, nil); err != nil {
		t.Fatal(err)
	}
	if want := []string{"worker.bb.1.log|started", "worker.bb.2.log|started"}; !slices.Equal(logged, want) {
		t.Fatalf("logs: %q, want %q", logged, want)
	}
	if _, err := deploy.Stop(ctx, node, layout, ids, 2*time.Second); err != nil {
		t.Fatal(err)
	}
	for _, s := range states() {
		if s != "bb.1 none" && s != "bb.2 none" {
			t.Fatalf("status after stop: %q", states())
		}
	}
}
