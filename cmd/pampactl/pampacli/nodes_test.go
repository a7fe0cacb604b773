package pampacli_test

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pampa-go/pampa/internal/syncbuf"

	"github.com/pampa-go/pampa/cmd/pampactl/pampacli"
	"github.com/pampa-go/pampa/deploy"
	"github.com/pampa-go/pampa/internal/nettest"
	"github.com/pampa-go/pampa/internal/sshtest"
)

// TestMain is in cli_test.go (pgtest.RunMain).

var servers = []struct {
	name  string
	start func(testing.TB) *sshtest.Server
}{
	{"inproc", sshtest.NewServer},
	{"sshd", sshtest.StartSSHD},
}

// result is what one pampactl invocation did.
type result struct {
	code           int
	stdout, stderr string
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
}

// pampactl runs the CLI in-process.
func pampactl(ctx context.Context, t testing.TB, env map[string]string, args ...string) result {
	t.Helper()
	var stdout, stderr syncbuf.Buffer
	code := pampacli.Run(ctx, append([]string{"pampactl"}, args...), strings.NewReader(""), &stdout, &stderr,
		func(k string) string { return env[k] }, pampacli.Options{})
	return result{code, stdout.String(), stderr.String()}
}

// runTo runs the CLI with stdout and stderr both going to out.
func runTo(ctx context.Context, out *syncbuf.Buffer, args ...string) int {
	return pampacli.Run(ctx, append([]string{"pampactl"}, args...), strings.NewReader(""), out, out,
		func(string) string { return "" }, pampacli.Options{})
}

// node is one [[nodes]] entry.
type node struct {
	name       string
	srv        *sshtest.Server // nil: use addr
	addr       string          // host:port when srv is nil
	workDir    string
	knownHosts string
	keyFile    string
	password   string
	maxWorkers int
	extra      string // more keys of the node's section
}

func sshNode(t testing.TB, name string, srv *sshtest.Server) node {
	return node{name: name, srv: srv, workDir: filepath.Join(t.TempDir(), "work"), knownHosts: srv.KnownHosts(t), keyFile: srv.ClientKeyFile, maxWorkers: 2}
}

// freeAddr is a loopback address nothing listens on, for a dispatcher.
func freeAddr(t testing.TB) string { return nettest.FreeAddr(t) }

// writeConfig writes cluster.toml for the nodes and returns its path.
func writeConfig(t testing.TB, dbURL string, nodes ...node) string {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "[database]\nurl = %q\nurl_env = \"\"\n\n[dispatcher]\nlisten = %q\nlog_file = \"\"\ndelay = \"200ms\"\nheartbeat_timeout = \"5s\"\n\n[worker]\nheartbeat_interval = \"200ms\"\ngrace_period = \"1s\"\n\n", dbURL, freeAddr(t))
	for _, n := range nodes {
		host, port := "127.0.0.1", 0
		if n.srv != nil {
			port = n.srv.Port
		} else {
			var p string
			host, p, _ = strings.Cut(n.addr, ":")
			fmt.Sscan(p, &port)
		}
		user := ""
		if n.srv != nil {
			user = n.srv.User
		} else {
			user = "nobody"
		}
		fmt.Fprintf(&b, "[[nodes]]\nname = %q\nnet_remote_ip = %q\nssh_port = %d\nssh_username = %q\nwork_dir = %q\nmax_workers = %d\n",
			n.name, host, port, user, n.workDir, max(n.maxWorkers, 1))
		if n.knownHosts != "" {
			fmt.Fprintf(&b, "known_hosts_file = %q\n", n.knownHosts)
		}
		if n.keyFile != "" {
			fmt.Fprintf(&b, "ssh_private_key_file = %q\n", n.keyFile)
		}
		if n.password != "" {
			fmt.Fprintf(&b, "ssh_password = %q\n", n.password)
		}
		b.WriteString(n.extra)
		b.WriteString("\n")
	}
	path := filepath.Join(t.TempDir(), "cluster.toml")
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

var (
	buildMu sync.Mutex
	builds  = map[string]string{} // package → binary
)

// pampactlBinary builds ./cmd/pampactl once per test binary: what deploy
// pushes and what workers run.
func pampactlBinary(t testing.TB) string {
	return buildBinary(t, "github.com/pampa-go/pampa/cmd/pampactl")
}

// workerOnlyBinary builds ./cmd/pampa-worker once per test binary.
func workerOnlyBinary(t testing.TB) string {
	return buildBinary(t, "github.com/pampa-go/pampa/cmd/pampa-worker")
}

func buildBinary(t testing.TB, pkg string) string {
	t.Helper()
	buildMu.Lock()
	defer buildMu.Unlock()
	if p, ok := builds[pkg]; ok {
		return p
	}
	dir, err := os.MkdirTemp("", "pampa-bin-")
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, filepath.Base(pkg))
	if out, err := exec.Command("go", "build", "-o", p, pkg).CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, out)
	}
	builds[pkg] = p
	return p
}

// fakeELF writes a 64-bit ELF header for another architecture: enough for
// deploy to read its platform, and nothing else.
func fakeELF(t testing.TB, machine uint16) string {
	t.Helper()
	h := make([]byte, 64)
	copy(h, "\x7fELF")
	h[4], h[5], h[6] = 2, 1, 1                     // 64-bit, little endian, version 1
	binary.LittleEndian.PutUint16(h[16:], 2)       // ET_EXEC
	binary.LittleEndian.PutUint16(h[18:], machine) // e_machine
	binary.LittleEndian.PutUint32(h[20:], 1)       // e_version
	binary.LittleEndian.PutUint16(h[52:], 64)      // e_ehsize
	path := filepath.Join(t.TempDir(), "pampactl-linux-other")
	if err := os.WriteFile(path, h, 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

type checkRow struct {
	Node     string `json:"node"`
	OK       bool   `json:"ok"`
	Error    string `json:"error"`
	Platform string `json:"platform"`
	FreeKiB  int64  `json:"free_kib"`
	Binary   string `json:"binary"`
	Config   string `json:"config"`
}

func check(t *testing.T, cfg string, extra ...string) ([]checkRow, result) {
	t.Helper()
	r := pampactl(t.Context(), t, nil, append([]string{"--config", cfg, "nodes", "check", "--json"}, extra...)...)
	var rows []checkRow
	if err := json.Unmarshal([]byte(r.stdout), &rows); err != nil {
		t.Fatalf("nodes check --json: %v\n%s", err, r)
	}
	return rows, r
}

func TestNodesList(t *testing.T) {
	t.Parallel()
	srv := sshtest.NewServer(t)
	cfg := writeConfig(t, "postgres://x@127.0.0.1/db", sshNode(t, "w1", srv))
	r := pampactl(t.Context(), t, nil, "--config", cfg, "nodes", "list")
	if r.code != 0 || !strings.Contains(r.stdout, "w1") || !strings.Contains(r.stdout, srv.Addr) || !strings.Contains(r.stdout, "ssh") {
		t.Fatalf("nodes list:\n%s", r)
	}
	r = pampactl(t.Context(), t, nil, "--config", cfg, "nodes", "list", "--json")
	var rows []map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &rows); err != nil || len(rows) != 1 || rows[0]["max_workers"] != 2.0 {
		t.Fatalf("nodes list --json = %v, %v\n%s", rows, err, r)
	}
}

// TestCheckDeploy checks a node, deploys to it, checks again and deploys
// again, which must upload nothing. The work dir holds a space and shell
// syntax that must stay inert.
func TestCheckDeploy(t *testing.T) {
	t.Parallel()
	bin := pampactlBinary(t)
	for _, s := range servers {
		t.Run(s.name, func(t *testing.T) {
			t.Parallel()
			srv := s.start(t)
			n := sshNode(t, "w1", srv)
			root := t.TempDir()
			n.workDir = filepath.Join(root, "a b", "$(touch pwned)", "`touch pwned2`")
			cfg := writeConfig(t, "postgres://x@127.0.0.1/db", n)

			rows, r := check(t, cfg, "--binary", bin)
			if r.code != 0 || len(rows) != 1 || !rows[0].OK || rows[0].Platform != "linux/amd64" && rows[0].Platform != "linux/arm64" ||
				rows[0].FreeKiB <= 0 || rows[0].Binary != "missing" || rows[0].Config != "missing" {
				t.Fatalf("check before deploy: %+v\n%s", rows, r)
			}

			r = pampactl(t.Context(), t, nil, "--config", cfg, "nodes", "deploy", "--binary", bin)
			if r.code != 0 || !strings.Contains(r.stdout, "binary uploaded (pampactl), config uploaded") {
				t.Fatalf("first deploy:\n%s", r)
			}
			remoteBin := filepath.Join(n.workDir, deploy.BinaryFile)
			before, err := os.Stat(remoteBin)
			if err != nil {
				t.Fatal(err)
			}
			st, err := os.Stat(filepath.Join(n.workDir, "cluster.toml"))
			if err != nil || st.Mode().Perm() != 0o600 {
				t.Fatalf("deployed config: %v, mode %v; want 0600", err, st.Mode())
			}

			rows, r = check(t, cfg, "--binary", bin)
			if r.code != 0 || rows[0].Binary != "current" || rows[0].Config != "current" {
				t.Fatalf("check after deploy: %+v\n%s", rows, r)
			}

			r = pampactl(t.Context(), t, nil, "--config", cfg, "nodes", "deploy", "--binary", bin, "--json")
			var dep []struct {
				BinaryUploaded, ConfigUploaded bool `json:"-"`
				B                              bool `json:"binary_uploaded"`
				C                              bool `json:"config_uploaded"`
			}
			if err := json.Unmarshal([]byte(r.stdout), &dep); r.code != 0 || err != nil || len(dep) != 1 || dep[0].B || dep[0].C {
				t.Fatalf("second deploy uploaded something (%v):\n%s", err, r)
			}
			after, err := os.Stat(remoteBin)
			if err != nil {
				t.Fatal(err)
			}
			if before.Sys().(*syscall.Stat_t).Ino != after.Sys().(*syscall.Stat_t).Ino || !before.ModTime().Equal(after.ModTime()) {
				t.Error("second deploy replaced the unchanged binary")
			}
			for _, dir := range []string{root, filepath.Dir(n.workDir), ".", os.Getenv("HOME")} {
				for _, f := range []string{"pwned", "pwned2"} {
					if _, err := os.Stat(filepath.Join(dir, f)); err == nil {
						t.Errorf("%s/%s exists: the work dir was run as shell code", dir, f)
					}
				}
			}
		})
	}
}

func TestDeployWrongArch(t *testing.T) {
	t.Parallel()
	srv := sshtest.NewServer(t)
	cfg := writeConfig(t, "postgres://x@127.0.0.1/db", sshNode(t, "w1", srv))
	const emAARCH64, emX86_64 = 183, 62
	machine := uint16(emAARCH64)
	if out, _ := exec.Command("uname", "-m").Output(); strings.TrimSpace(string(out)) == "aarch64" {
		machine = emX86_64
	}
	r := pampactl(t.Context(), t, nil, "--config", cfg, "nodes", "deploy", "--binary", fakeELF(t, machine))
	if r.code != 1 || !strings.Contains(r.stderr, `node "w1"`) || !strings.Contains(r.stderr, "refusing to push") ||
		!strings.Contains(r.stderr, srv.Addr) || !strings.Contains(r.stderr, "make dist") {
		t.Fatalf("deploy of a wrong-arch binary:\n%s", r)
	}
}

// TestPartialFailure: a node that refuses connections fails alone, and the
// command exits 3 naming it.
func TestPartialFailure(t *testing.T) {
	t.Parallel()
	srv := sshtest.NewServer(t)
	deadAddr := sshtest.Blackhole(t)
	dead := node{name: "dead", addr: deadAddr, workDir: "/tmp/x", knownHosts: srv.KnownHosts(t), keyFile: srv.ClientKeyFile}
	cfg := writeConfig(t, "postgres://x@127.0.0.1/db", sshNode(t, "w1", srv), dead)
	start := time.Now()
	rows, r := check(t, cfg, "--ssh-timeout", "500ms")
	if r.code != 3 || len(rows) != 2 {
		t.Fatalf("check with a dead node:\n%s", r)
	}
	if time.Since(start) > 10*time.Second {
		t.Errorf("check took %s; the dead node's timeout is 500ms", time.Since(start))
	}
	for _, row := range rows {
		if ok := row.Node == "w1"; row.OK != ok {
			t.Errorf("node %s: ok = %v, want %v (%s)", row.Node, row.OK, ok, row.Error)
		}
	}
	if !strings.Contains(r.stderr, `node "dead"`) || !strings.Contains(r.stderr, deadAddr) || !strings.Contains(r.stderr, "timed out") ||
		!strings.Contains(r.stderr, "1 of 2 nodes") {
		t.Errorf("stderr does not explain the failure:\n%s", r)
	}
}

func TestHostKeys(t *testing.T) {
	t.Parallel()
	srv := sshtest.NewServer(t)
	t.Run("changed", func(t *testing.T) {
		t.Parallel()
		other := sshtest.NewServer(t) // a different host key
		n := sshNode(t, "w1", srv)
		n.knownHosts = filepath.Join(t.TempDir(), "known_hosts")
		sshtest.WriteKnownHosts(t, n.knownHosts, srv.Addr, other.HostKey)
		cfg := writeConfig(t, "postgres://x@127.0.0.1/db", n)
		for _, args := range [][]string{{"nodes", "check"}, {"--accept-new-host-keys", "nodes", "check"}, {"nodes", "trust", "w1"}} {
			r := pampactl(t.Context(), t, nil, append([]string{"--config", cfg}, args...)...)
			if r.code != 1 || !strings.Contains(r.stderr, `node "w1"`) || !strings.Contains(r.stderr, "changed") ||
				!strings.Contains(r.stderr, "ssh-keygen -f "+n.knownHosts+" -R") || !strings.Contains(r.stderr, "SHA256:") {
				t.Errorf("%v with a changed host key:\n%s", args, r)
			}
		}
	})
	t.Run("trust", func(t *testing.T) {
		t.Parallel()
		n := sshNode(t, "w1", srv)
		n.knownHosts = filepath.Join(t.TempDir(), "known_hosts")
		cfg := writeConfig(t, "postgres://x@127.0.0.1/db", n)
		if r := pampactl(t.Context(), t, nil, "--config", cfg, "nodes", "check"); r.code != 1 || !strings.Contains(r.stderr, "nodes trust") {
			t.Fatalf("check of an unknown host:\n%s", r)
		}
		r := pampactl(t.Context(), t, nil, "--config", cfg, "nodes", "trust", "w1")
		if r.code != 0 || !strings.Contains(r.stdout, "SHA256:") || !strings.Contains(r.stdout, "added") {
			t.Fatalf("trust:\n%s", r)
		}
		if r := pampactl(t.Context(), t, nil, "--config", cfg, "nodes", "trust", "w1"); r.code != 0 || !strings.Contains(r.stdout, "already trusted") {
			t.Fatalf("second trust:\n%s", r)
		}
		if r := pampactl(t.Context(), t, nil, "--config", cfg, "nodes", "check"); r.code != 0 {
			t.Fatalf("check after trust:\n%s", r)
		}
	})
	t.Run("accept-new", func(t *testing.T) {
		t.Parallel()
		n := sshNode(t, "w1", srv)
		n.knownHosts = filepath.Join(t.TempDir(), "known_hosts")
		cfg := writeConfig(t, "postgres://x@127.0.0.1/db", n)
		if r := pampactl(t.Context(), t, nil, "--config", cfg, "nodes", "check", "--accept-new-host-keys"); r.code != 0 {
			t.Fatalf("check --accept-new-host-keys:\n%s", r)
		}
		if r := pampactl(t.Context(), t, nil, "--config", cfg, "nodes", "check"); r.code != 0 {
			t.Fatalf("check after accepting the key:\n%s", r)
		}
	})
}

// TestBootstrap logs in with a password, installs a new key, and then the
// key alone works. Twice changes nothing.
func TestBootstrap(t *testing.T) {
	t.Parallel()
	srv := sshtest.NewServer(t)
	key := filepath.Join(t.TempDir(), "id_ed25519")
	sshtest.NewKey(t, key, "")
	n := sshNode(t, "w1", srv)
	n.keyFile, n.password = key, srv.Password
	cfg := writeConfig(t, "postgres://x@127.0.0.1/db", n)
	keyOnly := n
	keyOnly.password = ""
	keyCfg := writeConfig(t, "postgres://x@127.0.0.1/db", keyOnly)

	if r := pampactl(t.Context(), t, nil, "--config", keyCfg, "nodes", "check"); r.code != 1 || !strings.Contains(r.stderr, "authentication failed") {
		t.Fatalf("check with a key not installed yet:\n%s", r)
	}
	for i, want := range []string{"key installed; key login ok", "key already installed; key login ok"} {
		r := pampactl(t.Context(), t, nil, "--config", cfg, "nodes", "bootstrap", "--authorized-keys", srv.AuthorizedKeysFile)
		if r.code != 0 || !strings.Contains(r.stdout, want) {
			t.Fatalf("bootstrap #%d:\n%s", i+1, r)
		}
		if strings.Contains(r.stdout+r.stderr, srv.Password) {
			t.Fatalf("bootstrap printed the password:\n%s", r)
		}
	}
	data, err := os.ReadFile(srv.AuthorizedKeysFile)
	if err != nil || strings.Count(string(data), "ssh-ed25519") != 1 {
		t.Fatalf("authorized_keys after two bootstraps (%v):\n%s", err, data)
	}
	if st, err := os.Stat(filepath.Join(n.workDir, "bin")); err != nil || !st.IsDir() {
		t.Fatalf("work dir not created: %v", err)
	}
	if r := pampactl(t.Context(), t, nil, "--config", keyCfg, "nodes", "check"); r.code != 0 {
		t.Fatalf("check with the installed key:\n%s", r)
	}
}

// nodes check reports how a node enforces each resource limit, as the
// node's own pampactl finds it: kernel (a cgroup per step), worker, or
// none, with the reason. Before deploy it says it cannot know yet.
func TestCheckReportsResourceLimits(t *testing.T) {
	t.Parallel()
	bin := pampactlBinary(t)
	srv := sshtest.NewServer(t)
	n := sshNode(t, "w1", srv)
	n.extra = "max_ram = 256\nmax_cpu = 50\nmax_net_io = 10\n"
	cfg := writeConfig(t, "postgres://x@127.0.0.1/db", n)
	r := pampactl(t.Context(), t, nil, "--config", cfg, "nodes", "check", "--binary", bin)
	if r.code != 0 || !strings.Contains(r.stderr, "resource limits: not known until the worker binary is deployed") {
		t.Fatalf("check before deploy:\n%s", r)
	}
	if r := pampactl(t.Context(), t, nil, "--config", cfg, "nodes", "deploy", "--binary", bin); r.code != 0 {
		t.Fatalf("deploy:\n%s", r)
	}
	r = pampactl(t.Context(), t, nil, "--config", cfg, "nodes", "check", "--json", "--binary", bin)
	var rows []struct {
		Limits []struct{ Limit, By, Reason string } `json:"limits"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &rows); err != nil || r.code != 0 || len(rows) != 1 {
		t.Fatalf("check --json: %v\n%s", err, r)
	}
	by := map[string]string{}
	for _, l := range rows[0].Limits {
		by[l.Limit] = l.By
		if l.Reason == "" {
			t.Errorf("limit %s: no reason given", l.Limit)
		}
	}
	if len(by) != 3 || by["max_net_io"] != "none" || (by["max_ram"] != "kernel" && by["max_ram"] != "worker") ||
		(by["max_cpu"] != "kernel" && by["max_cpu"] != "worker") {
		t.Fatalf("limits reported: %+v\n%s", rows[0].Limits, r)
	}
	if os.Geteuid() == 0 && os.Getenv("CI") != "" && by["max_ram"] != "kernel" {
		t.Errorf("as root in CI, max_ram should be the kernel's: %+v", rows[0].Limits)
	}
	r = pampactl(t.Context(), t, nil, "--config", cfg, "nodes", "check", "--binary", bin)
	if !strings.Contains(r.stdout, "w1: max_net_io 10 MB/s by none: cgroups do not limit network bandwidth") {
		t.Errorf("nodes check does not show the limits:\n%s", r)
	}
}
