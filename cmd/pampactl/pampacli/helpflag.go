package pampacli

import (
	"flag"

	"github.com/urfave/cli/v2"
)

// urfave/cli v2 appends its global cli.HelpFlag, a *cli.BoolFlag, to every
// App and command, and BoolFlag.Apply writes into it while parsing: two
// Runs at once (the in-process CLI tests, or a program embedding pampacli)
// race on it. helpFlag is stateless, so sharing it is safe. This is the
// one write to a package variable, done before any App exists.
func init() { cli.HelpFlag = helpFlag{} }

type helpFlag struct{}

const helpUsage = "show help"

var _ cli.DocGenerationFlag = helpFlag{}

func (helpFlag) Apply(set *flag.FlagSet) error {
	v := new(bool) // one value behind both names, as urfave does for aliases
	for _, n := range (helpFlag{}).Names() {
		set.BoolVar(v, n, false, helpUsage)
	}
	return nil
}

func (helpFlag) Names() []string { return []string{"help", "h"} }
func (helpFlag) IsSet() bool     { return false }
func (helpFlag) String() string {
	return cli.FlagStringer(&cli.BoolFlag{Name: "help", Aliases: []string{"h"}, Usage: helpUsage})
}
func (helpFlag) TakesValue() bool             { return false }
func (helpFlag) GetUsage() string             { return helpUsage }
func (helpFlag) GetValue() string             { return "" }
func (helpFlag) GetDefaultText() string       { return "" }
func (helpFlag) GetEnvVars() []string         { return nil }
func (helpFlag) IsDefaultVisible() bool       { return false }
func (helpFlag) GetCategory() string          { return "" }
func (helpFlag) IsVisible() bool              { return true }
func (helpFlag) IsRequired() bool             { return false }
func (helpFlag) RunAction(*cli.Context) error { return nil }

// ownHelpCommands keeps urfave from adding its global help command (a
// shared *cli.Command it writes into) to the app and every command: the app gets a help command of its own, and subcommand
// help stays available as `pampactl CMD --help`.
func ownHelpCommands(app *cli.App) {
	var walk func([]*cli.Command)
	walk = func(cmds []*cli.Command) {
		for _, c := range cmds {
			c.HideHelpCommand = true // urfave adds it to leaf commands too
			walk(c.Subcommands)
		}
	}
	walk(app.Commands)
	app.Commands = append(app.Commands, &cli.Command{
		Name: "help", Aliases: []string{"h"}, Usage: "show the commands, or the help of one: pampactl help nodes",
		ArgsUsage: "[command]", HideHelp: true,
		Action: func(c *cli.Context) error {
			parent := c.Lineage()[1]
			if name := c.Args().First(); name != "" {
				if parent.App.Command(name) == nil {
					return usagef("no command %q; run pampactl help", name)
				}
				return cli.ShowCommandHelp(parent, name)
			}
			return cli.ShowAppHelp(parent)
		},
	})
}
