# shellcheck shell=sh
# start.sh (Start): $1 work dir, $2 the number K of ids, then the K ids,
# then the worker argv. Prints "ID new" for each worker it starts, then
# "ID PID" for every one. All workers of a node start in one round trip:
# each SSH command costs the login shell's start-up on the node. Ids are
# node.N with node names of [A-Za-z0-9_-] only, so $ids splits safely.
# setsid in the background returns at once and the worker survives the
# session that started it; the pid it writes is its process group, which
# stop.sh signals as a whole. Not `setsid -f`: BusyBox's setsid has no
# -f, and a background child is never a group leader, so every setsid
# makes it a session leader in place.
set -e
cd "$1"; k=$2; shift 2
ids=""; i=0
while [ $i -lt "$k" ]; do ids="$ids $1"; shift; i=$((i+1)); done
# A binary named by its path must be there (a node deployed by an older
# pampactl has another); a bare name is looked up on PATH by exec.
case $1 in */*) [ -x "$1" ] || { echo "no worker binary $1 in $(pwd): run pampactl nodes deploy" >&2; exit 1; } ;; esac
mkdir -p run
for id in $ids; do
  pidfile=run/$id.pid
  if [ -s "$pidfile" ] && alive "$(cat "$pidfile")" "$id"; then continue; fi
  rm -f "$pidfile"
  # shellcheck disable=SC2016 # $$, $0 and $@ are the inner shell's
  setsid sh -c 'echo $$ > "$0"; exec "$@"' "$pidfile" "$@" --id "$id" >> "worker.$id.log" 2>&1 < /dev/null &
  echo "$id new"
done
for id in $ids; do
  pidfile=run/$id.pid
  i=0
  while [ ! -s "$pidfile" ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done
  [ -s "$pidfile" ] || { echo "worker $id did not start; see worker.$id.log" >&2; exit 1; }
  echo "$id $(cat "$pidfile")"
done
