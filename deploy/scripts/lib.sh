# shellcheck shell=sh
# The functions the node scripts share. Every script is sent as this file
# followed by the script's own (deploy/scripts.go), so each may call them
# without defining or sourcing them.

# sum FILE: the file's hex SHA-256. OpenSSL, where the node has it, hashes
# about twice as fast as coreutils' sha256sum, which is the fallback.
sum() {
  if command -v openssl >/dev/null 2>&1; then openssl dgst -sha256 -r < "$1" | cut -d' ' -f1
  else sha256sum < "$1" | cut -d' ' -f1; fi
}

# alive PID ID: PID runs and is the worker ID. The worker's id is the last
# argument, so "--id ID " (NUL turned to space) matches exactly one
# worker's /proc/PID/cmdline: a reused pid is never signalled by mistake.
alive() { kill -0 "$1" 2>/dev/null && tr '\0' ' ' < /proc/"$1"/cmdline 2>/dev/null | grep -qF -- "--id $2 "; }

# probe WORKDIR BINARY CONFIG TOOL...: BINARY and CONFIG are the deployed
# files' paths under the work dir (BinaryFile, ConfigFile), the TOOLs
# what to look for (RequiredTools). One round trip tells the OS, the free
# space where the work dir is (or will be), the checksums of the deployed
# files, which tools are missing and what systemd offers (see Systemd):
# /run/systemd/system exists only when systemd is PID 1 (what sd_booted
# checks), and each systemd question is asked only then, with timeout
# where it exists, so a node without systemd answers at once and a stuck
# bus cannot hang the probe. A checksum comes from the file's stamp
# (FILE.sha256, "SHA256 SIZE MTIME INODE", which push.sh writes) while
# the stamp's size, mtime and inode are the file's; otherwise from sum.
#
# The output starts with a newline: a login script's output without one
# would otherwise run into the first line.
probe() {
  wd=$1 bin=$2 cfg=$3; shift 3
  echo
  echo "uname $(uname -sm)"
  d=$wd
  while [ ! -d "$d" ]; do d=$(dirname -- "$d"); done
  echo "df $(df -Pk -- "$d" | awk 'NR==2 {print $4}')"
  for f in "$bin" "$cfg"; do
    p=$wd/$f
    if [ ! -f "$p" ]; then echo "sum $f -"; continue; fi
    meta=$(stat -c '%s %Y %i' -- "$p" 2>/dev/null)
    stamp=$(cat -- "$p.sha256" 2>/dev/null)
    if [ -n "$meta" ] && [ -n "$stamp" ] && [ "${stamp#* }" = "$meta" ]; then echo "sum $f ${stamp%% *}"
    else echo "sum $f $(sum "$p")"; fi
  done
  for t in "$@"; do command -v "$t" >/dev/null 2>&1 || echo "missing $t"; done
  sd=none linger=no kill=no
  if [ -d /run/systemd/system ]; then
    sd=system
    to=; command -v timeout >/dev/null 2>&1 && to="timeout 5"
    $to systemctl --user show-environment >/dev/null 2>&1 && sd=user
    [ "$($to loginctl show-user "$(id -un)" -p Linger --value 2>/dev/null)" = yes ] && linger=yes
    [ "$($to busctl get-property org.freedesktop.login1 /org/freedesktop/login1 org.freedesktop.login1.Manager KillUserProcesses 2>/dev/null)" = "b true" ] && kill=yes
  fi
  echo "systemd $sd $linger $kill"
}
