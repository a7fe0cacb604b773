package orchestrator

import (
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pampa-go/pampa/dispatcher"
)

// parse parses text as /etc/pampa/cluster.toml and fails the test on error.
func parse(t *testing.T, text string) *Config {
	t.Helper()
	c, err := Parse("/etc/pampa/cluster.toml", []byte(text))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return c
}

const minimalJob = `
[[jobs]]
name = "j"
table = "t"
`

func TestExampleFile(t *testing.T) {
	t.Parallel()
	c, err := Load("../cluster.toml.example")
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	wd, _ := filepath.Abs("..")
	if got, want := c.Nodes, []Node{{Name: "local", Local: true, Port: 22, MaxWorkers: 2, WorkDir: wd}}; !equalNodes(got, want) {
		t.Errorf("Nodes = %+v, want %+v", got, want)
	}
	if c.Database.Flavor != FlavorPostgres || c.Database.URLEnv != "PAMPA_DATABASE_URL" || c.Database.URL == "" {
		t.Errorf("Database = %+v", c.Database)
	}
	if c.Dispatcher.Delay != time.Second || c.Dispatcher.HeartbeatTimeout != 30*time.Second || c.Dispatcher.LogFile != filepath.Join("..", "dispatcher.log") {
		t.Errorf("Dispatcher = %+v", c.Dispatcher)
	}
	if c.Worker.HeartbeatInterval != 5*time.Second || c.Worker.GracePeriod != 30*time.Second || c.Worker.LogFile != "worker.{id}.log" {
		t.Errorf("Worker = %+v", c.Worker)
	}
	j, ok := c.Job("search_odd_numbers")
	if !ok || len(c.Jobs) != 1 {
		t.Fatalf("Jobs = %+v", c.Jobs)
	}
	if want := dispatcher.FieldsFor("odd_checking", "value"); j.Fields != want {
		t.Errorf("Fields = %+v, want %+v", j.Fields, want)
	}
	if j.Table != "numbers" || j.QueueSize != 5 || j.MaxPendingTasks != 500 || j.MaxAssignedWorkers != 5 ||
		j.MaxTryTimes != 3 || j.MaxJobDuration != 15*time.Minute || !j.WorkerMatches("local.1") {
		t.Errorf("Job = %+v", j)
	}
	if !strings.Contains(j.Step.SQL, "is_odd") || j.Step.Command != nil {
		t.Errorf("Step = %+v", j.Step)
	}
}

// The commented-out parts of the example must parse too once uncommented.
func TestExampleFileCommentedKeys(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile("../cluster.toml.example")
	if err != nil {
		t.Fatal(err)
	}
	setting := regexp.MustCompile(`^# ([a-z_]+ = |\[\[|  )`) // a key, a header, or a line of a SQL snippet
	var b strings.Builder
	for line := range strings.Lines(string(data)) {
		if setting.MatchString(line) {
			line = line[2:]
		}
		// Keys of command and handler jobs conflict with the example job's
		// sql step, ssh_password with ssh_password_env, and relay with
		// dispatcher_address.
		if slices.ContainsFunc([]string{"command", "fatal_exit_codes", "limit_key", "max_running_per_key", "allowing_sql",
			"queue_slots_sql", "occupied_sql", "ssh_password", "relay"}, func(k string) bool { return strings.HasPrefix(line, k+" = ") }) {
			continue
		}
		b.WriteString(line)
	}
	c := parse(t, b.String())
	w1, ok := c.Node("w1")
	home, _ := os.UserHomeDir()
	if !ok || w1.Local || w1.Host != "10.0.0.7" || w1.User != "root" || w1.PasswordEnv != "W1_SSH_PASSWORD" ||
		w1.PrivateKeyFile != filepath.Join(home, ".ssh/id_ed25519") || w1.KnownHostsFile != filepath.Join(home, ".ssh/known_hosts") ||
		w1.WorkDir != "pampa" || w1.MaxWorkers != 4 {
		t.Errorf("node w1 = %+v", w1)
	}
	j, _ := c.Job("search_odd_numbers")
	if !strings.Contains(j.Snippets.SelectingSQL, "order by value desc") ||
		!strings.Contains(j.Snippets.RelaunchingSQL, "now() - interval '10 minutes'") ||
		j.Snippets.TotalSQL == "" {
		t.Errorf("Snippets = %+v", j.Snippets)
	}
}

func equalNodes(a, b []Node) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestDefaults(t *testing.T) {
	t.Parallel()
	c := parse(t, `
[[nodes]]
name = "here"
transport = "local"

[[nodes]]
name = "w1"
net_remote_ip = "10.0.0.7"
ssh_username = "u"
`+minimalJob)
	home, _ := os.UserHomeDir()
	want := &Config{
		Path:     "/etc/pampa/cluster.toml",
		Database: Database{URLEnv: "PAMPA_DATABASE_URL", Flavor: "postgres"},
		Dispatcher: DispatcherSettings{
			Delay: time.Second, LogFile: "/etc/pampa/dispatcher.log", HeartbeatTimeout: 30 * time.Second,
		},
		Worker: WorkerSettings{
			Delay: time.Second, LogFile: "worker.{id}.log", HeartbeatInterval: 5 * time.Second, GracePeriod: 30 * time.Second,
		},
		Nodes: []Node{
			{Name: "here", Local: true, Port: 22, MaxWorkers: 1, WorkDir: "/etc/pampa"},
			{Name: "w1", Host: "10.0.0.7", Port: 22, User: "u", MaxWorkers: 1, WorkDir: "pampa",
				KnownHostsFile: filepath.Join(home, ".ssh/known_hosts")},
		},
	}
	if c.Path != want.Path || c.Database != want.Database || !equalNodes(c.Nodes, want.Nodes) ||
		c.Dispatcher.Delay != want.Dispatcher.Delay || c.Dispatcher.LogFile != want.Dispatcher.LogFile ||
		c.Dispatcher.HeartbeatTimeout != want.Dispatcher.HeartbeatTimeout || c.Worker.Delay != want.Worker.Delay ||
		c.Worker.LogFile != want.Worker.LogFile || c.Worker.HeartbeatInterval != want.Worker.HeartbeatInterval ||
		c.Worker.GracePeriod != want.Worker.GracePeriod {
		t.Errorf("got  %+v\nwant %+v", c, want)
	}
	j := c.Jobs[0]
	wantJob := dispatcher.Job{Name: "j", Table: "t", Fields: dispatcher.FieldsFor("j", "id")}.WithDefaults()
	if j.Fields != wantJob.Fields || j.QueueSize != 5 || j.MaxJobDuration != 15*time.Minute || j.MaxTryTimes != 3 ||
		j.MaxPendingTasks != 5 || j.MaxAssignedWorkers != 0 || j.FilterWorkerID != nil {
		t.Errorf("job = %+v", j)
	}
	if got := c.Nodes[0].WorkerIDs(); len(got) != 1 || got[0] != "here.1" {
		t.Errorf("WorkerIDs = %q", got)
	}
}

func TestSettings(t *testing.T) {
	t.Parallel()
	c := parse(t, `
[dispatcher]
delay = "250ms"
log_file = ""
start_command = ["./warmup", "-v"]

[worker]
grace_period = "0s"

[[nodes]]
name = "n-1"
net_remote_ip = "local"
max_workers = 3
work_dir = "run"

[[nodes]]
name = "w_2"
transport = "ssh"
net_remote_ip = "example.com"
ssh_username = "u"
ssh_port = 2222
work_dir = "~/jobs"

[[jobs]]
name = "j"
table = "s.t"
max_job_duration_minutes = 0.5
filter_worker_id = '\.1$'
command = ["./check.sh", "--fast"]
`)
	if c.Dispatcher.Delay != 250*time.Millisecond || c.Dispatcher.LogFile != "" || len(c.Dispatcher.StartCommand) != 2 {
		t.Errorf("Dispatcher = %+v", c.Dispatcher)
	}
	if c.Worker.GracePeriod != 0 {
		t.Errorf("GracePeriod = %v, want explicit 0", c.Worker.GracePeriod)
	}
	n, _ := c.Node("n-1")
	if got := n.WorkerIDs(); strings.Join(got, ",") != "n-1.1,n-1.2,n-1.3" || n.WorkDir != "/etc/pampa/run" {
		t.Errorf("node n-1 = %+v, ids %q", n, got)
	}
	if w, _ := c.Node("w_2"); w.Port != 2222 || w.WorkDir != "jobs" || w.Local {
		t.Errorf("node w_2 = %+v", w)
	}
	j, _ := c.Job("j")
	if j.MaxJobDuration != 30*time.Second || j.WorkerMatches("n-1.2") || !j.WorkerMatches("w_2.1") || len(j.Step.Command) != 2 {
		t.Errorf("job = %+v", j)
	}
	if _, ok := c.Job("nope"); ok {
		t.Error("Job(nope) found")
	}
}

func TestFieldPrefix(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, keys string
		want       dispatcher.Fields
	}{
		{"job name by default", ``, dispatcher.FieldsFor("j", "id")},
		{"prefix", `field_prefix = "p"`, dispatcher.FieldsFor("p", "id")},
		{"explicit field wins over prefix", "field_prefix = \"p\"\nfield_success = \"ok\"\nfield_primary_key = \"value\"",
			func() dispatcher.Fields { f := dispatcher.FieldsFor("p", "value"); f.Success = "ok"; return f }()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := parse(t, minimalJob+tc.keys)
			if got := c.Jobs[0].Fields; got != tc.want {
				t.Errorf("Fields = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestDatabaseURL(t *testing.T) {
	t.Parallel()
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	for _, tc := range []struct {
		name, toml string
		env        map[string]string
		want       string // "" means an error
	}{
		{"url", `url = "postgres://file"`, nil, "postgres://file"},
		{"default env overrides url", `url = "postgres://file"`, map[string]string{"PAMPA_DATABASE_URL": "postgres://env"}, "postgres://env"},
		{"custom env", `url_env = "DB"`, map[string]string{"DB": "postgres://db", "PAMPA_DATABASE_URL": "x"}, "postgres://db"},
		{"env override disabled", "url = \"postgres://file\"\nurl_env = \"\"", map[string]string{"PAMPA_DATABASE_URL": "x"}, "postgres://file"},
		{"none", ``, nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := parse(t, "[database]\n"+tc.toml)
			got, err := c.DatabaseURL(env(tc.env))
			if tc.want == "" {
				if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "cluster.toml") ||
					!strings.Contains(err.Error(), "export PAMPA_DATABASE_URL") {
					t.Fatalf("err = %v, want a config error naming the file and the variable", err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Errorf("DatabaseURL = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

func TestErrors(t *testing.T) {
	t.Parallel()
	node := "[[nodes]]\nname = \"a\"\nnet_remote_ip = \"local\"\n" // 3 lines
	for _, tc := range []struct {
		name, toml string
		want       []string // substrings of the message
	}{
		{"syntax", "[database]\nurl = \n", []string{"cluster.toml:2:7: ", "expected value"}},
		{"unknown key with suggestion", minimalJob + "queue_sise = 5\n",
			[]string{"cluster.toml:5:1: jobs[0].queue_sise: unknown key", `did you mean "queue_size"?`}},
		{"unknown key far from any", "[worker]\nbanana = 1\n", []string{"cluster.toml:2:1: worker.banana", "cluster.toml.example"}},
		{"unknown table", "[databse]\nurl = \"x\"\n", []string{"cluster.toml:1:1: databse: unknown key", `did you mean "database"?`}},
		{"config.rb key", minimalJob + "processing_function = \"x\"\n", []string{":5:1: jobs[0].processing_function", `"sql" or "command"`}},
		{"wrong type", minimalJob + "queue_size = \"five\"\n",
			[]string{"cluster.toml:5:1: jobs[0].queue_size: expected an integer, got string \"five\""}},
		{"wrong type in second job", minimalJob + minimalJob + "  max_job_duration_minutes = true\n",
			[]string{"cluster.toml:9:3: jobs[1].max_job_duration_minutes: expected a number, got boolean"}},
		{"bad duration", "[worker]\ngrace_period = \"30\"\n", []string{":2:1: worker.grace_period", `duration string such as "1s"`}},
		{"command not array", minimalJob + "command = \"./x\"\n", []string{":5:1: jobs[0].command", "array of strings"}},
		{"negative duration", "[dispatcher]\ndelay = \"-1s\"\n", []string{":2:1: dispatcher.delay", "must be positive"}},
		{"heartbeat timeout too short", "[dispatcher]\nheartbeat_timeout = \"5s\"\n",
			[]string{":2:1: dispatcher.heartbeat_timeout", "longer than worker.heartbeat_interval"}},
		{"bad flavor", "[database]\nflavor = \"mysql\"\n", []string{":2:1: database.flavor", `"crdb"`}},
		{"duplicate node", node + node, []string{":5:1: nodes[1].name", `"a" is already used by nodes[0] (line 1)`}},
		{"node name with dot", "[[nodes]]\nname = \"a.b\"\nnet_remote_ip = \"local\"\n", []string{":2:1: nodes[0].name", "no dots"}},
		{"node without name", "[[nodes]]\nnet_remote_ip = \"local\"\n", []string{":1:1: nodes[0]: name is required"}},
		{"node without host", "[[nodes]]\nname = \"a\"\n", []string{":1:1: nodes[0]: net_remote_ip is required", `"local"`}},
		{"ssh node without user", "[[nodes]]\nname = \"a\"\nnet_remote_ip = \"h\"\n", []string{":1:1: nodes[0]: ssh_username is required"}},
		{"bad transport", node + "transport = \"telnet\"\n", []string{":4:1: nodes[0].transport", `"local" or "ssh"`}},
		{"transport conflicts", "[[nodes]]\nname = \"a\"\nnet_remote_ip = \"h\"\ntransport = \"local\"\n", []string{":4:1: nodes[0].transport", "conflicts"}},
		{"both passwords", "[[nodes]]\nname = \"a\"\nnet_remote_ip = \"h\"\nssh_username = \"u\"\nssh_password = \"p\"\nssh_password_env = \"P\"\n",
			[]string{":6:1: nodes[0].ssh_password_env", "not both"}},
		{"bad port", "[[nodes]]\nname = \"a\"\nnet_remote_ip = \"h\"\nssh_username = \"u\"\nssh_port = 0\n", []string{":5:1: nodes[0].ssh_port", "1 to 65535"}},
		{"zero workers", node + "max_workers = 0\n", []string{":4:1: nodes[0].max_workers", "at least 1"}},
		{"negative workers", node + "max_workers = -2\n", []string{":4:1: nodes[0].max_workers", "at least 1"}},
		{"duplicate job", minimalJob + minimalJob, []string{":7:1: jobs[1].name", `"j" is already used by jobs[0] (line 2)`}},
		{"job without name", "[[jobs]]\ntable = \"t\"\n", []string{":1:1: jobs[0]: name is required"}},
		{"job without table", "[[jobs]]\nname = \"j\"\n", []string{":1:1: jobs[0]: table is required"}},
		{"bad regexp", minimalJob + "filter_worker_id = \"(\"\n", []string{":5:1: jobs[0].filter_worker_id", "missing closing )", "RE2"}},
		{"negative queue", minimalJob + "queue_size = -1\n", []string{":5:1: jobs[0].queue_size", "must be at least 1"}},
		{"explicit zero queue", minimalJob + "queue_size = 0\n", []string{":5:1: jobs[0].queue_size", "got 0", "leave it out for the default, 5"}},
		{"explicit zero tries", minimalJob + "max_try_times = 0\n", []string{":5:1: jobs[0].max_try_times", "got 0", "default, 3"}},
		{"explicit zero minutes", minimalJob + "max_job_duration_minutes = 0\n", []string{":5:1: jobs[0].max_job_duration_minutes", "got 0"}},
		{"per-key limit without key", minimalJob + "max_running_per_key = 2\n", []string{":5:1: jobs[0].max_running_per_key", "needs limit_key"}},
		{"key without limit", minimalJob + "limit_key = \"domain\"\n", []string{":5:1: jobs[0].limit_key", "limits nothing"}},
		{"limit on a sql job", minimalJob + "sql = \"select 1\"\nmax_running = 3\n", []string{":5:1: jobs[0].sql", "sql_sessions"}},
		{"limit with selecting_sql", minimalJob + "selecting_sql = \"select id from t limit $1\"\nmax_per_minute = 3\n",
			[]string{":5:1: jobs[0].selecting_sql", "write the limit into the snippet"}},
		{"negative max_running", minimalJob + "max_running = -3\n", []string{":5:1: jobs[0].max_running", "must not be negative"}},
		{"relay without listen", "[[relays]]\nname = \"eu\"\n", []string{":1:1: relays[0].listen", "host:port"}},
		{"node names no relay", node + "relay = \"nowhere\"\n", []string{":4:1: nodes[0].relay", `no [[relays]] section is named "nowhere"`}},
		{"relay and tunnel", "[[relays]]\nname = \"eu\"\nlisten = \"10.0.0.5:7545\"\n" + node + "relay = \"eu\"\ntunnel = true\n",
			[]string{"nodes[0].relay", "set one"}},
		{"negative max_ram", node + "max_ram = -1\n", []string{":4:1: nodes[0].max_ram", "MiB"}},
		{"two jobs, one table, one prefix", minimalJob + "\n[[jobs]]\nname = \"k\"\ntable = \"t\"\nfield_prefix = \"j\"\n",
			[]string{"jobs[1]", `job "k" shares column "j_reservation_id" of table t with job "j"`, "field_prefix"}},
		{"zero slots", minimalJob + "slots = 0\n", []string{":5:1: jobs[0].slots", "at least 1"}},
		{"negative assigned", minimalJob + "max_assigned_workers = -1\n", []string{":5:1: jobs[0].max_assigned_workers", "0 means no limit"}},
		{"negative minutes", minimalJob + "max_job_duration_minutes = -1.5\n", []string{":5:1: jobs[0].max_job_duration_minutes", "positive number"}},
		{"nan minutes", minimalJob + "max_job_duration_minutes = nan\n", []string{":5:1: jobs[0].max_job_duration_minutes"}},
		{"sql and command", minimalJob + "sql = \"select 1\"\ncommand = [\"x\"]\n", []string{":6:1: jobs[0].command", "not both"}},
		{"empty program", minimalJob + "command = [\"\"]\n", []string{":5:1: jobs[0].command", "program"}},
		{"bad identifier", minimalJob + "field_id = \"bad-name\"\n", []string{":2:1: jobs[0]: ", "field_id", `"bad-name"`}},
		{"negative retry delay", minimalJob + "retry_delay = \"-1s\"\n", []string{":5:1: jobs[0].retry_delay", "must not be negative"}},
		{"retry cap below delay", minimalJob + "retry_delay = \"1m\"\nretry_delay_max = \"10s\"\n",
			[]string{":6:1: jobs[0].retry_delay_max", "below retry_delay (1m0s)"}},
		{"bad repeat", minimalJob + "repeat_every = \"often\"\n", []string{":5:1: jobs[0].repeat_every", "duration"}},
		{"fatal exit code 0", minimalJob + "command = [\"x\"]\nfatal_exit_codes = [0, 3]\n",
			[]string{":6:1: jobs[0].fatal_exit_codes", "0 is not an exit code", "1 to 255"}},
		{"fatal exit codes without command", minimalJob + "fatal_exit_codes = [3]\n",
			[]string{":5:1: jobs[0].fatal_exit_codes", "worker.Permanent"}},
		{"two keys, one column", minimalJob + "field_error_description = \"j_success\"\n",
			[]string{":2:1: jobs[0]: ", "field_success and field_error_description both name column \"j_success\""}},
		{"bookkeeping column is the key", minimalJob + "field_run_at = \"id\"\n",
			[]string{"field_primary_key and field_run_at both name column \"id\""}},
		{"bad job name", "[[jobs]]\nname = \"odd numbers\"\ntable = \"t\"\n", []string{":1:1: jobs[0]: job name", "letters"}},
		{"multi-line string does not confuse lines", minimalJob + "sql = \"\"\"\nqueue_size = 1\n\"\"\"\nqueue_size = -1\n",
			[]string{":8:1: jobs[0].queue_size"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := Parse("cluster.toml", []byte(tc.toml))
			if !errors.Is(err, ErrConfig) {
				t.Fatalf("err = %v, want one wrapping ErrConfig", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q\ndoes not contain %q", err, w)
				}
			}
		})
	}
}

// A filter_worker_id that matches no configured worker loads, with a
// warning naming its line.
func TestFilterMatchingNoWorkerWarns(t *testing.T) {
	t.Parallel()
	c := parse(t, "[[nodes]]\nname = \"a\"\nnet_remote_ip = \"local\"\nmax_workers = 2\n"+minimalJob+"filter_worker_id = '^b\\.'\n")
	if len(c.Warnings) != 1 || !strings.Contains(c.Warnings[0], ":9:1: jobs[0].filter_worker_id") ||
		!strings.Contains(c.Warnings[0], "matches none of the configured workers") {
		t.Fatalf("warnings %q; want one naming line 9's filter_worker_id", c.Warnings)
	}
	c = parse(t, "[[nodes]]\nname = \"a\"\nnet_remote_ip = \"local\"\nmax_workers = 2\n"+minimalJob+"filter_worker_id = '\\.2$'\n")
	if len(c.Warnings) != 0 {
		t.Fatalf("warnings %q for a filter that matches a.2", c.Warnings)
	}
}

// A node behind a relay dials the relay; the relay dials the dispatcher's
// addresses unless told otherwise.
func TestRelayRouting(t *testing.T) {
	t.Parallel()
	c := parse(t, `[dispatcher]
addresses = ["10.0.0.1:7543"]
[[relays]]
name = "eu"
listen = "0.0.0.0:7545"
address = "10.1.0.5:7545"
[[nodes]]
name = "a"
net_remote_ip = "local"
relay = "eu"
[[nodes]]
name = "b"
net_remote_ip = "local"
`)
	a, _ := c.Node("a")
	b, _ := c.Node("b")
	r, _ := c.Relay("eu")
	if got := c.WorkerDispatchers(a); !slices.Equal(got, []string{"10.1.0.5:7545"}) {
		t.Errorf("node a dials %v; want its relay", got)
	}
	if got := c.WorkerDispatchers(b); !slices.Equal(got, []string{"10.0.0.1:7543"}) {
		t.Errorf("node b dials %v; want the dispatcher", got)
	}
	if !slices.Equal(r.Dispatchers, []string{"10.0.0.1:7543"}) {
		t.Errorf("the relay dials %v; want [dispatcher] addresses", r.Dispatchers)
	}
}

// Every unknown key is reported, in every job, not just the first.
func TestUnknownKeysAll(t *testing.T) {
	t.Parallel()
	text := minimalJob + "tabel = 1\n" + "[[jobs]]\nname = \"k\"\ntable = \"t\"\ntabel = 2\nqueue_sise = 3\n"
	_, err := Parse("cluster.toml", []byte(text))
	msg := err.Error()
	for _, w := range []string{
		`cluster.toml:5:1: jobs[0].tabel: unknown key; did you mean "table"?`,
		`cluster.toml:9:1: jobs[1].tabel: unknown key`,
		`cluster.toml:10:1: jobs[1].queue_sise: unknown key; did you mean "queue_size"?`,
	} {
		if !strings.Contains(msg, w) {
			t.Errorf("error %q\ndoes not contain %q", msg, w)
		}
	}
}

func TestLoadMissingFile(t *testing.T) {
	t.Parallel()
	_, err := Load(filepath.Join(t.TempDir(), "cluster.toml"))
	if !errors.Is(err, ErrConfig) || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("err = %v, want ErrConfig and ErrNotExist", err)
	}
}
