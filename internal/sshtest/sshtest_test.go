package sshtest_test

import (
	"os"
	"strings"
	"testing"

	"go.uber.org/goleak"
	"golang.org/x/crypto/ssh"

	"github.com/pampa-go/pampa/internal/sshtest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestServers checks that each server accepts its client key and runs a
// command; the sshx suite covers the rest.
func TestServers(t *testing.T) {
	t.Parallel()
	for name, start := range map[string]func(testing.TB) *sshtest.Server{
		"inproc": sshtest.NewServer,
		"sshd":   sshtest.StartSSHD,
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			srv := start(t)
			key, err := os.ReadFile(srv.ClientKeyFile)
			if err != nil {
				t.Fatal(err)
			}
			signer, err := ssh.ParsePrivateKey(key)
			if err != nil {
				t.Fatal(err)
			}
			client, err := ssh.Dial("tcp", srv.Addr, &ssh.ClientConfig{
				User:            srv.User,
				Auth:            []ssh.AuthMethod{ssh.PublicKeys(signer)},
				HostKeyCallback: ssh.FixedHostKey(srv.HostKey),
			})
			if err != nil {
				t.Fatal(err)
			}
			defer client.Close()
			sess, err := client.NewSession()
			if err != nil {
				t.Fatal(err)
			}
			defer sess.Close()
			out, err := sess.Output("echo hello; exit 0")
			if err != nil {
				t.Fatal(err)
			}
			if got := strings.TrimSpace(string(out)); got != "hello" {
				t.Errorf("output = %q, want hello", got)
			}
		})
	}
}
