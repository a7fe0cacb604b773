package pampacli

import (
	"fmt"
	"strings"

	"github.com/urfave/cli/v2"
)

// completeFlag is urfave's: a shell asks for the words that may follow.
const completeFlag = "--generate-bash-completion"

// bashCompletion asks pampactl itself for the words that may come next.
const bashCompletion = `# pampactl completion for bash: source <(pampactl completion bash)
_pampactl_complete() {
  local cur words
  cur="${COMP_WORDS[COMP_CWORD]}"
  words=$("${COMP_WORDS[0]}" "${COMP_WORDS[@]:1:COMP_CWORD-1}" ` + completeFlag + ` 2>/dev/null)
  COMPREPLY=($(compgen -W "${words}" -- "${cur}"))
}
complete -o default -F _pampactl_complete pampactl
`

// zshCompletion is the bash one through zsh's bashcompinit.
const zshCompletion = `# pampactl completion for zsh: source <(pampactl completion zsh)
autoload -U +X bashcompinit && bashcompinit
` + bashCompletion

func (e *env) completionCommand() *cli.Command {
	return &cli.Command{
		Name:      "completion",
		Usage:     "print a shell completion script: bash, zsh or fish",
		ArgsUsage: "bash|zsh|fish",
		Description: "bash and zsh: source <(pampactl completion bash) in ~/.bashrc or ~/.zshrc.\n" +
			"fish: pampactl completion fish > ~/.config/fish/completions/pampactl.fish",
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return usagef("name one shell: pampactl completion bash|zsh|fish")
			}
			switch shell := c.Args().First(); shell {
			case "bash":
				fmt.Fprint(e.stdout, bashCompletion)
			case "zsh":
				fmt.Fprint(e.stdout, zshCompletion)
			case "fish":
				script, err := c.App.ToFishCompletion()
				if err != nil {
					return err
				}
				fmt.Fprint(e.stdout, script)
			default:
				return usagef("no completion for %q; the shells are bash, zsh and fish", strings.TrimSpace(shell))
			}
			return nil
		},
	}
}
