package protocol

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"
)

func hotMessages() []Message {
	out := "page 7\n\"quoted\" ünïcode"
	return []Message{
		{Kind: KindRows, Rows: []Row{{Ref: Ref{Job: "fetch", Key: "12", Attempt: 1}, Data: json.RawMessage(`{"id":12,"url":"http://x/?a=1,b=[2]","tags":["a",{"b":null}]}`)}, {Ref: Ref{Job: "fetch", Key: "13", Attempt: 3}}}},
		{Kind: KindOutcomes, Outcomes: []Outcome{{Seq: 1, Ref: Ref{Job: "fetch", Key: "12", Attempt: 1}, OK: true, Millis: 3, Output: &out},
			{Seq: 18446744073709551615, Ref: Ref{Job: "fetch", Key: "-1", Attempt: 2}, Error: "exit status 3", ExitCode: 3, Permanent: true, Millis: 120000}}},
		{Kind: KindStarts, Refs: []Ref{{Job: "j", Key: "a b", Attempt: 1}, {Job: "j", Key: "c", Attempt: 9}}},
		{Kind: KindAcks, Acks: []uint64{1, 2, 3}},
		{Kind: KindRows, Rows: []Row{}},
		{Kind: KindPing},
	}
}

// The messages a stream carries by the thousand take the fast path, and
// it reads them as encoding/json does.
func TestDecodeFastReadsWhatTheEncoderWrites(t *testing.T) {
	for _, m := range hotMessages() {
		line, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		var fast, slow Message
		if !decodeFast(line, &fast) {
			t.Errorf("%s: not read by the fast path", line)
			continue
		}
		if err := json.Unmarshal(line, &slow); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(fast, slow) {
			t.Errorf("%s:\nfast %+v\njson %+v", line, fast, slow)
		}
	}
}

// Whatever the input, decodeMessage gives what json.Unmarshal gives: the
// same message, or an error where it errs. `go test` runs the seeds;
// `go test -fuzz FuzzDecodeMessage ./protocol` looks further.
func FuzzDecodeMessage(f *testing.F) {
	for _, m := range hotMessages() {
		line, _ := json.Marshal(m)
		f.Add(line)
	}
	for _, s := range []string{
		`{"k":"rows","rows":[{"job":"a","key":"1"}],"rows":[{"key":"2"}]}`,
		`{"K":"rows"}`, `{"k":"rows","rows":null}`, `{"k":"outcomes","outcomes":[{"seq":-1}]}`,
		`{"k":"outcomes","outcomes":[{"attempt":1.0,"ms":1e3}]}`, `{"k":"acks","acks":[01]}`,
		`{"k":"rows","rows":[{"data": {"a" : [1, 2] } , "key":"x"}]}`, `{"k":"rows","rows":[{"data":{"a":1}}]} x`,
		`{"k":"starts","refs":[{"job":"\u006a","key":"\"k\""}]}`, `{"k":"outcomes","outcomes":[{"error":null,"output":null}]}`,
		"{\"k\":\"x\xff\"}", `{"k":"rows","rows":[{"data":"}"}]}`, `{"k":"rows","rows":[{"data":tru}]}`, ` {"k" : "ping" } `,
		`{"k":"acks","acks":[18446744073709551616]}`, `{"k":"outcomes","outcomes":[{"attempt":9223372036854775808}]}`,
		`{"k":"rows","rows":[{"data":{"a":1},"data":[2]}]}`, `{"k":"outcomes","outcomes":[{"output":"a","output":"b"}]}`,
		`{"k":"hello","hello":{"id":"n.1"}}`, `[]`, `{}`, ``, `{"k":"rows","rows":[{}],}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		var fast, slow Message
		errFast := decodeMessage(line, &fast)
		errSlow := json.Unmarshal(line, &slow)
		if (errFast == nil) != (errSlow == nil) {
			t.Fatalf("%q: decodeMessage says %v, json.Unmarshal %v", line, errFast, errSlow)
		}
		if !reflect.DeepEqual(fast, slow) {
			t.Fatalf("%q:\ndecodeMessage %+v\njson          %+v", line, fast, slow)
		}
	})
}

// The hand-written encoder writes the hot messages itself (escapes and
// bytes that are not UTF-8 included), and what it writes reads back as
// what encoding/json's own output reads back as.
func TestEncodeFastWritesWhatEncodingJSONMeans(t *testing.T) {
	for _, m := range hotMessages() {
		if _, ok := appendMessage(nil, m); !ok {
			t.Errorf("%+v: not written by the fast path", m)
		}
		checkEncoding(t, m)
	}
	// Row data that is not JSON, and hellos, go to encoding/json.
	for _, m := range []Message{
		{Kind: KindRows, Rows: []Row{{Ref: Ref{Job: "j", Key: "k"}, Data: json.RawMessage("{\"a\":}")}}},
		{Kind: KindHello, Hello: &Hello{ID: "n.1", Instance: "i"}},
	} {
		if _, ok := appendMessage(nil, m); ok {
			t.Errorf("%+v: written by the fast path", m)
		}
		checkEncoding(t, m)
	}
}

func checkEncoding(t *testing.T, m Message) {
	t.Helper()
	var buf bytes.Buffer
	errFast := newEncoder(&buf).Encode(m)
	want, errJSON := json.Marshal(m)
	if (errFast == nil) != (errJSON == nil) {
		t.Fatalf("%+v: encoder says %v, json.Marshal %v", m, errFast, errJSON)
	}
	if errJSON != nil {
		return
	}
	line := buf.Bytes()
	if bytes.Count(line, []byte("\n")) != 1 || line[len(line)-1] != '\n' {
		t.Fatalf("%q: not one line", line)
	}
	var got, exp Message
	if err := json.Unmarshal(line, &got); err != nil {
		t.Fatalf("%q: %v", line, err)
	}
	if err := json.Unmarshal(want, &exp); err != nil {
		t.Fatal(err)
	}
	// Row data is compacted by both, HTML-escaped by encoding/json only:
	// the same JSON, compared as values.
	for i := range got.Rows {
		var compact bytes.Buffer
		_ = json.Compact(&compact, got.Rows[i].Data)
		var a, b any
		_ = json.Unmarshal(got.Rows[i].Data, &a)
		_ = json.Unmarshal(exp.Rows[i].Data, &b)
		if !bytes.Equal(compact.Bytes(), got.Rows[i].Data) || !reflect.DeepEqual(a, b) {
			t.Fatalf("%q: row %d's data %s, want %s compacted", line, i, got.Rows[i].Data, exp.Rows[i].Data)
		}
		got.Rows[i].Data, exp.Rows[i].Data = nil, nil
	}
	if !reflect.DeepEqual(got, exp) {
		t.Fatalf("%q reads as\n%+v, json.Marshal's %q as\n%+v", line, got, want, exp)
	}
}

// Any strings and data: the encoder's line means what json.Marshal's does.
func FuzzEncodeMessage(f *testing.F) {
	f.Add("fetch", "12", "boom", "out", []byte(`{"id":1}`), uint64(7), int64(3))
	f.Add("j\"", "k\n", "é", "\x00", []byte("{\"a\" :\n[1, 2]}"), uint64(0), int64(-1))
	f.Add("", "", "", "", []byte(`nul`), uint64(1<<63), int64(1<<40))
	f.Fuzz(func(t *testing.T, job, key, errText, out string, data []byte, seq uint64, n int64) {
		r := Ref{Job: job, Key: key, Attempt: int(n)}
		for _, m := range []Message{
			{Kind: KindRows, Rows: []Row{{Ref: r, Data: data}, {Ref: r}}},
			{Kind: KindOutcomes, Outcomes: []Outcome{{Seq: seq, Ref: r, Error: errText, Output: &out, ExitCode: int(n), Permanent: n%2 == 0, Millis: n}}},
			{Kind: Kind(job), Refs: []Ref{r}, Acks: []uint64{seq, 1}},
		} {
			checkEncoding(t, m)
		}
	})
}
