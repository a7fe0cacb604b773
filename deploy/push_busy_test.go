package deploy

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
)

// A redeploy while workers run the old binary replaces it (a write in
// place would fail with ETXTBSY) and leaves the running processes alone.
func TestPushOverRunningBinary(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	wd := t.TempDir()
	sleep, err := os.ReadFile("/bin/sleep")
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := Push(ctx, Local{}, wd, func(Probe) ([]File, error) {
		return []File{file(BinaryFile, 0o755, sleep)}, nil
	}); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(wd, BinaryFile)
	running := exec.Command(bin, "60")
	if err := running.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { running.Process.Kill(); running.Wait() })
	if f, err := os.OpenFile(bin, os.O_WRONLY, 0); !errors.Is(err, syscall.ETXTBSY) {
		f.Close()
		t.Fatalf("open the running binary for writing: %v, want ETXTBSY (else this test proves nothing)", err)
	}

	if _, installed, err := Push(ctx, Local{}, wd, func(Probe) ([]File, error) {
		return []File{file(BinaryFile, 0o755, []byte("#!/bin/sh\necho new version\n"))}, nil
	}); err != nil || len(installed) != 1 {
		t.Fatalf("push over the running binary: installed %q, %v", installed, err)
	}
	if out, err := exec.Command(bin).Output(); err != nil || string(out) != "new version\n" {
		t.Fatalf("the new binary printed %q, %v", out, err)
	}
	if err := running.Process.Signal(syscall.Signal(0)); err != nil {
		t.Fatalf("the running old binary died: %v", err)
	}
}
