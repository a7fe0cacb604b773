package pgtest_test

import (
	"context"
	"net/url"
	"os"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/pampa-go/pampa/internal/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.RunMain(m)) }

// schemaOf returns the search_path of a URL returned by pgtest.Schema.
func schemaOf(t *testing.T, connURL string) string {
	t.Helper()
	u, err := url.Parse(connURL)
	if err != nil {
		t.Fatal(err)
	}
	s := u.Query().Get("search_path")
	if s == "" {
		t.Fatalf("URL %s has no search_path", connURL)
	}
	return s
}

func TestSchemasAreIsolated(t *testing.T) {
	t.Parallel()
	var (
		mu      sync.Mutex
		schemas = map[string]string{} // subtest → schema
	)
	// The group returns once both parallel subtests and their cleanups ran.
	t.Run("group", func(t *testing.T) {
		for _, name := range []string{"a", "b"} {
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				pool, u := pgtest.Pool(t)
				mu.Lock()
				schemas[name] = schemaOf(t, u)
				mu.Unlock()

				ctx := t.Context()
				// The same table name in both tests.
				if _, err := pool.Exec(ctx, `CREATE TABLE widgets (name text)`); err != nil {
					t.Fatal(err)
				}
				if _, err := pool.Exec(ctx, `INSERT INTO widgets VALUES ($1)`, name); err != nil {
					t.Fatal(err)
				}
				var got []string
				rows, _ := pool.Query(ctx, `SELECT name FROM widgets`)
				got, err := pgx.CollectRows(rows, pgx.RowTo[string])
				if err != nil {
					t.Fatal(err)
				}
				if len(got) != 1 || got[0] != name {
					t.Errorf("widgets = %q, want only %q", got, name)
				}
			})
		}
	})
	if t.Failed() {
		return
	}
	if schemas["a"] == schemas["b"] {
		t.Fatalf("both tests got schema %s", schemas["a"])
	}

	// Cleanup dropped both schemas.
	conn := connect(t, pgtest.Schema(t))
	for _, s := range schemas {
		var exists bool
		err := conn.QueryRow(t.Context(),
			`SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = $1)`, s).Scan(&exists)
		if err != nil {
			t.Fatal(err)
		}
		if exists {
			t.Errorf("schema %s still exists after its test ended", s)
		}
	}
}

func TestSearchPath(t *testing.T) {
	t.Parallel()
	u := pgtest.Schema(t)
	want := schemaOf(t, u)
	conn := connect(t, u)
	ctx := t.Context()

	var current string
	if err := conn.QueryRow(ctx, `SELECT current_schema()`).Scan(&current); err != nil {
		t.Fatal(err)
	}
	if current != want {
		t.Errorf("current_schema() = %q, want %q", current, want)
	}

	// An unqualified table lands in the test's schema.
	if _, err := conn.Exec(ctx, `CREATE TABLE gadgets (id int)`); err != nil {
		t.Fatal(err)
	}
	var schema string
	err := conn.QueryRow(ctx,
		`SELECT table_schema FROM information_schema.tables WHERE table_name = 'gadgets' AND table_schema = $1`,
		want).Scan(&schema)
	if err != nil {
		t.Fatalf("gadgets not in schema %s: %v", want, err)
	}
}

// TestRestart is not parallel: a restart breaks every connection of the binary.
func TestRestart(t *testing.T) {
	srv := pgtest.Server(t)
	u := pgtest.Schema(t)
	ctx := t.Context()

	conn := connect(t, u)
	if _, err := conn.Exec(ctx, `CREATE TABLE kept (id int); INSERT INTO kept VALUES (1)`); err != nil {
		t.Fatal(err)
	}

	srv.Restart(t)

	if err := conn.Ping(ctx); err == nil {
		t.Error("a connection from before the restart still works")
	}
	conn = connect(t, u)
	var n int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM kept`).Scan(&n); err != nil {
		t.Fatalf("after restart: %v", err)
	}
	if n != 1 {
		t.Errorf("after restart: %d rows in kept, want 1", n)
	}
}

func connect(t *testing.T, connURL string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), connURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}
