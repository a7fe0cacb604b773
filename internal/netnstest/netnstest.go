// Package netnstest gives tests several "hosts" on one Linux machine: each
// host is a network namespace with its own address and its own real OpenSSH
// sshd, linked to the root namespace by a veth pair. It is imported only by
// _test.go files and needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN), iproute2
// and openssh-server; without them [New] skips the test, or fails it when
// $CI is set.
//
// Addressing. Every host gets a /24 of the benchmarking range 198.18.0.0/15,
// claimed machine-wide with a lock file under /run/pampa-netnstest, so test
// binaries running side by side never share a subnet. Host i of a Net gets
// some slot K: its address (Host.Addr) is 198.18.K.2 (198.19.K-256.2 above
// 255) on "eth0" inside its namespace, and the root side of its link
// (Host.Gateway) is 198.18.K.1 on the veth Host.Link. Inside a namespace the
// only routes are the link's /24 and 198.18.0.0/15 via Host.Gateway: there is
// no default route, so a process in a host reaches loopback, its gateway and
// the other hosts' gateways, and nothing else.
//
// The catch-all route. Before any traffic, [New] installs in the root
// namespace "unreachable 198.18.0.0/15 metric 4000" (shared by every run and
// left in place: it only makes the range unreachable when no link serves
// it). Without it, a dial to a host whose link is down would leave by the
// default route.
//
// Cutting links. This kernel has no tc netem, iptables or nft. [Host.Cut]
// sets the root side of the host's veth down: new connections from the root
// namespace fail at once with "no route to host", packets of established
// connections are dropped in both directions (they stall, as on a pulled
// cable, and are not reset), and [Host.Restore] brings the link back with the
// same sshd still running.
//
// PostgreSQL and other host-side services. The throwaway PostgreSQL listens
// on loopback only. [Net.Forward] runs an in-process TCP forwarder on every
// host's Gateway, on one port, to a target such as 127.0.0.1:5432, so a
// worker in any host connects to Gateway:port. Forwarders close at cleanup.
//
// Names. Namespaces are "pampa-<pid>-<slot>" and root-side veths
// "pampa-v<slot>". New first removes the leftovers of earlier runs whose
// process is gone (killing whatever still runs in their namespaces), and
// anything still using a slot it has just locked.
//
// Cleanup. t.Cleanup stops each sshd (TERM, then KILL), kills every process
// left in the namespaces (workers started over SSH included), deletes the
// veths and namespaces, and releases the slots.
package netnstest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/pampa-go/pampa/internal/sshtest"
)

const (
	// catchAll keeps 198.18.0.0/15 off the default route.
	catchAll = "198.18.0.0/15"
	// lockDir holds one lock file per slot.
	lockDir = "/run/pampa-netnstest"
	// maxSlot bounds the slots: 198.18.1.0/24 ... 198.19.255.0/24.
	maxSlot = 511
	// nsLink is the name of the host's end of its veth, in its namespace.
	nsLink = "eth0"
	// setupTimeout bounds New; cleanupTimeout bounds the cleanup.
	setupTimeout   = 60 * time.Second
	cleanupTimeout = 30 * time.Second
)

// Host is one namespace with its own address and sshd.
type Host struct {
	Name    string // "host0", "host1", ... in creation order
	NS      string // network namespace, for "ip netns exec NS" and "ip -n NS"
	Link    string // root-side veth, which Cut sets down
	Addr    string // address inside the namespace, e.g. 198.18.7.2
	Gateway string // root side of the link, e.g. 198.18.7.1; Forward listens here

	SSHPort       int           // sshd listens on Addr:SSHPort
	HostKey       ssh.PublicKey // sshd's host key, also in Net.KnownHostsFile
	User          string        // the current user, whom sshd accepts
	ClientKeyFile string        // unencrypted private key sshd accepts
	SSHDPid       int           // the sshd listener, stable across Cut and Restore

	slot   int
	lock   *os.File
	dir    string
	sshd   *exec.Cmd
	exited chan struct{} // closed when sshd has exited
}

// SSHAddr is Addr:SSHPort.
func (h *Host) SSHAddr() string { return net.JoinHostPort(h.Addr, strconv.Itoa(h.SSHPort)) }

// String names the host in test output.
func (h *Host) String() string { return fmt.Sprintf("%s (%s, netns %s)", h.Name, h.Addr, h.NS) }

// Command returns a command that runs name inside the host's namespace
// (with "ip netns exec"), as the test process's user. It is not stopped at
// cleanup unless it is still running in the namespace then.
func (h *Host) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", h.NS, name}, args...)...)
}

// Net is a set of hosts made by New.
type Net struct {
	Hosts          []*Host
	KnownHostsFile string // trusts every host's sshd at SSHAddr
	ClientKeyFile  string // accepted by every host's sshd
	User           string
}

// Available reports why network namespaces cannot be used here, or nil.
// It creates and deletes a probe namespace and veth.
func Available() error {
	if os.Geteuid() != 0 {
		return errors.New("network namespace tests need root (CAP_NET_ADMIN and CAP_SYS_ADMIN); run them as root, e.g. in a privileged container")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return fmt.Errorf("the ip command is missing; install iproute2: %w", err)
	}
	if _, err := os.Stat(sshtest.SSHDPath); err != nil {
		return fmt.Errorf("sshd not found at %s; install openssh-server: %w", sshtest.SSHDPath, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// Random, so parallel tests' probes don't collide; sweep knows the form.
	suffix := fmt.Sprintf("%08x", rand.Uint32())
	ns := fmt.Sprintf("pampa-%d-p%s", os.Getpid(), suffix)
	link := "pampa-p" + suffix
	if err := ip(ctx, "netns", "add", ns); err != nil {
		return fmt.Errorf("cannot create a network namespace (needs CAP_SYS_ADMIN and CAP_NET_ADMIN, a writable /run): %w", err)
	}
	defer func() { _ = ip(context.Background(), "netns", "del", ns) }()
	if err := ip(ctx, "link", "add", link, "type", "veth", "peer", "name", nsLink, "netns", ns); err != nil {
		return fmt.Errorf("cannot create a veth pair (enable CONFIG_VETH): %w", err)
	}
	_ = ip(ctx, "link", "del", link)
	return nil
}

// Require skips tb when network namespaces are unavailable, or fails it
// when $CI is set, so a CI machine without them is noticed.
func Require(tb testing.TB) {
	tb.Helper()
	if err := Available(); err != nil {
		if os.Getenv("CI") != "" {
			tb.Fatal(err)
		}
		tb.Skip(err)
	}
}

// New starts n hosts, each with its sshd accepting connections from the
// root namespace, and removes them all at cleanup.
func New(tb testing.TB, n int) *Net {
	tb.Helper()
	if n < 1 || n > maxSlot {
		tb.Fatalf("netnstest.New: %d hosts; want 1 to %d", n, maxSlot)
	}
	Require(tb)
	ctx, cancel := context.WithTimeout(tb.Context(), setupTimeout)
	defer cancel()

	if err := installCatchAll(ctx); err != nil {
		tb.Fatal(err)
	}
	sweep(ctx, func(pid int) bool { return pid != os.Getpid() && !alive(pid) })

	u, err := user.Current()
	if err != nil {
		tb.Fatal(err)
	}
	dir := tb.TempDir()
	nt := &Net{
		KnownHostsFile: filepath.Join(dir, "known_hosts"),
		ClientKeyFile:  filepath.Join(dir, "client_ed25519"),
		User:           u.Username,
	}
	clientKey := sshtest.NewKey(tb, nt.ClientKeyFile, "")
	authorized := filepath.Join(dir, "authorized_keys")
	if err := os.WriteFile(authorized, ssh.MarshalAuthorizedKey(clientKey), 0o600); err != nil {
		tb.Fatal(err)
	}
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil { // sshd's privilege separation directory
		tb.Fatal(err)
	}

	for i := range n {
		h := &Host{Name: fmt.Sprintf("host%d", i), SSHPort: 22, User: nt.User, ClientKeyFile: nt.ClientKeyFile}
		if err := claim(ctx, h); err != nil {
			tb.Fatal(err)
		}
		// Registered before anything exists, so a half-made host is removed too.
		tb.Cleanup(func() { h.teardown(tb) })
		if err := h.link(ctx); err != nil {
			tb.Fatalf("%s: %v", h.Name, err)
		}
		h.dir = filepath.Join(dir, h.Name)
		if err := os.Mkdir(h.dir, 0o700); err != nil {
			tb.Fatal(err)
		}
		hostKeyFile := filepath.Join(h.dir, "host_ed25519")
		h.HostKey = sshtest.NewKey(tb, hostKeyFile, "")
		if err := h.startSSHD(ctx, hostKeyFile, authorized); err != nil {
			tb.Fatalf("%s: %v", h, err)
		}
		sshtest.WriteKnownHosts(tb, nt.KnownHostsFile, h.SSHAddr(), h.HostKey)
		nt.Hosts = append(nt.Hosts, h)
	}
	return nt
}

// installCatchAll adds the unreachable route for the whole range, once per
// machine: an existing one is fine.
func installCatchAll(ctx context.Context) error {
	err := ip(ctx, "route", "add", "unreachable", catchAll, "metric", "4000")
	if err != nil && !strings.Contains(err.Error(), "File exists") {
		return fmt.Errorf("install catch-all route for %s: %w", catchAll, err)
	}
	return nil
}

// slotAddrs returns the gateway and host addresses of slot k.
func slotAddrs(k int) (gateway, addr string) {
	prefix := fmt.Sprintf("198.%d.%d.", 18+k/256, k%256)
	return prefix + "1", prefix + "2"
}

// claim locks a free slot for h and names its namespace and link. Whatever
// still uses the slot belongs to a dead run (its owner would hold the lock)
// and is removed; a slot whose addresses something else uses is skipped.
func claim(ctx context.Context, h *Host) error {
	if err := os.MkdirAll(lockDir, 0o755); err != nil {
		return fmt.Errorf("claim a test subnet: %w", err)
	}
	for k := 1; k <= maxSlot; k++ {
		f, err := os.OpenFile(filepath.Join(lockDir, fmt.Sprintf("slot-%d.lock", k)), os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return fmt.Errorf("claim a test subnet: %w", err)
		}
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			f.Close()
			continue
		}
		sweep(ctx, func(int) bool { return false }, k)
		gw, addr := slotAddrs(k)
		if out, _ := exec.CommandContext(ctx, "ip", "-o", "addr", "show", "to", gw+"/24").Output(); len(bytes.TrimSpace(out)) > 0 {
			f.Close() // another tool uses this subnet
			continue
		}
		h.slot, h.lock = k, f
		h.NS = fmt.Sprintf("pampa-%d-%d", os.Getpid(), k)
		h.Link = fmt.Sprintf("pampa-v%d", k)
		h.Gateway, h.Addr = gw, addr
		return nil
	}
	return fmt.Errorf("claim a test subnet: all %d slots of %s are in use; see %s", maxSlot, catchAll, lockDir)
}

// link creates h's namespace and veth and sets their addresses and routes.
func (h *Host) link(ctx context.Context) error {
	steps := [][]string{
		{"netns", "add", h.NS},
		{"link", "add", h.Link, "type", "veth", "peer", "name", nsLink, "netns", h.NS},
		{"addr", "add", h.Gateway + "/24", "dev", h.Link},
		{"link", "set", h.Link, "up"},
		{"-n", h.NS, "link", "set", "lo", "up"},
		{"-n", h.NS, "addr", "add", h.Addr + "/24", "dev", nsLink},
		{"-n", h.NS, "link", "set", nsLink, "up"},
		{"-n", h.NS, "route", "add", catchAll, "via", h.Gateway},
	}
	for _, args := range steps {
		if err := ip(ctx, args...); err != nil {
			return err
		}
	}
	return nil
}

// startSSHD runs sshd in h's namespace and waits until it accepts
// connections from the root namespace. The configuration is sshtest's
// (StartSSHD), listening on h.Addr.
func (h *Host) startSSHD(ctx context.Context, hostKeyFile, authorized string) error {
	config := sshtest.SSHDConfig(h.SSHAddr(), hostKeyFile, filepath.Join(h.dir, "sshd.pid"), authorized)
	configFile := filepath.Join(h.dir, "sshd_config")
	if err := os.WriteFile(configFile, []byte(config), 0o600); err != nil {
		return err
	}
	// A file, not a pipe: sshd's per-connection children inherit stderr,
	// and a pipe would make Wait wait for all of them.
	logw, err := os.Create(h.logFile())
	if err != nil {
		return err
	}
	defer logw.Close()
	// "ip netns exec" execs sshd after entering the namespace, so the
	// process is sshd itself.
	cmd := exec.Command("ip", "netns", "exec", h.NS, sshtest.SSHDPath, "-D", "-e", "-f", configFile)
	cmd.Stdout, cmd.Stderr = logw, logw
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start sshd: %w", err)
	}
	h.sshd, h.SSHDPid, h.exited = cmd, cmd.Process.Pid, make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(h.exited)
	}()
	err = h.waitAccepting(ctx)
	if err != nil {
		return fmt.Errorf("sshd did not accept connections on %s: %w\n%s", h.SSHAddr(), err, h.log())
	}
	return nil
}

// waitAccepting waits until h's sshd accepts connections from the root
// namespace, or has exited.
func (h *Host) waitAccepting(ctx context.Context) error {
	return poll(ctx, func() error {
		select {
		case <-h.exited:
			return errStop
		default:
		}
		c, err := net.DialTimeout("tcp", h.SSHAddr(), time.Second)
		if err != nil {
			return err
		}
		return c.Close()
	})
}

func (h *Host) logFile() string { return filepath.Join(h.dir, "sshd.log") }

func (h *Host) log() string {
	b, _ := os.ReadFile(h.logFile())
	return string(b)
}

// Cut sets the root side of h's link down: dials to h fail with "no route
// to host" and packets of open connections are dropped both ways.
func (h *Host) Cut(tb testing.TB) {
	tb.Helper()
	if err := ip(tb.Context(), "link", "set", h.Link, "down"); err != nil {
		tb.Fatalf("cut %s: %v", h, err)
	}
}

// Restore sets h's link up again and waits until its sshd, the same process
// as before, accepts connections from the root namespace.
func (h *Host) Restore(tb testing.TB) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(tb.Context(), 15*time.Second)
	defer cancel()
	if err := ip(ctx, "link", "set", h.Link, "up"); err != nil {
		tb.Fatalf("restore %s: %v", h, err)
	}
	err := h.waitAccepting(ctx)
	if err != nil {
		tb.Fatalf("restore %s: sshd not reachable: %v\n%s", h, err, h.log())
	}
}

// teardown stops sshd and everything else in h's namespace, deletes the
// link and namespace, and releases the slot.
func (h *Host) teardown(tb testing.TB) {
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	if h.sshd != nil {
		_ = h.sshd.Process.Signal(syscall.SIGTERM)
		select {
		case <-h.exited:
		case <-time.After(5 * time.Second):
			_ = h.sshd.Process.Kill()
			<-h.exited
		}
		if tb.Failed() {
			tb.Logf("%s: sshd log:\n%s", h, h.log())
		}
	}
	if h.NS != "" {
		if err := remove(ctx, h.NS, h.Link); err != nil {
			tb.Errorf("clean up %s: %v", h, err)
		}
	}
	if h.lock != nil {
		h.lock.Close() // releases the flock
	}
}

// remove kills every process in namespace ns, then deletes link and ns.
// Missing ones are fine: another run's sweep may be removing them too.
func remove(ctx context.Context, ns, link string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var errs []error
	err := poll(ctx, func() error {
		out, err := exec.CommandContext(ctx, "ip", "netns", "pids", ns).Output()
		if !nsExists(ns) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("ip netns pids %s: %w", ns, err)
		}
		pids := strings.Fields(string(out))
		for _, p := range pids {
			if pid, err := strconv.Atoi(p); err == nil {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		if len(pids) > 0 {
			return fmt.Errorf("processes still running in netns %s: %s", ns, strings.Join(pids, " "))
		}
		return nil
	})
	if err != nil {
		errs = append(errs, err)
	}
	if link != "" {
		// Deleting one end deletes both, at once; deleting the namespace
		// alone would free it in the background.
		if err := ip(ctx, "link", "del", link); err != nil && !strings.Contains(err.Error(), "Cannot find device") {
			errs = append(errs, err)
		}
	}
	if err := ip(ctx, "netns", "del", ns); err != nil && nsExists(ns) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func nsExists(ns string) bool {
	_, err := os.Stat(filepath.Join("/run/netns", ns))
	return err == nil
}

// nsName matches the namespaces of New ("pampa-<pid>-<slot>") and of
// Available ("pampa-<pid>-p<hex>").
var nsName = regexp.MustCompile(`^pampa-(\d+)-(\d+|p[0-9a-f]+)$`)

// sweep removes the namespaces (and their links) named by this package
// whose owner pid satisfies stale, and, whatever their owner, those of the
// given slots.
func sweep(ctx context.Context, stale func(pid int) bool, slots ...int) {
	out, err := exec.CommandContext(ctx, "ip", "netns", "list").Output()
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(out), "\n") {
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		m := nsName.FindStringSubmatch(fields[0])
		if m == nil {
			continue
		}
		pid, _ := strconv.Atoi(m[1])
		slot, err := strconv.Atoi(m[2])
		link := fmt.Sprintf("pampa-v%d", slot)
		if err != nil { // a probe, whose link lives and dies with it
			slot, link = 0, ""
		}
		if (slot > 0 && slices.Contains(slots, slot)) || stale(pid) {
			_ = remove(ctx, fields[0], link)
		}
	}
	// A link whose namespace is gone (or never made it) is removed by slot.
	for _, k := range slots {
		_ = ip(ctx, "link", "del", fmt.Sprintf("pampa-v%d", k))
	}
}

// alive says whether a process with this pid exists.
func alive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// ip runs the ip command and returns its output in the error.
func ip(ctx context.Context, args ...string) error {
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// errStop ends a poll early.
var errStop = errors.New("gave up")

// poll calls f until it returns nil, errStop, or ctx ends, and returns the
// last error.
func poll(ctx context.Context, f func() error) error {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		err := f()
		if err == nil || errors.Is(err, errStop) {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last error: %w)", context.Cause(ctx), err)
		case <-tick.C:
		}
	}
}
