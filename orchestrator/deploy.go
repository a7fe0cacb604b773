package orchestrator

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"slices"
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
	// ConfigFor is the config pushed to a node (mode 0600: it holds the
	// worker secret); Config.NodeConfig writes it.
	ConfigFor func(Node) ([]byte, error)
	// Restart restarts the running workers that run an older binary or
	// config than the node has once the files are in place: every running
	// worker of a node where this deploy replaced a file, and elsewhere
	// those an earlier deploy without Restart left running replaced files
	// (deploy.ProcessState.Stale).
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

// Deploy puts the worker build for each SSH node's OS and arch (what
// opts.Binary picks), and the node's config, in the node's work dir,
// skipping files the node already has (same SHA-256). Uploads are atomic
// and verified. A build for the wrong platform is refused. Local nodes run
// a build of this host (Fleet.Binary) and are skipped, Restart included:
// `workers restart` restarts their workers.
func (f *Fleet) Deploy(ctx context.Context, opts DeployOptions) ([]NodeDeploy, error) {
	nodes, err := f.Nodes(opts.Names)
	if err != nil {
		return nil, err
	}
	nodes = sshNodes(nodes)
	sums := &fileSums{}
	var mu sync.Mutex
	var out []NodeDeploy
	err = f.each(ctx, "deploy", nodes, func(ctx context.Context, n Node, c Conn) error {
		r := NodeDeploy{Node: n.Name}
		data, err := opts.ConfigFor(n)
		if err != nil {
			return err
		}
		cfgSum := sha256Hex(data)
		choose := func(p deploy.Probe) ([]deploy.File, error) {
			r.Platform = p.OS + "/" + p.Arch
			bin, err := opts.Binary(p.OS, p.Arch)
			if err != nil {
				return nil, fmt.Errorf("%s is %s: %w", n.Addr(), r.Platform, err)
			}
			r.Binary = bin
			goos, goarch, err := BinaryPlatform(bin)
			if err != nil {
				return nil, err
			}
			if goos != p.OS || goarch != p.Arch {
				return nil, fmt.Errorf("refusing to push %s, built for %s/%s, to %s, which is %s (%s); build one for it with `make dist`",
					bin, goos, goarch, n.Addr(), r.Platform, p.Uname)
			}
			sum, err := sums.get(bin)
			if err != nil {
				return nil, err
			}
			var files []deploy.File
			var need int64
			if cfgSum != p.ConfigSHA256 {
				files = append(files, deploy.File{Rel: deploy.ConfigFile, Mode: 0o600, SHA256: cfgSum, Open: func() (io.ReadCloser, error) {
					return io.NopCloser(bytes.NewReader(data)), nil
				}})
				need += int64(len(data))
			}
			if sum != p.BinarySHA256 {
				fi, err := os.Stat(bin)
				if err != nil {
					return nil, err
				}
				files = append(files, deploy.File{Rel: deploy.BinaryFile, Mode: 0o755, SHA256: sum, Open: func() (io.ReadCloser, error) {
					return openWithProgress(bin, n.Name, opts.Progress)
				}})
				need += fi.Size()
			}
			// The old files stay until the new ones are in place.
			if need > 0 && p.FreeKiB*1024 < need+1<<20 {
				return nil, fmt.Errorf("%s has %s free where its work dir %s is, and this deploy needs %s: free some space or set work_dir to another file system",
					n.Addr(), mib(p.FreeKiB*1024), n.WorkDir, mib(need+1<<20))
			}
			return files, nil
		}
		_, installed, err := deploy.Push(ctx, c, n.WorkDir, choose)
		if err != nil {
			return err
		}
		r.BinaryUploaded = slices.Contains(installed, deploy.BinaryFile)
		r.ConfigUploaded = slices.Contains(installed, deploy.ConfigFile)
		defer func() {
			mu.Lock()
			out = append(out, r)
			mu.Unlock()
		}()
		if !opts.Restart {
			return nil
		}
		layout, err := f.Layout(n)
		if err != nil {
			return err
		}
		r.Restarted, err = f.restartStale(ctx, c, layout, n.WorkerIDs(), r.BinaryUploaded || r.ConfigUploaded)
		return err
	})
	sort.Slice(out, func(a, b int) bool { return out[a].Node < out[b].Node })
	return out, err
}

// restartStale restarts the node's running workers that run replaced
// files: all of them when replaced is set (this deploy just installed a
// file, and a worker started within the same mtime tick would not look
// stale), else the ones Status calls stale. It returns what it started.
func (f *Fleet) restartStale(ctx context.Context, c Conn, layout deploy.Node, ids []string, replaced bool) ([]deploy.ProcessState, error) {
	st, err := deploy.Status(ctx, c, layout, ids)
	if err != nil {
		return nil, err
	}
	var restart []string
	for _, s := range st {
		if s.State == "running" && (replaced || s.Stale) {
			restart = append(restart, s.ID)
		}
	}
	if len(restart) == 0 {
		return nil, nil
	}
	if _, err := deploy.Stop(ctx, c, layout, restart, f.Config.Worker.GracePeriod+defaultStopSlack); err != nil {
		return nil, fmt.Errorf("restart workers: %w", err)
	}
	started, err := deploy.Start(ctx, c, layout, restart)
	if err != nil {
		return nil, fmt.Errorf("restart workers: %w", err)
	}
	return started, nil
}

// openWithProgress opens the local build bin, reporting bytes read to
// progress (if set) as they go to the node.
func openWithProgress(bin, node string, progress func(node string, sent, total int64)) (io.ReadCloser, error) {
	file, err := os.Open(bin)
	if err != nil || progress == nil {
		return file, err
	}
	fi, err := file.Stat()
	if err != nil {
		file.Close()
		return nil, err
	}
	return struct {
		io.Reader
		io.Closer
	}{&progressReader{r: file, total: fi.Size(), report: func(sent, total int64) { progress(node, sent, total) }}, file}, nil
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

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
