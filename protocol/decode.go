package protocol

import (
	"encoding/json"
	"strconv"
	"unicode/utf8"
)

// decodeMessage is json.Unmarshal(line, m). The messages a stream carries
// by the thousand (rows, outcomes, starts, acks) are read by a parser for
// exactly the shape this package writes, which needs neither reflection
// nor a first pass to validate: encoding/json spent a fifth of a quick
// worker's CPU on them. Whatever that parser is not sure of (another
// key, an escape in a string, a number with a fraction, null) goes to
// encoding/json, so the result and the errors are encoding/json's.
func decodeMessage(line []byte, m *Message) error {
	if decodeFast(line, m) {
		return nil
	}
	*m = Message{}
	return json.Unmarshal(line, m)
}

// decodeFast fills m from line and says whether it could.
func decodeFast(line []byte, m *Message) bool {
	c := &cursor{b: line}
	*m = Message{}
	ok := c.object(func(key []byte) bool {
		switch string(key) {
		case "k":
			s, ok := c.str()
			m.Kind = Kind(s)
			return ok
		case "rows":
			return list(c, &m.Rows, func(r *Row) bool {
				return c.object(func(key []byte) bool {
					if string(key) == "data" {
						v, ok := c.value()
						r.Data = v
						return ok
					}
					return c.ref(key, &r.Ref)
				})
			})
		case "refs":
			return list(c, &m.Refs, func(r *Ref) bool {
				return c.object(func(key []byte) bool { return c.ref(key, r) })
			})
		case "outcomes":
			return list(c, &m.Outcomes, func(o *Outcome) bool {
				return c.object(func(key []byte) bool { return c.outcome(key, o) })
			})
		case "acks":
			return list(c, &m.Acks, func(n *uint64) bool {
				var ok bool
				*n, ok = c.uint()
				return ok
			})
		}
		return false
	})
	c.space()
	return ok && c.i == len(c.b)
}

// list reads an array into *dst, each element with elem. A second array
// of the same key goes to encoding/json, which decodes it into the first
// one's elements.
func list[T any](c *cursor, dst *[]T, elem func(*T) bool) bool {
	if *dst != nil {
		return false
	}
	*dst = []T{}
	return c.array(func() bool {
		var v T
		ok := elem(&v)
		*dst = append(*dst, v)
		return ok
	})
}

// cursor walks a line of JSON; each method reads one thing at the cursor
// and says whether it was there, as the fast path expects it.
type cursor struct {
	b []byte
	i int
}

func (c *cursor) space() {
	for c.i < len(c.b) {
		switch c.b[c.i] {
		case ' ', '\t', '\n', '\r':
			c.i++
		default:
			return
		}
	}
}

func (c *cursor) eat(x byte) bool {
	c.space()
	if c.i < len(c.b) && c.b[c.i] == x {
		c.i++
		return true
	}
	return false
}

// object reads {"key": value, ...}, field reading each value.
func (c *cursor) object(field func(key []byte) bool) bool {
	if !c.eat('{') {
		return false
	}
	if c.eat('}') {
		return true
	}
	for {
		c.space()
		key, ok := c.raw()
		if !ok || !c.eat(':') || !field(key) {
			return false
		}
		if c.eat('}') {
			return true
		}
		if !c.eat(',') {
			return false
		}
	}
}

// array reads [elem, ...].
func (c *cursor) array(elem func() bool) bool {
	if !c.eat('[') {
		return false
	}
	if c.eat(']') {
		return true
	}
	for {
		if !elem() {
			return false
		}
		if c.eat(']') {
			return true
		}
		if !c.eat(',') {
			return false
		}
	}
}

// raw reads a string without escapes and returns its bytes, unquoted.
func (c *cursor) raw() ([]byte, bool) {
	if c.i >= len(c.b) || c.b[c.i] != '"' {
		return nil, false
	}
	start := c.i + 1
	for j := start; j < len(c.b); j++ {
		switch b := c.b[j]; {
		case b == '"':
			c.i = j + 1
			s := c.b[start:j]
			return s, utf8.Valid(s)
		case b == '\\' || b < 0x20:
			return nil, false
		}
	}
	return nil, false
}

func (c *cursor) str() (string, bool) {
	c.space()
	start := c.i
	if s, ok := c.raw(); ok {
		return string(s), true
	}
	// Escapes (a command's output has newlines and quotes): encoding/json
	// reads the one string.
	c.i = start
	if c.i >= len(c.b) || c.b[c.i] != '"' {
		return "", false
	}
	for c.i++; c.i < len(c.b); c.i++ {
		switch c.b[c.i] {
		case '\\':
			c.i++
		case '"':
			c.i++
			var s string
			err := json.Unmarshal(c.b[start:c.i], &s)
			return s, err == nil
		}
	}
	return "", false
}

// digits reads an integer literal: an optional minus, no leading zero,
// and nothing after it that would make it a fraction or an exponent.
func (c *cursor) digits() ([]byte, bool) {
	c.space()
	start := c.i
	if c.i < len(c.b) && c.b[c.i] == '-' {
		c.i++
	}
	first := c.i
	for c.i < len(c.b) && c.b[c.i] >= '0' && c.b[c.i] <= '9' {
		c.i++
	}
	n := c.i - first
	if n == 0 || (n > 1 && c.b[first] == '0') {
		return nil, false
	}
	if c.i < len(c.b) {
		switch c.b[c.i] {
		case '.', 'e', 'E':
			return nil, false
		}
	}
	return c.b[start:c.i], true
}

func (c *cursor) int() (int64, bool) {
	d, ok := c.digits()
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseInt(string(d), 10, 64)
	return n, err == nil
}

func (c *cursor) intInto(dst *int) bool {
	n, ok := c.int()
	*dst = int(n)
	return ok && int64(*dst) == n
}

func (c *cursor) uint() (uint64, bool) {
	d, ok := c.digits()
	if !ok || d[0] == '-' {
		return 0, false
	}
	n, err := strconv.ParseUint(string(d), 10, 64)
	return n, err == nil
}

func (c *cursor) boolean() (v, ok bool) {
	c.space()
	switch {
	case len(c.b)-c.i >= 4 && string(c.b[c.i:c.i+4]) == "true":
		c.i += 4
		return true, true
	case len(c.b)-c.i >= 5 && string(c.b[c.i:c.i+5]) == "false":
		c.i += 5
		return false, true
	}
	return false, false
}

// value reads any JSON value and returns a copy of its bytes, as
// json.RawMessage keeps them.
func (c *cursor) value() (json.RawMessage, bool) {
	c.space()
	start, depth, inString := c.i, 0, false
	for ; c.i < len(c.b); c.i++ {
		b := c.b[c.i]
		if inString {
			switch b {
			case '\\':
				c.i++
			case '"':
				inString = false
			}
			continue
		}
		switch b {
		case '"':
			inString = true
		case '{', '[':
			depth++
		case '}', ']':
			if depth == 0 {
				return c.valid(start)
			}
			depth--
		case ',':
			if depth == 0 {
				return c.valid(start)
			}
		}
	}
	return nil, false
}

func (c *cursor) valid(start int) (json.RawMessage, bool) {
	v := c.b[start:c.i]
	for len(v) > 0 && (v[len(v)-1] == ' ' || v[len(v)-1] == '\t' || v[len(v)-1] == '\n' || v[len(v)-1] == '\r') {
		v = v[:len(v)-1]
	}
	if len(v) == 0 || !json.Valid(v) {
		return nil, false
	}
	return append(json.RawMessage(nil), v...), true
}

func (c *cursor) ref(key []byte, r *Ref) bool {
	var ok bool
	switch string(key) {
	case "job":
		r.Job, ok = c.str()
	case "key":
		r.Key, ok = c.str()
	case "attempt":
		ok = c.intInto(&r.Attempt)
	}
	return ok
}

func (c *cursor) outcome(key []byte, o *Outcome) bool {
	var ok bool
	switch string(key) {
	case "seq":
		o.Seq, ok = c.uint()
	case "ok":
		o.OK, ok = c.boolean()
	case "error":
		o.Error, ok = c.str()
	case "exit":
		ok = c.intInto(&o.ExitCode)
	case "permanent":
		o.Permanent, ok = c.boolean()
	case "output":
		var s string
		s, ok = c.str()
		o.Output = &s
	case "ms":
		o.Millis, ok = c.int()
	default:
		return c.ref(key, &o.Ref)
	}
	return ok
}
