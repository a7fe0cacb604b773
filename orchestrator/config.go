// Package orchestrator holds the cluster model read from cluster.toml (nodes,
// jobs, database, dispatcher and worker settings) and the operations that
// span nodes.
//
// Config contract: Load and Parse return a fully validated *Config with every
// default applied, or an error that wraps ErrConfig and names the file, the
// line, the key path and what to change. Nothing is read from the
// environment except the home directory for "~" in local paths;
// DatabaseURL takes getenv explicitly.
package orchestrator

import (
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/pampa-go/pampa/internal/homedir"

	"github.com/BurntSushi/toml"

	"github.com/pampa-go/pampa/dispatcher"
	"github.com/pampa-go/pampa/worker"
)

// ErrConfig is wrapped by every error about the configuration, so that cmd/
// can map them all to exit code 2.
var ErrConfig = errors.New("invalid configuration")

// Database flavors.
const (
	FlavorPostgres  = "postgres" // LISTEN/NOTIFY wakes the dispatcher early
	FlavorCockroach = "crdb"     // CockroachDB: no LISTEN/NOTIFY, polling only
)

// Defaults of settings outside jobs (job defaults live in dispatcher.Job.WithDefaults).
const (
	DefaultDatabaseURLEnv    = "PAMPA_DATABASE_URL"
	DefaultDispatcherDelay   = time.Second
	DefaultDispatcherLog     = "dispatcher.log"
	DefaultHeartbeatTimeout  = 30 * time.Second
	DefaultWorkerDelay       = time.Second
	DefaultWorkerLog         = "worker.{id}.log" // {id} is replaced by the worker id
	DefaultHeartbeatInterval = 5 * time.Second
	DefaultGracePeriod       = 30 * time.Second
	DefaultSSHPort           = 22
	DefaultMaxWorkers        = 1
	DefaultRemoteWorkDir     = "pampa"              // relative to the SSH user's home
	DefaultKnownHostsFile    = "~/.ssh/known_hosts" // on the control host
	DefaultTunnelPort        = 17543                // tunnel_port: where a node's tunnel to the dispatcher listens
	DefaultListen            = "127.0.0.1:7543"     // [dispatcher] listen: the worker protocol
	DefaultSecretFile        = "pampa.secret"       // beside the config file
	DefaultSecretEnv         = "PAMPA_WORKER_SECRET"
	DefaultSQLSessions       = 2
)

const (
	localHost         = "local"                    // net_remote_ip of a local node
	nodeNamePattern   = `^[A-Za-z0-9_-]+$`         // no dots: worker ids are node.N
	configExampleHint = "see cluster.toml.example" // where every key is documented
)

// Config is a parsed and validated cluster.toml.
type Config struct {
	Path       string // the file, as given to Load or Parse
	Database   Database
	Dispatcher DispatcherSettings
	Worker     WorkerSettings
	Nodes      []Node
	Relays     []Relay
	Console    ConsoleSettings
	Jobs       []dispatcher.Job // validated, with defaults applied
	// Warnings are settings that load but are likely mistakes, each
	// "file:line:col: key: what".
	Warnings []string
}

// Database says where the task tables live.
type Database struct {
	URL    string // url; may be empty when URLEnv is exported
	URLEnv string // url_env: environment variable that overrides URL when set
	Flavor string // FlavorPostgres or FlavorCockroach
}

// DispatcherSettings configure the single dispatcher process.
type DispatcherSettings struct {
	Delay            time.Duration // idle poll period
	LogFile          string        // "" means no log file
	HeartbeatTimeout time.Duration // a worker silent this long is dead
	StartSQL         string        // run once after connecting
	StartCommand     []string      // argv run once after connecting
	Listen           string        // host:port of the worker protocol
	// Addresses are where workers dial the dispatchers (the leader and its
	// standbys); default Listen. Nodes with a tunnel dial their tunnel.
	Addresses   []string
	SecretFile  string // the worker secret, mode 0600; absolute
	SecretEnv   string // environment variable that holds the secret instead
	SQLSessions int    // sessions that run sql steps
	TLSCertFile string // serve the worker protocol over TLS
	TLSKeyFile  string
	Logs        LogCap // bounds LogFile
}

// LogCap bounds a log file: past MaxMB it is copied to .1 (older copies
// shift up to .Keep) and truncated. MaxMB 0 keeps everything.
type LogCap struct {
	MaxMB int
	Keep  int
}

// Defaults of log_max_mb and log_keep.
const (
	DefaultLogMaxMB = 64
	DefaultLogKeep  = 3
)

// WorkerSettings configure every worker process.
type WorkerSettings struct {
	Delay             time.Duration // idle poll period
	LogFile           string        // "" means no log file; {id} is replaced by the worker id
	HeartbeatInterval time.Duration
	GracePeriod       time.Duration // on SIGTERM, how long the running task may finish
	StartCommand      []string
	// Dispatchers and Secret are set in the config nodes deploy writes for
	// a node: where its workers reach the dispatcher, and how they prove
	// they belong to the cluster.
	Dispatchers []string
	Secret      string
	CAFile      string // the CA that signed the dispatcher's TLS certificate (control host)
	CAPEM       string // the same, inline (in a node's config)
	TLS         bool   // dial the dispatcher over TLS (in a node's config; set by a CA too)
	Logs        LogCap // bounds each worker's log
}

// Node is a computer that runs workers: the control host itself (Local) or
// an SSH host.
type Node struct {
	Name           string
	Host           string // net_remote_ip; "" for a local node
	Local          bool   // workers are child processes of the control host, no SSH
	Port           int
	User           string
	Password       string
	PasswordEnv    string // environment variable holding the SSH password
	PrivateKeyFile string // "~" expanded on the control host
	KnownHostsFile string // "~" expanded on the control host
	// WorkDir is where workers run and log. Local nodes: an absolute path,
	// default the config file's directory. SSH nodes: relative paths are
	// relative to the SSH user's home ("~/x" is stored as "x").
	WorkDir    string
	MaxWorkers int
	// Tunnel: the node reaches the dispatcher through an SSH reverse tunnel
	// that `pampactl up` and `dispatcher run` keep from 127.0.0.1:TunnelPort
	// on the node to the dispatcher's listener.
	Tunnel     bool
	TunnelPort int // default DefaultTunnelPort when Tunnel is set
	// DispatcherAddress is where the node's workers dial the dispatcher
	// directly (no tunnel); default [dispatcher] addresses.
	DispatcherAddress string
	// Relay names the relay the node's workers go through.
	Relay string
	// Limits bound each command step of the node's workers: max_ram
	// (MiB), max_cpu (% of one CPU), max_disk_io and max_net_io (MB/s).
	Limits worker.Limits
}

// ConsoleSettings is the [console] section: the web console that
// pampactl console, dispatcher run and up serve.
type ConsoleSettings struct {
	Listen   string // "" turns it off in dispatcher run and up
	ReadOnly bool
	BasePath string // where a reverse proxy mounts it
	// AuthEnv names the variable holding "user:password" for basic auth;
	// without it a console off loopback prints a token to use.
	AuthEnv string
}

// DefaultConsoleListen is where the console listens unless told otherwise.
const DefaultConsoleListen = "127.0.0.1:7544"

// Relay is a [[relays]] section: a `pampactl relay run --name NAME`
// process on a host near a group of nodes, which carries their workers'
// streams to the dispatcher over one connection.
type Relay struct {
	Name   string
	Listen string // where it serves the workers
	// Address is where the nodes dial it; default Listen.
	Address string
	// Dispatchers are where it dials the dispatcher; default [dispatcher]
	// addresses.
	Dispatchers []string
}

// Relay returns the relay with the given name.
func (c *Config) Relay(name string) (Relay, bool) {
	for _, r := range c.Relays {
		if r.Name == name {
			return r, true
		}
	}
	return Relay{}, false
}

// WorkerIDs returns the ids of the node's workers: "name.1" .. "name.N".
func (n Node) WorkerIDs() []string {
	ids := make([]string, n.MaxWorkers)
	for i := range ids {
		ids[i] = n.Name + "." + strconv.Itoa(i+1)
	}
	return ids
}

// Node returns the node with the given name.
func (c *Config) Node(name string) (Node, bool) {
	for _, n := range c.Nodes {
		if n.Name == name {
			return n, true
		}
	}
	return Node{}, false
}

// Job returns the job with the given name.
func (c *Config) Job(name string) (dispatcher.Job, bool) {
	for _, j := range c.Jobs {
		if j.Name == name {
			return j, true
		}
	}
	return dispatcher.Job{}, false
}

// DatabaseURL returns the connection URL: the url_env variable when set,
// else the url key. Secrets can thus stay out of the file.
func (c *Config) DatabaseURL(getenv func(string) string) (string, error) {
	if env := c.Database.URLEnv; env != "" {
		if u := getenv(env); u != "" {
			return u, nil
		}
	}
	if c.Database.URL != "" {
		return c.Database.URL, nil
	}
	hint := "set url in [database]"
	if c.Database.URLEnv != "" {
		hint = fmt.Sprintf("export %s or %s", c.Database.URLEnv, hint)
	}
	return "", &ConfigError{File: c.Path, Key: "database.url", Msg: "no database URL; " + hint}
}

// ConfigError is one problem in a configuration file. Several are joined
// with errors.Join, one per line.
type ConfigError struct {
	File string
	Line int    // 1-based; 0 when unknown
	Col  int    // 1-based; 0 when unknown
	Key  string // key path such as "jobs[1].queue_size"; "" for syntax errors
	Msg  string // what is wrong and what to do
}

func (e *ConfigError) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
		if e.Col > 0 {
			fmt.Fprintf(&b, ":%d", e.Col)
		}
	}
	b.WriteString(": ")
	if e.Key != "" {
		b.WriteString(e.Key + ": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Is makes errors.Is(err, ErrConfig) true.
func (e *ConfigError) Is(target error) bool { return target == ErrConfig }

// ConfigPath is the cluster file a command reads: flag (--config) when
// set, else $PAMPA_CONFIG, else ./cluster.toml.
func ConfigPath(flag string, getenv func(string) string) string {
	if flag != "" {
		return flag
	}
	if p := getenv("PAMPA_CONFIG"); p != "" {
		return p
	}
	return "cluster.toml"
}

// Load reads and parses the file at path.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w: %w", ErrConfig, err)
	}
	return Parse(path, data)
}

// Parse parses cluster.toml data; path is used in messages and to resolve
// the work directory of local nodes.
func Parse(path string, data []byte) (*Config, error) {
	text := string(data)
	f := newFile(path, text)

	// Three passes, each with precise messages: syntax (toml), value types
	// per key path (checkTypes, since toml's own type errors name neither the
	// [[jobs]] index nor its line), then strict decoding into the schema.
	var tree map[string]any
	if _, err := toml.Decode(text, &tree); err != nil {
		return nil, f.decodeError(err)
	}
	if errs := f.checkTypes(rawConfigType, tree, ""); len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	raw := rawConfig{
		Database: rawDatabase{URLEnv: DefaultDatabaseURLEnv, Flavor: FlavorPostgres},
		Dispatcher: rawDispatcher{
			Delay: duration(DefaultDispatcherDelay), LogFile: DefaultDispatcherLog,
			HeartbeatTimeout: duration(DefaultHeartbeatTimeout),
			Listen:           DefaultListen, SecretFile: DefaultSecretFile, SecretEnv: DefaultSecretEnv,
			SQLSessions: DefaultSQLSessions,
		},
		Worker: rawWorker{
			Delay: duration(DefaultWorkerDelay), LogFile: DefaultWorkerLog,
			HeartbeatInterval: duration(DefaultHeartbeatInterval), GracePeriod: duration(DefaultGracePeriod),
		},
	}
	md, err := toml.Decode(text, &raw)
	if err != nil {
		return nil, f.decodeError(err)
	}
	if errs := f.unknownKeys(md.Undecoded()); len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return f.build(raw)
}

// rawConfig is the file's schema; the toml tags are the key names, the
// source of truth for type checks and "did you mean" suggestions.
type rawConfig struct {
	Database   rawDatabase   `toml:"database"`
	Dispatcher rawDispatcher `toml:"dispatcher"`
	Worker     rawWorker     `toml:"worker"`
	Nodes      []rawNode     `toml:"nodes"`
	Relays     []rawRelay    `toml:"relays"`
	Console    rawConsole    `toml:"console"`
	Jobs       []rawJob      `toml:"jobs"`
}

type rawConsole struct {
	Listen   *string `toml:"listen"`
	ReadOnly bool    `toml:"read_only"`
	BasePath string  `toml:"base_path"`
	AuthEnv  *string `toml:"auth_env"`
}

type rawRelay struct {
	Name        string   `toml:"name"`
	Listen      string   `toml:"listen"`
	Address     string   `toml:"address"`
	Dispatchers []string `toml:"dispatchers"`
}

type rawDatabase struct {
	URL    string `toml:"url"`
	URLEnv string `toml:"url_env"`
	Flavor string `toml:"flavor"`
}

type rawDispatcher struct {
	Delay            duration `toml:"delay"`
	LogFile          string   `toml:"log_file"`
	HeartbeatTimeout duration `toml:"heartbeat_timeout"`
	StartSQL         string   `toml:"start_sql"`
	StartCommand     []string `toml:"start_command"`
	Listen           string   `toml:"listen"`
	Addresses        []string `toml:"addresses"`
	SecretFile       string   `toml:"secret_file"`
	SecretEnv        string   `toml:"secret_env"`
	SQLSessions      int      `toml:"sql_sessions"`
	TLSCertFile      string   `toml:"tls_cert_file"`
	TLSKeyFile       string   `toml:"tls_key_file"`
	LogMaxMB         *int     `toml:"log_max_mb"`
	LogKeep          *int     `toml:"log_keep"`
}

type rawWorker struct {
	Delay             duration `toml:"delay"`
	LogFile           string   `toml:"log_file"`
	HeartbeatInterval duration `toml:"heartbeat_interval"`
	GracePeriod       duration `toml:"grace_period"`
	StartSQL          string   `toml:"start_sql"`
	StartCommand      []string `toml:"start_command"`
	Dispatchers       []string `toml:"dispatchers"`
	Secret            string   `toml:"secret"`
	CAFile            string   `toml:"ca_file"`
	CAPEM             string   `toml:"ca_pem"`
	TLS               bool     `toml:"tls"`
	LogMaxMB          *int     `toml:"log_max_mb"`
	LogKeep           *int     `toml:"log_keep"`
}

type rawNode struct {
	Name              string `toml:"name"`
	NetRemoteIP       string `toml:"net_remote_ip"`
	Transport         string `toml:"transport"`
	SSHUsername       string `toml:"ssh_username"`
	SSHPort           *int   `toml:"ssh_port"` // pointers tell "unset" from an explicit 0
	SSHPassword       string `toml:"ssh_password"`
	SSHPasswordEnv    string `toml:"ssh_password_env"`
	SSHPrivateKeyFile string `toml:"ssh_private_key_file"`
	KnownHostsFile    string `toml:"known_hosts_file"`
	WorkDir           string `toml:"work_dir"`
	MaxWorkers        *int   `toml:"max_workers"`
	Tunnel            bool   `toml:"tunnel"`
	TunnelPort        *int   `toml:"tunnel_port"`
	DispatcherAddress string `toml:"dispatcher_address"`
	Relay             string `toml:"relay"`
	MaxRAM            int    `toml:"max_ram"`
	MaxCPU            int    `toml:"max_cpu"`
	MaxDiskIO         int    `toml:"max_disk_io"`
	MaxNetIO          int    `toml:"max_net_io"`
}

type rawJob struct {
	Name                  string    `toml:"name"`
	FilterWorkerID        string    `toml:"filter_worker_id"`
	MaxAssignedWorkers    int       `toml:"max_assigned_workers"`
	MaxPendingTasks       *int      `toml:"max_pending_tasks"`
	QueueSize             *int      `toml:"queue_size"`
	MaxJobDurationMinutes *float64  `toml:"max_job_duration_minutes"`
	MaxTryTimes           *int      `toml:"max_try_times"`
	Table                 string    `toml:"table"`
	FieldPrefix           string    `toml:"field_prefix"`
	FieldPrimaryKey       string    `toml:"field_primary_key"`
	FieldID               string    `toml:"field_id"`
	FieldTime             string    `toml:"field_time"`
	FieldTimes            string    `toml:"field_times"`
	FieldStartTime        string    `toml:"field_start_time"`
	FieldEndTime          string    `toml:"field_end_time"`
	FieldSuccess          string    `toml:"field_success"`
	FieldErrorDescription string    `toml:"field_error_description"`
	FieldFinal            string    `toml:"field_final"`
	FieldRunAt            string    `toml:"field_run_at"`
	RetryDelay            *duration `toml:"retry_delay"`
	RetryDelayMax         *duration `toml:"retry_delay_max"`
	RepeatEvery           duration  `toml:"repeat_every"`
	FatalExitCodes        []int     `toml:"fatal_exit_codes"`
	Slots                 *int      `toml:"slots"`
	MaxRunning            int       `toml:"max_running"`
	LimitKey              string    `toml:"limit_key"`
	MaxRunningPerKey      int       `toml:"max_running_per_key"`
	MaxPerMinute          int       `toml:"max_per_minute"`
	SQL                   string    `toml:"sql"`
	Command               []string  `toml:"command"`
	SelectingSQL          string    `toml:"selecting_sql"`
	RelaunchingSQL        string    `toml:"relaunching_sql"`
	TotalSQL              string    `toml:"total_sql"`
	CompletedSQL          string    `toml:"completed_sql"`
	PendingSQL            string    `toml:"pending_sql"`
	FailedSQL             string    `toml:"failed_sql"`
	ResultSQL             string    `toml:"result_sql"`
	AllowingSQL           string    `toml:"allowing_sql"`
	QueueSlotsSQL         string    `toml:"queue_slots_sql"`
	OccupiedSQL           string    `toml:"occupied_sql"`
}

// duration is a TOML string parsed with time.ParseDuration ("1s", "500ms").
type duration time.Duration

func (d *duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	*d = duration(v)
	return nil
}

var nodeNameRE = regexp.MustCompile(nodeNamePattern)

// build turns the decoded file into a Config, reporting every semantic
// problem rather than the first.
func (f *file) build(raw rawConfig) (*Config, error) {
	var errs []error
	bad := func(key, format string, args ...any) { errs = append(errs, f.errorf(key, format, args...)) }

	c := &Config{
		Path:     f.path,
		Database: Database{URL: raw.Database.URL, URLEnv: raw.Database.URLEnv, Flavor: raw.Database.Flavor},
		Dispatcher: DispatcherSettings{
			Delay: time.Duration(raw.Dispatcher.Delay), LogFile: raw.Dispatcher.LogFile,
			HeartbeatTimeout: time.Duration(raw.Dispatcher.HeartbeatTimeout),
			StartSQL:         raw.Dispatcher.StartSQL, StartCommand: raw.Dispatcher.StartCommand,
			Listen: raw.Dispatcher.Listen, Addresses: raw.Dispatcher.Addresses,
			SecretEnv: raw.Dispatcher.SecretEnv, SQLSessions: raw.Dispatcher.SQLSessions,
		},
		Worker: WorkerSettings{
			Delay: time.Duration(raw.Worker.Delay), LogFile: raw.Worker.LogFile,
			HeartbeatInterval: time.Duration(raw.Worker.HeartbeatInterval),
			GracePeriod:       time.Duration(raw.Worker.GracePeriod),
			StartCommand:      raw.Worker.StartCommand,
			Dispatchers:       raw.Worker.Dispatchers, Secret: raw.Worker.Secret, CAPEM: raw.Worker.CAPEM, TLS: raw.Worker.TLS,
		},
	}
	dir := filepath.Dir(f.path)
	// Paths in the config are relative to the config's directory, wherever
	// the command runs.
	inDir := func(key, p string) string {
		if p == "" {
			return ""
		}
		out, err := homedir.Expand(p)
		if err != nil {
			bad(key, "%s: use an absolute path", err.Error())
		}
		if !filepath.IsAbs(out) {
			out = filepath.Join(dir, out)
		}
		return out
	}
	c.Dispatcher.SecretFile = inDir("dispatcher.secret_file", raw.Dispatcher.SecretFile)
	c.Dispatcher.LogFile = inDir("dispatcher.log_file", c.Dispatcher.LogFile)
	logCap := func(section string, maxMB, keep *int) LogCap {
		l := LogCap{MaxMB: DefaultLogMaxMB, Keep: DefaultLogKeep}
		if maxMB != nil {
			if l.MaxMB = *maxMB; l.MaxMB < 0 {
				bad(section+".log_max_mb", "got %d; give MiB, or 0 to keep the whole log", l.MaxMB)
			}
		}
		if keep != nil {
			if l.Keep = *keep; l.Keep < 1 {
				bad(section+".log_keep", "got %d; keep at least 1 rotated copy", l.Keep)
			}
		}
		return l
	}
	c.Dispatcher.Logs = logCap("dispatcher", raw.Dispatcher.LogMaxMB, raw.Dispatcher.LogKeep)
	c.Worker.Logs = logCap("worker", raw.Worker.LogMaxMB, raw.Worker.LogKeep)
	c.Dispatcher.TLSCertFile = inDir("dispatcher.tls_cert_file", raw.Dispatcher.TLSCertFile)
	c.Dispatcher.TLSKeyFile = inDir("dispatcher.tls_key_file", raw.Dispatcher.TLSKeyFile)
	c.Worker.CAFile = inDir("worker.ca_file", raw.Worker.CAFile)
	if raw.Worker.StartSQL != "" {
		bad("worker.start_sql", "workers hold no database session any more; use [dispatcher] start_sql, or start_command")
	}
	if _, _, err := net.SplitHostPort(c.Dispatcher.Listen); err != nil {
		bad("dispatcher.listen", "got %q; use host:port, such as %q", c.Dispatcher.Listen, DefaultListen)
	}
	for i, a := range c.Dispatcher.Addresses {
		if _, _, err := net.SplitHostPort(a); err != nil {
			bad(fmt.Sprintf("dispatcher.addresses[%d]", i), "got %q; use host:port", a)
		}
	}
	if len(c.Dispatcher.Addresses) == 0 {
		c.Dispatcher.Addresses = []string{c.Dispatcher.Listen}
	}
	if c.Dispatcher.SQLSessions < 1 {
		bad("dispatcher.sql_sessions", "got %d; must be at least 1 (default %d)", c.Dispatcher.SQLSessions, DefaultSQLSessions)
	}
	if (c.Dispatcher.TLSCertFile == "") != (c.Dispatcher.TLSKeyFile == "") {
		bad("dispatcher.tls_cert_file", "set both tls_cert_file and tls_key_file, or neither")
	}

	if fl := c.Database.Flavor; fl != FlavorPostgres && fl != FlavorCockroach {
		bad("database.flavor", "got %q; use %q or %q (CockroachDB)", fl, FlavorPostgres, FlavorCockroach)
	}
	for _, d := range []struct {
		key     string
		v       time.Duration
		canZero bool
	}{
		{"dispatcher.delay", c.Dispatcher.Delay, false},
		{"dispatcher.heartbeat_timeout", c.Dispatcher.HeartbeatTimeout, false},
		{"worker.delay", c.Worker.Delay, false},
		{"worker.heartbeat_interval", c.Worker.HeartbeatInterval, false},
		{"worker.grace_period", c.Worker.GracePeriod, true},
	} {
		if d.v < 0 || (d.v == 0 && !d.canZero) {
			bad(d.key, "got %s; must be positive, such as \"1s\"", d.v)
		}
	}
	if c.Dispatcher.HeartbeatTimeout <= c.Worker.HeartbeatInterval {
		// Otherwise live workers are declared dead between two heartbeats.
		bad("dispatcher.heartbeat_timeout", "%s must be longer than worker.heartbeat_interval (%s)",
			c.Dispatcher.HeartbeatTimeout, c.Worker.HeartbeatInterval)
	}
	errs = append(errs, f.checkArgv("dispatcher.start_command", c.Dispatcher.StartCommand)...)
	errs = append(errs, f.checkArgv("worker.start_command", c.Worker.StartCommand)...)

	nodeAt := map[string]string{}
	for i, rn := range raw.Nodes {
		key := fmt.Sprintf("nodes[%d]", i)
		n, nerrs := f.node(key, rn)
		errs = append(errs, nerrs...)
		if prev, dup := nodeAt[n.Name]; dup && n.Name != "" {
			bad(key+".name", "node name %q is already used by %s; node names must be unique", n.Name, f.where(prev))
		} else {
			nodeAt[n.Name] = key
		}
		c.Nodes = append(c.Nodes, n)
	}

	c.Console = ConsoleSettings{Listen: DefaultConsoleListen, ReadOnly: raw.Console.ReadOnly, BasePath: raw.Console.BasePath, AuthEnv: "PAMPA_CONSOLE_AUTH"}
	if raw.Console.Listen != nil {
		c.Console.Listen = *raw.Console.Listen
	}
	if raw.Console.AuthEnv != nil {
		c.Console.AuthEnv = *raw.Console.AuthEnv
	}
	if l := c.Console.Listen; l != "" {
		if _, _, err := net.SplitHostPort(l); err != nil {
			bad("console.listen", "got %q; use host:port, or \"\" for no console", l)
		}
	}
	if b := c.Console.BasePath; b != "" && (!strings.HasPrefix(b, "/") || strings.HasSuffix(b, "/")) {
		bad("console.base_path", "got %q; use a path such as \"/pampa\" (a leading slash, no trailing one)", b)
	}
	relayAt := map[string]string{}
	for i, rr := range raw.Relays {
		key := fmt.Sprintf("relays[%d]", i)
		r := Relay{Name: rr.Name, Listen: rr.Listen, Address: rr.Address, Dispatchers: rr.Dispatchers}
		switch {
		case r.Name == "":
			bad(key, `name is required, such as name = "eu-west"`)
		case !nodeNameRE.MatchString(r.Name):
			bad(key+".name", "got %q; use letters, digits, _ and -", r.Name)
		}
		if prev, dup := relayAt[r.Name]; dup && r.Name != "" {
			bad(key+".name", "relay name %q is already used by %s", r.Name, f.where(prev))
		} else {
			relayAt[r.Name] = key
		}
		if _, _, err := net.SplitHostPort(r.Listen); err != nil {
			bad(key+".listen", "got %q; use host:port where the relay serves its nodes' workers, such as \"10.0.0.5:7545\"", r.Listen)
		}
		if r.Address == "" {
			r.Address = r.Listen
		} else if _, _, err := net.SplitHostPort(r.Address); err != nil {
			bad(key+".address", "got %q; use host:port, where the nodes dial the relay", r.Address)
		}
		for _, a := range r.Dispatchers {
			if _, _, err := net.SplitHostPort(a); err != nil {
				bad(key+".dispatchers", "got %q; use host:port", a)
			}
		}
		if len(r.Dispatchers) == 0 {
			r.Dispatchers = c.Dispatcher.Addresses
		}
		c.Relays = append(c.Relays, r)
	}
	for i, n := range c.Nodes {
		if n.Relay == "" {
			continue
		}
		key := fmt.Sprintf("nodes[%d].relay", i)
		switch {
		case relayAt[n.Relay] == "":
			bad(key, "no [[relays]] section is named %q", n.Relay)
		case n.Tunnel || n.DispatcherAddress != "":
			bad(key, "a node's workers go through a relay, a tunnel or dispatcher_address: set one")
		}
	}

	jobAt := map[string]string{}
	for i, rj := range raw.Jobs {
		key := fmt.Sprintf("jobs[%d]", i)
		j, jerrs := f.job(key, rj)
		errs = append(errs, jerrs...)
		if prev, dup := jobAt[j.Name]; dup && j.Name != "" {
			bad(key+".name", "job name %q is already used by %s; job names must be unique", j.Name, f.where(prev))
		} else {
			jobAt[j.Name] = key
		}
		for pi, prev := range c.Jobs {
			if prev.Table != j.Table || j.Name == "" {
				continue
			}
			for _, col := range bookkeeping(j) {
				if slices.Contains(bookkeeping(prev), col) {
					bad(key, "job %q shares column %q of table %s with job %q (jobs[%d]); give each job its own field_prefix",
						j.Name, col, j.Table, prev.Name, pi)
					break
				}
			}
		}
		c.Jobs = append(c.Jobs, j)
		if j.FilterWorkerID != nil && j.Step.SQL == "" && len(c.Nodes) > 0 && !c.anyWorkerMatches(j) {
			c.Warnings = append(c.Warnings, f.errorf(key+".filter_worker_id",
				"%q matches none of the configured workers (such as %s); the job will get none", rj.FilterWorkerID,
				c.Nodes[0].Name+".1").Error())
		}
	}

	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return c, nil
}

// bookkeeping lists a job's own columns (not the primary key, which jobs
// of one table share).
func bookkeeping(j dispatcher.Job) []string {
	f := j.Fields
	return []string{f.ID, f.Time, f.Times, f.StartTime, f.EndTime, f.Success, f.ErrorDescription, f.Final}
}

func (c *Config) anyWorkerMatches(j dispatcher.Job) bool {
	for _, n := range c.Nodes {
		for _, id := range n.WorkerIDs() {
			if j.WorkerMatches(id) {
				return true
			}
		}
	}
	return false
}

func (f *file) node(key string, rn rawNode) (Node, []error) {
	var errs []error
	bad := func(k, format string, args ...any) { errs = append(errs, f.errorf(key+k, format, args...)) }
	for _, l := range []struct {
		key, unit string
		v         int
	}{{".max_ram", "MiB", rn.MaxRAM}, {".max_cpu", "% of one CPU", rn.MaxCPU}, {".max_disk_io", "MB/s", rn.MaxDiskIO}, {".max_net_io", "MB/s", rn.MaxNetIO}} {
		if l.v < 0 {
			bad(l.key, "got %d; give a number of %s, or 0 for no limit", l.v, l.unit)
		}
	}
	n := Node{
		Name: rn.Name, Host: rn.NetRemoteIP, Port: DefaultSSHPort, MaxWorkers: DefaultMaxWorkers,
		User: rn.SSHUsername, Password: rn.SSHPassword, PasswordEnv: rn.SSHPasswordEnv,
		PrivateKeyFile: rn.SSHPrivateKeyFile, KnownHostsFile: rn.KnownHostsFile, WorkDir: rn.WorkDir,
		Tunnel: rn.Tunnel, DispatcherAddress: rn.DispatcherAddress, Relay: rn.Relay,
		Limits: worker.Limits{RAMMiB: rn.MaxRAM, CPUPercent: rn.MaxCPU, DiskMBps: rn.MaxDiskIO, NetMBps: rn.MaxNetIO},
	}
	if n.Tunnel {
		n.TunnelPort = DefaultTunnelPort
	}
	if rn.TunnelPort != nil {
		n.TunnelPort = *rn.TunnelPort
	}
	switch {
	case rn.Name == "":
		bad("", `name is required, such as name = "w1"`)
	case !nodeNameRE.MatchString(rn.Name):
		bad(".name", "%q: use letters, digits, '_' and '-' only (no dots: worker ids are <node>.<n>)", rn.Name)
	}
	if rn.SSHPort != nil {
		n.Port = *rn.SSHPort
	}
	if rn.MaxWorkers != nil {
		n.MaxWorkers = *rn.MaxWorkers
	}
	if n.MaxWorkers < 1 {
		bad(".max_workers", "got %d; must be at least 1 (remove the node to run no workers on it)", n.MaxWorkers)
	}

	switch rn.Transport {
	case "":
		n.Local = rn.NetRemoteIP == localHost
		if rn.NetRemoteIP == "" {
			bad("", `net_remote_ip is required: the SSH host, or "local" for the control host itself`)
		}
	case "local":
		n.Local = true
		if rn.NetRemoteIP != "" && rn.NetRemoteIP != localHost {
			bad(".transport", `"local" conflicts with net_remote_ip = %q; remove one of them`, rn.NetRemoteIP)
		}
	case "ssh":
		if rn.NetRemoteIP == "" || rn.NetRemoteIP == localHost {
			bad(".net_remote_ip", `transport "ssh" needs the SSH host here, such as "10.0.0.7"`)
		}
	default:
		bad(".transport", `got %q; use "local" or "ssh"`, rn.Transport)
	}

	home := func(k, p string) string {
		out, err := homedir.Expand(p)
		if err != nil {
			bad(k, "%s: use an absolute path", err.Error())
		}
		return out
	}
	if n.Tunnel && (n.TunnelPort < 1 || n.TunnelPort > 65535) {
		bad(".tunnel_port", "got %d; use a TCP port from 1 to 65535 (default %d)", n.TunnelPort, DefaultTunnelPort)
	}
	if n.Local && n.Tunnel {
		bad(".tunnel", "a local node reaches the dispatcher directly; remove tunnel")
	}
	if n.DispatcherAddress != "" {
		if _, _, err := net.SplitHostPort(n.DispatcherAddress); err != nil {
			bad(".dispatcher_address", "got %q; use host:port", n.DispatcherAddress)
		}
		if n.Tunnel {
			bad(".dispatcher_address", "set either tunnel or dispatcher_address, not both")
		}
	}
	if n.Local {
		// Local workers are child processes: ssh settings play no part.
		n.Host = ""
		dir := filepath.Dir(f.path)
		if n.WorkDir != "" {
			n.WorkDir = home(".work_dir", n.WorkDir)
			if !filepath.IsAbs(n.WorkDir) {
				n.WorkDir = filepath.Join(dir, n.WorkDir) // relative to the config file, not the cwd
			}
		} else {
			n.WorkDir = dir
		}
		if abs, err := filepath.Abs(n.WorkDir); err == nil {
			n.WorkDir = abs
		}
		return n, errs
	}

	if n.Port < 1 || n.Port > 65535 {
		bad(".ssh_port", "got %d; use a TCP port from 1 to 65535 (default %d)", n.Port, DefaultSSHPort)
	}
	if n.User == "" {
		bad("", `ssh_username is required for an SSH node, such as ssh_username = "root"`)
	}
	if n.Password != "" && n.PasswordEnv != "" {
		bad(".ssh_password_env", "set either ssh_password or ssh_password_env, not both")
	}
	if n.KnownHostsFile == "" {
		n.KnownHostsFile = DefaultKnownHostsFile
	}
	n.KnownHostsFile = home(".known_hosts_file", n.KnownHostsFile)
	n.PrivateKeyFile = home(".ssh_private_key_file", n.PrivateKeyFile)
	// The remote home is unknown here, but SSH sessions start in it, so a
	// relative path means the same as "~/...".
	switch {
	case n.WorkDir == "" || n.WorkDir == "~" || n.WorkDir == "~/":
		if n.WorkDir != "" {
			n.WorkDir = "."
		} else {
			n.WorkDir = DefaultRemoteWorkDir
		}
	case strings.HasPrefix(n.WorkDir, "~/"):
		n.WorkDir = strings.TrimPrefix(n.WorkDir, "~/")
	case strings.HasPrefix(n.WorkDir, "~"):
		bad(".work_dir", "%q: ~user is not supported; use an absolute path or one relative to the SSH user's home", n.WorkDir)
	}
	return n, errs
}

// maxMinutes keeps max_job_duration_minutes within time.Duration.
var maxMinutes = float64(math.MaxInt64 / int64(time.Minute))

func (f *file) job(key string, rj rawJob) (dispatcher.Job, []error) {
	var errs []error
	bad := func(k, format string, args ...any) { errs = append(errs, f.errorf(key+k, format, args...)) }
	j := dispatcher.Job{
		Name: rj.Name, Table: rj.Table,
		MaxAssignedWorkers: rj.MaxAssignedWorkers,
		Step:               dispatcher.Step{SQL: rj.SQL, Command: rj.Command},
		ResultSQL:          rj.ResultSQL, RepeatEvery: time.Duration(rj.RepeatEvery), FatalExitCodes: rj.FatalExitCodes,
		RetryDelay: dispatcher.DefaultRetryDelay, RetryDelayMax: dispatcher.DefaultRetryDelayMax,
		Snippets: dispatcher.Snippets{
			SelectingSQL: rj.SelectingSQL, RelaunchingSQL: rj.RelaunchingSQL, TotalSQL: rj.TotalSQL,
			CompletedSQL: rj.CompletedSQL, PendingSQL: rj.PendingSQL, FailedSQL: rj.FailedSQL,
			AllowingSQL: rj.AllowingSQL, QueueSlotsSQL: rj.QueueSlotsSQL, OccupiedSQL: rj.OccupiedSQL,
		},
	}
	if rj.Name == "" {
		bad("", `name is required, such as name = "search_odd_numbers"`)
	}
	if rj.Table == "" {
		bad("", `table is required: the table whose rows are the tasks, such as table = "numbers"`)
	}
	if rj.MaxAssignedWorkers < 0 {
		bad(".max_assigned_workers", "got %d; must not be negative (0 means no limit)", rj.MaxAssignedWorkers)
	}
	// These have no meaning at 0: an explicit 0 is refused rather than
	// taken for the default.
	for _, n := range []struct {
		key  string
		v    *int
		dst  *int
		dflt string
	}{
		{".max_pending_tasks", rj.MaxPendingTasks, &j.MaxPendingTasks, "queue_size"},
		{".queue_size", rj.QueueSize, &j.QueueSize, strconv.Itoa(dispatcher.DefaultQueueSize)},
		{".max_try_times", rj.MaxTryTimes, &j.MaxTryTimes, strconv.Itoa(dispatcher.DefaultMaxTryTimes)},
	} {
		if n.v == nil {
			continue
		}
		if *n.v < 1 {
			bad(n.key, "got %d; must be at least 1 (leave it out for the default, %s)", *n.v, n.dflt)
		}
		*n.dst = *n.v
	}
	if rj.MaxJobDurationMinutes != nil {
		if m := *rj.MaxJobDurationMinutes; !(m > 0 && m <= maxMinutes) { // also catches nan
			bad(".max_job_duration_minutes", "got %v; use a positive number of minutes (leave it out for the default, %v)",
				m, dispatcher.DefaultMaxJobDuration.Minutes())
		} else {
			j.MaxJobDuration = time.Duration(m * float64(time.Minute))
		}
	}
	j.Limits = dispatcher.Limits{MaxRunning: rj.MaxRunning, Key: rj.LimitKey, MaxRunningPerKey: rj.MaxRunningPerKey, MaxPerMinute: rj.MaxPerMinute}
	for _, n := range []struct {
		key string
		v   int
	}{{".max_running", rj.MaxRunning}, {".max_running_per_key", rj.MaxRunningPerKey}, {".max_per_minute", rj.MaxPerMinute}} {
		if n.v < 0 {
			bad(n.key, "got %d; must not be negative (0 or unset: no limit)", n.v)
		}
	}
	if rj.MaxRunningPerKey > 0 && rj.LimitKey == "" {
		bad(".max_running_per_key", "needs limit_key: the column or SQL expression to count by, such as limit_key = \"substring(url from '//([^/]+)')\"")
	}
	if rj.LimitKey != "" && rj.MaxRunningPerKey == 0 && rj.MaxPerMinute == 0 {
		bad(".limit_key", "limits nothing without max_running_per_key or max_per_minute")
	}
	if j.Limits.Any() && rj.SelectingSQL != "" {
		bad(".selecting_sql", "cannot be combined with max_running, max_running_per_key or max_per_minute: write the limit into the snippet")
	}
	if j.Limits.Any() && rj.SQL != "" {
		bad(".sql", "a sql step runs in the dispatcher: max_running, max_running_per_key and max_per_minute apply to command and Go handler jobs (bound sql steps with [dispatcher] sql_sessions)")
	}
	if rj.SQL != "" {
		for _, k := range []struct{ key, v string }{{".allowing_sql", rj.AllowingSQL}, {".queue_slots_sql", rj.QueueSlotsSQL}, {".occupied_sql", rj.OccupiedSQL}} {
			if k.v != "" {
				bad(k.key, "asks about workers, and a sql step runs in the dispatcher: no worker takes its rows")
			}
		}
	}
	if rj.Slots != nil {
		if *rj.Slots < 1 {
			bad(".slots", "got %d; a worker runs at least 1 row at a time (leave it out for 1)", *rj.Slots)
		}
		j.Slots = *rj.Slots
	}
	if rj.RetryDelay != nil {
		j.RetryDelay = time.Duration(*rj.RetryDelay)
	}
	if rj.RetryDelayMax != nil {
		j.RetryDelayMax = time.Duration(*rj.RetryDelayMax)
	} else {
		j.RetryDelayMax = max(j.RetryDelayMax, j.RetryDelay)
	}
	for _, d := range []struct {
		key string
		v   time.Duration
	}{{".retry_delay", j.RetryDelay}, {".retry_delay_max", j.RetryDelayMax}, {".repeat_every", j.RepeatEvery}} {
		if d.v < 0 {
			bad(d.key, "got %s; must not be negative", d.v)
		}
	}
	if j.RetryDelayMax < j.RetryDelay {
		bad(".retry_delay_max", "got %s, below retry_delay (%s); the cap must be at least the first delay", j.RetryDelayMax, j.RetryDelay)
	}
	for _, c := range rj.FatalExitCodes {
		if c < 1 || c > 255 {
			bad(".fatal_exit_codes", "%d is not an exit code a failed command can have; use codes from 1 to 255", c)
		}
	}
	if len(rj.FatalExitCodes) > 0 && len(rj.Command) == 0 {
		bad(".fatal_exit_codes", "only command steps exit with a code; a Go handler returns worker.Permanent(err) instead")
	}
	if rj.FilterWorkerID != "" {
		re, err := regexp.Compile(rj.FilterWorkerID)
		if err != nil {
			bad(".filter_worker_id", "%s; use Go (RE2) syntax, such as %q for the first worker of each node", err.Error(), `\.1$`)
		}
		j.FilterWorkerID = re
	}
	if rj.SQL != "" && len(rj.Command) > 0 {
		bad(".command", "set either sql or command, not both (neither: a Go handler registered as %q)", rj.Name)
	}
	errs = append(errs, f.checkArgv(key+".command", rj.Command)...)

	prefix := rj.FieldPrefix
	if prefix == "" {
		prefix = rj.Name
	}
	// field_prefix sets the seed's naming; explicit field_* keys win.
	j.Fields = dispatcher.FieldsFor(prefix, dispatcher.DefaultPrimaryKey)
	for _, o := range []struct {
		dst *string
		v   string
	}{
		{&j.Fields.PrimaryKey, rj.FieldPrimaryKey}, {&j.Fields.ID, rj.FieldID}, {&j.Fields.Time, rj.FieldTime},
		{&j.Fields.Times, rj.FieldTimes}, {&j.Fields.StartTime, rj.FieldStartTime},
		{&j.Fields.EndTime, rj.FieldEndTime}, {&j.Fields.Success, rj.FieldSuccess},
		{&j.Fields.ErrorDescription, rj.FieldErrorDescription}, {&j.Fields.Final, rj.FieldFinal},
		{&j.Fields.RunAt, rj.FieldRunAt},
	} {
		if o.v != "" {
			*o.dst = o.v
		}
	}

	j = j.WithDefaults()
	if len(errs) == 0 {
		if err := j.Validate(); err != nil {
			errs = append(errs, f.errorf(key, "%s", err.Error()))
		}
	}
	return j, errs
}

// checkArgv rejects argv whose program is empty; an empty argv means unset.
func (f *file) checkArgv(key string, argv []string) []error {
	if len(argv) > 0 && argv[0] == "" {
		return []error{f.errorf(key, `the program (first element) is empty; use such as ["./check.sh", "--fast"]`)}
	}
	return nil
}
