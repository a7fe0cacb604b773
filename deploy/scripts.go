package deploy

import "embed"

// The scripts a node runs are the files under scripts/, each with its
// arguments described at its top. Each is sent as the text of `sh -c`
// (see sh): lib.sh, the functions they share, followed by the script's
// own file. They are POSIX sh, run by dash and BusyBox ash in the tests;
// make lint and TestScriptsPassShellcheck check them with shellcheck.
//
//go:embed scripts/*.sh
var scriptFiles embed.FS

var (
	probeScript     = script("probe.sh")     // ProbeNode
	pushScript      = script("push.sh")      // Push
	bootstrapScript = script("bootstrap.sh") // Bootstrap
	startScript     = script("start.sh")     // Start
	stopScript      = script("stop.sh")      // Stop
	statusScript    = script("status.sh")    // Status
	tailScript      = script("tail.sh")      // TailCommand
)

// script composes what is sent for scripts/name: lib.sh, then the file.
func script(name string) string {
	lib, err := scriptFiles.ReadFile("scripts/lib.sh")
	if err != nil {
		panic(err)
	}
	body, err := scriptFiles.ReadFile("scripts/" + name)
	if err != nil {
		panic(err)
	}
	return string(lib) + string(body)
}

// probeArgs are the probe's arguments (scripts/probe.sh; push.sh starts
// with the probe): the work dir, the deployed files parseProbe reports,
// then the tools to look for.
func probeArgs(workDir string) []string {
	return append([]string{workDir, BinaryFile, ConfigFile}, RequiredTools...)
}
