package dispatcher

import (
	"fmt"
	"regexp"
	"slices"
	"time"

	"github.com/pampa-go/pampa/protocol"
)

// Defaults applied by Job.WithDefaults, as the seed documents them.
const (
	DefaultQueueSize      = 5
	DefaultMaxJobDuration = 15 * time.Minute
	DefaultMaxTryTimes    = 3
	DefaultPrimaryKey     = "id"
	// The config's defaults for retry_delay and retry_delay_max; a Job
	// built in Go has no backoff unless it says so.
	DefaultRetryDelay    = 10 * time.Second
	DefaultRetryDelayMax = time.Hour
)

// Fields names the bookkeeping columns of a task table. Every name is a
// column of the job's table; they are validated and always quoted.
type Fields struct {
	PrimaryKey       string // field_primary_key
	ID               string // field_id: id of the worker that holds the row
	Time             string // field_time: when the row was reserved
	Times            string // field_times: attempts started so far
	StartTime        string // field_start_time
	EndTime          string // field_end_time
	Success          string // field_success
	ErrorDescription string // field_error_description
	Final            string // field_final: true once a failed row is not to be tried again
	// RunAt (field_run_at, optional: "" for none) holds when a row may
	// start at the earliest; null means now.
	RunAt string
}

// Step is the processing step of a job. Exactly one of SQL or Command is set,
// or neither when the worker binary registers a Go handler under the job name.
type Step struct {
	SQL     string   // run per task with the primary key as $1
	Command []string // argv run per task, the row as JSON on stdin
}

// Snippets replace the default SQL of the dispatcher and of reporting.
// SelectingSQL and RelaunchingSQL return rows of the task table (at least the
// primary key column) and take $1 = how many rows at most. The *SQL reporting
// snippets return one number.
type Snippets struct {
	SelectingSQL   string
	RelaunchingSQL string
	TotalSQL       string
	CompletedSQL   string
	PendingSQL     string
	FailedSQL      string
	// The seed's per-worker functions, each with $1 = the worker id and
	// evaluated at most once per worker per reservation round:
	// AllowingSQL (a boolean: may the worker be given rows of the job now),
	// QueueSlotsSQL (an integer: how many more rows it may be given) and
	// OccupiedSQL (an integer: its rows counted as still pending, in place
	// of the rows queued on it).
	AllowingSQL, QueueSlotsSQL, OccupiedSQL string
}

// workerSnippets lists the job's per-worker snippets with their keys.
func (s Snippets) workerSnippets() []column {
	var out []column
	for _, c := range []column{{"allowing_sql", s.AllowingSQL}, {"queue_slots_sql", s.QueueSlotsSQL}, {"occupied_sql", s.OccupiedSQL}} {
		if c.name != "" {
			out = append(out, c)
		}
	}
	return out
}

// Job maps a table and its bookkeeping columns to a processing step.
type Job struct {
	Name               string
	Table              string // optionally schema-qualified: "public.numbers"
	Fields             Fields
	FilterWorkerID     *regexp.Regexp // nil means any worker
	MaxAssignedWorkers int            // 0 means no limit
	MaxPendingTasks    int            // pending rows per assigned worker before another is added
	QueueSize          int
	MaxJobDuration     time.Duration
	MaxTryTimes        int
	Step               Step
	Snippets           Snippets
	// ResultSQL runs in the transaction that marks a row done, with $1 =
	// the primary key (text) and $2 = the step's output (text, or null).
	ResultSQL string
	// RetryDelay is how long after a failed attempt its row may run again,
	// doubled per attempt up to RetryDelayMax, ±10%; 0 retries at the next
	// cycle.
	RetryDelay, RetryDelayMax time.Duration
	// RepeatEvery makes a row that succeeded available again that long
	// after its end; 0 never.
	RepeatEvery time.Duration
	// FatalExitCodes are a command's exit codes that fail its row for
	// good at once, whatever tries are left.
	FatalExitCodes []int
	// Slots is how many rows of the job one worker process runs at once.
	Slots int
	// Limits bound the rows held across the fleet.
	Limits Limits
}

// Limits bound how many of a job's rows are held (queued or running) at
// once, and how many are reserved per minute, across the whole fleet: they
// are enforced in the statement that reserves rows. 0 means no limit.
type Limits struct {
	MaxRunning int
	// Key is a SQL expression over the row's columns, such as
	// "substring(url from '//([^/]+)')": MaxRunningPerKey and MaxPerMinute
	// then count per value of it (a scraper's politeness per site).
	Key              string
	MaxRunningPerKey int
	MaxPerMinute     int
}

// Any says whether some limit is set.
func (l Limits) Any() bool { return l.MaxRunning > 0 || l.MaxRunningPerKey > 0 || l.MaxPerMinute > 0 }

func (l Limits) keyExpr() string {
	if l.Key == "" {
		return "null::text"
	}
	return "(" + l.Key + ")"
}

// bookkeeping lists Pampa's columns of the table: all the fields but the
// primary key and run_at, which are the user's.
func (f Fields) bookkeeping() []string {
	return []string{f.ID, f.Time, f.Times, f.StartTime, f.EndTime, f.Success, f.ErrorDescription, f.Final}
}

// FieldsFor returns the seed's column naming for a prefix: prefix_reservation_id,
// prefix_reservation_time, and so on.
func FieldsFor(prefix, primaryKey string) Fields {
	return Fields{
		PrimaryKey:       primaryKey,
		ID:               prefix + "_reservation_id",
		Time:             prefix + "_reservation_time",
		Times:            prefix + "_reservation_times",
		StartTime:        prefix + "_start_time",
		EndTime:          prefix + "_end_time",
		Success:          prefix + "_success",
		ErrorDescription: prefix + "_error_description",
		Final:            prefix + "_final",
	}
}

// WithDefaults returns the job with zero settings replaced by their defaults.
func (j Job) WithDefaults() Job {
	if j.QueueSize == 0 {
		j.QueueSize = DefaultQueueSize
	}
	if j.MaxJobDuration == 0 {
		j.MaxJobDuration = DefaultMaxJobDuration
	}
	if j.MaxTryTimes == 0 {
		j.MaxTryTimes = DefaultMaxTryTimes
	}
	if j.Slots == 0 {
		j.Slots = 1
	}
	if j.MaxPendingTasks == 0 {
		j.MaxPendingTasks = j.QueueSize
	}
	d := FieldsFor(j.Name, DefaultPrimaryKey)
	f := &j.Fields
	for _, p := range []struct {
		v   *string
		def string
	}{
		{&f.PrimaryKey, d.PrimaryKey}, {&f.ID, d.ID}, {&f.Time, d.Time}, {&f.Times, d.Times},
		{&f.StartTime, d.StartTime}, {&f.EndTime, d.EndTime}, {&f.Success, d.Success},
		{&f.ErrorDescription, d.ErrorDescription}, {&f.Final, d.Final},
	} {
		if *p.v == "" {
			*p.v = p.def
		}
	}
	return j
}

// Validate reports the first setting of the job that cannot work.
func (j Job) Validate() error {
	if err := ValidateIdentifier(j.Name); err != nil {
		return fmt.Errorf("job name: %w", err)
	}
	if err := validateTable(j.Table); err != nil {
		return fmt.Errorf("job %q: table: %w", j.Name, err)
	}
	byName := map[string]string{}
	for _, c := range j.columns() {
		if err := ValidateIdentifier(c.name); err != nil {
			return fmt.Errorf("job %q: %s: %w", j.Name, c.key, err)
		}
		if k, dup := byName[c.name]; dup {
			return fmt.Errorf("job %q: %s and %s both name column %q; each needs a column of its own", j.Name, k, c.key, c.name)
		}
		byName[c.name] = c.key
	}
	switch {
	case j.QueueSize < 1:
		return fmt.Errorf("job %q: queue_size must be at least 1, got %d", j.Name, j.QueueSize)
	case j.MaxTryTimes < 1:
		return fmt.Errorf("job %q: max_try_times must be at least 1, got %d", j.Name, j.MaxTryTimes)
	case j.MaxJobDuration <= 0:
		return fmt.Errorf("job %q: max_job_duration_minutes must be positive", j.Name)
	case j.MaxPendingTasks < 1:
		return fmt.Errorf("job %q: max_pending_tasks must be at least 1, got %d", j.Name, j.MaxPendingTasks)
	case j.Limits.MaxRunning < 0 || j.Limits.MaxRunningPerKey < 0 || j.Limits.MaxPerMinute < 0:
		return fmt.Errorf("job %q: max_running, max_running_per_key and max_per_minute must not be negative", j.Name)
	case j.Limits.MaxRunningPerKey > 0 && j.Limits.Key == "":
		return fmt.Errorf("job %q: max_running_per_key needs limit_key, the column or expression to count by", j.Name)
	case j.Limits.Any() && j.Snippets.SelectingSQL != "":
		return fmt.Errorf("job %q: limits apply to Pampa's own selection; with selecting_sql, write them into the snippet", j.Name)
	case j.Limits.Any() && j.Step.SQL != "":
		return fmt.Errorf("job %q: limits apply to rows handed to workers; a sql step runs in the dispatcher (bound it with sql_sessions)", j.Name)
	case j.Slots < 1:
		return fmt.Errorf("job %q: slots must be at least 1, got %d", j.Name, j.Slots)
	case j.MaxAssignedWorkers < 0:
		return fmt.Errorf("job %q: max_assigned_workers must not be negative", j.Name)
	case j.Step.SQL != "" && len(j.Step.Command) > 0:
		return fmt.Errorf("job %q: set either sql or command, not both", j.Name)
	case j.RetryDelay < 0 || j.RepeatEvery < 0:
		return fmt.Errorf("job %q: retry_delay and repeat_every must not be negative", j.Name)
	case j.RetryDelayMax < j.RetryDelay:
		return fmt.Errorf("job %q: retry_delay_max (%s) must be at least retry_delay (%s)", j.Name, j.RetryDelayMax, j.RetryDelay)
	}
	for _, c := range j.FatalExitCodes {
		if c < 1 || c > 255 {
			return fmt.Errorf("job %q: fatal_exit_codes: %d is not an exit code a command can fail with (1 to 255)", j.Name, c)
		}
	}
	return nil
}

type column struct{ key, name string }

// columns lists the job's columns with their config keys, for messages.
func (j Job) columns() []column {
	f := j.Fields
	cs := []column{
		{"field_primary_key", f.PrimaryKey}, {"field_id", f.ID}, {"field_time", f.Time},
		{"field_times", f.Times}, {"field_start_time", f.StartTime}, {"field_end_time", f.EndTime},
		{"field_success", f.Success}, {"field_error_description", f.ErrorDescription},
		{"field_final", f.Final},
	}
	if f.RunAt != "" {
		cs = append(cs, column{"field_run_at", f.RunAt})
	}
	return cs
}

// final says whether a failed attempt ends its row for good: the step
// said so, or exited with one of the job's fatal exit codes.
func (j Job) final(o protocol.Outcome) bool {
	return !o.OK && (o.Permanent || (o.ExitCode != 0 && slices.Contains(j.FatalExitCodes, o.ExitCode)))
}

// WorkerMatches reports whether the job may use the worker.
func (j Job) WorkerMatches(workerID string) bool {
	return j.FilterWorkerID == nil || j.FilterWorkerID.MatchString(workerID)
}
