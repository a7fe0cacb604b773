package pampacli

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/urfave/cli/v2"
)

// version is set at link time (make build and make dist pass git describe
// with -ldflags -X); a constant in all but name.
var version string

// Version describes this build: the version it was linked with, else its
// module version or the commit Go stamped it with (-dirty for uncommitted
// changes), and its platform. Nodes run the binary deploy pushed, so this
// is what tells builds apart.
func Version() string {
	if version != "" {
		return fmt.Sprintf("pampactl %s %s/%s %s", version, runtime.GOOS, runtime.GOARCH, runtime.Version())
	}
	v, rev, dirty := "devel", "", ""
	if bi, ok := debug.ReadBuildInfo(); ok {
		if bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			v = bi.Main.Version
		}
		for _, s := range bi.Settings {
			switch {
			case s.Key == "vcs.revision":
				rev = " " + s.Value[:min(12, len(s.Value))]
			case s.Key == "vcs.modified" && s.Value == "true":
				dirty = "-dirty"
			}
		}
	}
	return fmt.Sprintf("pampactl %s%s%s %s/%s %s", v, rev, dirty, runtime.GOOS, runtime.GOARCH, runtime.Version())
}

func (e *env) versionCommand() *cli.Command {
	return &cli.Command{
		Name:  "version",
		Usage: "print the version of this build (also --version)",
		Action: func(*cli.Context) error {
			fmt.Fprintln(e.stdout, Version())
			return nil
		},
	}
}
