package pampacli

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"

	"github.com/urfave/cli/v2"

	"github.com/pampa-go/pampa/orchestrator"
)

func (e *env) logsCommand() *cli.Command {
	return &cli.Command{
		Name:  "logs",
		Usage: "read the workers' logs",
		Subcommands: []*cli.Command{{
			Name:  "tail",
			Usage: "print the last lines of every worker's log; with -f, follow them all, each line prefixed with its worker",
			Flags: append([]cli.Flag{
				newNodeFlag(),
				&cli.StringSliceFlag{Name: "worker", Aliases: []string{"w"}, Usage: "only this worker id, such as w1.2 (repeatable)"},
				// -n is --node in every command; lines get -l.
				&cli.IntFlag{Name: "lines", Aliases: []string{"l"}, Value: 100, Usage: "last lines of each log to print"},
				&cli.BoolFlag{Name: "follow", Aliases: []string{"f"}, Usage: "keep printing new lines until interrupted; a node that drops is reconnected and its logs resume where they were left (no line lost or repeated)"},
			}, sshFlags()...),
			Action: e.logsTail,
		}},
	}
}

// Colours for worker prefixes on a terminal: a worker keeps its colour.
var prefixColours = []string{"31", "32", "33", "34", "35", "36", "91", "92", "93", "94", "95", "96"}

// prefixer formats a log line with its worker id.
type prefixer struct {
	colour bool
	width  int
}

func (p prefixer) format(worker, line string) string {
	id := fmt.Sprintf("%-*s", p.width, worker)
	if p.colour {
		h := fnv.New32a()
		h.Write([]byte(worker))
		id = "\033[" + prefixColours[h.Sum32()%uint32(len(prefixColours))] + "m" + id + "\033[0m"
	}
	return id + " | " + line
}

func (e *env) logsTail(c *cli.Context) error {
	f, err := e.sshFleet(c)
	if err != nil {
		return err
	}
	if c.Int("lines") < 0 {
		return usagef("-n %d: must not be negative", c.Int("lines"))
	}
	nodes, err := f.Nodes(c.StringSlice("node"))
	if err != nil {
		return err
	}
	p := prefixer{colour: isTerminal(e.stdout)}
	for _, n := range nodes {
		for _, id := range n.WorkerIDs() {
			p.width = max(p.width, len(id))
		}
	}
	err = f.TailLogs(c.Context, orchestrator.TailOptions{
		Names: c.StringSlice("node"), Workers: c.StringSlice("worker"),
		Lines: c.Int("lines"), Follow: c.Bool("follow"),
		Emit: func(_, worker, line string) { fmt.Fprintln(e.stdout, p.format(worker, line)) },
	})
	if c.Bool("follow") && errors.Is(err, context.Canceled) {
		return nil // interrupted: how -f ends
	}
	return err
}
