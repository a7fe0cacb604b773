package orchestrator

import (
	"bytes"
	"fmt"
	"os"

	"github.com/BurntSushi/toml"
)

// NodeConfig is the config `nodes deploy` pushes to an SSH node: what its
// workers need and nothing more. It names the dispatcher as the node sees
// it and holds the worker secret and the definitions of the jobs its
// workers may take (not sql jobs, which the dispatcher runs, nor jobs whose
// filter_worker_id matches none of its workers). It holds no database URL,
// no SQL snippet and no other node's address or credentials.
func (c *Config) NodeConfig(n Node, secret []byte) ([]byte, error) {
	type job struct {
		Name                  string   `toml:"name"`
		Table                 string   `toml:"table"`
		Command               []string `toml:"command,omitempty"`
		MaxJobDurationMinutes float64  `toml:"max_job_duration_minutes"`
		Slots                 int      `toml:"slots"`
	}
	type node struct {
		Name        string `toml:"name"`
		NetRemoteIP string `toml:"net_remote_ip"`
		MaxWorkers  int    `toml:"max_workers"`
		MaxRAM      int    `toml:"max_ram,omitempty"`
		MaxCPU      int    `toml:"max_cpu,omitempty"`
		MaxDiskIO   int    `toml:"max_disk_io,omitempty"`
		MaxNetIO    int    `toml:"max_net_io,omitempty"`
	}
	type worker struct {
		LogFile           string   `toml:"log_file"`
		HeartbeatInterval string   `toml:"heartbeat_interval"`
		GracePeriod       string   `toml:"grace_period"`
		StartCommand      []string `toml:"start_command,omitempty"`
		Dispatchers       []string `toml:"dispatchers"`
		Secret            string   `toml:"secret"`
		CAPEM             string   `toml:"ca_pem,omitempty"`
		TLS               bool     `toml:"tls,omitempty"`
		LogMaxMB          int      `toml:"log_max_mb"`
		LogKeep           int      `toml:"log_keep"`
	}
	type dispatcher struct {
		// The node's workers are told the heartbeat timeout in the welcome;
		// the key must still be longer than the heartbeat interval.
		HeartbeatTimeout string `toml:"heartbeat_timeout"`
		LogFile          string `toml:"log_file"`
	}
	var doc struct {
		Dispatcher dispatcher `toml:"dispatcher"`
		Worker     worker     `toml:"worker"`
		Nodes      []node     `toml:"nodes"`
		Jobs       []job      `toml:"jobs"`
	}
	doc.Dispatcher = dispatcher{HeartbeatTimeout: c.Dispatcher.HeartbeatTimeout.String(), LogFile: ""}
	doc.Worker = worker{
		LogFile: c.Worker.LogFile, HeartbeatInterval: c.Worker.HeartbeatInterval.String(),
		GracePeriod: c.Worker.GracePeriod.String(), StartCommand: c.Worker.StartCommand,
		Dispatchers: c.WorkerDispatchers(n), Secret: string(secret),
		TLS:      c.Dispatcher.TLSCertFile != "" || c.Worker.TLS,
		LogMaxMB: c.Worker.Logs.MaxMB, LogKeep: c.Worker.Logs.Keep,
	}
	if c.Worker.CAFile != "" {
		pem, err := os.ReadFile(c.Worker.CAFile)
		if err != nil {
			return nil, &ConfigError{File: c.Path, Key: "worker.ca_file", Msg: err.Error()}
		}
		doc.Worker.CAPEM = string(pem)
	}
	// On the node, its workers run where they are: a local node.
	l := n.Limits
	doc.Nodes = []node{{Name: n.Name, NetRemoteIP: localHost, MaxWorkers: n.MaxWorkers,
		MaxRAM: l.RAMMiB, MaxCPU: l.CPUPercent, MaxDiskIO: l.DiskMBps, MaxNetIO: l.NetMBps}}
	ids := n.WorkerIDs()
	for _, j := range c.Jobs {
		if j.Step.SQL != "" {
			continue
		}
		mine := false
		for _, id := range ids {
			mine = mine || j.WorkerMatches(id)
		}
		if !mine {
			continue
		}
		doc.Jobs = append(doc.Jobs, job{Name: j.Name, Table: j.Table, Command: j.Step.Command,
			MaxJobDurationMinutes: j.MaxJobDuration.Minutes(), Slots: j.Slots})
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "# Written by pampactl nodes deploy for node %q: what its workers need, no more.\n", n.Name)
	if err := toml.NewEncoder(&b).Encode(doc); err != nil {
		return nil, fmt.Errorf("node %s: write its config: %w", n.Name, err)
	}
	// What a node's workers read must parse as a config of its own.
	if _, err := Parse(n.Name+":"+RemoteConfig, b.Bytes()); err != nil {
		return nil, fmt.Errorf("node %s: the config written for it does not parse: %w", n.Name, err)
	}
	return b.Bytes(), nil
}
