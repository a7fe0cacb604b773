package netnstest_test

import (
	"bufio"
	"errors"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/pampa-go/pampa/internal/netnstest"
	"github.com/pampa-go/pampa/sshx"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// config reaches h with the Net's key and known_hosts only.
func config(n *netnstest.Net, h *netnstest.Host) sshx.Config {
	return sshx.Config{
		Host:              h.Addr,
		Port:              h.SSHPort,
		User:              h.User,
		KeyFiles:          []string{h.ClientKeyFile},
		KnownHostsFile:    n.KnownHostsFile,
		SSHConfigFile:     "none",
		ConnectTimeout:    2 * time.Second,
		HandshakeTimeout:  10 * time.Second,
		KeepAliveInterval: -1,
	}
}

func dial(t *testing.T, n *netnstest.Net, h *netnstest.Host) *sshx.Client {
	t.Helper()
	c, err := sshx.Dial(t.Context(), config(n, h))
	if err != nil {
		t.Fatalf("%s: %v", h, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func run(t *testing.T, c *sshx.Client, argv ...string) string {
	t.Helper()
	out, err := c.Run(t.Context(), argv, nil)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

// echoServer answers each line with the same line, on 127.0.0.1.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				s := bufio.NewScanner(c)
				for s.Scan() {
					if _, err := c.Write(append(s.Bytes(), '\n')); err != nil {
						return
					}
				}
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

// TestHosts checks that every host is its own namespace with its own
// address, reachable over SSH from the root namespace, and that it reaches
// a loopback service through Forward.
func TestHosts(t *testing.T) {
	t.Parallel()
	n := netnstest.New(t, 3)
	port := n.Forward(t, echoServer(t))

	rootNS, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]string{rootNS: "the root namespace"}
	for _, h := range n.Hosts {
		t.Run(h.Name, func(t *testing.T) {
			c := dial(t, n, h)

			ns := strings.TrimSpace(run(t, c, "readlink", "/proc/self/ns/net"))
			if other, ok := seen[ns]; ok {
				t.Errorf("%s runs in %s, as %s does", h, ns, other)
			}
			seen[ns] = h.Name

			addrs := run(t, c, "ip", "-4", "-o", "addr", "show")
			if !strings.Contains(addrs, " "+h.Addr+"/24 ") {
				t.Errorf("%s: addresses lack %s:\n%s", h, h.Addr, addrs)
			}
			for _, other := range n.Hosts {
				if other != h && strings.Contains(addrs, " "+other.Addr+"/") {
					t.Errorf("%s: has %s's address %s:\n%s", h, other.Name, other.Addr, addrs)
				}
			}
			// No default route: nothing but the test range leaves the host.
			if routes := run(t, c, "ip", "-4", "route", "show"); strings.Contains(routes, "default") {
				t.Errorf("%s has a default route:\n%s", h, routes)
			}

			// bash is in Debian's essential set; its /dev/tcp needs no nc.
			const script = `exec 3<>"/dev/tcp/$1/$2" && echo "ping $1" >&3 && read -r line <&3 && echo "$line"`
			out := run(t, c, "bash", "-c", script, "bash", h.Gateway, strconv.Itoa(port))
			if want := "ping " + h.Gateway; strings.TrimSpace(out) != want {
				t.Errorf("%s: echo through %s:%d = %q, want %q", h, h.Gateway, port, out, want)
			}
		})
	}
}

// TestCutRestore cuts one host's link: dials to it fail without leaving by
// the default route, the other hosts still work, and after Restore the same
// sshd answers again.
func TestCutRestore(t *testing.T) {
	t.Parallel()
	n := netnstest.New(t, 3)
	cut := n.Hosts[1]
	pid := cut.SSHDPid

	// A raw connection to sshd, open across the cut: sshd has sent its
	// banner and answers the client's with its key exchange message.
	open, err := net.DialTimeout("tcp", cut.SSHAddr(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	_ = open.SetReadDeadline(time.Now().Add(10 * time.Second))
	banner, err := bufio.NewReader(open).ReadString('\n')
	if err != nil || !strings.HasPrefix(banner, "SSH-2.0-") {
		t.Fatalf("sshd banner of %s = %q, %v", cut, banner, err)
	}

	cut.Cut(t)

	start := time.Now()
	c, err := sshx.Dial(t.Context(), config(n, cut))
	if err == nil {
		c.Close()
		t.Fatalf("dial %s after Cut succeeded", cut)
	}
	if !errors.Is(err, syscall.EHOSTUNREACH) && !strings.Contains(err.Error(), "timed out") {
		t.Errorf("dial %s after Cut: %v; want no route to host or a timeout", cut, err)
	}
	t.Logf("dial %s after Cut failed in %s: %v", cut, time.Since(start).Round(time.Millisecond), err)

	route := routeGet(t, cut.Addr)
	t.Logf("ip route get %s while cut: %s", cut.Addr, route)
	if !strings.Contains(route, "unreachable") && !strings.Contains(route, "No route to host") {
		t.Errorf("ip route get %s while cut = %q; want the unreachable catch-all", cut.Addr, route)
	}
	assertNotDefault(t, cut, route)

	// The open connection stalls: no answer and no reset.
	if _, err := open.Write([]byte("SSH-2.0-netnstest\r\n")); err != nil {
		t.Fatalf("write to %s while cut: %v", cut, err)
	}
	_ = open.SetReadDeadline(time.Now().Add(time.Second))
	buf := make([]byte, 1)
	if _, err := open.Read(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("read from %s while cut: %v; want a timeout (dropped packets)", cut, err)
	}

	for _, h := range n.Hosts {
		if h != cut {
			if got := strings.TrimSpace(run(t, dial(t, n, h), "echo", "ok")); got != "ok" {
				t.Errorf("%s while %s is cut: echo = %q", h, cut.Name, got)
			}
		}
	}

	cut.Restore(t)
	route = routeGet(t, cut.Addr)
	if !strings.Contains(route, "dev "+cut.Link) {
		t.Errorf("ip route get %s after Restore = %q; want dev %s", cut.Addr, route, cut.Link)
	}
	assertNotDefault(t, cut, route)

	// The stalled connection resumes: TCP retransmits, sshd answers.
	_ = open.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := open.Read(buf); err != nil {
		t.Errorf("read from %s after Restore on a connection open across the cut: %v", cut, err)
	}

	c = dial(t, n, cut)
	if got := strings.TrimSpace(run(t, c, "echo", "back")); got != "back" {
		t.Errorf("%s after Restore: echo = %q", cut, got)
	}
	if cut.SSHDPid != pid || syscall.Kill(pid, 0) != nil {
		t.Errorf("%s: sshd pid %d (was %d) is not the same live process", cut, cut.SSHDPid, pid)
	}
	out, err := exec.CommandContext(t.Context(), "ip", "netns", "identify", strconv.Itoa(pid)).Output()
	if err != nil || strings.TrimSpace(string(out)) != cut.NS {
		t.Errorf("ip netns identify %d (sshd) = %q, %v; want %s", pid, out, err, cut.NS)
	}
	out, err = cut.Command(t.Context(), "ip", "-4", "-o", "addr", "show", "dev", "eth0").CombinedOutput()
	if err != nil || !strings.Contains(string(out), " "+cut.Addr+"/24 ") {
		t.Errorf("ip addr in %s (Command): %v: %s", cut, err, out)
	}
}

// routeGet returns what the root namespace's routing table says about addr,
// including the error text of an unreachable route.
func routeGet(t *testing.T, addr string) string {
	t.Helper()
	out, err := exec.CommandContext(t.Context(), "ip", "-4", "route", "get", addr).CombinedOutput()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}

// assertNotDefault fails when route would send h's traffic by the default
// route.
func assertNotDefault(t *testing.T, h *netnstest.Host, route string) {
	t.Helper()
	out, err := exec.CommandContext(t.Context(), "ip", "-4", "route", "show", "default").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		for i := 0; i+1 < len(f); i++ {
			if (f[i] == "via" || f[i] == "dev") && strings.Contains(route, f[i]+" "+f[i+1]) {
				t.Errorf("route to %s = %q uses the default route %q", h, route, line)
			}
		}
	}
	if strings.Contains(route, " via ") {
		t.Errorf("route to %s = %q goes through a gateway", h, route)
	}
}
