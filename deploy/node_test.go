package deploy

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
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
	fi, err := os.Stat(bin)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	stamp := fmt.Sprintf("%s %d %d %d\n", fake, fi.Size(), fi.ModTime().Unix(), st.Ino) // as pushScript writes it
	if err := os.WriteFile(bin+".sha256", []byte(stamp), 0o644); err != nil {
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

func TestParseProbeSystemd(t *testing.T) {
	t.Parallel()
	for line, want := range map[string]Systemd{
		"systemd none no no":        {},
		"systemd system no no":      {Booted: true},
		"systemd user no no":        {Booted: true, UserManager: true},
		"systemd user yes no":       {Booted: true, UserManager: true, Linger: true},
		"systemd system yes yes":    {Booted: true, Linger: true, KillUserProcesses: true},
		"systemd garbled":           {},
		"not a systemd line at all": {},
	} {
		p, err := parseProbe([]byte("uname Linux x86_64\ndf 100\n" + line + "\n"))
		if err != nil {
			t.Fatal(err)
		}
		if p.Systemd != want {
			t.Errorf("%q: %+v, want %+v", line, p.Systemd, want)
		}
	}
	for s, want := range map[Systemd]string{
		{}: "none", {Booted: true}: "system", {Booted: true, UserManager: true}: "user",
		{Booted: true, UserManager: true, Linger: true}: "user+linger",
	} {
		if s.String() != want {
			t.Errorf("%+v.String() = %q, want %q", s, s.String(), want)
		}
	}
}

// The probe's systemd detection, run on this host, agrees with it: no
// systemd as PID 1 here (no /run/systemd/system) is reported as such.
func TestProbeSystemdHere(t *testing.T) {
	t.Parallel()
	p, err := ProbeNode(context.Background(), Local{}, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	_, err = os.Stat("/run/systemd/system")
	if booted := err == nil; p.Systemd.Booted != booted {
		t.Fatalf("probe says systemd booted = %v, but /run/systemd/system exists = %v", p.Systemd.Booted, booted)
	}
	if !p.Systemd.Booted && p.Systemd != (Systemd{}) {
		t.Fatalf("no systemd, yet the probe reports %+v", p.Systemd)
	}
	if len(p.MissingTools) > 0 {
		t.Fatalf("this host lacks %v", p.MissingTools)
	}
}
