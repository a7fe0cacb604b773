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

// dashPath makes a directory holding only sh, a link to dash, to put in
// PATH ahead of the rest: every "sh" the scripts run (the command's own,
// and start.sh's for each worker) is dash, whatever /bin/sh is here.
func dashPath(t *testing.T) string {
	t.Helper()
	dash, err := exec.LookPath("dash")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("dash is not installed (apt-get install dash); it is Debian's /bin/sh")
		}
		t.Skip("dash is not installed")
	}
	dir := t.TempDir()
	if err := os.Symlink(dash, filepath.Join(dir, "sh")); err != nil {
		t.Fatal(err)
	}
	return dir
}

// Every script a node runs (probe, bootstrap, push, start, status, logs,
// stop) works with BusyBox's shell and tools alone. Not parallel: it sets
// PATH for the whole process, which parallel tests would see.
func TestNodeScriptsUnderBusybox(t *testing.T) {
	dir := busyboxPath(t)
	t.Setenv("PATH", dir)
	testNodeScripts(t, dir)
}

// Every script a node runs works with dash as sh (Debian's and Ubuntu's
// /bin/sh) and the host's tools. Not parallel: it sets PATH.
func TestNodeScriptsUnderDash(t *testing.T) {
	dir := dashPath(t)
	t.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH"))
	testNodeScripts(t, dir)
}

// testNodeScripts runs every script through Local, whose "sh" is the one
// in shellDir (first in PATH).
func testNodeScripts(t *testing.T, shellDir string) {
	if got, err := exec.LookPath("sh"); err != nil || filepath.Dir(got) != shellDir {
		t.Fatalf("sh is %q (%v), want the one in %s", got, err, shellDir)
	}
	ctx := t.Context()
	node := deploy.Local{}
	wd := filepath.Join(t.TempDir(), "work")

	p, err := deploy.ProbeNode(ctx, node, wd)
	if err != nil || p.OS != "linux" || p.FreeKiB <= 0 || len(p.MissingTools) > 0 {
		t.Fatalf("probe: %+v, %v", p, err)
	}

	// Bootstrap adds the key once, after a last line without a newline,
	// and creates the work dir.
	keys := filepath.Join(t.TempDir(), "ssh", "authorized_keys")
	if err := os.MkdirAll(filepath.Dir(keys), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keys, []byte("ssh-ed25519 AAAAother old"), 0o600); err != nil {
		t.Fatal(err)
	}
	key := "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPampa pampa@control"
	for _, want := range []bool{true, false} {
		if added, err := deploy.Bootstrap(ctx, node, key, keys, wd); err != nil || added != want {
			t.Fatalf("bootstrap: added %v, %v; want added %v", added, err, want)
		}
	}
	if got, _ := os.ReadFile(keys); string(got) != "ssh-ed25519 AAAAother old\n"+key+"\n" {
		t.Fatalf("authorized_keys after bootstrap: %q", got)
	}
	for _, d := range []string{"bin", "run"} {
		if fi, err := os.Stat(filepath.Join(wd, d)); err != nil || !fi.IsDir() {
			t.Fatalf("bootstrap did not create %s in the work dir: %v", d, err)
		}
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
