package pampacli_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pampa-go/pampa/cmd/pampactl/pampacli"
	"github.com/pampa-go/pampa/internal/pgtest"
)

// A worker the cluster does not have, or one that could not run its jobs,
// is refused before it connects: exit 2 and what to change.
func TestWorkerRunRefusesWhatCannotWork(t *testing.T) {
	t.Parallel()
	r := newRig(t, 1, 2, 1, "true")
	for _, tc := range []struct {
		name, config, id, want string
	}{
		{"id beyond max_workers", "", "local.7", "max_workers = 2"},
		{"id of no node", "", "w9.1", `no node "w9"`},
		{"job without a step", "\n[[jobs]]\nname = \"nostep\"\ntable = \"tasks\"\nfield_prefix = \"nostep\"\n", "local.1",
			`job "nostep" has no command`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := r.cfg
			if tc.config != "" {
				text, _ := os.ReadFile(r.cfg)
				cfg = filepath.Join(t.TempDir(), "cluster.toml")
				if err := os.WriteFile(cfg, append(text, tc.config...), 0o600); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(filepath.Dir(cfg), "pampa.secret"), []byte(strings.Repeat("k", 32)), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			res := pampactl(t.Context(), t, nil, "--config", cfg, "worker", "run", "--no-log-file", "--id", tc.id)
			if res.code != pampacli.ExitUsage || !strings.Contains(res.stderr, tc.want) {
				t.Errorf("worker run --id %s: exit %d, want %d with %q:\n%s", tc.id, res.code, pampacli.ExitUsage, tc.want, res)
			}
		})
	}
}

// A worker with a wrong secret is refused by the dispatcher and exits,
// saying so without printing either secret; the dispatcher logs the
// refusal with the peer's address.
func TestWorkerWithWrongSecretIsRefused(t *testing.T) {
	t.Parallel()
	r := newRig(t, 5, 1, 1, "true")
	r.dispatcher(0)
	r.waitLog("dispatcher0", "dispatcher is the leader", 30*time.Second)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	const wrong = "not-the-cluster-secret-0123456789"
	res := pampactl(ctx, t, map[string]string{"PAMPA_WORKER_SECRET": wrong}, "--config", r.cfg, "worker", "run", "--no-log-file", "--id", "local.1")
	if res.code != pampacli.ExitFailure || !strings.Contains(res.stderr, "wrong worker secret") {
		t.Fatalf("worker with a wrong secret: exit %d, want %d saying so:\n%s", res.code, pampacli.ExitFailure, res)
	}
	if strings.Contains(res.stderr, wrong) || strings.Contains(res.stderr, strings.Repeat("k", 32)) {
		t.Errorf("a secret appears in the worker's output:\n%s", res)
	}
	r.waitLog("dispatcher0", "refused a worker connection", 10*time.Second)
	b, _ := os.ReadFile(filepath.Join(r.dir, "dispatcher0.log"))
	if strings.Contains(string(b), wrong) || !strings.Contains(string(b), "addr=127.0.0.1:") {
		t.Errorf("dispatcher log: the refusal should name the peer's address and not the secret:\n%s", b)
	}
	if n := r.count(`select count(*) from tasks where work_reservation_id is not null`); n != 0 {
		t.Errorf("%d rows were reserved for a refused worker", n)
	}
}

// jobs status before db setup says what to run, once, with exit 2, rather
// than an SQL error.
func TestJobsStatusBeforeSetup(t *testing.T) {
	t.Parallel()
	url := pgtest.Schema(t)
	conn, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(t.Context(), `create table tasks (id bigint primary key)`); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cfg := filepath.Join(dir, "cluster.toml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf("[database]\nurl = %q\nurl_env = \"\"\n[[jobs]]\nname = \"work\"\ntable = \"tasks\"\ncommand = [\"true\"]\n", url)), 0o600); err != nil {
		t.Fatal(err)
	}
	res := pampactl(t.Context(), t, nil, "--config", cfg, "jobs", "status")
	if res.code != pampacli.ExitUsage || strings.Count(res.stderr, "pampactl db setup") != 1 || strings.Contains(res.stderr, "SQLSTATE") {
		t.Errorf("jobs status before db setup: exit %d, want %d with the db setup hint once and no SQLSTATE:\n%s", res.code, pampacli.ExitUsage, res)
	}
	// Pampa's tables there (another job's setup), the job's columns not.
	if _, err := conn.Exec(t.Context(), `create table other (id int primary key)`); err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(dir, "other.toml")
	if err := os.WriteFile(other, []byte(fmt.Sprintf("[database]\nurl = %q\nurl_env = \"\"\n[[jobs]]\nname = \"o\"\ntable = \"other\"\ncommand = [\"true\"]\n", url)), 0o600); err != nil {
		t.Fatal(err)
	}
	if r := pampactl(t.Context(), t, nil, "--config", other, "db", "setup"); r.code != 0 {
		t.Fatalf("db setup: %s", r)
	}
	res = pampactl(t.Context(), t, nil, "--config", cfg, "jobs", "status")
	if res.code != pampacli.ExitUsage || strings.Count(res.stderr, "pampactl db setup") != 1 || strings.Contains(res.stderr, "SQLSTATE") {
		t.Errorf("jobs status before db setup: exit %d, want %d with the db setup hint once and no SQLSTATE:\n%s", res.code, pampacli.ExitUsage, res)
	}
}
