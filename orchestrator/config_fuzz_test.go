package orchestrator

import (
	"errors"
	"os"
	"testing"
)

// FuzzParse checks that any input yields a Config or an error wrapping
// ErrConfig, never a panic.
func FuzzParse(f *testing.F) {
	if data, err := os.ReadFile("../cluster.toml.example"); err == nil {
		f.Add(data)
	}
	for _, s := range []string{
		minimalJob,
		minimalJob + "queue_sise = 5\n",
		"[[nodes]]\nname = \"a\"\nnet_remote_ip = \"local\"\n[[nodes]]\nname = \"a\"\n",
		"nodes = [{name = \"a\", net_remote_ip = \"local\", x = 1}]\n",
		"jobs = [1]\n",
		"[jobs]\nname = 1\n",
		"[[jobs]]\nsql = '''\n[[jobs]]\n'''\nmax_job_duration_minutes = 1e300\n",
		"[worker]\ndelay = \"9999999999h\"\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse("cluster.toml", data)
		if err != nil {
			if !errors.Is(err, ErrConfig) {
				t.Fatalf("error %v does not wrap ErrConfig", err)
			}
			return
		}
		if c == nil {
			t.Fatal("nil Config without error")
		}
	})
}
