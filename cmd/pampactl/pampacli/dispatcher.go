package pampacli

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/pampa-go/pampa/dispatcher/metrics"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/urfave/cli/v2"

	"github.com/pampa-go/pampa/dispatcher"
	"github.com/pampa-go/pampa/orchestrator"
	"github.com/pampa-go/pampa/worker"
)

func (e *env) dispatcherCommand() *cli.Command {
	return &cli.Command{
		Name:  "dispatcher",
		Usage: "run the dispatcher",
		Subcommands: []*cli.Command{{
			Name:  "run",
			Usage: "reserve rows for workers, relaunch failed and late rows, assign workers to jobs",
			Flags: append(append([]cli.Flag{
				&cli.DurationFlag{Name: "delay", Usage: "idle poll period", DefaultText: "[dispatcher] delay"},
				&cli.BoolFlag{Name: "once", Usage: "run one cycle and exit"},
				&cli.BoolFlag{Name: "no-tunnels", Usage: "do not keep the tunnels of tunnel nodes open (another process does)"},
				&cli.StringFlag{Name: "listen", Usage: "host:port for workers, instead of [dispatcher] listen (a standby beside the leader)"},
				&cli.BoolFlag{Name: "progress", Usage: "print a status line every second (rows/s, pending, workers); the default on a terminal", DefaultText: "on a terminal"},
			}, append(logFlags(), consoleFlags()...)...), sshFlags()...),
			Action: func(c *cli.Context) error {
				cfg, err := e.loadConfig(c)
				if err != nil {
					return err
				}
				d, rows, closeLog, err := e.newDispatcher(c, cfg)
				if err != nil {
					return err
				}
				defer closeLog()
				if !c.Bool("once") && !c.Bool("no-tunnels") {
					tunnels, err := e.keepTunnels(c, cfg)
					if err != nil {
						return err
					}
					if tunnels != nil {
						defer tunnels.Close()
					}
				}
				if c.Bool("once") {
					stats, err := d.RunOnce(c.Context)
					if err != nil {
						return err
					}
					for _, name := range d.Jobs() {
						s := stats[name]
						fmt.Fprintf(e.stdout, "%s: reserved %d, relaunched %d, released %d, failed %d, assigned %d\n",
							name, s.Reserved, s.Relaunched, s.Released, s.Failed, s.Assigned)
					}
					return nil
				}
				defer e.consoleBeside(c, cfg, d)()
				defer e.progressLine(c, d, rows)()
				return e.serveDispatcher(c, cfg, d)
			},
		}},
	}
}

func (e *env) newDispatcher(c *cli.Context, cfg *orchestrator.Config) (*dispatcher.Dispatcher, *metrics.RowGauges, func(), error) {
	url, err := cfg.DatabaseURL(e.getenv)
	if err != nil {
		return nil, nil, nil, err
	}
	logFile := logFileFlag(c, cfg.Dispatcher.LogFile)
	log, closeLog, err := e.logger(c, logFile)
	if err != nil {
		return nil, nil, nil, err
	}
	delay := cfg.Dispatcher.Delay
	if c.IsSet("delay") {
		delay = c.Duration("delay")
	}
	if len(cfg.Dispatcher.StartCommand) > 0 {
		// In the config's directory, as every relative path of the config.
		p := worker.Periodic{RunOnce: true, Logger: log, Func: worker.CommandFunc(cfg.Dispatcher.StartCommand, filepath.Dir(cfg.Path), os.Environ())}
		if err := p.Run(c.Context); err != nil {
			closeLog()
			return nil, nil, nil, fmt.Errorf("dispatcher start_command: %w", err)
		}
	}
	secret, created, err := cfg.EnsureSecret(e.getenv)
	if err != nil {
		closeLog()
		return nil, nil, nil, err
	}
	if created {
		log.Info("created the worker secret (mode 0600); nodes deploy pushes it to the nodes", "file", cfg.Dispatcher.SecretFile)
	}
	reg, metrics, rows := dispatcherMetrics(url, cfg)
	d, err := dispatcher.New(dispatcher.Config{
		DatabaseURL: url, Flavor: flavor(cfg), Jobs: cfg.Jobs, Delay: delay,
		HeartbeatTimeout: cfg.Dispatcher.HeartbeatTimeout, Dispatchers: len(cfg.Dispatcher.Addresses), StartSQL: cfg.Dispatcher.StartSQL, Logger: log,
		Secret: secret, KnownWorker: cfg.KnownWorker, SQLSessions: cfg.Dispatcher.SQLSessions,
		Metrics: metrics, MetricsHandler: promhttp.HandlerFor(reg, promhttp.HandlerOpts{}),
	})
	if err != nil {
		closeLog()
		return nil, nil, nil, err
	}
	capCtx, stopCap := context.WithCancel(c.Context)
	go cfg.Dispatcher.Logs.Cap(capCtx, logFile)
	return d, rows, func() { stopCap(); rows.Close(); closeLog() }, nil
}

// dispatcherMetrics is the registry /metrics serves: the dispatcher's
// own, the rows by state (counted at most every rowGaugeInterval, on a
// session opened at the first scrape), and the Go runtime's and process's.
func dispatcherMetrics(url string, cfg *orchestrator.Config) (*prometheus.Registry, *metrics.Metrics, *metrics.RowGauges) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	rows := metrics.NewRowGauges(url, cfg.Jobs, rowGaugeInterval)
	reg.MustRegister(rows)
	return reg, metrics.NewMetrics(reg), rows
}

// rowGaugeInterval bounds how often a scrape counts the rows: the counts
// walk the tables.
const rowGaugeInterval = 10 * time.Second

// keepTunnels keeps the db tunnels of the config's tunnel nodes open
// while the dispatcher runs, so that workers started by `workers start`
// reach the database; a node that cannot be reached now is retried until
// it can. nil when no node has tunnel.
func (e *env) keepTunnels(c *cli.Context, cfg *orchestrator.Config) (*orchestrator.Tunnels, error) {
	if !slices.ContainsFunc(cfg.Nodes, func(n orchestrator.Node) bool { return n.Tunnel }) {
		return nil, nil
	}
	f, err := e.sshFleet(c)
	if err != nil {
		return nil, err
	}
	tunnels, err := f.KeepTunnels(c.Context, nil, dispatcherDialer(f.Config))
	if err != nil {
		fmt.Fprintln(e.stderr, "pampactl: warning:", err, "(retrying in the background)")
	}
	return tunnels, nil
}

// serveDispatcher listens for workers on [dispatcher] listen and runs d
// until interrupted.
func (e *env) serveDispatcher(c *cli.Context, cfg *orchestrator.Config, d *dispatcher.Dispatcher) error {
	tlsConfig, err := cfg.DispatcherTLS()
	if err != nil {
		return err
	}
	addr := cfg.Dispatcher.Listen
	if c.IsSet("listen") {
		addr = c.String("listen")
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(c.Context, "tcp", addr)
	if err != nil {
		return fmt.Errorf("listen for workers on %s ([dispatcher] listen in %s, or --listen; is another dispatcher running there?): %w",
			addr, cfg.Path, err)
	}
	return d.Serve(c.Context, ln, tlsConfig)
}

// dispatcherDialer connects to the dispatcher's listener on the control
// host: where the nodes' tunnels lead.
func dispatcherDialer(cfg *orchestrator.Config) func(context.Context) (net.Conn, error) {
	addr := cfg.ListenerAddr()
	return func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	}
}

// progressLine prints, on a terminal (or with --progress), a status line
// every second: rows ended per second, rows waiting, workers connected.
// It returns what stops it.
func (e *env) progressLine(c *cli.Context, d *dispatcher.Dispatcher, rows *metrics.RowGauges) (stop func()) {
	on := isTerminal(e.stderr)
	if c.IsSet("progress") {
		on = c.Bool("progress")
	}
	if !on {
		return func() {}
	}
	tty := isTerminal(e.stderr)
	ctx, cancel := context.WithCancel(c.Context)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(time.Second)
		defer t.Stop()
		last, lastAt := int64(0), time.Now()
		for {
			select {
			case <-ctx.Done():
				if tty {
					fmt.Fprintln(e.stderr)
				}
				return
			case <-t.C:
			}
			ended, alive, leader := d.Progress()
			now := time.Now()
			rate := float64(ended-last) / now.Sub(lastAt).Seconds()
			last, lastAt = ended, now
			var waiting, running int64
			for _, s := range rows.Counts() {
				waiting += s.Pending + s.Retrying + s.Scheduled + s.Queued
				running += s.Running
			}
			role := "leader"
			if !leader {
				role = "standing by"
			}
			line := fmt.Sprintf("%s: %.0f rows/s, %d waiting, %d running, %d workers, %d ended", role, rate, waiting, running, alive, ended)
			if tty {
				fmt.Fprintf(e.stderr, "\r\033[K%s", line)
			} else {
				fmt.Fprintln(e.stderr, line)
			}
		}
	}()
	return func() { cancel(); <-done }
}
