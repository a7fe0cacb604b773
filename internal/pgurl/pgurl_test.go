package pgurl

import (
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

func TestWithSearchPath(t *testing.T) {
	for _, tc := range []struct {
		conn, schema, want string
	}{
		{"postgres://u:p@h:5432/db", "s1", "postgres://u:p@h:5432/db?search_path=s1"},
		{"postgresql://h/db?sslmode=disable&search_path=old", "s1", "postgresql://h/db?search_path=s1&sslmode=disable"},
		{"host=h dbname=db", "s1", "host=h dbname=db search_path=s1"},
		{"host=h search_path=old", "s1", "host=h search_path=old search_path=s1"},
		{"host=h", `it's a \ "b"`, `host=h search_path='it\'s a \\ "b"'`},
		{"", "s1", " search_path=s1"},
	} {
		got, err := WithSearchPath(tc.conn, tc.schema)
		if err != nil || got != tc.want {
			t.Errorf("WithSearchPath(%q, %q) = %q, %v; want %q", tc.conn, tc.schema, got, err, tc.want)
			continue
		}
		// What counts is what pgx makes of it.
		cfg, err := pgconn.ParseConfig(got)
		if err != nil {
			t.Errorf("pgconn.ParseConfig(%q): %v", got, err)
		} else if sp := cfg.RuntimeParams["search_path"]; sp != tc.schema {
			t.Errorf("%q: pgx reads search_path %q, want %q", got, sp, tc.schema)
		}
	}
}

func TestWithSearchPathHidesPassword(t *testing.T) {
	_, err := WithSearchPath("postgres://u:secret@h:port/db", "s")
	if err == nil || strings.Contains(err.Error(), "secret") {
		t.Fatalf("err = %v, want one that does not show the password", err)
	}
}
