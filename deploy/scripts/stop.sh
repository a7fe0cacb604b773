# shellcheck shell=sh
# stop.sh (Stop): $1 work dir, $2 grace seconds, then ids. TERM to each
# worker's group, wait up to the grace period, then KILL what is left.
# Prints "ID none", "ID stopped" or "ID killed" per worker.
cd "$1" || exit 1
grace=$2; shift 2
pids=""
for id in "$@"; do
  f=run/$id.pid
  [ -s "$f" ] || { echo "$id none"; continue; }
  pid=$(cat "$f")
  if alive "$pid" "$id"; then kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid"; pids="$pids $pid:$id"
  else echo "$id none"; rm -f "$f"; fi
done
end=$(( $(date +%s) + grace ))
while [ -n "$pids" ]; do
  left=""
  for p in $pids; do
    if alive "${p%%:*}" "${p#*:}"; then left="$left $p"; else echo "${p#*:} stopped"; rm -f "run/${p#*:}.pid"; fi
  done
  pids=$left
  [ -z "$pids" ] && break
  [ "$(date +%s)" -ge "$end" ] && break
  sleep 0.1
done
for p in $pids; do
  kill -KILL -- "-${p%%:*}" 2>/dev/null || kill -KILL "${p%%:*}"
  echo "${p#*:} killed"; rm -f "run/${p#*:}.pid"
done
