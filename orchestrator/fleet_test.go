package orchestrator_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/pampa-go/pampa/dispatcher"
	"github.com/pampa-go/pampa/internal/sshtest"
	"github.com/pampa-go/pampa/orchestrator"
	"github.com/pampa-go/pampa/sshx"
)

// sshFleet returns a Fleet over cfgText (%s-free TOML) that reaches SSH
// nodes as pampactl does (Node.SSHConfig), with no ~/.ssh/config.
func sshFleet(t *testing.T, cfgText string, env map[string]string) *orchestrator.Fleet {
	t.Helper()
	cfg, err := orchestrator.Parse(filepath.Join(t.TempDir(), "cluster.toml"), []byte(cfgText))
	if err != nil {
		t.Fatal(err)
	}
	return &orchestrator.Fleet{Config: cfg, SSH: func(n orchestrator.Node) (sshx.Config, error) {
		c, err := n.SSHConfig(orchestrator.SSHOptions{}, func(k string) string { return env[k] })
		c.SSHConfigFile = "none"
		return c, err
	}}
}

// closedPort is a loopback address nothing listens on.
func closedPort(t *testing.T) (string, string) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
	host, port, _ := net.SplitHostPort(ln.Addr().String())
	return host, port
}

// Up leaves a node that failed to deploy out of the next steps, says so,
// starts the others' workers and reports those that die at once, with
// their logs.
func TestUpLeavesOutNodesThatFailAStep(t *testing.T) {
	t.Parallel()
	srv := sshtest.StartSSHD(t)
	host, port, _ := net.SplitHostPort(srv.Addr)
	deadHost, deadPort := closedPort(t)
	work := t.TempDir()
	f := sshFleet(t, fmt.Sprintf(`[[nodes]]
name = "w1"
net_remote_ip = %q
ssh_port = %s
ssh_username = %q
ssh_private_key_file = %q
known_hosts_file = %q
work_dir = %q

[[nodes]]
name = "w2"
net_remote_ip = %q
ssh_port = %s
ssh_username = %q
ssh_private_key_file = %q
known_hosts_file = %q
work_dir = %q
`, host, port, srv.User, srv.ClientKeyFile, srv.KnownHosts(t), work,
		deadHost, deadPort, srv.User, srv.ClientKeyFile, srv.KnownHosts(t), t.TempDir()), nil)
	// A real ELF for the node's platform, which exits at once when run as
	// a worker: sleep refuses --config.
	up, err := f.Up(t.Context(), orchestrator.UpOptions{
		Binary:    func(string, string) (string, error) { return "/bin/sleep", nil },
		ConfigFor: func(orchestrator.Node) ([]byte, error) { return []byte("# node config\n"), nil },
	})
	if up != nil && up.Tunnels != nil {
		up.Tunnels.Close()
	}
	if err != nil {
		t.Fatalf("Up failed although w1 could go on: %v", err)
	}
	if len(up.Deployed) != 1 || up.Deployed[0].Node != "w1" || !up.Deployed[0].BinaryUploaded {
		t.Fatalf("deployed %+v; want w1's binary uploaded", up.Deployed)
	}
	if len(up.Warnings) != 1 || !strings.Contains(up.Warnings[0].Error(), `node "w2"`) ||
		!strings.Contains(up.Warnings[0].Error(), "going on with w1 only") {
		t.Fatalf("warnings %v; want one naming w2 and going on with w1 only", up.Warnings)
	}
	if len(up.Started) != 1 || up.Started[0].Node != "w1" {
		t.Fatalf("started %+v; want w1's workers only", up.Started)
	}
	if died := f.DiedAtOnce(t.Context(), up.Started); len(died) != 1 || died[0].ID != "w1.1" ||
		!strings.Contains(strings.Join(died[0].LogTail, "\n"), "unrecognized option '--config'") {
		t.Fatalf("died %+v; want w1.1, with sleep's complaint from its log", died)
	}
}

// Up gives up, and says why, when no node is left.
func TestUpFailsWhenNoNodeIsLeft(t *testing.T) {
	t.Parallel()
	deadHost, deadPort := closedPort(t)
	f := sshFleet(t, fmt.Sprintf(`[[nodes]]
name = "w2"
net_remote_ip = %q
ssh_port = %s
ssh_username = "nobody"
`, deadHost, deadPort), nil)
	up, err := f.Up(t.Context(), orchestrator.UpOptions{
		Binary:    func(string, string) (string, error) { return "/bin/sleep", nil },
		ConfigFor: func(orchestrator.Node) ([]byte, error) { return nil, nil },
	})
	if err == nil || !strings.Contains(err.Error(), `"w2"`) || up == nil || len(up.Started) != 0 {
		t.Fatalf("Up = %+v, %v; want an error naming w2 and nothing started", up, err)
	}
}

// TrustHostKeys records each node's key once, in parallel, and refuses a
// key that differs from the one recorded without touching the file.
func TestTrustHostKeys(t *testing.T) {
	t.Parallel()
	a, b := sshtest.NewServer(t), sshtest.NewServer(t)
	knownHosts := filepath.Join(t.TempDir(), "known_hosts")
	var text strings.Builder
	text.WriteString("[[nodes]]\nname = \"local\"\nnet_remote_ip = \"local\"\n")
	for _, s := range []struct {
		name string
		srv  *sshtest.Server
	}{{"a", a}, {"b", b}} {
		fmt.Fprintf(&text, "\n[[nodes]]\nname = %q\nnet_remote_ip = %q\nssh_port = %d\nssh_username = %q\nknown_hosts_file = %q\n",
			s.name, s.srv.Host, s.srv.Port, s.srv.User, knownHosts)
	}
	f := sshFleet(t, text.String(), nil)
	res, err := f.TrustHostKeys(t.Context(), nil)
	if err != nil {
		t.Fatal(err)
	}
	want := []orchestrator.HostTrust{
		{Node: "a", Addr: a.Addr, Fingerprint: ssh.FingerprintSHA256(a.HostKey), Added: true, KnownHosts: knownHosts},
		{Node: "b", Addr: b.Addr, Fingerprint: ssh.FingerprintSHA256(b.HostKey), Added: true, KnownHosts: knownHosts},
		{Node: "local", Addr: "local", Local: true},
	}
	if !slices.Equal(res, want) {
		t.Fatalf("first trust:\n%+v\nwant\n%+v", res, want)
	}
	res, err = f.TrustHostKeys(t.Context(), []string{"a"})
	if err != nil || len(res) != 1 || res[0].Added {
		t.Fatalf("second trust of a: %+v, %v; want already trusted", res, err)
	}

	// b's recorded key is now someone else's: refused, and the file stays.
	os.Remove(knownHosts)
	sshtest.WriteKnownHosts(t, knownHosts, a.Addr, a.HostKey)
	sshtest.WriteKnownHosts(t, knownHosts, b.Addr, a.HostKey)
	before, _ := os.ReadFile(knownHosts)
	res, err = f.TrustHostKeys(t.Context(), []string{"a", "b"})
	var partial *orchestrator.PartialError
	var changed *sshx.HostKeyError
	if !errors.As(err, &partial) || len(partial.Failed) != 1 || partial.Failed["b"] == nil || !errors.As(err, &changed) {
		t.Fatalf("trust with b's key changed: %v; want a partial error with b's HostKeyError", err)
	}
	if len(res) != 1 || res[0].Node != "a" {
		t.Fatalf("results %+v; want a's only", res)
	}
	if after, _ := os.ReadFile(knownHosts); !bytes.Equal(before, after) {
		t.Fatal("a refused key changed known_hosts")
	}
}

// Bootstrap installs, on each node, the key it will log in with: its own
// ssh_private_key_file, or the Pampa key (generated once) for the others;
// then each logs in without its password.
func TestBootstrapInstallsEachNodesKey(t *testing.T) {
	t.Parallel()
	// One server behind both nodes, so that both installs land in the
	// one authorized_keys file the server reads.
	srv := sshtest.NewServer(t)
	ownKey := filepath.Join(t.TempDir(), "id_own")
	ownPub := sshtest.NewKey(t, ownKey, "")
	pampaKey := filepath.Join(t.TempDir(), "pampa", "id_ed25519")
	f := sshFleet(t, fmt.Sprintf(`[[nodes]]
name = "own"
net_remote_ip = %q
ssh_port = %d
ssh_username = %q
ssh_password_env = "OWN_PASSWORD"
ssh_private_key_file = %q
known_hosts_file = %q
work_dir = %q

[[nodes]]
name = "pampa"
net_remote_ip = %q
ssh_port = %d
ssh_username = %q
ssh_password_env = "PAMPA_PASSWORD"
known_hosts_file = %q
work_dir = %q
`, srv.Host, srv.Port, srv.User, ownKey, srv.KnownHosts(t), t.TempDir(),
		srv.Host, srv.Port, srv.User, srv.KnownHosts(t), t.TempDir()),
		map[string]string{"OWN_PASSWORD": srv.Password, "PAMPA_PASSWORD": srv.Password})
	authorized := srv.AuthorizedKeysFile

	res, err := f.Bootstrap(t.Context(), orchestrator.BootstrapOptions{AuthorizedKeys: authorized, PampaKey: pampaKey})
	if err != nil {
		t.Fatal(err)
	}
	if !res.PampaKeyCreated || res.PampaKey != pampaKey {
		t.Fatalf("pampa key %q created %v; want %s generated", res.PampaKey, res.PampaKeyCreated, pampaKey)
	}
	if len(res.Nodes) != 2 || !res.Nodes[0].KeyLogin || !res.Nodes[1].KeyLogin {
		t.Fatalf("nodes %+v; want both with a key login", res.Nodes)
	}
	pampaPub, err := orchestrator.PublicKey(pampaKey, nil)
	if err != nil {
		t.Fatal(err)
	}
	installed, _ := os.ReadFile(authorized)
	for name, pub := range map[string]string{"own": strings.TrimSpace(string(ssh.MarshalAuthorizedKey(ownPub))), "pampa": pampaPub} {
		if n := strings.Count(string(installed), strings.Fields(pub)[1]); n != 1 {
			t.Errorf("%s's key is in authorized_keys %d times, want once:\n%s", name, n, installed)
		}
	}

	// Again: nothing added, the Pampa key kept.
	res, err = f.Bootstrap(t.Context(), orchestrator.BootstrapOptions{AuthorizedKeys: authorized, PampaKey: pampaKey})
	if err != nil || res.PampaKeyCreated || res.Nodes[0].KeyAdded || res.Nodes[1].KeyAdded {
		t.Fatalf("second bootstrap: %+v, %v; want nothing added", res, err)
	}
}

// WorkersStatus joins what the nodes and the registry say, one row per
// configured worker, and reports each side's failure apart.
func TestWorkersStatusJoinsNodesAndRegistry(t *testing.T) {
	t.Parallel()
	deadHost, deadPort := closedPort(t)
	f := sshFleet(t, fmt.Sprintf(`[[nodes]]
name = "local"
net_remote_ip = "local"
max_workers = 2
work_dir = %q

[[nodes]]
name = "far"
net_remote_ip = %q
ssh_port = %s
ssh_username = "nobody"
`, t.TempDir(), deadHost, deadPort), nil)
	reg := []dispatcher.WorkerStatus{
		{ID: "local.2", Node: "local", State: "stopped", Job: "fetch", RowsDone: 7, RowsFailed: 1},
		{ID: "far.1", Node: "far", State: "alive", Job: "fetch", RowsDone: 3},
		{ID: "gone.1", Node: "gone", State: "dead"}, // no longer configured
	}
	rep, err := f.WorkersStatus(t.Context(), nil, func(context.Context) ([]dispatcher.WorkerStatus, error) { return reg, nil })
	if err != nil {
		t.Fatal(err)
	}
	want := []orchestrator.WorkerStatus{
		{ID: "local.1", Node: "local", Process: "none"},
		{ID: "local.2", Node: "local", Process: "none", State: "stopped", Job: "fetch", RowsDone: 7, RowsFailed: 1},
		{ID: "far.1", Node: "far", Process: "unknown", State: "alive", Job: "fetch", RowsDone: 3},
	}
	if !slices.Equal(rep.Workers, want) {
		t.Fatalf("rows:\n%+v\nwant\n%+v", rep.Workers, want)
	}
	if rep.NodesErr == nil || !strings.Contains(rep.NodesErr.Error(), `"far"`) || rep.RegistryErr != nil {
		t.Fatalf("nodes error %v, registry error %v; want far's failure only", rep.NodesErr, rep.RegistryErr)
	}

	noDB := errors.New("connect to the database: refused")
	rep, err = f.WorkersStatus(t.Context(), []string{"local"}, func(context.Context) ([]dispatcher.WorkerStatus, error) { return nil, noDB })
	if err != nil || rep.RegistryErr != noDB || rep.NodesErr != nil || len(rep.Workers) != 2 || rep.Workers[1].Process != "none" {
		t.Fatalf("without the registry: %+v, %v; want the nodes' side and the registry's error", rep, err)
	}
}
