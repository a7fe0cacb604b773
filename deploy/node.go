package deploy

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"strconv"
	"strings"
)

// Where the binary and config live on a node, under its work dir.
const (
	BinaryFile = "bin/pampactl"
	ConfigFile = "cluster.toml"
)

// RequiredTools are the programs the worker and log scripts need on a node.
var RequiredTools = []string{"sh", "setsid", "sha256sum", "df", "stat", "tail", "head", "base64"}

// probeScript: $1 work dir, then the tools to look for. One round trip
// tells the OS, the free space where the work dir is (or will be), the
// checksums of the deployed files, which tools are missing and what
// systemd offers (see Systemd): /run/systemd/system exists only when
// systemd is PID 1 (what sd_booted checks), and each systemd question is
// asked only then, with timeout where it exists, so a node without
// systemd answers at once and a stuck bus cannot hang the probe.
const probeScript = probeBody + "true\n"

// It starts with a newline: a login script's output without one would
// otherwise run into the first line.
const probeBody = sumFunc + `wd=$1; shift
echo
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
  else echo "sum $f $(sum "$p")"; fi
done
for t in "$@"; do command -v "$t" >/dev/null 2>&1 || echo "missing $t"; done
sd=none linger=no kill=no
if [ -d /run/systemd/system ]; then
  sd=system
  to=; command -v timeout >/dev/null 2>&1 && to="timeout 5"
  $to systemctl --user show-environment >/dev/null 2>&1 && sd=user
  [ "$($to loginctl show-user "$(id -un)" -p Linger --value 2>/dev/null)" = yes ] && linger=yes
  [ "$($to busctl get-property org.freedesktop.login1 /org/freedesktop/login1 org.freedesktop.login1.Manager KillUserProcesses 2>/dev/null)" = "b true" ] && kill=yes
fi
echo "systemd $sd $linger $kill"
`

// Probe is what a node says about itself.
type Probe struct {
	OS, Arch     string // GOOS and GOARCH names: linux, amd64
	Uname        string // raw uname -sm
	FreeKiB      int64  // free space where the work dir is
	BinarySHA256 string // "" when no binary is deployed
	ConfigSHA256 string // "" when no config is deployed
	MissingTools []string
	Systemd      Systemd
}

// Systemd is what a node offers to start workers as systemd user units
// (systemd-run --user) instead of with setsid. Workers are started with
// setsid everywhere; this is detected and reported, never assumed,
// because many nodes (containers, this project's CI) have no systemd as
// PID 1.
type Systemd struct {
	// Booted: systemd is PID 1 (/run/systemd/system exists).
	Booted bool `json:"booted"`
	// UserManager: `systemctl --user` reaches the login's user manager,
	// so systemd-run --user could start a worker as a unit.
	UserManager bool `json:"user_manager"`
	// Linger: the user manager runs without a login (loginctl
	// enable-linger), so units started by it outlive the SSH session.
	Linger bool `json:"linger"`
	// KillUserProcesses: logind kills every process of a login when it
	// ends, setsid ones included: workers started over SSH would die
	// with the session that started them.
	KillUserProcesses bool `json:"kill_user_processes"`
}

// String is the short form `nodes check` shows: none, system (PID 1, no
// user manager for this login), user, or user+linger.
func (s Systemd) String() string {
	switch {
	case !s.Booted:
		return "none"
	case !s.UserManager:
		return "system"
	case s.Linger:
		return "user+linger"
	}
	return "user"
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
		case "systemd":
			f := strings.Fields(rest)
			if len(f) == 3 {
				p.Systemd = Systemd{Booted: f[0] != "none", UserManager: f[0] == "user", Linger: f[1] == "yes", KillUserProcesses: f[2] == "yes"}
			}
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
