package pampacli_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pampa-go/pampa/deploy"
	"github.com/pampa-go/pampa/internal/sshtest"
)

// mountTmpfs mounts a tmpfs with opts on a new directory and unmounts it
// at the end of the test. It needs root: CI runs as root, so there a
// missing privilege fails the test.
func mountTmpfs(t *testing.T, opts string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("this test mounts file systems and must run as root in CI")
		}
		t.Skip("needs root to mount a tmpfs")
	}
	dir := filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", opts, "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", "-l", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v\n%s", dir, err, out)
		}
	})
	return dir
}

// A node whose work dir has no room for the binary, and one whose work dir
// cannot be written, each get a clear error naming them and what to do;
// neither is changed, and a healthy node beside them is deployed (exit 3).
func TestDeployToFullAndReadOnlyNodes(t *testing.T) {
	t.Parallel()
	full := mountTmpfs(t, "size=2m")
	readOnly := mountTmpfs(t, "ro,size=64m")
	srv := sshtest.StartSSHD(t)
	fullNode, roNode, okNode := sshNode(t, "full", srv), sshNode(t, "ro", srv), sshNode(t, "ok", srv)
	fullNode.workDir = filepath.Join(full, "work")
	roNode.workDir = filepath.Join(readOnly, "work")
	cfg := writeConfig(t, "postgres://x@127.0.0.1/db", fullNode, roNode, okNode)

	r := pampactl(t.Context(), t, nil, "--config", cfg, "nodes", "deploy", "--binary", pampactlBinary(t))
	if r.code != 3 || !strings.Contains(r.stderr, "2 of 3 nodes") {
		t.Fatalf("deploy to a full and a read-only node: want exit 3 naming 2 of 3 nodes:\n%s", r)
	}
	for _, want := range []string{`node "full"`, "free", fullNode.workDir, "free some space",
		`node "ro"`, "Read-only file system", "nothing was replaced"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("stderr does not say %q:\n%s", want, r)
		}
	}
	for _, dir := range []string{full, readOnly} {
		if entries, err := os.ReadDir(dir); err != nil || len(entries) != 0 {
			t.Errorf("%s was changed: %v %v", dir, entries, err)
		}
	}
	if _, err := os.Stat(filepath.Join(okNode.workDir, deploy.BinaryFile)); err != nil {
		t.Errorf("the healthy node was not deployed: %v", err)
	}
}
