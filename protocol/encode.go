package protocol

import (
	"bytes"
	"encoding/json"
	"io"
	"strconv"
	"unicode/utf8"
)

// encoder writes messages one per line. The messages a stream carries by
// the thousand are appended by hand, without reflection; any other, and
// any whose row data is not valid JSON, is written by encoding/json,
// whose output means the same.
type encoder struct {
	w   io.Writer
	buf []byte
}

func newEncoder(w io.Writer) *encoder { return &encoder{w: w} }

func (e *encoder) Encode(m Message) error {
	b, ok := appendMessage(e.buf[:0], m)
	if !ok {
		var err error
		if b, err = json.Marshal(m); err != nil {
			return err
		}
	}
	b = append(b, '\n')
	e.buf = b[:0]
	_, err := e.w.Write(b)
	return err
}

// appendMessage appends m as JSON and says whether it could.
func appendMessage(b []byte, m Message) ([]byte, bool) {
	if m.Hello != nil || m.Welcome != nil {
		return b, false
	}
	ok := true
	str := func(s string) { b = appendString(b, s) }
	ref := func(r Ref) {
		b = append(b, `"job":`...)
		str(r.Job)
		b = append(b, `,"key":`...)
		str(r.Key)
		b = append(b, `,"attempt":`...)
		b = strconv.AppendInt(b, int64(r.Attempt), 10)
	}
	b = append(b, `{"k":`...)
	str(string(m.Kind))
	if len(m.Rows) > 0 {
		b = append(b, `,"rows":[`...)
		for i, r := range m.Rows {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, '{')
			ref(r.Ref)
			if len(r.Data) > 0 {
				// Compacted, as encoding/json does (PostgreSQL writes jsonb
				// with spaces), but without its HTML escapes: a step reads
				// "<" as the row has it, not \u003c.
				buf := bytes.NewBuffer(append(b, `,"data":`...))
				ok = ok && json.Compact(buf, r.Data) == nil
				b = buf.Bytes()
			}
			b = append(b, '}')
		}
		b = append(b, ']')
	}
	if len(m.Refs) > 0 {
		b = append(b, `,"refs":[`...)
		for i, r := range m.Refs {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, '{')
			ref(r)
			b = append(b, '}')
		}
		b = append(b, ']')
	}
	if len(m.Outcomes) > 0 {
		b = append(b, `,"outcomes":[`...)
		for i, o := range m.Outcomes {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, `{"seq":`...)
			b = strconv.AppendUint(b, o.Seq, 10)
			b = append(b, ',')
			ref(o.Ref)
			b = append(b, `,"ok":`...)
			b = strconv.AppendBool(b, o.OK)
			if o.Error != "" {
				b = append(b, `,"error":`...)
				str(o.Error)
			}
			if o.ExitCode != 0 {
				b = append(b, `,"exit":`...)
				b = strconv.AppendInt(b, int64(o.ExitCode), 10)
			}
			if o.Permanent {
				b = append(b, `,"permanent":true`...)
			}
			if o.Output != nil {
				b = append(b, `,"output":`...)
				str(*o.Output)
			}
			b = append(b, `,"ms":`...)
			b = strconv.AppendInt(b, o.Millis, 10)
			b = append(b, '}')
		}
		b = append(b, ']')
	}
	if len(m.Acks) > 0 {
		b = append(b, `,"acks":[`...)
		for i, a := range m.Acks {
			if i > 0 {
				b = append(b, ',')
			}
			b = strconv.AppendUint(b, a, 10)
		}
		b = append(b, ']')
	}
	return append(b, '}'), ok
}

// appendString appends s as a JSON string. As encoding/json does, it
// writes bytes that are not UTF-8 as U+FFFD.
func appendString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c >= 0x20 && c < utf8.RuneSelf && c != '"' && c != '\\' {
			i++
			continue
		}
		if c >= utf8.RuneSelf {
			if r, size := utf8.DecodeRuneInString(s[i:]); r != utf8.RuneError || size != 1 {
				i += size
				continue
			}
		}
		b = append(b, s[start:i]...)
		switch {
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
		case c == '\n':
			b = append(b, '\\', 'n')
		case c == '\r':
			b = append(b, '\\', 'r')
		case c == '\t':
			b = append(b, '\\', 't')
		case c < 0x20:
			b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		default: // a byte that is not UTF-8
			b = append(b, `\ufffd`...)
		}
		i++
		start = i
	}
	return append(append(b, s[start:]...), '"')
}
