package pampacli_test

import (
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// A build tells what it is: `pampactl version` and `pampactl --version`
// print the same line, with the version make links in (git describe) and
// the platform.
func TestVersion(t *testing.T) {
	t.Parallel()
	bin := filepath.Join(t.TempDir(), "pampactl")
	const v = "v1.2.3-4-gabcdef0"
	build := exec.Command("go", "build", "-o", bin,
		"-ldflags", "-X github.com/pampa-go/pampa/cmd/pampactl/pampacli.version="+v, "github.com/pampa-go/pampa/cmd/pampactl")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	want := "pampactl " + v + " " + runtime.GOOS + "/" + runtime.GOARCH + " " + runtime.Version()
	for _, arg := range []string{"version", "--version"} {
		out, err := exec.Command(bin, arg).Output()
		if got := strings.TrimSpace(string(out)); err != nil || got != want {
			t.Errorf("pampactl %s = %q, %v; want %q", arg, got, err, want)
		}
	}
}
