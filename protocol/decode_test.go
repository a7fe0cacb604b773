package protocol

import (
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
