package deploy

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Install moves verified files into place and stamps them; a file whose
// sum does not match is removed and the old one stays.
func TestInstallVerifiesRenamesAndStamps(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	wd := t.TempDir()
	if err := os.MkdirAll(filepath.Join(wd, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	stage := func(rel string, data []byte) Staged {
		t.Helper()
		tmp := filepath.Join(wd, filepath.Dir(rel), "."+filepath.Base(rel)+".tmp-x")
		if err := os.WriteFile(tmp, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return Staged{Rel: rel, Temp: tmp, SHA256: sum(data)}
	}
	bin, cfg := []byte("new binary"), []byte("new config")
	if err := Install(ctx, Local{}, wd, []Staged{stage(BinaryFile, bin), stage(ConfigFile, cfg)}); err != nil {
		t.Fatal(err)
	}
	p, err := ProbeNode(ctx, Local{}, wd)
	if err != nil {
		t.Fatal(err)
	}
	if p.BinarySHA256 != sum(bin) || p.ConfigSHA256 != sum(cfg) {
		t.Fatalf("probe after install: %+v", p)
	}
	if _, err := os.Stat(filepath.Join(wd, BinaryFile+".sha256")); err != nil {
		t.Fatalf("no stamp: %v", err)
	}

	// One file corrupted in transit: nothing is replaced, no temporary
	// file stays.
	good := stage(BinaryFile, []byte("a newer binary"))
	bad := stage(ConfigFile, []byte("corrupted in transit"))
	bad.SHA256 = sum([]byte("what was sent"))
	err = Install(ctx, Local{}, wd, []Staged{good, bad})
	if err == nil || !strings.Contains(err.Error(), "checksum mismatch") || !strings.Contains(err.Error(), ConfigFile) {
		t.Fatalf("want a checksum mismatch naming %s, got %v", ConfigFile, err)
	}
	if got, _ := os.ReadFile(filepath.Join(wd, BinaryFile)); string(got) != string(bin) {
		t.Fatalf("the installed binary changed to %q", got)
	}
	for _, s := range []Staged{good, bad} {
		if _, err := os.Stat(s.Temp); !os.IsNotExist(err) {
			t.Fatalf("temporary file %s is still there: %v", s.Temp, err)
		}
	}
}
