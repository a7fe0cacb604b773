package orchestrator

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"github.com/pampa-go/pampa/deploy"
	"os"
	"strconv"
	"strings"
)

// KnownWorker says why id is not a worker of this cluster: not node.N, no
// such node, or N beyond the node's max_workers. nil means it is one.
func (c *Config) KnownWorker(id string) error {
	name, num, ok := strings.Cut(id, ".")
	n, found := c.Node(name)
	switch {
	case !ok:
		return fmt.Errorf("worker id %q: want node.N, like %s.1", id, name)
	case !found:
		return fmt.Errorf("worker id %q: no node %q in %s", id, name, c.Path)
	}
	i, err := strconv.Atoi(num)
	if err != nil || i < 1 || i > n.MaxWorkers || strconv.Itoa(i) != num {
		return fmt.Errorf("worker id %q: node %s has max_workers = %d, so its workers are %s.1 to %s.%d",
			id, name, n.MaxWorkers, name, name, n.MaxWorkers)
	}
	return nil
}

// DispatcherTLS is the TLS the dispatcher serves the worker protocol with,
// or nil for cleartext (loopback, SSH tunnels).
func (c *Config) DispatcherTLS() (*tls.Config, error) {
	if c.Dispatcher.TLSCertFile == "" {
		return nil, nil
	}
	cert, err := tls.LoadX509KeyPair(c.Dispatcher.TLSCertFile, c.Dispatcher.TLSKeyFile)
	if err != nil {
		return nil, &ConfigError{File: c.Path, Key: "dispatcher.tls_cert_file", Msg: err.Error()}
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, nil
}

// WorkerTLS is the TLS workers dial the dispatcher with: nil for
// cleartext, else the CA of ca_pem or ca_file (or the system's roots when
// the dispatcher serves TLS and neither is set).
func (c *Config) WorkerTLS() (*tls.Config, error) {
	pem := []byte(c.Worker.CAPEM)
	if len(pem) == 0 && c.Worker.CAFile != "" {
		b, err := os.ReadFile(c.Worker.CAFile)
		if err != nil {
			return nil, &ConfigError{File: c.Path, Key: "worker.ca_file", Msg: err.Error()}
		}
		pem = b
	}
	if len(pem) == 0 {
		if c.Dispatcher.TLSCertFile == "" && !c.Worker.TLS {
			return nil, nil
		}
		return &tls.Config{MinVersion: tls.VersionTLS12}, nil // the system's roots
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, &ConfigError{File: c.Path, Key: "worker.ca_file", Msg: "no PEM certificate in it"}
	}
	return &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, nil
}

// WorkerLogFile is where a started worker's output goes, in its work dir.
func WorkerLogFile(id string) string { return deploy.LogFile(id) }
