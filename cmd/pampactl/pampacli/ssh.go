package pampacli

import (
	"github.com/urfave/cli/v2"

	"github.com/pampa-go/pampa/orchestrator"
)

// sshDialer returns how this invocation reaches SSH nodes.
func (e *env) sshDialer(c *cli.Context, cfg *orchestrator.Config) orchestrator.DialFunc {
	return nil
}
