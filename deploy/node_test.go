package deploy

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"
)

func sum(b []byte) string { h := sha256.Sum256(b); return hex.EncodeToString(h[:]) }

// The probe trusts a stamp only while the file's size, mtime and inode are
// those the stamp recorded; otherwise it hashes the file again.
func TestProbeTrustsStampOnlyForTheSameFile(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	wd := t.TempDir()
	bin := filepath.Join(wd, BinaryFile)
	if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
		t.Fatal(err)
	}
	content := []byte("the worker binary")
	if err := os.WriteFile(bin, content, 0o755); err != nil {
		t.Fatal(err)
	}
	probe := func() string {
		t.Helper()
		p, err := ProbeNode(ctx, Local{}, wd)
		if err != nil {
			t.Fatal(err)
		}
		return p.BinarySHA256
	}
	if got := probe(); got != sum(content) {
		t.Fatalf("no stamp: probe %s, want the hash %s", got, sum(content))
	}
	// A stamp with a sum that differs from the content proves the probe
	// reads the stamp instead of hashing.
	const fake = "0000000000000000000000000000000000000000000000000000000000000000"
	if err := Stamp(ctx, Local{}, wd, BinaryFile, fake); err != nil {
		t.Fatal(err)
	}
	if got := probe(); got != fake {
		t.Fatalf("stamped, unchanged file: probe %s, want the stamp's sum", got)
	}
	// Replacing the file (new inode, as an upload does) voids the stamp.
	tmp := bin + ".new"
	if err := os.WriteFile(tmp, []byte("another binary!!!"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, bin); err != nil {
		t.Fatal(err)
	}
	if got := probe(); got != sum([]byte("another binary!!!")) {
		t.Fatalf("replaced file: probe %s, want its fresh hash", got)
	}
}
