// Package pgtest gives tests a real PostgreSQL server and an isolated schema
// per test. It is imported only by _test.go files.
//
// The first call to [Schema], [Pool] or [Server] in a test binary starts one
// throwaway server for the whole binary: initdb into a temporary directory,
// then postgres on a free port of 127.0.0.1, tuned for speed rather than
// durability (fsync off). Every test then works in its own schema, created by
// [Schema] and dropped with CASCADE when the test ends, so tests may call
// t.Parallel and use the same table names.
//
// A package that uses pgtest must stop the server from its TestMain:
//
//	func TestMain(m *testing.M) { os.Exit(pgtest.RunMain(m)) }
//
// RunMain stops the server and removes its directory after the tests. If the
// test binary dies instead, the kernel signals the server (Pdeathsig) so it
// does not outlive it; only the temporary directory is left behind.
//
// PostgreSQL refuses to run as root. When the tests run as root, pgtest runs
// initdb and postgres as the unprivileged user "postgres" (created by the
// Debian package) and gives it the temporary directory.
//
// The server binaries are found by [BinDir]. When none are found, tests are
// skipped with a hint to install them, unless the environment variable CI is
// set: in CI a missing server is a failure.
//
// If PAMPA_TEST_DATABASE_URL is set, pgtest starts no server and creates the
// schemas on that database instead; the role in the URL needs CREATE on the
// database. [Server] is then unavailable and its tests are skipped.
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pampa-go/pampa/internal/pgserver"
	"github.com/pampa-go/pampa/internal/pgurl"
)

// EnvDatabaseURL names the environment variable that points pgtest at an
// existing server instead of starting one.
const EnvDatabaseURL = "PAMPA_TEST_DATABASE_URL"

// setupTimeout bounds starting the server and creating or dropping a schema.
const setupTimeout = 60 * time.Second

// shared is the one server of this test binary. Package-level state is
// avoided elsewhere in Pampa; a test binary has no other place to keep a
// server that outlives a single test.
var shared state

type state struct {
	once     sync.Once
	mu       sync.Mutex
	inMain   bool   // RunMain is running the tests
	adminURL string // URL of the database where schemas are created
	srv      *Srv   // nil when EnvDatabaseURL is used
	missing  error  // a missing prerequisite: skip, or fail in CI
	err      error  // any other failure to start
}

// RunMain runs the tests, then stops the server pgtest started, if any, and
// removes its directory. Call it from TestMain:
//
//	func TestMain(m *testing.M) { os.Exit(pgtest.RunMain(m)) }
//
// It returns the exit code of m.Run, or 1 if the tests passed but the server
// could not be cleaned up.
func RunMain(m *testing.M) int {
	shared.mu.Lock()
	shared.inMain = true
	shared.mu.Unlock()

	code := m.Run()

	shared.mu.Lock()
	srv := shared.srv
	shared.mu.Unlock()
	if srv == nil {
		return code
	}
	if err := srv.s.Close(); err != nil {
		// Test binary, not library code: stderr is where go test shows it.
		fmt.Fprintf(os.Stderr, "pgtest: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	return code
}

// get returns the admin URL of the server, starting it on first use.
func get(t testing.TB) (adminURL string, srv *Srv) {
	t.Helper()
	shared.once.Do(func() {
		if u := os.Getenv(EnvDatabaseURL); u != "" {
			shared.adminURL = u
			return
		}
		shared.mu.Lock()
		inMain := shared.inMain
		shared.mu.Unlock()
		if !inMain {
			shared.err = errors.New("pgtest.RunMain is not running; add to this package: " +
				"func TestMain(m *testing.M) { os.Exit(pgtest.RunMain(m)) }")
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
		defer cancel()
		s, err := pgserver.Start(ctx)
		shared.mu.Lock()
		defer shared.mu.Unlock()
		switch {
		case errors.Is(err, pgserver.ErrNoBinaries), errors.Is(err, pgserver.ErrNoUser):
			shared.missing = err
		case err != nil:
			shared.err = err
		default:
			shared.srv = &Srv{s}
			shared.adminURL = s.URL()
		}
	})
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.missing != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("pgtest: %v (CI is set, so this is a failure, not a skip)", shared.missing)
		}
		t.Skipf("pgtest: %v", shared.missing)
	}
	if shared.err != nil {
		t.Fatalf("pgtest: %v", shared.err)
	}
	return shared.adminURL, shared.srv
}

// Schema creates a schema for t alone and returns a URL that connects to it:
// search_path is set in the URL, which pgx sends as a runtime parameter, so
// unqualified names resolve in the schema. The schema is dropped with CASCADE
// when t ends.
func Schema(t testing.TB) string {
	t.Helper()
	adminURL, _ := get(t)

	name := schemaName(t.Name())
	ctx, cancel := context.WithTimeout(t.Context(), setupTimeout)
	defer cancel()
	if err := execSQL(ctx, adminURL, "CREATE SCHEMA "+pgx.Identifier{name}.Sanitize()); err != nil {
		t.Fatalf("pgtest: create schema %s: %v", name, err)
	}
	t.Cleanup(func() {
		// t.Context is already cancelled when cleanups run.
		ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
		defer cancel()
		if err := execSQL(ctx, adminURL, "DROP SCHEMA "+pgx.Identifier{name}.Sanitize()+" CASCADE"); err != nil {
			t.Errorf("pgtest: drop schema %s: %v", name, err)
		}
	})

	u, err := pgurl.WithSearchPath(adminURL, name)
	if err != nil {
		t.Fatalf("pgtest: parse %s: %v", EnvDatabaseURL, err)
	}
	return u
}

// Pool returns a pool connected to a new schema (see [Schema]) and the
// schema's URL. The pool is closed, then the schema dropped, when t ends.
func Pool(t testing.TB) (*pgxpool.Pool, string) {
	t.Helper()
	u := Schema(t)
	ctx, cancel := context.WithTimeout(t.Context(), setupTimeout)
	defer cancel()
	pool, err := pgxpool.New(ctx, u)
	if err != nil {
		t.Fatalf("pgtest: open pool: %v", err)
	}
	t.Cleanup(pool.Close)
	if err := pool.Ping(ctx); err != nil {
		t.Fatalf("pgtest: ping pool: %v", err)
	}
	return pool, u
}

// Server returns the server pgtest started for this test binary. It skips t
// when EnvDatabaseURL points at another server, which pgtest cannot restart.
func Server(t testing.TB) *Srv {
	t.Helper()
	_, srv := get(t)
	if srv == nil {
		t.Skipf("pgtest: %s is set; tests that control the server need the one pgtest starts", EnvDatabaseURL)
	}
	return srv
}

// execSQL runs one statement on a connection of its own, so that it works
// whatever happened to the server (a restart) since the last call.
func execSQL(ctx context.Context, connURL, sql string) error {
	conn, err := pgx.Connect(ctx, connURL)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, sql); err != nil {
		return err
	}
	return nil
}

// maxIdent is PostgreSQL's longest identifier in bytes (NAMEDATALEN-1).
const maxIdent = 63

// schemaName turns a test name into a schema name unique to this call:
// lower-case letters, digits and underscores, a random suffix (test binaries
// may share a server through EnvDatabaseURL), at most maxIdent bytes. Being
// plain, it needs no quoting in search_path.
func schemaName(testName string) string {
	var b strings.Builder
	under := false
	for _, r := range strings.ToLower(testName) {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			b.WriteRune(r)
			under = false
		} else if !under {
			b.WriteByte('_')
			under = true
		}
	}
	base := strings.Trim(b.String(), "_")
	// Names must start with a letter, and pg_ is reserved for the system.
	if base == "" || base[0] < 'a' || base[0] > 'z' || strings.HasPrefix(base, "pg_") {
		base = "t_" + base
	}
	var rnd [4]byte
	_, _ = rand.Read(rnd[:]) // never fails
	suffix := "_" + hex.EncodeToString(rnd[:])
	if len(base) > maxIdent-len(suffix) {
		base = strings.TrimRight(base[:maxIdent-len(suffix)], "_")
	}
	return base + suffix
}

// Srv is the PostgreSQL server pgtest started for this test binary.
type Srv struct{ s *pgserver.Server }

// URL returns the superuser URL of the server's postgres database.
func (s *Srv) URL() string { return s.s.URL() }

// Restart stops the server with a fast shutdown and starts it again on the
// same port and data directory. Every connection of every test breaks, so a
// test calling Restart must not run in parallel with other tests.
func (s *Srv) Restart(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), setupTimeout)
	defer cancel()
	if err := s.s.Restart(ctx); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
}

// BinDir returns the directory of the PostgreSQL server binaries.
func BinDir() (string, error) { return pgserver.BinDir() }
