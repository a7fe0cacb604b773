package protocol

import (
	"encoding/json"
	"fmt"
)

// Path is where the server listens for worker streams.
const Path = "/pampa/v1/work"

// Version is the protocol version a client announces; the server refuses
// others.
const Version = 1

// Kind says what a Message carries.
type Kind string

// Messages from the worker.
const (
	KindHello    Kind = "hello"    // first message: who the worker is and what it holds
	KindStarts   Kind = "starts"   // rows whose step began
	KindOutcomes Kind = "outcomes" // rows whose step ended
	KindRelease  Kind = "release"  // rows given back unstarted or interrupted; the worker is leaving
	KindReturn   Kind = "return"   // queued rows given back as the dispatcher asked (revoke)
)

// Messages from the dispatcher.
const (
	KindWelcome Kind = "welcome" // the stream is accepted
	KindRows    Kind = "rows"    // rows for the worker's queue
	KindAcks    Kind = "acks"    // outcomes committed (or refused as late): drop them
	KindRevoke  Kind = "revoke"  // give these rows back if they have not started (a job paused)
	KindCancel  Kind = "cancel"  // stop these rows: drop them if queued, stop their step if running
)

// KindPing keeps a quiet stream alive, both ways.
const KindPing Kind = "ping"

// Message is one line of a stream.
type Message struct {
	Kind     Kind      `json:"k"`
	Hello    *Hello    `json:"hello,omitempty"`
	Welcome  *Welcome  `json:"welcome,omitempty"`
	Rows     []Row     `json:"rows,omitempty"`
	Refs     []Ref     `json:"refs,omitempty"` // starts, release
	Outcomes []Outcome `json:"outcomes,omitempty"`
	Acks     []uint64  `json:"acks,omitempty"`
}

// Ref names one attempt of one row.
type Ref struct {
	Job     string `json:"job"`
	Key     string `json:"key"`     // the primary key as text
	Attempt int    `json:"attempt"` // 1 on the first try
}

func (r Ref) String() string {
	return fmt.Sprintf("row %s of job %q, attempt %d", r.Key, r.Job, r.Attempt)
}

// Row is a row handed to a worker: its key, attempt and user columns.
type Row struct {
	Ref
	Data json.RawMessage `json:"data,omitempty"` // the row's own columns as a JSON object
}

// Held is a row a worker has in hand as it (re)connects.
type Held struct {
	Ref
	Started bool `json:"started,omitempty"`
}

// Hello is the worker's first message.
type Hello struct {
	Version  int    `json:"version"`
	ID       string `json:"id"` // node.N
	Node     string `json:"node"`
	Hostname string `json:"hostname"`
	PID      int    `json:"pid"`
	// Instance is random per worker process: a reconnect of the same
	// process replaces its old stream, another process with the same id is
	// refused.
	Instance string   `json:"instance"`
	Jobs     []string `json:"jobs"`  // jobs this worker can run
	Slots    int      `json:"slots"` // rows it runs at once
	InHand   []Held   `json:"in_hand,omitempty"`
}

// Welcome accepts a stream.
type Welcome struct {
	PingMillis int64 `json:"ping_ms"` // the server's ping period; three of silence end the stream
}

// Outcome is how one attempt ended.
type Outcome struct {
	Seq uint64 `json:"seq"`
	Ref
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
	// ExitCode is a command step's exit status when it failed with one;
	// Permanent says the step failed in a way no retry can mend.
	ExitCode  int     `json:"exit,omitempty"`
	Permanent bool    `json:"permanent,omitempty"`
	Output    *string `json:"output,omitempty"` // a command's stdout, a handler's result: $2 of result_sql
	// Millis is how long the step ran, so the start mark is right even
	// when the start message never reached the database.
	Millis int64 `json:"ms"`
}
