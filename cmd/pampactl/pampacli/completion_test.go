package pampacli_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pampa-go/pampa/internal/syncbuf"

	"github.com/jackc/pgx/v5"

	"github.com/pampa-go/pampa/cmd/pampactl/pampacli"
	"github.com/pampa-go/pampa/internal/pgtest"
	"github.com/pampa-go/pampa/orchestrator"
)

// pampactl completion bash, sourced in a real bash, completes subcommands
// by asking pampactl; fish gets a script; other shells exit 2.
func TestCompletion(t *testing.T) {
	t.Parallel()
	bin := pampactlBinary(t)
	dir := t.TempDir()
	if err := os.Symlink(bin, filepath.Join(dir, "pampactl")); err != nil {
		t.Fatal(err)
	}
	script := `source <(pampactl completion bash)
COMP_WORDS=(pampactl jobs ""); COMP_CWORD=2; _pampactl_complete; echo "${COMPREPLY[@]}"
COMP_WORDS=(pampactl wor); COMP_CWORD=1; _pampactl_complete; echo "${COMPREPLY[@]}"`
	cmd := exec.Command("bash", "-c", script)
	cmd.Env = append(os.Environ(), "PATH="+dir+":"+os.Getenv("PATH"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("bash: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != 2 || lines[0] != "status retry pause resume" || lines[1] != "worker workers" {
		t.Fatalf("bash completion gave %q; want the jobs subcommands, then worker workers", lines)
	}
	if r := pampactl(t.Context(), t, nil, "completion", "fish"); r.code != 0 || !strings.Contains(r.stdout, "complete -c pampactl") {
		t.Errorf("completion fish: %d %q", r.code, r.stdout)
	}
	if r := pampactl(t.Context(), t, nil, "completion", "pwsh"); r.code != pampacli.ExitUsage {
		t.Errorf("completion pwsh: exit %d, want 2", r.code)
	}
}

// jobs status --watch reports again every --interval until interrupted,
// then exits 130 as an interrupted command does.
func TestJobsStatusWatch(t *testing.T) {
	t.Parallel()
	r := newRig(t, 3, 1, 1, "true")
	ctx, cancel := context.WithCancel(t.Context())
	var out syncbuf.Buffer
	done := make(chan int, 1)
	go func() {
		done <- pampacli.Run(ctx, []string{"pampactl", "--config", r.cfg, "jobs", "status", "--watch", "--interval", "100ms"},
			strings.NewReader(""), &out, &out, func(string) string { return "" }, pampacli.Options{})
	}()
	poll(t, "three reports", func() string {
		if n := strings.Count(out.String(), "JOB "); n < 3 {
			return fmt.Sprintf("%d reports:\n%s", n, out.String())
		}
		return ""
	})
	cancel()
	if code := <-done; code != pampacli.ExitInterrupted {
		t.Fatalf("jobs status --watch exited %d after the interrupt; want 130:\n%s", code, out.String())
	}
	if !strings.Contains(out.String(), "work") {
		t.Errorf("no job in the reports:\n%s", out.String())
	}
}

// Help tells the truth: --delay's default is the config's, and -n is
// --node in logs tail as everywhere else.
func TestHelpTexts(t *testing.T) {
	t.Parallel()
	r := pampactl(t.Context(), t, nil, "dispatcher", "run", "--help")
	if !strings.Contains(r.stdout, "(default: [dispatcher] delay)") || strings.Contains(r.stdout, "(default: 0s)") {
		t.Errorf("dispatcher run --help on --delay:\n%s", r.stdout)
	}
	r = pampactl(t.Context(), t, nil, "logs", "tail", "--help")
	if !strings.Contains(r.stdout, "--node value, -n value") || !strings.Contains(r.stdout, "--lines value, -l value") {
		t.Errorf("logs tail --help:\n%s", r.stdout)
	}
}

// init --table writes a config for the table, its primary key read from
// the database, that loads and that db setup takes; it overwrites nothing
// and refuses tables without a one-column key.
func TestInitTable(t *testing.T) {
	t.Parallel()
	url := pgtest.Schema(t)
	conn, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(t.Context(), `create table pages (page_id bigint primary key, url text);
create table pairs (a int, b int, primary key (a, b)); create table loose (x int)`); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	out := filepath.Join(dir, "cluster.toml")
	env := map[string]string{"PAMPA_DATABASE_URL": url}
	r := pampactl(t.Context(), t, env, "init", "--table", "pages", "--out", out)
	if r.code != 0 || !strings.Contains(r.stdout, "primary key page_id") {
		t.Fatalf("init --table pages:\n%s", r)
	}
	cfg, err := orchestrator.Load(out)
	if err != nil {
		t.Fatalf("the written config does not load: %v", err)
	}
	if j, ok := cfg.Job("pages"); !ok || j.Table != "pages" || j.Fields.PrimaryKey != "page_id" {
		t.Fatalf("job = %+v", j)
	}
	if b, _ := os.ReadFile(out); strings.Contains(string(b), url) {
		t.Error("the database URL was written into the file")
	}
	if r := pampactl(t.Context(), t, env, "--config", out, "db", "setup"); r.code != 0 {
		t.Fatalf("db setup on the written config:\n%s", r)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"init", "--table", "pages", "--out", out}, "exists; pass --force"},
		{[]string{"init", "--table", "pairs", "--out", filepath.Join(dir, "b.toml")}, "primary key of 2 columns"},
		{[]string{"init", "--table", "loose", "--out", filepath.Join(dir, "c.toml")}, "has no primary key"},
		{[]string{"init", "--table", "nope", "--out", filepath.Join(dir, "d.toml")}, "nope is not in the database"},
	} {
		if r := pampactl(t.Context(), t, env, tc.args...); r.code != pampacli.ExitUsage || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("pampactl %s: exit %d, want 2 with %q:\n%s", strings.Join(tc.args, " "), r.code, tc.want, r)
		}
	}
}

// dispatcher run resolves a relative log_file and runs start_command in
// the config's directory, wherever it is started, as every relative path
// of the config.
func TestDispatcherPathsAreTheConfigsDir(t *testing.T) {
	t.Parallel()
	r := newRig(t, 1, 1, 1, "true")
	text, err := os.ReadFile(r.cfg)
	if err != nil {
		t.Fatal(err)
	}
	cfgText := strings.Replace(string(text), `log_file = ""`, `log_file = "logs/dispatcher.log"
start_command = ["sh", "-c", "pwd > started.txt"]`, 1)
	if err := os.WriteFile(r.cfg, []byte(cfgText), 0o600); err != nil {
		t.Fatal(err)
	}
	// The test runs in the package's directory, not the config's.
	if res := pampactl(t.Context(), t, nil, "--config", r.cfg, "dispatcher", "run", "--once", "--no-tunnels"); res.code != 0 {
		t.Fatalf("dispatcher run --once:\n%s", res)
	}
	got, err := os.ReadFile(filepath.Join(r.dir, "started.txt"))
	if err != nil || strings.TrimSpace(string(got)) != r.dir {
		t.Errorf("start_command ran in %q (%v); want the config's directory %s", got, err, r.dir)
	}
	if _, err := os.Stat(filepath.Join(r.dir, "logs", "dispatcher.log")); err != nil {
		t.Errorf("the dispatcher's log is not beside the config: %v", err)
	}
}

// A worker's log stays under [worker] log_max_mb: past it the log is
// copied to .1 and starts again, while the worker goes on writing.
func TestWorkerLogIsCapped(t *testing.T) {
	t.Parallel()
	// Each row's step prints 600 lines (60 KB) to stderr, which the worker logs.
	r := newRig(t, 40, 1, 1, `yes 0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789 | head -n 600 >&2; echo $PAMPA_TASK_ID >> OK`)
	text, _ := os.ReadFile(r.cfg)
	if err := os.WriteFile(r.cfg, []byte(strings.Replace(string(text), "[worker]\n", "[worker]\nlog_max_mb = 1\nlog_keep = 1\n", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	if res := pampactl(t.Context(), t, nil, "--config", r.cfg, "workers", "start", "local.1"); res.code != 0 {
		t.Fatalf("workers start:\n%s", res)
	}
	t.Cleanup(func() { pampactl(context.Background(), t, nil, "--config", r.cfg, "workers", "stop") })
	r.dispatcher(0)
	r.waitSucceeded(40, 90*time.Second)
	log := filepath.Join(r.dir, "worker.local.1.log")
	poll(t, "the worker's log to be capped", func() string {
		st, err := os.Stat(log + ".1")
		if err != nil {
			cur, _ := os.Stat(log)
			size := int64(-1)
			if cur != nil {
				size = cur.Size()
			}
			return fmt.Sprintf("%v (the log holds %d bytes)", err, size)
		}
		cur, err := os.Stat(log)
		if err != nil || cur.Size() > 1<<20 {
			return fmt.Sprintf("log %v, %v", cur, err)
		}
		if st.Size() <= 1<<20 {
			return fmt.Sprintf("the copy holds %d bytes; it was rotated past 1 MiB", st.Size())
		}
		return ""
	})
	if _, err := os.Stat(log + ".2"); err == nil {
		t.Error("a second copy was kept with log_keep = 1")
	}
}

// workers status without a database still shows what the nodes say, says
// which columns are missing, and exits 1.
func TestWorkersStatusWithoutDatabase(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cfg := filepath.Join(dir, "cluster.toml")
	text := `[database]
url = "postgres://nobody@127.0.0.1:1/none?connect_timeout=2"
url_env = ""
[[nodes]]
name = "local"
net_remote_ip = "local"
max_workers = 2
work_dir = "` + dir + `"
`
	if err := os.WriteFile(cfg, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	r := pampactl(t.Context(), t, nil, "--config", cfg, "workers", "status")
	if r.code != pampacli.ExitFailure || !strings.Contains(r.stdout, "local.1") || !strings.Contains(r.stdout, "local.2") ||
		!strings.Contains(r.stderr, "registry is not readable") {
		t.Fatalf("workers status without a database:\n%s", r)
	}
}
