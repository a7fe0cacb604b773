package deploy

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

// Where the binary and config live on a node, under its work dir.
const (
	BinaryFile = "bin/pampactl"
	ConfigFile = "cluster.toml"
)

// RequiredTools are the programs the worker scripts need on a node.
var RequiredTools = []string{"sh", "setsid", "sha256sum", "df", "tail"}

// probeScript: $1 work dir, then the tools to look for. One round trip
// tells the OS, the free space where the work dir is (or will be), the
// checksums of the deployed files and which tools are missing.
const probeScript = `wd=$1; shift
echo "uname $(uname -sm)"
d=$wd
while [ ! -d "$d" ]; do d=$(dirname -- "$d"); done
echo "df $(df -Pk -- "$d" | awk 'NR==2 {print $4}')"
for f in ` + BinaryFile + ` ` + ConfigFile + `; do
  p=$wd/$f
  if [ ! -f "$p" ]; then echo "sum $f -"; continue; fi
  meta=$(stat -c '%s %Y %i' -- "$p" 2>/dev/null)
  stamp=$(cat -- "$p.sha256" 2>/dev/null)
  if [ -n "$meta" ] && [ -n "$stamp" ] && [ "${stamp#* }" = "$meta" ]; then echo "sum $f ${stamp%% *}"
  else echo "sum $f $(sha256sum < "$p" | cut -d' ' -f1)"; fi
done
for t in "$@"; do command -v "$t" >/dev/null 2>&1 || echo "missing $t"; done
true
`

// stampScript: $1 work dir, $2 file, $3 its verified SHA-256. The stamp
// records the sum with the file's size, mtime and inode, so a later probe
// trusts it instead of hashing a 20 MB binary again while none of them
// changed (the quick check rsync uses; an upload renames, so the inode
// changes).
const stampScript = `p=$1/$2
m=$(stat -c '%s %Y %i' -- "$p") && echo "$3 $m" > "$p.sha256.tmp" && mv -f -- "$p.sha256.tmp" "$p.sha256"
`

// Stamp records the verified checksum of an uploaded file for ProbeNode.
func Stamp(ctx context.Context, r Remote, workDir, rel, sum string) error {
	if _, err := r.Run(ctx, sh(stampScript, workDir, rel, sum), nil); err != nil {
		return fmt.Errorf("record checksum of %s: %w", rel, err)
	}
	return nil
}

// Probe is what a node says about itself.
type Probe struct {
	OS, Arch     string // GOOS and GOARCH names: linux, amd64
	Uname        string // raw uname -sm
	FreeKiB      int64  // free space where the work dir is
	BinarySHA256 string // "" when no binary is deployed
	ConfigSHA256 string // "" when no config is deployed
	MissingTools []string
}

// ProbeNode asks the node for its OS, disk space, deployed files and tools.
func ProbeNode(ctx context.Context, r Remote, workDir string) (Probe, error) {
	out, err := r.Run(ctx, sh(probeScript, append([]string{workDir}, RequiredTools...)...), nil)
	if err != nil {
		return Probe{}, fmt.Errorf("probe node: %w", err)
	}
	return parseProbe(out)
}

func parseProbe(out []byte) (Probe, error) {
	var p Probe
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		kind, rest, _ := strings.Cut(sc.Text(), " ")
		switch kind {
		case "uname":
			p.Uname = rest
			p.OS, p.Arch = GoPlatform(rest)
		case "df":
			p.FreeKiB, _ = strconv.ParseInt(strings.TrimSpace(rest), 10, 64)
		case "sum":
			f, sum, _ := strings.Cut(rest, " ")
			if sum == "-" {
				sum = ""
			}
			switch f {
			case BinaryFile:
				p.BinarySHA256 = sum
			case ConfigFile:
				p.ConfigSHA256 = sum
			}
		case "missing":
			p.MissingTools = append(p.MissingTools, rest)
		}
	}
	if p.Uname == "" {
		return p, fmt.Errorf("probe node: unexpected output %q", out)
	}
	return p, nil
}

// GoPlatform maps `uname -sm` output ("Linux x86_64") to GOOS and GOARCH
// names ("linux", "amd64"). Unknown names are returned lower-cased.
func GoPlatform(unameSM string) (goos, goarch string) {
	sys, machine, _ := strings.Cut(strings.TrimSpace(unameSM), " ")
	goos = strings.ToLower(sys)
	switch machine {
	case "x86_64", "amd64":
		goarch = "amd64"
	case "aarch64", "arm64", "armv8l":
		goarch = "arm64"
	case "armv7l", "armv6l", "arm":
		goarch = "arm"
	case "i386", "i486", "i586", "i686", "x86":
		goarch = "386"
	case "ppc64le", "riscv64", "s390x", "loong64", "mips64", "mips64el":
		goarch = machine
	default:
		goarch = strings.ToLower(machine)
	}
	return goos, goarch
}

// bootstrapScript: $1 the public key line, $2 the authorized_keys file
// ("" = ~/.ssh/authorized_keys), $3 work dir. Adds the key unless its
// "type base64" part is there already, so running it twice changes
// nothing.
const bootstrapScript = `set -e
umask 077
key=$1; f=${2:-$HOME/.ssh/authorized_keys}; wd=$3
mkdir -p -- "$(dirname -- "$f")"
[ -n "$2" ] || chmod 700 -- "$(dirname -- "$f")"
touch -- "$f"
kb=$(printf '%s\n' "$key" | cut -d' ' -f1,2)
if grep -qF -- "$kb" "$f"; then echo "key present"
else
  if [ -s "$f" ] && [ -n "$(tail -c 1 -- "$f")" ]; then echo >> "$f"; fi
  printf '%s\n' "$key" >> "$f"; echo "key added"
fi
umask 022
mkdir -p -- "$wd/bin" "$wd/run"
`

// Bootstrap installs pubKey (an authorized_keys line) in authorizedKeys on
// the node ("" for ~/.ssh/authorized_keys) and creates the work dir. It
// is idempotent; added says whether the key was new.
func Bootstrap(ctx context.Context, r Remote, pubKey, authorizedKeys, workDir string) (added bool, err error) {
	pubKey = strings.TrimSpace(pubKey)
	if len(strings.Fields(pubKey)) < 2 || strings.ContainsAny(pubKey, "\n\r") {
		return false, fmt.Errorf("bootstrap: %q is not an authorized_keys line", pubKey)
	}
	out, err := r.Run(ctx, sh(bootstrapScript, pubKey, authorizedKeys, workDir), nil)
	if err != nil {
		return false, fmt.Errorf("install key and create work dir: %w", err)
	}
	return strings.Contains(string(out), "key added"), nil
}

// Uploader is what Push needs of an SSH node: atomic, checksummed upload
// (*sshx.Client).
type Uploader interface {
	Upload(ctx context.Context, r io.Reader, remotePath string, mode os.FileMode) error
}

// Push uploads r to WorkDir/rel with mode; the upload is atomic.
func Push(ctx context.Context, u Uploader, workDir, rel string, r io.Reader, mode os.FileMode) error {
	return u.Upload(ctx, r, workDir+"/"+rel, mode)
}
