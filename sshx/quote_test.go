package sshx_test

import (
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/pampa-go/pampa/sshx"
)

// shellWords runs printf under the local /bin/sh to see how it splits a
// quoted command line.
func shellWords(t *testing.T, args ...string) []string {
	t.Helper()
	out, err := exec.Command("/bin/sh", "-c", `printf '%s\0' `+sshx.Quote(args...)).Output()
	if err != nil {
		t.Fatalf("sh: %v", err)
	}
	words := strings.Split(string(out), "\x00")
	return words[:len(words)-1]
}

func TestQuote(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	tests := map[string][]string{
		"plain":        {"ls", "-l"},
		"empty":        {""},
		"spaces":       {"a b", "  c  "},
		"quotes":       {`it's`, `"double"`, `'`, `''`},
		"substitution": {"$(touch " + dir + "/pwned)", "`touch " + dir + "/pwned`", "${HOME}"},
		"newline":      {"line1\nline2", "\n"},
		"operators":    {"; rm -rf /", "a && b", "| cat", "> x", "*", "~", "A=b", "if"},
		"bytes":        {"\\", "\t", "\xff\xfe"},
	}
	for name, args := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			if got := shellWords(t, args...); !slices.Equal(got, args) {
				t.Errorf("sh saw %q, want %q (quoted: %s)", got, args, sshx.Quote(args...))
			}
		})
	}
}

func FuzzQuote(f *testing.F) {
	f.Add("a", "b c", "it's")
	f.Add("$(id)", "`id`", "\n")
	f.Add("", "'\"'", "\\'")
	f.Fuzz(func(t *testing.T, a, b, c string) {
		args := []string{a, b, c}
		for _, arg := range args {
			if strings.IndexByte(arg, 0) >= 0 {
				t.Skip("NUL cannot be passed to a command")
			}
		}
		if got := shellWords(t, args...); !slices.Equal(got, args) {
			t.Errorf("sh saw %q, want %q", got, args)
		}
	})
}

func TestConfigStringRedacts(t *testing.T) {
	t.Parallel()
	cfg := sshx.Config{Host: "h", Password: "hunter2", Passphrase: "open sesame"}
	for _, s := range []string{cfg.String(), cfg.LogValue().String()} {
		if strings.Contains(s, "hunter2") || strings.Contains(s, "open sesame") {
			t.Errorf("secret in %q", s)
		}
	}
	if !strings.Contains(cfg.String(), "Host:h") {
		t.Errorf("String() = %q, want the host", cfg.String())
	}
}
