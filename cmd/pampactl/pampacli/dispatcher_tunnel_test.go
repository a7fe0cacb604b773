package pampacli_test

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pampa-go/pampa/cmd/pampactl/pampacli"
	"github.com/pampa-go/pampa/internal/pgtest"
	"github.com/pampa-go/pampa/internal/sshtest"
)

// Workers started with `workers start` on a db_tunnel node reach the
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
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan result, 1)
	go func() { done <- cli(ctx, "dispatcher", "run", "--ssh-timeout", "2s") }()
	poll(t, "the dispatcher tries the node while its link is down", func() string {
		if link.Refused() == 0 {
			return "no connection attempt yet"
		}
		return ""
	})
	link.SetDown(false)

	poll(t, "the workers process every row through the tunnel", func() string {
		select {
		case r := <-done:
			t.Fatalf("dispatcher run returned before it was cancelled:\n%s", r)
		default:
		}
		var byW1 int
		q := fmt.Sprintf(`select count(*) from items where done and %[1]s_success and %[1]s_reservation_id like 'w1.%%'`, upJob)
		if err := conn.QueryRow(t.Context(), q).Scan(&byW1); err != nil {
			t.Fatal(err)
		}
		if byW1 != rows {
			return fmt.Sprintf("%d of %d rows done by w1's workers", byW1, rows)
		}
		return ""
	})
	cancel()
	var r result
	select {
	case r = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("dispatcher run did not return within 30s of being cancelled")
	}
	if r.code != 0 && r.code != pampacli.ExitInterrupted {
		t.Fatalf("dispatcher run after cancel: want exit 0 or %d\n%s", pampacli.ExitInterrupted, r)
	}
	if !strings.Contains(r.stderr, `node "w1"`) || !strings.Contains(r.stderr, "retrying in the background") {
		t.Errorf("dispatcher run does not say w1's tunnel failed and is retried:\n%s", r)
	}
}
