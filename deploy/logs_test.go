package deploy_test

import (
	"strings"
	"testing"

	"github.com/pampa-go/pampa/deploy"
)

func TestTailSplitter(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		chunks []string
		want   []string
	}{
		{"two files", []string{"==> worker.a.1.log <==\none\ntwo\n\n==> worker.a.2.log <==\nx\n"},
			[]string{"a.1|one", "a.1|two", "a.2|x"}},
		{"split anywhere", []string{"==> worker.a", ".1.log <==\non", "e\n", "\n==> worker.a.2.log <==\n", "y\n"},
			[]string{"a.1|one", "a.2|y"}},
		{"blank lines kept", []string{"==> worker.a.1.log <==\n\n\nz\n"},
			[]string{"a.1|", "a.1|", "a.1|z"}},
		{"back to a file", []string{"==> worker.a.1.log <==\np\n\n==> worker.a.2.log <==\nq\n\n==> worker.a.1.log <==\nr\n"},
			[]string{"a.1|p", "a.2|q", "a.1|r"}},
		{"lookalike lines", []string{"==> worker.a.1.log <==\n==> nope\n<== x ==>\n"},
			[]string{"a.1|==> nope", "a.1|<== x ==>"}},
		{"partial last line", []string{"==> worker.a.1.log <==\nfull\npart"},
			[]string{"a.1|full", "a.1|part"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var got []string
			s := &deploy.TailSplitter{Emit: func(file, line string) { got = append(got, deploy.WorkerOfLog(file)+"|"+line) }}
			for _, c := range tc.chunks {
				s.Write([]byte(c))
			}
			s.Flush()
			if strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func FuzzTailSplitter(f *testing.F) {
	f.Add("==> worker.a.1.log <==\none\n\n==> worker.b.1.log <==\ntwo\n", 3)
	f.Fuzz(func(t *testing.T, data string, cut int) {
		var n int
		s := &deploy.TailSplitter{Emit: func(file, line string) {
			if strings.Contains(line, "\n") {
				t.Fatalf("line with a newline: %q", line)
			}
			n++
		}}
		if cut < 0 || cut > len(data) {
			cut = len(data) / 2
		}
		s.Write([]byte(data[:cut]))
		s.Write([]byte(data[cut:]))
		s.Flush()
		if n > strings.Count(data, "\n")+1 {
			t.Fatalf("%d lines from %d newlines", n, strings.Count(data, "\n"))
		}
	})
}

func TestGoPlatform(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"Linux x86_64": "linux/amd64", "Linux aarch64": "linux/arm64", "Linux armv7l": "linux/arm",
		"Darwin arm64": "darwin/arm64", "Linux i686": "linux/386", "FreeBSD amd64": "freebsd/amd64",
	} {
		if os, arch := deploy.GoPlatform(in); os+"/"+arch != want {
			t.Errorf("GoPlatform(%q) = %s/%s, want %s", in, os, arch, want)
		}
	}
}
