package pampacli_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pampa-go/pampa/internal/pgtest"
	"github.com/pampa-go/pampa/internal/sshtest"
)

// Fleet benchmarks: the SSH commands of pampactl against 8 real OpenSSH
// sshd on loopback, each beside the tool an operator would otherwise use.
// Run with
//
//	go test -run '^$' -bench Fleet -benchtime 5x ./cmd/pampactl/pampacli/
//
// Every remote command of sshd runs through the login shell of the user:
// when that is bash and ~/.bashrc is slow (pyenv init is ~150 ms), each
// command pays for it, pampactl and the reference tools alike; scp and
// SFTP uploads do not run a shell. To measure without that cost, run as
// root with PAMPA_BENCH_USER naming a user whose login shell is plain sh,
// such as one made by `useradd -r -M -s /bin/sh pampabench && usermod -p
// '*' pampabench` (sshd refuses a locked account, even for key logins):
// the nodes then log in as that user, whose work dirs and key files are
// opened to it. `make bench` runs these benchmarks too and writes their
// ratios into BENCHMARKS.md.

const benchNodes = 8

// envBenchUser names the SSH user of the benchmark nodes; "" is the
// current user.
const envBenchUser = "PAMPA_BENCH_USER"

type benchFleet struct {
	servers  []*sshtest.Server
	nodes    []node
	cfg      string // cluster.toml
	bin      string // the build deployed: the worker-only one, as nodes deploy pushes by default
	uid, gid int    // of the SSH user, when it is not the current one; else -1
}

// workDirs (re)creates the nodes' work dirs, owned by the SSH user.
func (f *benchFleet) workDirs(b *testing.B) {
	b.Helper()
	for _, n := range f.nodes {
		if err := os.MkdirAll(n.workDir, 0o755); err != nil {
			b.Fatal(err)
		}
		if f.uid >= 0 {
			if err := os.Chown(n.workDir, f.uid, f.gid); err != nil {
				b.Fatal(err)
			}
			openTo(b, n.workDir)
		}
	}
}

// openTo lets other users traverse the directories above path, up to the
// temporary directory: test dirs are 0700.
func openTo(b *testing.B, path string) {
	b.Helper()
	tmp := filepath.Clean(os.TempDir())
	for dir := filepath.Dir(path); strings.HasPrefix(dir, tmp+"/"); dir = filepath.Dir(dir) {
		fi, err := os.Stat(dir)
		if err != nil {
			b.Fatal(err)
		}
		if err := os.Chmod(dir, fi.Mode().Perm()|0o011); err != nil {
			b.Fatal(err)
		}
	}
}

// newBenchFleet starts the sshd servers and writes a cluster file for them,
// with maxWorkers workers per node.
func newBenchFleet(b *testing.B, dbURL string, maxWorkers int) *benchFleet {
	b.Helper()
	f := &benchFleet{bin: workerOnlyBinary(b), uid: -1, gid: -1}
	var sshUser *user.User
	if name := os.Getenv(envBenchUser); name != "" {
		var err error
		if sshUser, err = user.Lookup(name); err != nil {
			b.Fatalf("%s: %v", envBenchUser, err)
		}
		f.uid, _ = strconv.Atoi(sshUser.Uid)
		f.gid, _ = strconv.Atoi(sshUser.Gid)
	}
	for range benchNodes {
		srv := sshtest.StartSSHD(b)
		if sshUser != nil {
			// sshd reads authorized_keys as the user logging in.
			srv.User = sshUser.Username
			if err := os.Chmod(srv.AuthorizedKeysFile, 0o644); err != nil {
				b.Fatal(err)
			}
			openTo(b, srv.AuthorizedKeysFile)
		}
		f.servers = append(f.servers, srv)
	}
	for i, srv := range f.servers {
		n := sshNode(b, fmt.Sprintf("b%d", i), srv)
		n.maxWorkers = maxWorkers
		f.nodes = append(f.nodes, n)
	}
	f.cfg = writeConfig(b, dbURL, f.nodes...)
	f.workDirs(b)
	return f
}

func (f *benchFleet) must(b *testing.B, args ...string) result {
	b.Helper()
	r := pampactl(context.Background(), b, nil, append([]string{"--config", f.cfg}, args...)...)
	if r.code != 0 {
		b.Fatalf("pampactl %s:\n%s", strings.Join(args, " "), r)
	}
	return r
}

// sshArgs are OpenSSH client options equivalent to what pampactl uses.
func sshArgs(n node) []string {
	return []string{"-i", n.keyFile, "-o", "UserKnownHostsFile=" + n.knownHosts, "-o", "StrictHostKeyChecking=yes",
		"-o", "BatchMode=yes", "-o", "GlobalKnownHostsFile=/dev/null", "-F", "none"}
}

// timeIt returns how long f took.
func timeIt(f func()) time.Duration {
	start := time.Now()
	f()
	return time.Since(start)
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// BenchmarkFleetDeploy pushes the worker-only build (~12 MB) to 8 nodes: cold
// (nothing on the nodes), unchanged (everything already there), and, as the
// reference, scp of the same file to the 8 nodes, 8 scp processes at once.
func BenchmarkFleetDeploy(b *testing.B) {
	f := newBenchFleet(b, "postgres://x@127.0.0.1/db", 1)
	fi, err := os.Stat(f.bin)
	if err != nil {
		b.Fatal(err)
	}
	clear := func() {
		for _, n := range f.nodes {
			if err := os.RemoveAll(n.workDir); err != nil {
				b.Fatal(err)
			}
		}
		f.workDirs(b)
	}
	scpAll := func() {
		var wg sync.WaitGroup
		errs := make([]error, len(f.nodes))
		for i, n := range f.nodes {
			wg.Go(func() {
				dest := fmt.Sprintf("%s@%s:%s", n.srv.User, n.srv.Host, filepath.Join(n.workDir, "pampactl"))
				args := append(sshArgs(n), "-q", "-P", fmt.Sprint(n.srv.Port), f.bin, dest)
				if out, err := exec.Command("scp", args...).CombinedOutput(); err != nil {
					errs[i] = fmt.Errorf("scp to %s: %w\n%s", n.name, err, out)
				}
			})
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				b.Fatal(err)
			}
		}
	}
	var cold, unchanged, scp time.Duration
	for b.Loop() {
		clear()
		cold += timeIt(func() { f.must(b, "nodes", "deploy", "--binary", f.bin) })
		unchanged += timeIt(func() { f.must(b, "nodes", "deploy", "--binary", f.bin) })
		clear()
		scp += timeIt(scpAll)
	}
	n := float64(b.N)
	b.ReportMetric(float64(fi.Size())/1e6, "MB")
	b.ReportMetric(ms(cold)/n, "cold-ms")
	b.ReportMetric(ms(unchanged)/n, "unchanged-ms")
	b.ReportMetric(ms(scp)/n, "scp-ms")
	b.ReportMetric(float64(cold)/float64(scp), "cold/scp")
	b.ReportMetric(float64(unchanged)/float64(cold), "unchanged/cold")
}

// BenchmarkFleetWorkersStart starts 4 workers on each of 8 nodes (real
// worker processes, dialling a dispatcher that is not there), then stops
// them, untimed.
func BenchmarkFleetWorkersStart(b *testing.B) {
	const perNode = 4
	f := newBenchFleet(b, pgtest.Schema(b), perNode)
	f.must(b, "db", "setup")
	f.must(b, "nodes", "deploy", "--binary", f.bin)
	b.Cleanup(func() {
		pampactl(context.Background(), b, nil, "--config", f.cfg, "workers", "stop")
	})
	for b.Loop() {
		r := f.must(b, "workers", "start")
		b.StopTimer()
		if got := strings.Count(r.stdout, "\tstarted"); got != benchNodes*perNode {
			b.Fatalf("started %d workers, want %d:\n%s", got, benchNodes*perNode, r)
		}
		f.must(b, "workers", "stop")
		b.StartTimer()
	}
	b.ReportMetric(benchNodes*perNode, "workers")
}

// BenchmarkFleetCheck runs `nodes check` across 8 nodes, and as the
// reference GNU parallel running uname on each over ssh (--nonall).
func BenchmarkFleetCheck(b *testing.B) {
	parallel, err := exec.LookPath("parallel")
	if err != nil {
		b.Skip("GNU parallel is not installed (apt-get install parallel); it is the reference for this benchmark")
	}
	if out, _ := exec.Command(parallel, "--version").Output(); !strings.Contains(string(out), "GNU parallel") {
		b.Skipf("%s is not GNU parallel (moreutils has another); install the parallel package", parallel)
	}
	f := newBenchFleet(b, "postgres://x@127.0.0.1/db", 1)
	f.must(b, "nodes", "deploy", "--binary", f.bin)
	args := []string{"--will-cite", "--nonall", "--tag"}
	for _, n := range f.nodes {
		// "1/": one CPU, so parallel does not ssh first to count them.
		login := append([]string{"ssh"}, sshArgs(n)...)
		login = append(login, "-p", fmt.Sprint(n.srv.Port), n.srv.User+"@"+n.srv.Host)
		args = append(args, "-S", "1/"+strings.Join(login, " "))
	}
	args = append(args, "uname")
	// The citation notice and ~/.parallel are made on first use: not timed.
	if out, err := exec.Command(parallel, args...).CombinedOutput(); err != nil || strings.Count(string(out), "Linux") != benchNodes {
		b.Fatalf("parallel %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	var check, gnu time.Duration
	for b.Loop() {
		check += timeIt(func() { f.must(b, "nodes", "check") })
		gnu += timeIt(func() {
			if out, err := exec.Command(parallel, args...).CombinedOutput(); err != nil {
				b.Fatalf("parallel: %v\n%s", err, out)
			}
		})
	}
	n := float64(b.N)
	b.ReportMetric(ms(check)/n, "check-ms")
	b.ReportMetric(ms(gnu)/n, "parallel-ms")
	b.ReportMetric(float64(gnu)/float64(check), "parallel/check")
}
