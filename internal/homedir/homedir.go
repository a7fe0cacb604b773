// Package homedir expands a leading "~" in local paths, as a shell would,
// for paths read from config files where no shell has expanded them.
package homedir

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Expand replaces a leading "~" or "~/" with the home directory. Other
// paths come back as they are. "~user" is refused rather than guessed, and
// so is "~" when there is no home directory: the error comes with p
// unchanged.
func Expand(p string) (string, error) {
	if p != "~" && !strings.HasPrefix(p, "~/") {
		if strings.HasPrefix(p, "~") {
			return p, fmt.Errorf("%q: ~user is not supported", p)
		}
		return p, nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return p, fmt.Errorf("expand %q: %w", p, err)
	}
	return filepath.Join(home, p[1:]), nil
}
