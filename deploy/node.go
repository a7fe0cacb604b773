package deploy

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"strconv"
	"strings"
)

// Where the binary and config live on a node, under its work dir. The
// binary is whichever build runs the workers: the worker-only build by
// default, pampactl or a build of your own with Go handlers.
const (
	BinaryFile = "bin/pampa-worker"
	ConfigFile = "cluster.toml"
)

// RequiredTools are the programs the worker and log scripts need on a node.
var RequiredTools = []string{"sh", "setsid", "sha256sum", "df", "stat", "tail", "head", "base64"}

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

// ProbeNode asks the node for its OS, disk space, deployed files and tools
// (scripts/probe.sh).
func ProbeNode(ctx context.Context, r Remote, workDir string) (Probe, error) {
	out, err := r.Run(ctx, sh(probeScript, probeArgs(workDir)...), nil)
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

// Bootstrap installs pubKey (an authorized_keys line) in authorizedKeys on
// the node ("" for ~/.ssh/authorized_keys) and creates the work dir. It
// is idempotent; added says whether the key was new (scripts/bootstrap.sh).
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
