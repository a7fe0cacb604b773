package suggest

import "testing"

func TestLevenshtein(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		a, b string
		want int
	}{{"", "", 0}, {"a", "", 1}, {"queue_sise", "queue_size", 1}, {"kitten", "sitting", 3}} {
		if got := levenshtein(tc.a, tc.b); got != tc.want {
			t.Errorf("levenshtein(%q, %q) = %d, want %d", tc.a, tc.b, got, tc.want)
		}
	}
}

func TestClosest(t *testing.T) {
	t.Parallel()
	cmds := []string{"db", "dispatcher", "version", "workers", "worker"}
	for name, want := range map[string]string{"versoin": "version", "wrokers": "workers", "banana": ""} {
		if got := Closest(name, cmds); got != want {
			t.Errorf("Closest(%q) = %q, want %q", name, got, want)
		}
	}
}
