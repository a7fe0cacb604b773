package homedir

import (
	"strings"
	"testing"
)

func TestExpand(t *testing.T) {
	t.Setenv("HOME", "/home/ann")
	for p, want := range map[string]string{
		"~":         "/home/ann",
		"~/":        "/home/ann",
		"~/.ssh/id": "/home/ann/.ssh/id",
		"~/a/../b":  "/home/ann/b",
		"/etc/x":    "/etc/x",
		"rel/x":     "rel/x",
		"":          "",
		"a/~/b":     "a/~/b",
	} {
		if got, err := Expand(p); err != nil || got != want {
			t.Errorf("Expand(%q) = %q, %v; want %q", p, got, err, want)
		}
	}
	for _, p := range []string{"~bob/x", "~bob"} {
		got, err := Expand(p)
		if err == nil || !strings.Contains(err.Error(), "~user is not supported") || got != p {
			t.Errorf("Expand(%q) = %q, %v; want %q and an error", p, got, err, p)
		}
	}
}

func TestExpandWithoutHome(t *testing.T) {
	t.Setenv("HOME", "")
	if got, err := Expand("~/x"); err == nil || got != "~/x" {
		t.Errorf(`Expand("~/x") = %q, %v; want "~/x" and an error`, got, err)
	}
	if got, err := Expand("/x"); err != nil || got != "/x" {
		t.Errorf(`Expand("/x") = %q, %v; want it unchanged`, got, err)
	}
}
