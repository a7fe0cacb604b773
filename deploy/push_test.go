package deploy

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func file(rel string, mode os.FileMode, data []byte) File {
	return File{Rel: rel, Mode: mode, SHA256: sum(data), Open: func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(data)), nil
	}}
}

// leftovers lists temporary files a push left in the work dir.
func leftovers(t *testing.T, wd string) []string {
	t.Helper()
	var found []string
	filepath.WalkDir(wd, func(path string, d os.DirEntry, err error) error {
		if err == nil && strings.Contains(d.Name(), ".tmp-") {
			found = append(found, path)
		}
		return nil
	})
	return found
}

// Push probes, then installs what the caller chose in the same command:
// files land with their modes and stamps; choosing nothing, or refusing,
// leaves the node as it was; a file corrupted on the way replaces nothing.
func TestPush(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	wd := filepath.Join(t.TempDir(), "work dir $(touch /tmp/pwned)")

	refused := errors.New("refused")
	if _, _, err := Push(ctx, Local{}, wd, func(Probe) ([]File, error) { return nil, refused }); !errors.Is(err, refused) {
		t.Fatalf("a refusal: got %v", err)
	}
	if _, err := os.Stat(wd); !os.IsNotExist(err) {
		t.Fatalf("a refused push created the work dir: %v", err)
	}

	// Where an older pampactl kept the binary: the push removes it.
	legacy := filepath.Join(wd, "bin", "pampactl")
	if err := os.MkdirAll(filepath.Dir(legacy), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{legacy, legacy + ".sha256"} {
		if err := os.WriteFile(f, []byte("old"), 0o755); err != nil {
			t.Fatal(err)
		}
	}

	bin := make([]byte, 3<<20) // several SSH windows' worth
	rand.Read(bin)
	cfg := []byte("[database]\nurl = \"postgres://u:secret@db/x\"\n")
	p, installed, err := Push(ctx, Local{}, wd, func(p Probe) ([]File, error) {
		if p.BinarySHA256 != "" || p.OS == "" {
			t.Errorf("probe of an empty node: %+v", p)
		}
		return []File{file(ConfigFile, 0o600, cfg), file(BinaryFile, 0o755, bin)}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if p.OS == "" || len(installed) != 2 {
		t.Fatalf("probe %+v, installed %q", p, installed)
	}
	for rel, want := range map[string]struct {
		data []byte
		mode os.FileMode
	}{ConfigFile: {cfg, 0o600}, BinaryFile: {bin, 0o755}} {
		path := filepath.Join(wd, rel)
		got, err := os.ReadFile(path)
		if err != nil || !bytes.Equal(got, want.data) {
			t.Fatalf("%s: %d bytes, err %v", rel, len(got), err)
		}
		if fi, _ := os.Stat(path); fi.Mode().Perm() != want.mode {
			t.Fatalf("%s has mode %v, want %v", rel, fi.Mode().Perm(), want.mode)
		}
	}
	for _, f := range []string{legacy, legacy + ".sha256"} {
		if _, err := os.Stat(f); !os.IsNotExist(err) {
			t.Errorf("the push left the old binary's %s: %v", f, err)
		}
	}
	if _, err := os.Stat("/tmp/pwned"); err == nil {
		t.Fatal("the work dir's name ran as a command")
	}

	// Now the probe says the node has both (from the stamps): nothing goes.
	p, installed, err = Push(ctx, Local{}, wd, func(p Probe) ([]File, error) { return nil, nil })
	if err != nil || len(installed) != 0 || p.BinarySHA256 != sum(bin) || p.ConfigSHA256 != sum(cfg) {
		t.Fatalf("second push: probe %+v, installed %q, err %v", p, installed, err)
	}

	// A config that does not hash to what was announced: nothing changes.
	bad := file(ConfigFile, 0o600, []byte("corrupted"))
	bad.SHA256 = sum([]byte("what was announced"))
	_, _, err = Push(ctx, Local{}, wd, func(Probe) ([]File, error) {
		return []File{bad, file(BinaryFile, 0o755, []byte("a newer binary"))}, nil
	})
	if err == nil || !strings.Contains(err.Error(), "checksum mismatch") || !strings.Contains(err.Error(), ConfigFile) {
		t.Fatalf("want a checksum mismatch naming %s, got %v", ConfigFile, err)
	}
	if got, _ := os.ReadFile(filepath.Join(wd, BinaryFile)); !bytes.Equal(got, bin) {
		t.Fatal("a failed push replaced the binary")
	}
	if l := leftovers(t, wd); len(l) > 0 {
		t.Fatalf("temporary files left: %q", l)
	}

	// A push killed outright leaves its temporary files; the next push
	// removes those whose writer is gone, and only those.
	dead := filepath.Join(wd, BinaryFile+".tmp-999999999")
	live := filepath.Join(wd, BinaryFile+".tmp-"+strconv.Itoa(os.Getpid()))
	for _, f := range []string{dead, dead + ".sha256", live} {
		if err := os.WriteFile(f, []byte("partial"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	os.Rename(dead+".sha256", filepath.Join(wd, BinaryFile+".sha256.tmp-999999999"))
	newer := []byte("a newer binary")
	if _, installed, err := Push(ctx, Local{}, wd, func(Probe) ([]File, error) {
		return []File{file(BinaryFile, 0o755, newer)}, nil
	}); err != nil || len(installed) != 1 {
		t.Fatalf("push after a killed one: installed %q, %v", installed, err)
	}
	if l := leftovers(t, wd); len(l) != 1 || l[0] != live {
		t.Fatalf("after the sweep: %q, want only %s (its writer lives)", l, live)
	}
}
