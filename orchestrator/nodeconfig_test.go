package orchestrator_test

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/pampa-go/pampa/orchestrator"
)

// A node receives what its workers need and nothing more: no database URL,
// no SSH credentials of any node, no SQL, and only the jobs its workers may
// take; what it receives parses, and its workers dial their own way in.
func TestNodeConfigHoldsOnlyWhatItsWorkersNeed(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "cluster.toml")
	text := `[database]
url = "postgres://dbuser:dbpass-9f2c@db.internal:6543/pampa"
[dispatcher]
listen = "127.0.0.1:7600"
addresses = ["10.1.0.1:7600", "10.1.0.2:7600"]
[[nodes]]
name = "direct"
net_remote_ip = "10.0.0.1"
ssh_username = "alice"
ssh_password = "alice-ssh-pass-77"
dispatcher_address = "203.0.113.9:7600"
[[nodes]]
name = "tunnelled"
net_remote_ip = "10.0.0.2"
max_ram = 512
max_cpu = 150
ssh_username = "bob"
ssh_password = "bob-ssh-pass-88"
tunnel = true
max_workers = 3
[[nodes]]
name = "plain"
net_remote_ip = "10.0.0.3"
ssh_username = "carol"
ssh_password_env = "CAROL_PASS"
[[jobs]]
name = "scrape"
table = "pages"
command = ["./scrape.sh"]
slots = 4
selecting_sql = "select id from pages where secret_column_xyz order by id limit $1"
[[jobs]]
name = "sums"
table = "numbers"
sql = "update numbers set s = value where value = $1"
[[jobs]]
name = "only_direct"
table = "pages"
command = ["./x"]
filter_worker_id = '^direct\.'
`
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := orchestrator.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	secret := []byte("worker-secret-0123456789abcdef")
	for _, tc := range []struct {
		node        string
		dispatchers []string
		jobs        []string
	}{
		{"direct", []string{"203.0.113.9:7600"}, []string{"scrape", "only_direct"}},
		{"tunnelled", []string{"127.0.0.1:17543"}, []string{"scrape"}},
		{"plain", []string{"10.1.0.1:7600", "10.1.0.2:7600"}, []string{"scrape"}},
	} {
		t.Run(tc.node, func(t *testing.T) {
			n, _ := cfg.Node(tc.node)
			data, err := cfg.NodeConfig(n, secret)
			if err != nil {
				t.Fatal(err)
			}
			for _, leak := range []string{"dbpass-9f2c", "dbuser", "db.internal", "postgres://", "alice-ssh-pass-77",
				"bob-ssh-pass-88", "CAROL_PASS", "secret_column_xyz", "update numbers", "10.0.0."} {
				if strings.Contains(string(data), leak) {
					t.Errorf("node %s receives %q:\n%s", tc.node, leak, data)
				}
			}
			nodePath := filepath.Join(t.TempDir(), "cluster.toml")
			if err := os.WriteFile(nodePath, data, 0o600); err != nil {
				t.Fatal(err)
			}
			got, err := orchestrator.Load(nodePath)
			if err != nil {
				t.Fatalf("the node's config does not load: %v\n%s", err, data)
			}
			if s, err := got.Secret(func(string) string { return "" }); err != nil || string(s) != string(secret) {
				t.Errorf("secret on the node = %q, %v", s, err)
			}
			if len(got.Nodes) != 1 || got.Nodes[0].Name != tc.node || !got.Nodes[0].Local || got.Nodes[0].MaxWorkers != n.MaxWorkers {
				t.Errorf("nodes on %s: %+v", tc.node, got.Nodes)
			}
			if d := got.WorkerDispatchers(got.Nodes[0]); !reflect.DeepEqual(d, tc.dispatchers) {
				t.Errorf("workers of %s dial %v, want %v", tc.node, d, tc.dispatchers)
			}
			var jobs []string
			for _, j := range got.Jobs {
				jobs = append(jobs, j.Name)
			}
			if !reflect.DeepEqual(jobs, tc.jobs) {
				t.Errorf("jobs on %s = %v, want %v", tc.node, jobs, tc.jobs)
			}
			if n.Limits != got.Nodes[0].Limits {
				t.Errorf("limits on %s = %+v, want %+v", tc.node, got.Nodes[0].Limits, n.Limits)
			}
			if got.Jobs[0].Slots != 4 {
				t.Errorf("job scrape on %s runs %d slots, want 4", tc.node, got.Jobs[0].Slots)
			}
			if _, err := got.DatabaseURL(func(string) string { return "" }); err == nil {
				t.Errorf("node %s can name a database URL", tc.node)
			}
		})
	}
}

// The secret is made once, at mode 0600, and a secret file others can read
// is refused with the fix.
func TestWorkerSecretFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "cluster.toml")
	if err := os.WriteFile(path, []byte("[dispatcher]\nsecret_env = \"\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := orchestrator.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	getenv := func(string) string { return "" }
	if _, err := cfg.Secret(getenv); err == nil {
		t.Fatal("a missing secret is not an error")
	}
	s1, created, err := cfg.EnsureSecret(getenv)
	if err != nil || !created || len(s1) < 32 {
		t.Fatalf("EnsureSecret = %q, %v, %v", s1, created, err)
	}
	fi, err := os.Stat(filepath.Join(dir, "pampa.secret"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("secret file: %v, %v", fi, err)
	}
	s2, created, err := cfg.EnsureSecret(getenv)
	if err != nil || created || string(s2) != string(s1) {
		t.Fatalf("second EnsureSecret = %q, %v, %v; want the first secret", s2, created, err)
	}
	if err := os.Chmod(filepath.Join(dir, "pampa.secret"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = cfg.Secret(getenv)
	if err == nil || !strings.Contains(err.Error(), "chmod 600") || strings.Contains(err.Error(), string(s1)) {
		t.Fatalf("a world-readable secret: %v", err)
	}
}

// A dispatcher that serves TLS makes its nodes dial TLS, with its CA when
// the control host names one, else the system's roots.
func TestNodeConfigCarriesTLS(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(ca, []byte("-----BEGIN CERTIFICATE-----\nnot really\n-----END CERTIFICATE-----\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, extra string
		wantCA      bool
	}{
		{"system roots", "", false},
		{"a CA", "[worker]\nca_file = \"ca.pem\"\n", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, tc.name+".toml")
			text := "[dispatcher]\ntls_cert_file = \"d.crt\"\ntls_key_file = \"d.key\"\n" + tc.extra +
				"[[nodes]]\nname = \"w1\"\nnet_remote_ip = \"10.0.0.1\"\nssh_username = \"u\"\ndispatcher_address = \"203.0.113.9:7543\"\n"
			if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
				t.Fatal(err)
			}
			cfg, err := orchestrator.Load(path)
			if err != nil {
				t.Fatal(err)
			}
			n, _ := cfg.Node("w1")
			data, err := cfg.NodeConfig(n, []byte("worker-secret-0123456789abcdef"))
			if err != nil {
				t.Fatal(err)
			}
			nodePath := filepath.Join(t.TempDir(), "cluster.toml")
			if err := os.WriteFile(nodePath, data, 0o600); err != nil {
				t.Fatal(err)
			}
			got, err := orchestrator.Load(nodePath)
			if err != nil {
				t.Fatalf("%v\n%s", err, data)
			}
			if !got.Worker.TLS || (got.Worker.CAPEM != "") != tc.wantCA {
				t.Errorf("node config: tls %v, ca_pem set %v; want tls, ca_pem set %v:\n%s", got.Worker.TLS, got.Worker.CAPEM != "", tc.wantCA, data)
			}
			if tc.wantCA {
				return // the fake PEM does not parse: WorkerTLS refuses it, as it should
			}
			if tlsCfg, err := got.WorkerTLS(); err != nil || tlsCfg == nil {
				t.Errorf("the node's workers would dial cleartext: %v, %v", tlsCfg, err)
			}
		})
	}
}
