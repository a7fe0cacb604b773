package pampacli_test

import (
	"net"
	"strconv"
	"strings"
	"testing"

	"github.com/pampa-go/pampa/internal/pgtest"
	"github.com/pampa-go/pampa/internal/sshtest"
)

// Workers started with `workers start` on a tunnel node reach the
// database through the tunnel `dispatcher run` keeps open; a node that
// cannot be reached when the dispatcher starts gets its tunnel once it can.
func TestDispatcherKeepsTunnelsOpen(t *testing.T) {
	t.Parallel()
	const rows = 200
	bin := pampactlBinary(t)
	srv := sshtest.StartSSHD(t)
	direct := pgtest.Schema(t)
	createItems(t, direct, rows)

	// The node is reached through a link that can go down.
	link := sshtest.NewLink(t, srv.Addr)
	host, port, _ := net.SplitHostPort(link.Addr)
	viaLink := *srv
	viaLink.Addr, viaLink.Host = link.Addr, host
	viaLink.Port, _ = strconv.Atoi(port)
	n := sshNode(t, "w1", srv)
	sshtest.WriteKnownHosts(t, n.knownHosts, link.Addr, srv.HostKey)
	cli, conn := tunnelCluster(t, &viaLink, direct, tunnelNode{n, unusedPort(t)})

	for _, args := range [][]string{{"nodes", "deploy", "--binary", bin}, {"workers", "start"}} {
		if r := cli(t.Context(), args...); r.code != 0 {
			t.Fatalf("%s:\n%s", strings.Join(args, " "), r)
		}
	}
	link.SetDown(true)
	d := startBackground(t, cli, "dispatcher", "run", "--ssh-timeout", "2s")
	poll(t, "the dispatcher tries the node while its link is down", func() string {
		if link.Refused() == 0 {
			return "no connection attempt yet"
		}
		return ""
	})
	link.SetDown(false)
	waitRowsDoneBy(t, conn, rows, "w1", d)
	r := d.stop()
	if !strings.Contains(r.stderr, `node "w1"`) || !strings.Contains(r.stderr, "retrying in the background") {
		t.Errorf("dispatcher run does not say w1's tunnel failed and is retried:\n%s", r)
	}
}
