package orchestrator

import (
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"

	"github.com/pampa-go/pampa/deploy"
	"github.com/pampa-go/pampa/worker"
)

// nodeLimits asks how a node enforces its limits: its own worker binary
// knows (cgroups, root), run in its work dir; a local node is this host.
func nodeLimits(ctx context.Context, n Node, c Conn, deployed bool) ([]worker.LimitPlan, error) {
	if n.Local {
		return worker.PlanLimits(n.Limits, n.WorkDir), nil
	}
	if !deployed {
		return nil, errors.New("not known until the worker binary is deployed (pampactl nodes deploy)")
	}
	out, err := c.Run(ctx, []string{"sh", "-c", `cd "$1" && ./` + RemoteBinary + ` --config ` + RemoteConfig + ` worker limits --json`, "sh", n.WorkDir}, nil)
	if err != nil {
		return nil, fmt.Errorf("ask the node's worker binary: %w", err)
	}
	var plan []worker.LimitPlan
	if err := json.Unmarshal(out, &plan); err != nil {
		return nil, fmt.Errorf("the node's worker binary answered %q: %w", out, err)
	}
	return plan, nil
}

// BinaryFunc returns the local path of the worker build for a platform
// (GOOS, GOARCH), or an error saying how to make one.
type BinaryFunc func(goos, goarch string) (string, error)

// Addr is host:port of an SSH node, "local" for a local node.
func (n Node) Addr() string {
	if n.Local {
		return "local"
	}
	return net.JoinHostPort(n.Host, strconv.Itoa(n.Port))
}

// NodeCheck is what `nodes check` learnt about one node.
type NodeCheck struct {
	Node         string   `json:"node"`
	Addr         string   `json:"addr"`
	OK           bool     `json:"ok"`
	Error        string   `json:"error,omitempty"`
	Platform     string   `json:"platform,omitempty"` // GOOS/GOARCH
	Uname        string   `json:"uname,omitempty"`
	FreeKiB      int64    `json:"free_kib"`
	Binary       string   `json:"binary"` // current, outdated, missing, local, unknown (no local build)
	Config       string   `json:"config"` // current, outdated, missing, local
	MissingTools []string `json:"missing_tools,omitempty"`
	// Systemd is what the node offers besides setsid, which starts the
	// workers (nil when the node could not be probed).
	Systemd *deploy.Systemd `json:"systemd,omitempty"`
	// Warnings are problems that do not fail the check.
	Warnings []string `json:"warnings,omitempty"`
	// Limits says how the node enforces its max_ram and the rest, as its
	// pampactl reports it (none when the node sets no limit).
	Limits []worker.LimitPlan `json:"limits,omitempty"`
}

// Check probes the nodes: reachable and authenticated, OS and arch, free
// disk in the work dir, tools, what systemd offers, and whether the
// deployed binary and config are those deploy would push. A node that fails is reported in its
// NodeCheck and in the returned error (*PartialError for some nodes).
func (f *Fleet) Check(ctx context.Context, names []string, binary BinaryFunc, configFor func(Node) ([]byte, error)) ([]NodeCheck, error) {
	nodes, err := f.Nodes(names)
	if err != nil {
		return nil, err
	}
	sums := &fileSums{}
	var mu sync.Mutex
	res := map[string]*NodeCheck{}
	for _, n := range nodes {
		res[n.Name] = &NodeCheck{Node: n.Name, Addr: n.Addr(), Binary: "unknown", Config: "unknown"}
	}
	err = f.each(ctx, "check nodes", nodes, func(ctx context.Context, n Node, c Conn) error {
		p, err := deploy.ProbeNode(ctx, c, n.WorkDir)
		mu.Lock()
		defer mu.Unlock()
		r := res[n.Name]
		if err != nil {
			return err
		}
		r.Platform, r.Uname, r.FreeKiB, r.MissingTools = p.OS+"/"+p.Arch, p.Uname, p.FreeKiB, p.MissingTools
		r.Systemd = &p.Systemd
		if p.Systemd.KillUserProcesses {
			// A warning, not a failure: detection could be wrong, and an
			// admin may exempt this user with KillExcludeUsers, which the
			// probe does not read.
			r.Warnings = append(r.Warnings, "systemd-logind kills a login's processes when it ends (KillUserProcesses=yes): "+
				"workers started over SSH may die with the session that started them; set KillUserProcesses=no or KillExcludeUsers= in /etc/systemd/logind.conf")
		}
		if n.Local {
			r.Binary, r.Config = "local", "local"
		} else {
			if configFor == nil {
				r.Config = "unknown"
			} else if data, err := configFor(n); err == nil {
				r.Config = compare(p.ConfigSHA256, sha256Hex(data))
			} else if p.ConfigSHA256 == "" {
				r.Config = "missing" // whatever it would be
			}
			if configFor == nil && p.ConfigSHA256 == "" {
				r.Config = "missing"
			}
			if path, err := binary(p.OS, p.Arch); err == nil {
				if sum, err := sums.get(path); err == nil {
					r.Binary = compare(p.BinarySHA256, sum)
				}
			} else if p.BinarySHA256 == "" {
				r.Binary = "missing"
			}
		}
		if n.Limits != (worker.Limits{}) {
			if plan, err := nodeLimits(ctx, n, c, p.BinarySHA256 != ""); err != nil {
				r.Warnings = append(r.Warnings, "resource limits: "+err.Error())
			} else {
				r.Limits = plan
			}
		}
		if len(p.MissingTools) > 0 {
			return fmt.Errorf("%s: missing %s; install them (coreutils, util-linux) on the node",
				n.Addr(), strings.Join(p.MissingTools, ", "))
		}
		r.OK = true
		return nil
	})
	out := make([]NodeCheck, 0, len(nodes))
	var partial *PartialError
	for _, n := range nodes {
		r := res[n.Name]
		if !r.OK {
			var nerr error
			if errors.As(err, &partial) {
				nerr = partial.Failed[n.Name]
			} else if err != nil {
				nerr = err
			}
			if nerr != nil {
				r.Error = nerr.Error()
			}
		}
		out = append(out, *r)
	}
	return out, err
}

func compare(remote, local string) string {
	switch remote {
	case "":
		return "missing"
	case local:
		return "current"
	}
	return "outdated"
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// fileSums caches the SHA-256 of local files: every node of one
// platform gets the same binary.
type fileSums struct {
	mu   sync.Mutex
	sums map[string]string
}

func (s *fileSums) get(path string) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if sum, ok := s.sums[path]; ok {
		return sum, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("read %s: %w", path, err)
	}
	if s.sums == nil {
		s.sums = map[string]string{}
	}
	s.sums[path] = hex.EncodeToString(h.Sum(nil))
	return s.sums[path], nil
}

// BinaryPlatform reads the GOOS/GOARCH an executable was built for from
// its ELF header.
func BinaryPlatform(path string) (goos, goarch string, err error) {
	ef, err := elf.Open(path)
	if err != nil {
		return "", "", fmt.Errorf("%s is not a Linux executable: %w", path, err)
	}
	defer ef.Close()
	goos = "linux"
	if ef.OSABI == elf.ELFOSABI_FREEBSD {
		goos = "freebsd"
	}
	switch ef.Machine {
	case elf.EM_X86_64:
		goarch = "amd64"
	case elf.EM_AARCH64:
		goarch = "arm64"
	case elf.EM_ARM:
		goarch = "arm"
	case elf.EM_386:
		goarch = "386"
	case elf.EM_RISCV:
		goarch = "riscv64"
	case elf.EM_PPC64:
		goarch = "ppc64le"
	case elf.EM_S390:
		goarch = "s390x"
	default:
		goarch = strings.ToLower(strings.TrimPrefix(ef.Machine.String(), "EM_"))
	}
	return goos, goarch, nil
}

func sshNodes(nodes []Node) []Node {
	var out []Node
	for _, n := range nodes {
		if !n.Local {
			out = append(out, n)
		}
	}
	return out
}
