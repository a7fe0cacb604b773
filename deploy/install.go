package deploy

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"strings"
)

// sumFunc defines sum FILE: the file's hex SHA-256. OpenSSL, where the node
// has it, hashes about twice as fast as coreutils' sha256sum, which is the
// fallback.
const sumFunc = `sum() {
  if command -v openssl >/dev/null 2>&1; then openssl dgst -sha256 -r < "$1" | cut -d' ' -f1
  else sha256sum < "$1" | cut -d' ' -f1; fi
}
`

// installScript: $1 work dir, then triples of (file under the work dir,
// temporary file beside it, the SHA-256 it must have). Every temporary
// file is checked first; if one does not match, all are removed and the
// script fails, leaving the node's files as they were. Then each is
// renamed over its file (rename(2): atomic, and a running binary can be
// replaced) and stamped for ProbeNode.
const installScript = sumFunc + `wd=$1; shift
check() {
  while [ $# -ge 3 ]; do
    got=$(sum "$2")
    if [ "$got" != "$3" ]; then echo "mismatch $1 $got"; return 1; fi
    shift 3
  done
}
if ! check "$@"; then
  while [ $# -ge 3 ]; do rm -f -- "$2"; shift 3; done
  exit 1
fi
while [ $# -ge 3 ]; do
  p=$wd/$1
  mv -f -- "$2" "$p" || exit 1
  m=$(stat -c '%s %Y %i' -- "$p") && echo "$3 $m" > "$p.sha256.tmp" && mv -f -- "$p.sha256.tmp" "$p.sha256"
  shift 3
done
`

// Stager is what deploying needs of an SSH node (*sshx.Client): create
// directories and upload files to temporary names, over SFTP, which runs
// no command.
type Stager interface {
	MkdirAll(ctx context.Context, dir string) error
	Stage(ctx context.Context, r io.Reader, remotePath string, mode os.FileMode) (string, error)
}

// Staged is a file uploaded to a temporary name, waiting to be installed.
type Staged struct {
	Rel    string // where it goes, under the work dir: BinaryFile, ConfigFile
	Temp   string // the temporary file on the node, beside its target
	SHA256 string // what the data sent hashes to
}

// Install checks and moves staged files into place on the node, in one
// command for all of them (each remote command costs a login shell).
func Install(ctx context.Context, r Remote, workDir string, files []Staged) error {
	args := []string{workDir}
	for _, f := range files {
		args = append(args, f.Rel, f.Temp, f.SHA256)
	}
	out, err := r.Run(ctx, sh(installScript, args...), nil)
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 3 && f[0] == "mismatch" {
			for _, s := range files {
				if s.Rel == f[1] {
					return fmt.Errorf("install %s: checksum mismatch: sent sha256 %s, node has %s; nothing was replaced", s.Rel, s.SHA256, f[2])
				}
			}
		}
	}
	if err != nil {
		return fmt.Errorf("install %d file(s) in %s: %w", len(files), workDir, err)
	}
	return nil
}

// Discard removes staged files after a failed deploy, best effort: they
// are hidden temporary names, and the caller reports the failure.
func Discard(ctx context.Context, r Remote, files []Staged) {
	if len(files) == 0 {
		return
	}
	argv := []string{"rm", "-f", "--"}
	for _, f := range files {
		argv = append(argv, f.Temp)
	}
	_, _ = r.Run(ctx, argv, nil)
}
