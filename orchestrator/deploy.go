package orchestrator

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pampa-go/pampa/deploy"
)

// DeployOptions configure Fleet.Deploy.
type DeployOptions struct {
	Names []string
	// Binary picks the local build for a node's platform.
	Binary BinaryFunc
	// ConfigData is the cluster file pushed to every node (mode 0600: it
	// may hold secrets).
	ConfigData []byte
	// Restart restarts the running workers of nodes whose binary or config
	// changed.
	Restart bool
	// Progress, if set, is called as bytes of the binary go out.
	Progress func(node string, sent, total int64)
}

// NodeDeploy is what Deploy did on one node.
type NodeDeploy struct {
	Node           string                `json:"node"`
	Platform       string                `json:"platform"`
	Binary         string                `json:"binary"` // local file pushed (or that matched)
	BinaryUploaded bool                  `json:"binary_uploaded"`
	ConfigUploaded bool                  `json:"config_uploaded"`
	Restarted      []deploy.ProcessState `json:"restarted,omitempty"`
}

// Deploy puts the pampactl build for each SSH node's OS and arch, and the
// cluster file, in the node's work dir, skipping files the node already
// has (same SHA-256). Uploads are atomic and verified. A build for the
// wrong platform is refused. Local nodes run this executable and are
// skipped.
func (f *Fleet) Deploy(ctx context.Context, opts DeployOptions) ([]NodeDeploy, error) {
	nodes, err := f.Nodes(opts.Names)
	if err != nil {
		return nil, err
	}
	nodes = sshNodes(nodes)
	sums := &fileSums{}
	cfgSum := sha256Hex(opts.ConfigData)
	var mu sync.Mutex
	var out []NodeDeploy
	err = f.each(ctx, "deploy", nodes, func(ctx context.Context, n Node, c Conn) error {
		up, ok := c.(deploy.Uploader)
		if !ok {
			return fmt.Errorf("%s: this connection cannot upload files", n.Addr())
		}
		p, err := deploy.ProbeNode(ctx, c, n.WorkDir)
		if err != nil {
			return err
		}
		r := NodeDeploy{Node: n.Name, Platform: p.OS + "/" + p.Arch}
		bin, err := opts.Binary(p.OS, p.Arch)
		if err != nil {
			return fmt.Errorf("%s is %s: %w", n.Addr(), r.Platform, err)
		}
		r.Binary = bin
		goos, goarch, err := BinaryPlatform(bin)
		if err != nil {
			return err
		}
		if goos != p.OS || goarch != p.Arch {
			return fmt.Errorf("refusing to push %s, built for %s/%s, to %s, which is %s (%s); build one for it with `make dist`",
				bin, goos, goarch, n.Addr(), r.Platform, p.Uname)
		}
		sum, err := sums.get(bin)
		if err != nil {
			return err
		}
		if sum != p.BinarySHA256 || cfgSum != p.ConfigSHA256 {
			if _, err := c.Run(ctx, []string{"mkdir", "-p", "--", n.WorkDir + "/bin", n.WorkDir + "/run"}, nil); err != nil {
				return fmt.Errorf("create work dir: %w", err)
			}
		}
		if sum != p.BinarySHA256 {
			file, err := os.Open(bin)
			if err != nil {
				return err
			}
			defer file.Close()
			var src io.Reader = file
			if opts.Progress != nil {
				st, err := file.Stat()
				if err != nil {
					return err
				}
				src = &progressReader{r: file, total: st.Size(), report: func(sent, total int64) { opts.Progress(n.Name, sent, total) }}
			}
			if err := deploy.Push(ctx, up, n.WorkDir, deploy.BinaryFile, src, 0o755); err != nil {
				return err
			}
			if err := deploy.Stamp(ctx, c, n.WorkDir, deploy.BinaryFile, sum); err != nil {
				return err
			}
			r.BinaryUploaded = true
		}
		if cfgSum != p.ConfigSHA256 {
			if err := deploy.Push(ctx, up, n.WorkDir, deploy.ConfigFile, bytes.NewReader(opts.ConfigData), 0o600); err != nil {
				return err
			}
			if err := deploy.Stamp(ctx, c, n.WorkDir, deploy.ConfigFile, cfgSum); err != nil {
				return err
			}
			r.ConfigUploaded = true
		}
		defer func() {
			mu.Lock()
			out = append(out, r)
			mu.Unlock()
		}()
		if opts.Restart && (r.BinaryUploaded || r.ConfigUploaded) {
			layout, err := f.Layout(n)
			if err != nil {
				return err
			}
			st, err := deploy.Status(ctx, c, layout, n.WorkerIDs())
			if err != nil {
				return err
			}
			var running []string
			for _, s := range st {
				if s.State == "running" {
					running = append(running, s.ID)
				}
			}
			if len(running) > 0 {
				if _, err := deploy.Stop(ctx, c, layout, running, f.Config.Worker.GracePeriod+defaultStopSlack); err != nil {
					return err
				}
				r.Restarted, err = deploy.Start(ctx, c, layout, running)
				if err != nil {
					return err
				}
			}
		}
		return nil
	})
	sort.Slice(out, func(a, b int) bool { return out[a].Node < out[b].Node })
	return out, err
}

// defaultStopSlack is added to the grace period before workers are killed.
const defaultStopSlack = 5 * time.Second

type progressReader struct {
	r      io.Reader
	sent   atomic.Int64
	total  int64
	report func(sent, total int64)
}

func (p *progressReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	if n > 0 {
		p.report(p.sent.Add(int64(n)), p.total)
	}
	return n, err
}
