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
		st, ok := c.(deploy.Stager)
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
		// Every remote command costs a login shell on the node (~150 ms
		// with a slow ~/.bashrc), so a deploy is three at most: the probe,
		// the SFTP session (directories and uploads to temporary names)
		// and one install that verifies, renames and stamps every file.
		var staged []deploy.Staged
		installed := false
		if sum != p.BinarySHA256 || cfgSum != p.ConfigSHA256 {
			for _, dir := range []string{n.WorkDir + "/bin", n.WorkDir + "/run"} {
				if err := st.MkdirAll(ctx, dir); err != nil {
					return err
				}
			}
		}
		defer func() {
			if !installed {
				ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
				defer cancel()
				deploy.Discard(ctx, c, staged)
			}
		}()
		if sum != p.BinarySHA256 {
			tmp, err := stageBinary(ctx, st, n, bin, opts.Progress)
			if err != nil {
				return err
			}
			staged = append(staged, deploy.Staged{Rel: deploy.BinaryFile, Temp: tmp, SHA256: sum})
			r.BinaryUploaded = true
		}
		if cfgSum != p.ConfigSHA256 {
			tmp, err := st.Stage(ctx, bytes.NewReader(opts.ConfigData), n.WorkDir+"/"+deploy.ConfigFile, 0o600)
			if err != nil {
				return err
			}
			staged = append(staged, deploy.Staged{Rel: deploy.ConfigFile, Temp: tmp, SHA256: cfgSum})
			r.ConfigUploaded = true
		}
		if len(staged) > 0 {
			if err := deploy.Install(ctx, c, n.WorkDir, staged); err != nil {
				return err
			}
		}
		installed = true
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

// stageBinary uploads the local build bin to a temporary name beside the
// node's binary. Its SHA-256 is known already (the probe was compared with
// it), so the data is not hashed again on the way.
func stageBinary(ctx context.Context, st deploy.Stager, n Node, bin string, progress func(node string, sent, total int64)) (string, error) {
	file, err := os.Open(bin)
	if err != nil {
		return "", err
	}
	defer file.Close()
	var src io.Reader = file
	if progress != nil {
		fi, err := file.Stat()
		if err != nil {
			return "", err
		}
		src = &progressReader{r: file, total: fi.Size(), report: func(sent, total int64) { progress(n.Name, sent, total) }}
	}
	return st.Stage(ctx, src, n.WorkDir+"/"+deploy.BinaryFile, 0o755)
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
