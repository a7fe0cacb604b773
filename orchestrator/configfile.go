package orchestrator

// How cluster.toml is read: positions of keys, value types per key path,
// unknown keys with suggestions. toml v1.6 exposes no key positions and
// names array-of-tables keys without their index ("jobs.queue_size"), so a
// small line scanner finds where each key path ("jobs[1].queue_size") is
// written.

import (
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/pampa-go/pampa/internal/suggest"
)

var rawConfigType = reflect.TypeFor[rawConfig]()

type position struct{ line, col int }

// file is the config being parsed: its name for messages and where its keys are.
type file struct {
	path string
	pos  map[string]position // by indexed path ("jobs[1].table") and plain path ("jobs.table"); first occurrence
	keys []keyPos            // every key and table header, in order
}

type keyPos struct {
	plain   string // jobs.queue_size, as toml.Key names it
	indexed string // jobs[1].queue_size
	position
}

func newFile(path, text string) *file {
	f := &file{path: path, pos: map[string]position{}, keys: scanKeys(text)}
	for _, k := range f.keys {
		for _, p := range []string{k.indexed, k.plain} {
			if _, ok := f.pos[p]; !ok {
				f.pos[p] = k.position
			}
		}
	}
	return f
}

var (
	keyLineRE = regexp.MustCompile(`^([A-Za-z0-9_.-]+|"[^"]*"|'[^']*')\s*=`)
)

// scanKeys finds table headers and "key =" lines. It is only used to point
// at lines of a document toml already accepted, so it can stay simple:
// multi-line strings are skipped, inline tables are not looked into (their
// keys fall back to the enclosing key's line).
func scanKeys(text string) []keyPos {
	var (
		out          []keyPos
		table, plain string // current table, indexed and plain
		counts       = map[string]int{}
		closing      string // delimiter of the multi-line string being skipped
	)
	join := func(a, b string) string {
		if a == "" {
			return b
		}
		return a + "." + b
	}
	for i, line := range strings.Split(text, "\n") {
		if closing != "" {
			if strings.Count(line, closing)%2 == 1 {
				closing = ""
			}
			continue
		}
		trimmed := strings.TrimSpace(line)
		at := position{line: i + 1, col: len(line) - len(strings.TrimLeft(line, " \t")) + 1}
		switch {
		case strings.HasPrefix(trimmed, "[["):
			end := strings.Index(trimmed, "]]")
			if end < 0 {
				continue
			}
			plain = strings.TrimSpace(trimmed[2:end])
			table = fmt.Sprintf("%s[%d]", plain, counts[plain])
			counts[plain]++
			out = append(out, keyPos{plain, table, at})
		case strings.HasPrefix(trimmed, "["):
			end := strings.Index(trimmed, "]")
			if end < 0 {
				continue
			}
			plain = strings.TrimSpace(trimmed[1:end])
			table = plain
			out = append(out, keyPos{plain, table, at})
		default:
			m := keyLineRE.FindStringSubmatch(trimmed)
			if m == nil {
				continue
			}
			key := strings.Trim(m[1], `"'`)
			out = append(out, keyPos{join(plain, key), join(table, key), at})
			rest := trimmed[len(m[0]):]
			for _, d := range []string{`"""`, `'''`} {
				if strings.Count(rest, d)%2 == 1 {
					closing = d
					break
				}
			}
		}
	}
	return out
}

// errorf returns a ConfigError at the key, or at its nearest enclosing key
// written in the file.
func (f *file) errorf(key, format string, args ...any) error {
	e := &ConfigError{File: f.path, Key: key, Msg: fmt.Sprintf(format, args...)}
	for k := key; k != ""; k = parentKey(k) {
		if p, ok := f.pos[k]; ok {
			e.Line, e.Col = p.line, p.col
			break
		}
	}
	return e
}

// where names a key with its line, for "already used by" messages.
func (f *file) where(key string) string {
	if p, ok := f.pos[key]; ok {
		return fmt.Sprintf("%s (line %d)", key, p.line)
	}
	return key
}

// parentKey strips the last ".name" or "[n]" of a key path.
func parentKey(k string) string {
	if strings.HasSuffix(k, "]") {
		if i := strings.LastIndex(k, "["); i >= 0 {
			return k[:i]
		}
	}
	if i := strings.LastIndex(k, "."); i >= 0 {
		return k[:i]
	}
	return ""
}

// decodeError turns a toml error into a ConfigError.
func (f *file) decodeError(err error) error {
	var pe toml.ParseError
	if errors.As(err, &pe) {
		e := &ConfigError{File: f.path, Line: pe.Position.Line, Col: pe.Position.Col, Msg: pe.Message}
		if pe.Usage != "" {
			// The first line of toml's usage text says what to do.
			e.Msg += "; " + strings.TrimSpace(strings.SplitN(strings.TrimSpace(pe.Usage), "\n", 2)[0])
		}
		return e
	}
	return &ConfigError{File: f.path, Msg: err.Error()}
}

// checkTypes reports every value whose TOML type does not fit the schema
// field t declares for its key.
func (f *file) checkTypes(t reflect.Type, m map[string]any, prefix string) []error {
	var errs []error
	for i := range t.NumField() {
		sf := t.Field(i)
		name := sf.Tag.Get("toml")
		v, ok := m[name]
		if !ok {
			continue
		}
		key := name
		if prefix != "" {
			key = prefix + "." + name
		}
		ft := sf.Type
		if ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		var want string
		switch {
		case ft == reflect.TypeFor[duration]():
			if s, ok := v.(string); ok {
				if _, err := time.ParseDuration(s); err == nil {
					continue
				}
			}
			want = `a duration string such as "1s", "500ms" or "2m"`
		case ft.Kind() == reflect.String:
			if _, ok := v.(string); ok {
				continue
			}
			want = "a string"
		case ft.Kind() == reflect.Bool:
			if _, ok := v.(bool); ok {
				continue
			}
			want = "true or false"
		case ft.Kind() == reflect.Int:
			if _, ok := v.(int64); ok {
				continue
			}
			want = "an integer"
		case ft.Kind() == reflect.Float64:
			switch n := v.(type) {
			case float64:
				continue
			case int64:
				if n > -1<<53 && n < 1<<53 { // exact as float64; toml refuses the rest
					continue
				}
			}
			want = "a number"
		case ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.String:
			if isStrings(v) {
				continue
			}
			want = `an array of strings such as ["./check.sh", "--fast"]`
		case ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Int:
			if isInts(v) {
				continue
			}
			want = "an array of integers such as [3, 4]"
		case ft.Kind() == reflect.Struct:
			if sub, ok := v.(map[string]any); ok {
				errs = append(errs, f.checkTypes(ft, sub, key)...)
				continue
			}
			want = "a table: [" + key + "]"
		case ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct:
			if tables, ok := asTables(v); ok {
				for j, sub := range tables {
					errs = append(errs, f.checkTypes(ft.Elem(), sub, fmt.Sprintf("%s[%d]", key, j))...)
				}
				continue
			}
			want = "an array of tables: [[" + key + "]]"
		default:
			panic("orchestrator: no type check for " + ft.String()) // a schema field without a case
		}
		errs = append(errs, f.errorf(key, "expected %s, got %s", want, describe(v)))
	}
	return errs
}

func isStrings(v any) bool {
	a, ok := v.([]any)
	if !ok {
		return false
	}
	for _, e := range a {
		if _, ok := e.(string); !ok {
			return false
		}
	}
	return true
}

func isInts(v any) bool {
	a, ok := v.([]any)
	if !ok {
		return false
	}
	for _, e := range a {
		if _, ok := e.(int64); !ok {
			return false
		}
	}
	return true
}

// asTables accepts [[x]] sections and inline arrays of tables.
func asTables(v any) ([]map[string]any, bool) {
	switch a := v.(type) {
	case []map[string]any:
		return a, true
	case []any:
		out := make([]map[string]any, len(a))
		for i, e := range a {
			m, ok := e.(map[string]any)
			if !ok {
				return nil, false
			}
			out[i] = m
		}
		return out, true
	}
	return nil, false
}

// describe names a decoded TOML value for "got ..." messages.
func describe(v any) string {
	switch v := v.(type) {
	case string:
		if len(v) > 40 {
			v = v[:40] + "..."
		}
		return "string " + strconv.Quote(v)
	case int64:
		return "integer " + strconv.FormatInt(v, 10)
	case float64:
		return "float " + strconv.FormatFloat(v, 'g', -1, 64)
	case bool:
		return "boolean " + strconv.FormatBool(v)
	case map[string]any:
		return "a table"
	case []any, []map[string]any:
		return "an array"
	case time.Time:
		return "a datetime"
	}
	return fmt.Sprintf("%T", v)
}

// portHints point config.rb keys that have no TOML twin to their replacement.
var portHints = map[string]string{
	"processing_function":  `"sql" or "command" (or a Go handler registered under the job name)`,
	"selecting_function":   `"selecting_sql"`,
	"relaunching_function": `"relaunching_sql"`,
	"dispatcher_function":  `"start_sql" or "start_command" in [dispatcher]`,
	"worker_function":      `"start_sql" or "start_command" in [worker]`,
}

// unknownKeys reports every key the schema does not know, at each place it
// is written, with the closest valid key of its table.
func (f *file) unknownKeys(keys []toml.Key) []error {
	undecoded := map[string]bool{}
	for _, k := range keys {
		undecoded[strings.Join(k, ".")] = true
	}
	var errs []error
	reported := map[string]bool{}
next:
	for _, k := range keys {
		plain := strings.Join(k, ".")
		if reported[plain] {
			continue
		}
		reported[plain] = true
		for n := 1; n < len(k); n++ {
			if undecoded[strings.Join(k[:n], ".")] {
				continue next // reported with its unknown table
			}
		}
		msg := "unknown key; " + f.suggest(k)
		found := false
		for _, kp := range f.keys {
			if kp.plain == plain {
				errs = append(errs, &ConfigError{File: f.path, Line: kp.line, Col: kp.col, Key: kp.indexed, Msg: msg})
				found = true
			}
		}
		if !found {
			errs = append(errs, f.errorf(plain, "%s", msg))
		}
	}
	return errs
}

// suggest proposes the valid key closest to the last part of k.
func (f *file) suggest(k toml.Key) string {
	name := k[len(k)-1]
	if h, ok := portHints[name]; ok {
		return "use " + h
	}
	t, where := rawConfigType, "at the top level"
	for _, part := range k[:len(k)-1] {
		sf, ok := fieldByTag(t, part)
		if !ok {
			return configExampleHint
		}
		t = sf.Type
		where = "in [" + part + "]"
		if t.Kind() == reflect.Slice {
			t, where = t.Elem(), "in [["+part+"]]"
		}
	}
	var keys []string
	if t.Kind() == reflect.Struct {
		for i := range t.NumField() {
			keys = append(keys, t.Field(i).Tag.Get("toml"))
		}
	}
	if best := suggest.Closest(name, keys); best != "" {
		return fmt.Sprintf("did you mean %q?", best)
	}
	return fmt.Sprintf("no such key %s; %s", where, configExampleHint)
}

func fieldByTag(t reflect.Type, tag string) (reflect.StructField, bool) {
	if t.Kind() != reflect.Struct {
		return reflect.StructField{}, false
	}
	for i := range t.NumField() {
		if t.Field(i).Tag.Get("toml") == tag {
			return t.Field(i), true
		}
	}
	return reflect.StructField{}, false
}
