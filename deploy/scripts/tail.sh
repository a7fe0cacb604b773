# shellcheck shell=sh
# tail.sh (TailCommand): $1 work dir, $2 line count, $3 "follow" or
# "once", then per file its name, inode ("-" unknown) and offset (-1: its
# last $2 lines).
#
# GNU tail -F cannot start several files at different offsets, and a
# fresh tail after a reconnection either loses what was written meanwhile
# or repeats lines, so the script polls: one stat per round for every
# file, then the new bytes of each file as one line
#
#	chunk NAME INODE OFFSET BASE64
#
# Base64 keeps a chunk on one line whatever the log holds, and its
# decoded length is what was really read even if the file shrank under
# us. "at NAME INODE OFFSET" says where a file starts (its last lines, or
# 0 after truncation or rotation: a shorter file or another inode).
# Without follow, "eof NAME" ends a file, so its unfinished last line is
# shown in its place. An idle follower prints "." now and then: the write
# fails once the session is gone, which ends the script instead of
# leaving it polling forever.
#
# start finds where the last $n lines begin from a window that ends at
# the size stat gave, doubled until it holds them, rather than from tail
# -n on the file: a line appended meanwhile would shift the result into
# the middle of a line. stat's output is matched by "NAME ": log names
# (worker.ID.log) hold no blanks. POSIX sh has no arrays: the state is in
# numbered variables (i1, o1, ...), and "$@" ends up holding the names.
cd "$1" || exit 1
n=$2 mode=$3; shift 3
nl='
'
max=262144
start() {
  w=65536
  while :; do
    [ "$w" -lt "$2" ] || w=$2
    c=$(tail -c +$(($2 - w + 1)) -- "$1" | head -c "$w" | tail -n "$n" | wc -c)
    c=$((c))
    if [ "$c" -lt "$w" ] || [ "$w" -ge "$2" ]; then echo $(($2 - c)); return; fi
    w=$((w * 2))
  done
}
k=0 count=$(($# / 3))
while [ "$k" -lt "$count" ]; do
  k=$((k + 1))
  eval "i$k=\$2 o$k=\$3"
  set -- "$@" "$1"; shift 3
done
idle=0
while :; do
  st=$nl$(stat -L -c '%n %i %s' -- "$@" 2>/dev/null)$nl
  j=0
  for f in "$@"; do
    j=$((j + 1))
    eval "ino=\$i$j off=\$o$j"
    case $st in
    *"$nl$f "*) r=${st#*"$nl$f "}; r=${r%%"$nl"*}; ci=${r% *} size=${r#* } ;;
    *) ci=- size=-1 ;;
    esac
    if [ "$size" -ge 0 ]; then
      if [ "$off" -lt 0 ]; then
        off=$(start "$f" "$size") ino=$ci
        echo "at $f $ino $off"
      elif [ "$ino" = - ]; then
        ino=$ci
      elif [ "$ci" != "$ino" ] || [ "$size" -lt "$off" ]; then
        off=0 ino=$ci
        echo "at $f $ino $off"
      fi
      while [ "$size" -gt "$off" ]; do
        len=$((size - off))
        [ "$len" -le "$max" ] || len=$max
        printf 'chunk %s %s %s ' "$f" "$ino" "$off"
        tail -c +$((off + 1)) -- "$f" | head -c "$len" | base64 | tr -d '\n'
        echo || exit 0
        off=$((off + len)) idle=0
      done
    elif [ "$off" -lt 0 ]; then
      off=0
      echo "at $f - 0"
    fi
    [ "$mode" = follow ] || echo "eof $f"
    eval "i$j=\$ino o$j=\$off"
  done
  [ "$mode" = follow ] || exit 0
  idle=$((idle + 1))
  if [ "$idle" -ge 20 ]; then echo . || exit 0; idle=0; fi
  sleep 0.25
done
