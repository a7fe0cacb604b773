# shellcheck shell=sh
# status.sh (Status): $1 work dir, $2 the number K of ids, then the K ids,
# then the files a worker loads (Node.Files; last, as only they may hold
# spaces). Prints "ID PID STATE" per worker (running, dead or none), with
# " stale" after a running worker's state when one of the files is newer
# than its pid file, which the worker wrote as it started (see statusArgs
# in workers.go for why -nt is enough).
wd=$1; k=$2; shift 2
ids=""; i=0
while [ $i -lt "$k" ]; do ids="$ids $1"; shift; i=$((i+1)); done
cd "$wd" 2>/dev/null || { for id in $ids; do echo "$id 0 none"; done; exit 0; }
for id in $ids; do
  f=run/$id.pid
  if [ -s "$f" ]; then
    pid=$(cat "$f")
    if alive "$pid" "$id"; then
      stale=
      # -nt is not POSIX, but dash, BusyBox ash, bash, ksh and zsh all
      # have it, and the tests run this under dash and BusyBox.
      # shellcheck disable=SC3013
      for x in "$@"; do [ "$x" -nt "$f" ] && stale=" stale"; done
      echo "$id $pid running$stale"
    else echo "$id $pid dead"; fi
  else echo "$id 0 none"; fi
done
