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
// dispatcher through the tunnel `dispatcher run` keeps open, their only
// way to it; a node that cannot be reached when the dispatcher starts gets
// its tunnel once it can. The tunnel closes with the dispatcher.
func TestDispatcherKeepsTunnelsOpen(t *testing.T) {
	t.Parallel()
	const rows = 200
	bin := pampactlBinary(t)
	srv := sshtest.StartSSHD(t)
	dbURL := pgtest.Schema(t)
	createItems(t, dbURL, rows)

	// The node is reached through a link that can go down.
	link := sshtest.NewLink(t, srv.Addr)
	host, port, _ := net.SplitHostPort(link.Addr)
	viaLink := *srv
	viaLink.Addr, viaLink.Host = link.Addr, host
	viaLink.Port, _ = strconv.Atoi(port)
	n := tunnelNode{sshNode(t, "w1", srv), unusedPort(t)}
	sshtest.WriteKnownHosts(t, n.knownHosts, link.Addr, srv.HostKey)
	c := newCluster(t, &viaLink, dbURL, n)

	// Deployed and started before any dispatcher runs: the workers dial
	// the tunnel's end, where nothing listens yet, and keep trying.
	c.must("nodes", "deploy", "--binary", bin)
	c.checkNodeConfig(n.node, n.tunnelAddr())
	r := c.must("workers", "start")
	for _, id := range []string{"w1.1", "w1.2"} {
		if !strings.Contains(r.stdout, id+"\tstarted") {
			t.Fatalf("workers start did not start %s:\n%s", id, r)
		}
	}
	pids := map[string]int{"w1.1": pidOf(t, n.workDir, "w1.1"), "w1.2": pidOf(t, n.workDir, "w1.2")}

	link.SetDown(true)
	d := startBackground(t, c.cli, "dispatcher", "run", "--ssh-timeout", "2s")
	poll(t, "the dispatcher tries the node while its link is down", func() string {
		d.running()
		if link.Refused() == 0 {
			return "no connection attempt yet"
		}
		return ""
	})
	link.SetDown(false)
	waitRowsDoneBy(t, c.conn, rows, n.node, d)
	waitOnlyThroughTunnel(t, n.port, pids)
	r = d.stop()
	if !strings.Contains(r.stderr, `node "w1"`) || !strings.Contains(r.stderr, "retrying in the background") {
		t.Errorf("dispatcher run does not say w1's tunnel failed and is retried:\n%s", r)
	}
	waitTunnelClosed(t, "the tunnel closes with the dispatcher", n.port)
}
