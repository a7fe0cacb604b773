package pampacli

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/pampa-go/pampa/orchestrator"
)

// sshFleet is the Fleet of commands that reach SSH nodes.
func (e *env) sshFleet(c *cli.Context) (*orchestrator.Fleet, error) {
	f, err := e.fleet(c)
	if err != nil {
		return nil, err
	}
	f.Parallel = flagInt(c, "parallel", 16)
	if f.Parallel < 1 {
		return nil, usagef("--parallel %d: must be at least 1", f.Parallel)
	}
	f.Logger, _, _ = e.logger(c, "")
	return f, nil
}

func withSSHFlags(flags ...cli.Flag) []cli.Flag {
	return append(append([]cli.Flag{newNodeFlag()}, flags...), sshFlags()...)
}

// Flags are built per App: urfave writes into them while parsing, so a
// shared *cli.Flag would race between concurrent Runs.
func jsonFlag() cli.Flag { return &cli.BoolFlag{Name: "json", Usage: "print JSON"} }

func binaryFlag() cli.Flag {
	return &cli.StringFlag{Name: "binary", Usage: "push this build (pampa-worker, pampactl or one of your own) instead of the one picked for the node's platform (checked against it)"}
}

func newNodeFlag() cli.Flag {
	return &cli.StringSliceFlag{Name: "node", Aliases: []string{"n"}, Usage: "only this node (repeatable); all nodes by default"}
}

func (e *env) nodesCommand() *cli.Command {
	return &cli.Command{
		Name:  "nodes",
		Usage: "list, check, trust, bootstrap and deploy to the nodes of the cluster",
		Subcommands: []*cli.Command{
			{Name: "list", Usage: "list the nodes of the config", Flags: []cli.Flag{newNodeFlag(), jsonFlag()}, Action: e.nodesList},
			{Name: "check", Usage: "check that the nodes are reachable and what they run", Flags: withSSHFlags(jsonFlag(), binaryFlag()), Action: e.nodesCheck},
			{Name: "trust", Usage: "record the host key of SSH nodes in known_hosts", ArgsUsage: "NODE...", Flags: withSSHFlags(), Action: e.nodesTrust},
			{Name: "bootstrap", Usage: "install this host's SSH key on the nodes (logging in with ssh_password the first time), create the work dir",
				Flags:  withSSHFlags(&cli.StringFlag{Name: "authorized-keys", Usage: "authorized_keys file on the node (default ~/.ssh/authorized_keys)"}),
				Action: e.nodesBootstrap},
			{Name: "deploy", Usage: "push the worker binary and the config to the SSH nodes (skipping unchanged files)",
				Flags:  withSSHFlags(jsonFlag(), binaryFlag(), &cli.BoolFlag{Name: "restart", Usage: "restart running workers where a file changed, and those still running replaced files (workers status: STALE)"}),
				Action: e.nodesDeploy},
		},
	}
}

type nodeView struct {
	Name       string `json:"name"`
	Addr       string `json:"addr"`
	User       string `json:"user,omitempty"`
	Transport  string `json:"transport"`
	MaxWorkers int    `json:"max_workers"`
	WorkDir    string `json:"work_dir"`
	Tunnel     bool   `json:"tunnel,omitempty"`
}

func (e *env) nodesList(c *cli.Context) error {
	cfg, err := e.loadConfig(c)
	if err != nil {
		return err
	}
	f := &orchestrator.Fleet{Config: cfg}
	nodes, err := f.Nodes(c.StringSlice("node"))
	if err != nil {
		return err
	}
	var rows []nodeView
	for _, n := range nodes {
		v := nodeView{Name: n.Name, Addr: n.Addr(), User: n.User, Transport: "ssh", MaxWorkers: n.MaxWorkers, WorkDir: n.WorkDir, Tunnel: n.Tunnel}
		if n.Local {
			v.Transport = "local"
		}
		rows = append(rows, v)
	}
	if c.Bool("json") {
		return e.printJSON(rows)
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tADDRESS\tUSER\tTRANSPORT\tWORKERS\tWORK DIR")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\n", r.Name, r.Addr, dash(r.User), r.Transport, r.MaxWorkers, r.WorkDir)
	}
	return tw.Flush()
}

func (e *env) printJSON(v any) error {
	enc := json.NewEncoder(e.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// binaryFunc picks the build pushed to a node of a platform (see
// workerBuild.pick); --binary overrides it.
func (e *env) binaryFunc(c *cli.Context) orchestrator.BinaryFunc {
	if p := c.String("binary"); p != "" {
		return func(string, string) (string, error) { return p, nil }
	}
	return func(goos, goarch string) (string, error) {
		b, err := e.workerBuild()
		if err != nil {
			return "", err
		}
		return b.pick(goos, goarch)
	}
}

// workerBinary is the build this machine's workers run: what deploy would
// push to a node of its platform.
func (e *env) workerBinary() (string, error) {
	b, err := e.workerBuild()
	if err != nil {
		return "", err
	}
	return b.pick(runtime.GOOS, runtime.GOARCH)
}

func (e *env) workerBuild() (workerBuild, error) {
	self, err := os.Executable()
	if err != nil {
		return workerBuild{}, fmt.Errorf("find this executable: %w", err)
	}
	return workerBuild{self: self, goos: runtime.GOOS, goarch: runtime.GOARCH, handlers: len(e.opts.Handlers) > 0, runs: isExecutable}, nil
}

// workerOnlyBuild is the name of cmd/pampa-worker's binary, which make
// build puts beside pampactl and make dist beside pampactl-GOOS-GOARCH.
const workerOnlyBuild = "pampa-worker"

// workerBuild is what the choice of a node's build depends on.
type workerBuild struct {
	self         string // this executable
	goos, goarch string // its platform
	handlers     bool   // it has Go handlers of its own
	runs         func(path string) bool
}

// pick returns the build that nodes of a platform run workers with. The
// worker-only build comes first: its idle worker holds half the memory of
// pampactl's (BENCHMARKS.md). That is pampa-worker beside this executable
// (for its own platform), else pampa-worker-GOOS-GOARCH next to it, in its
// dist directory or in ./dist; else this executable for its own platform,
// pampactl-GOOS-GOARCH in those directories for another. A pampactl built
// with Go handlers of its own is its own worker: the worker-only build
// would not have them.
func (b workerBuild) pick(goos, goarch string) (string, error) {
	native := goos == b.goos && goarch == b.goarch
	dir := filepath.Dir(b.self)
	dirs := []string{dir, filepath.Join(dir, "dist"), "dist"}
	var paths []string
	if !b.handlers {
		if native {
			paths = append(paths, filepath.Join(dir, workerOnlyBuild))
		}
		for _, d := range dirs {
			paths = append(paths, filepath.Join(d, workerOnlyBuild+"-"+goos+"-"+goarch))
		}
	}
	if native {
		paths = append(paths, b.self)
	} else {
		for _, d := range dirs {
			paths = append(paths, filepath.Join(d, "pampactl-"+goos+"-"+goarch))
		}
	}
	for _, p := range paths {
		if p == b.self || b.runs(p) {
			return p, nil
		}
	}
	if b.handlers {
		return "", fmt.Errorf("no build of this pampactl (it has Go handlers of its own) for %s/%s: looked for %s; build it with CGO_ENABLED=0 GOOS=%s GOARCH=%s into dist/pampactl-%s-%s, or give --binary a worker build of your own (workercli)",
			goos, goarch, strings.Join(paths, ", "), goos, goarch, goos, goarch)
	}
	return "", fmt.Errorf("no worker build for %s/%s: looked for %s; run `make dist`, or CGO_ENABLED=0 GOOS=%s GOARCH=%s go build -o dist/%s-%s-%s ./cmd/pampa-worker",
		goos, goarch, strings.Join(paths, ", "), goos, goarch, workerOnlyBuild, goos, goarch)
}

// isExecutable reports a regular file that someone may execute.
func isExecutable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}

// nodeConfigs returns what deploy pushes to each node: its own config,
// with the worker secret (created here if the cluster has none yet).
func (e *env) nodeConfigs(cfg *orchestrator.Config, create bool) (func(orchestrator.Node) ([]byte, error), error) {
	var secret []byte
	var err error
	if create {
		var created bool
		secret, created, err = cfg.EnsureSecret(e.getenv)
		if created {
			fmt.Fprintf(e.stderr, "pampactl: created the worker secret %s (mode 0600)\n", cfg.Dispatcher.SecretFile)
		}
	} else {
		secret, err = cfg.Secret(e.getenv)
	}
	if err != nil {
		return nil, err
	}
	return func(n orchestrator.Node) ([]byte, error) { return cfg.NodeConfig(n, secret) }, nil
}

func (e *env) nodesCheck(c *cli.Context) error {
	f, err := e.sshFleet(c)
	if err != nil {
		return err
	}
	configFor, err := e.nodeConfigs(f.Config, false)
	if err != nil {
		// Without a secret there is no config to compare; the rest holds.
		configFor = func(orchestrator.Node) ([]byte, error) { return nil, err }
	}
	res, err := f.Check(c.Context, c.StringSlice("node"), e.binaryFunc(c), configFor)
	if c.Bool("json") {
		if jerr := e.printJSON(res); jerr != nil {
			return jerr
		}
		e.printCheckWarnings(res)
		return err
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tADDRESS\tSTATUS\tPLATFORM\tFREE\tBINARY\tCONFIG\tSYSTEMD")
	for _, r := range res {
		status, free, systemd := "ok", "-", "-"
		if !r.OK {
			status = "FAILED"
		}
		if r.Platform != "" {
			free = humanBytes(r.FreeKiB << 10)
		}
		if r.Systemd != nil {
			systemd = r.Systemd.String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Node, r.Addr, status, dash(r.Platform), free, r.Binary, r.Config, systemd)
	}
	tw.Flush()
	for _, r := range res {
		for _, l := range r.Limits {
			fmt.Fprintf(e.stdout, "%s: %s %d %s by %s: %s\n", r.Node, l.Limit, l.Value, l.Unit, l.By, l.Reason)
		}
	}
	e.printCheckWarnings(res)
	return err
}

// printCheckWarnings tells on stderr what does not fail a node's check
// but may stop its workers.
func (e *env) printCheckWarnings(res []orchestrator.NodeCheck) {
	for _, r := range res {
		for _, w := range r.Warnings {
			fmt.Fprintf(e.stderr, "pampactl: warning: node %s: %s\n", r.Node, w)
		}
	}
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return strconv.FormatInt(n, 10) + " B"
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func (e *env) nodesTrust(c *cli.Context) error {
	if c.NArg() == 0 {
		return usagef("nodes trust: name the nodes, such as: pampactl nodes trust w1")
	}
	f, err := e.sshFleet(c)
	if err != nil {
		return err
	}
	res, err := f.TrustHostKeys(c.Context, append(c.Args().Slice(), c.StringSlice("node")...))
	for _, r := range res {
		switch {
		case r.Local:
			fmt.Fprintf(e.stdout, "%s\tlocal node: no host key\n", r.Node)
		case r.Added:
			fmt.Fprintf(e.stdout, "%s\t%s\t%s\tadded to %s\n", r.Node, r.Addr, r.Fingerprint, r.KnownHosts)
		default:
			fmt.Fprintf(e.stdout, "%s\t%s\t%s\talready trusted\n", r.Node, r.Addr, r.Fingerprint)
		}
	}
	return err
}

func (e *env) nodesBootstrap(c *cli.Context) error {
	f, err := e.sshFleet(c)
	if err != nil {
		return err
	}
	res, err := f.Bootstrap(c.Context, orchestrator.BootstrapOptions{Names: c.StringSlice("node"),
		AuthorizedKeys: c.String("authorized-keys"), Getenv: e.getenv})
	if res.PampaKeyCreated {
		fmt.Fprintf(e.stderr, "pampactl: generated SSH key %s\n", res.PampaKey)
	}
	for _, r := range res.Nodes {
		verb := "key already installed"
		if r.KeyAdded {
			verb = "key installed"
		}
		fmt.Fprintf(e.stdout, "%s\t%s; key login ok; work dir ready\n", r.Node, verb)
	}
	if res.PampaKey != "" {
		fmt.Fprintf(e.stderr, "pampactl: nodes without ssh_private_key_file got the key %s; set ssh_private_key_file = %q for them in %s\n",
			res.PampaKey+".pub", res.PampaKey, f.Config.Path)
	}
	return err
}

func (e *env) nodesDeploy(c *cli.Context) error {
	f, err := e.sshFleet(c)
	if err != nil {
		return err
	}
	configFor, err := e.nodeConfigs(f.Config, true)
	if err != nil {
		return err
	}
	opts := orchestrator.DeployOptions{Names: c.StringSlice("node"), Binary: e.binaryFunc(c), ConfigFor: configFor, Restart: c.Bool("restart")}
	var bar *progressBar
	if isTerminal(e.stderr) {
		bar = &progressBar{w: e.stderr}
		opts.Progress = bar.update
	}
	res, err := f.Deploy(c.Context, opts)
	if bar != nil {
		bar.done()
	}
	if c.Bool("json") {
		if jerr := e.printJSON(res); jerr != nil {
			return jerr
		}
		return err
	}
	e.printDeploy(res)
	return err
}

func (e *env) printDeploy(res []orchestrator.NodeDeploy) {
	for _, r := range res {
		var did []string
		if r.BinaryUploaded {
			did = append(did, "binary uploaded ("+filepath.Base(r.Binary)+")")
		}
		if r.ConfigUploaded {
			did = append(did, "config uploaded")
		}
		if len(did) == 0 {
			did = append(did, "up to date")
		}
		if len(r.Restarted) > 0 {
			did = append(did, "restarted "+plural(len(r.Restarted), "worker"))
		}
		fmt.Fprintf(e.stdout, "%s\t%s\t%s\n", r.Node, r.Platform, strings.Join(did, ", "))
	}
}

// progressBar redraws one line on a terminal: bytes sent per node.
type progressBar struct {
	w     interface{ Write([]byte) (int, error) }
	mu    sync.Mutex
	sent  map[string][2]int64
	order []string
	last  time.Time
}

func (p *progressBar) update(node string, sent, total int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.sent == nil {
		p.sent = map[string][2]int64{}
	}
	if _, ok := p.sent[node]; !ok {
		p.order = append(p.order, node)
	}
	p.sent[node] = [2]int64{sent, total}
	if time.Since(p.last) < 100*time.Millisecond && sent < total {
		return
	}
	p.last = time.Now()
	p.draw()
}

func (p *progressBar) draw() {
	var parts []string
	for _, n := range p.order {
		s := p.sent[n]
		parts = append(parts, fmt.Sprintf("%s %d%%", n, s[0]*100/max(s[1], 1)))
	}
	fmt.Fprintf(p.w, "\r\033[Kuploading: %s", strings.Join(parts, "  "))
}

func (p *progressBar) done() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.order) > 0 {
		p.draw()
		fmt.Fprintln(p.w)
	}
}
