package pampacli

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/pampa-go/pampa/dispatcher/metrics"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/urfave/cli/v2"

	"github.com/pampa-go/pampa/console"
	"github.com/pampa-go/pampa/dispatcher"
	"github.com/pampa-go/pampa/orchestrator"
)

func consoleFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "console-listen", Usage: "host:port of the web console, instead of [console] listen (\"\" for none)"},
		&cli.BoolFlag{Name: "read-only", Usage: "the console shows and refuses actions"},
		&cli.StringFlag{Name: "base-path", Usage: "where a reverse proxy mounts the console, such as /pampa"},
	}
}

func (e *env) consoleCommand() *cli.Command {
	return &cli.Command{
		Name:  "console",
		Usage: "serve the web console: jobs, rows, workers, nodes and logs, with their actions",
		Description: "Loopback by default ([console] listen). Any other address needs a token, printed at start,\n" +
			"or basic auth: \"user:password\" in the variable [console] auth_env names. Actions are refused\n" +
			"to cross-origin requests and, with --read-only, to everyone.",
		Flags: append(append([]cli.Flag{
			&cli.StringFlag{Name: "listen", Usage: "host:port, instead of [console] listen"},
		}, consoleFlags()[1:]...), sshFlags()...),
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return usagef("console takes no arguments")
			}
			cfg, err := e.loadConfig(c)
			if err != nil {
				return err
			}
			listen := cfg.Console.Listen
			if c.IsSet("listen") {
				listen = c.String("listen")
			}
			if listen == "" {
				listen = orchestrator.DefaultConsoleListen
			}
			log, closeLog, err := e.logger(c, "")
			if err != nil {
				return err
			}
			defer closeLog()
			return e.serveConsole(c.Context, c, cfg, listen, nil, log)
		},
	}
}

// serveConsole serves the console on listen until ctx ends. Its sessions
// open on demand and close when idle: beside a dispatcher, an unwatched
// console holds none. beside is the dispatcher of the same process
// (dispatcher run, up): its decisions and metrics show; without one the
// console checks the schema and counts the rows for /metrics itself.
func (e *env) serveConsole(ctx context.Context, c *cli.Context, cfg *orchestrator.Config, listen string, beside *dispatcher.Dispatcher, log *slog.Logger) error {
	url, err := cfg.DatabaseURL(e.getenv)
	if err != nil {
		return err
	}
	pc, err := pgxpool.ParseConfig(url)
	if err != nil {
		return fmt.Errorf("database URL: %w", err)
	}
	pc.MaxConns, pc.MinConns, pc.MaxConnIdleTime = 2, 0, 30*time.Second // the report is shared by every viewer
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return fmt.Errorf("connect to the database: %w", err)
	}
	defer pool.Close()
	ccfg := console.Config{Cluster: cfg, DB: pool, Logger: log, ProcessTimeout: 5 * time.Second,
		ReadOnly: cfg.Console.ReadOnly || c.Bool("read-only"), BasePath: cfg.Console.BasePath}
	if beside != nil {
		ccfg.Decisions, ccfg.Metrics = beside.Decisions, beside.MetricsHandler()
	} else {
		if err := dispatcher.Check(ctx, pool, cfg.Jobs); err != nil {
			return err
		}
		reg := prometheus.NewRegistry()
		reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
		rows := metrics.NewRowGauges(url, cfg.Jobs, rowGaugeInterval)
		defer rows.Close()
		reg.MustRegister(rows)
		ccfg.Metrics = promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
	}
	if c.IsSet("base-path") {
		ccfg.BasePath = c.String("base-path")
	}
	if f, err := e.sshFleet(c); err == nil {
		ccfg.Fleet = f
		configFor, cerr := e.nodeConfigs(cfg, false)
		if cerr != nil {
			configFor = func(orchestrator.Node) ([]byte, error) { return nil, cerr }
		}
		ccfg.Check = func(ctx context.Context) ([]orchestrator.NodeCheck, error) {
			return f.Check(ctx, nil, e.binaryFunc(c), configFor)
		}
	}
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return usagef("console listen %q: use host:port", listen)
	}
	if auth := e.getenv(cfg.Console.AuthEnv); auth != "" && cfg.Console.AuthEnv != "" {
		u, p, ok := strings.Cut(auth, ":")
		if !ok || u == "" || p == "" {
			return usagef("$%s: want user:password", cfg.Console.AuthEnv)
		}
		ccfg.User, ccfg.Password = u, p
	} else if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		b := make([]byte, 16)
		_, _ = rand.Read(b)
		ccfg.Token = hex.EncodeToString(b)
	}
	con, err := console.New(ccfg)
	if err != nil {
		return usageError{err}
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", listen)
	if err != nil {
		return fmt.Errorf("console: listen on %s ([console] listen, or --listen): %w", listen, err)
	}
	where := "http://" + ln.Addr().String() + ccfg.BasePath + "/"
	if ccfg.Token != "" {
		where += "?token=" + ccfg.Token
	}
	log.Info("console serving", "url", where, "read_only", ccfg.ReadOnly)
	fmt.Fprintln(e.stderr, "pampactl: console at", where)
	return console.Listen(ctx, ln, con.Handler())
}

// consoleBeside serves the console in the background while a dispatcher
// runs ([console] listen, or --console-listen; "" for none). It returns
// what stops it. A console that cannot start is logged, and the
// dispatcher runs on.
func (e *env) consoleBeside(c *cli.Context, cfg *orchestrator.Config, d *dispatcher.Dispatcher) (stop func()) {
	listen := cfg.Console.Listen
	if c.IsSet("console-listen") {
		listen = c.String("console-listen")
	}
	if listen == "" {
		return func() {}
	}
	log, closeLog, err := e.logger(c, "")
	if err != nil {
		return func() {}
	}
	ctx, cancel := context.WithCancel(c.Context)
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer closeLog()
		if err := e.serveConsole(ctx, c, cfg, listen, d, log); err != nil && ctx.Err() == nil {
			log.Warn("the console did not start; the dispatcher runs without it", "err", err)
		}
	}()
	return func() { cancel(); <-done }
}
