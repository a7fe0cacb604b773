# shellcheck shell=sh
# probe.sh (ProbeNode): $1 work dir, $2 the binary and $3 the config
# under it (BinaryFile, ConfigFile), then the tools to look for. What it
# prints is lib.sh's probe's; see there.
probe "$@"
