package pampacli

import (
	"strings"
	"testing"
)

// Which build a node of a platform runs, from what lies beside pampactl.
func TestWorkerBuildPick(t *testing.T) {
	t.Parallel()
	const self = "/opt/pampa/bin/pampactl"
	for _, c := range []struct {
		name     string
		handlers bool
		there    []string
		goarch   string
		want     string // "" for an error
	}{
		{"the worker-only build beside pampactl", false, []string{"/opt/pampa/bin/pampa-worker"}, "amd64", "/opt/pampa/bin/pampa-worker"},
		{"make dist's worker-only build", false, []string{"/opt/pampa/bin/dist/pampa-worker-linux-amd64"}, "amd64", "/opt/pampa/bin/dist/pampa-worker-linux-amd64"},
		{"beside pampactl before dist", false, []string{"/opt/pampa/bin/pampa-worker", "dist/pampa-worker-linux-amd64"}, "amd64", "/opt/pampa/bin/pampa-worker"},
		{"pampactl alone runs itself", false, nil, "amd64", self},
		{"Go handlers: pampactl is its own worker", true, []string{"/opt/pampa/bin/pampa-worker"}, "amd64", self},
		{"another platform: its worker-only build", false, []string{"dist/pampa-worker-linux-arm64", "dist/pampactl-linux-arm64"}, "arm64", "dist/pampa-worker-linux-arm64"},
		{"another platform: pampactl's build without it", false, []string{"/opt/pampa/bin/pampactl-linux-arm64"}, "arm64", "/opt/pampa/bin/pampactl-linux-arm64"},
		{"another platform, Go handlers: pampactl's build", true, []string{"dist/pampa-worker-linux-arm64", "dist/pampactl-linux-arm64"}, "arm64", "dist/pampactl-linux-arm64"},
		{"another platform: the same-named build of this one does not do", false, []string{"/opt/pampa/bin/pampa-worker"}, "arm64", ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			b := workerBuild{self: self, goos: "linux", goarch: "amd64", handlers: c.handlers, runs: func(p string) bool {
				for _, q := range c.there {
					if p == q {
						return true
					}
				}
				return false
			}}
			got, err := b.pick("linux", c.goarch)
			switch {
			case c.want == "" && err == nil:
				t.Fatalf("got %s, want an error", got)
			case c.want == "" && !strings.Contains(err.Error(), "make dist"):
				t.Fatalf("the error does not say what to do: %v", err)
			case c.want != "" && (err != nil || got != c.want):
				t.Fatalf("got %q, %v; want %s", got, err, c.want)
			}
		})
	}
}
