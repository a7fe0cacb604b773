package deploy

import (
	"io/fs"
	"os/exec"
	"path"
	"strings"
	"testing"
)

// Every script passes shellcheck as it is sent: lib.sh and the script's
// own file together, as POSIX sh. make lint checks the files one by one.
// shellcheck missing is a failure, not a skip: .ci/run installs it.
func TestScriptsPassShellcheck(t *testing.T) {
	t.Parallel()
	shellcheck, err := exec.LookPath("shellcheck")
	if err != nil {
		t.Fatal("shellcheck is not installed (apt-get install shellcheck); .ci/run installs it")
	}
	sent := map[string]string{
		"probe.sh":     probeScript,
		"push.sh":      pushScript,
		"bootstrap.sh": bootstrapScript,
		"start.sh":     startScript,
		"stop.sh":      stopScript,
		"status.sh":    statusScript,
		"tail.sh":      tailScript,
	}
	files, err := fs.Glob(scriptFiles, "scripts/*.sh")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if name := path.Base(f); name != "lib.sh" && sent[name] == "" {
			t.Errorf("%s is not among the scripts this test checks", f)
		}
	}
	lib, err := scriptFiles.ReadFile("scripts/lib.sh")
	if err != nil {
		t.Fatal(err)
	}
	libLines := strings.Count(string(lib), "\n")
	for name, text := range sent {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			if !strings.HasPrefix(text, string(lib)) {
				t.Fatalf("%s is not sent after lib.sh", name)
			}
			cmd := exec.Command(shellcheck, "--norc", "-s", "sh", "-")
			cmd.Stdin = strings.NewReader(text)
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Errorf("shellcheck on lib.sh + %s (its line 1 is line %d here): %v\n%s", name, libLines+1, err, out)
			}
		})
	}
}
