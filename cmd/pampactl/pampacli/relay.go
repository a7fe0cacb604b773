package pampacli

import (
	"fmt"
	"net"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/pampa-go/pampa/protocol"
)

func (e *env) relayCommand() *cli.Command {
	return &cli.Command{
		Name:  "relay",
		Usage: "carry the workers of nearby nodes to the dispatcher over one connection",
		Subcommands: []*cli.Command{{
			Name:  "run",
			Usage: "serve the workers of the nodes that name this relay ([[nodes]] relay = NAME)",
			Description: "Run it on a host near its nodes, with the cluster's config and secret. It checks each\n" +
				"worker's secret and carries its stream to the first dispatcher that accepts it, every\n" +
				"stream on one HTTP/2 connection. It keeps nothing: when its upstream is cut, the workers'\n" +
				"streams end, and the workers keep their outcomes and reconnect, as without a relay.",
			Flags: append([]cli.Flag{
				&cli.StringFlag{Name: "name", Required: true, Usage: "the relay's name, a [[relays]] section"},
				&cli.StringFlag{Name: "listen", Usage: "host:port, instead of the section's listen"},
			}, logFlags()...),
			Action: func(c *cli.Context) error {
				if c.NArg() > 0 {
					return usagef("relay run takes no arguments; name the relay with --name")
				}
				cfg, err := e.loadConfig(c)
				if err != nil {
					return err
				}
				rc, ok := cfg.Relay(c.String("name"))
				if !ok {
					var names []string
					for _, r := range cfg.Relays {
						names = append(names, r.Name)
					}
					return usagef("--name %q: no [[relays]] section has that name (relays: %s)", c.String("name"), strings.Join(names, ", "))
				}
				secret, err := cfg.Secret(e.getenv)
				if err != nil {
					return err
				}
				upTLS, err := cfg.WorkerTLS()
				if err != nil {
					return err
				}
				log, closeLog, err := e.logger(c, logFileFlag(c, ""))
				if err != nil {
					return err
				}
				defer closeLog()
				relay, err := protocol.NewRelay(protocol.RelayConfig{Name: rc.Name, Upstreams: rc.Dispatchers, Secret: secret, TLS: upTLS, Logger: log})
				if err != nil {
					return err
				}
				defer relay.Close()
				listen := rc.Listen
				if c.IsSet("listen") {
					listen = c.String("listen")
				}
				ln, err := net.Listen("tcp", listen)
				if err != nil {
					return fmt.Errorf("relay %s: listen for workers: %w", rc.Name, err)
				}
				log.Info("relay serving workers", "relay", rc.Name, "listen", ln.Addr().String(), "dispatchers", rc.Dispatchers)
				return protocol.Serve(c.Context, ln, relay, nil, log)
			},
		}},
	}
}
