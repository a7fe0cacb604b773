# shellcheck shell=sh
# push.sh (Push): the probe ($1 work dir, $2 binary, $3 config, then the
# tools: lib.sh's probe), then "ready"; then it reads from stdin what to
# install. EOF there means nothing: the node is left as it was.
# Otherwise, per file, a line "file REL MODE SHA256 ENC" and its data: one
# base64 line (ENC b64), or the rest of stdin (ENC rest, the last file: a
# binary needs no encoding and no length). Each file is written to a
# temporary name beside its target (created 0600 by the umask; chmod
# after the check) and its SHA-256 checked, stamp prepared; only when
# every file checked out are they renamed into place (rename(2): atomic,
# and a running binary can be replaced). Any failure removes what was
# written and says why on a "failed" line. A push killed outright (its
# deploy was cancelled) cannot clean up: the next push removes temporary
# files whose writer, named by the pid in their name, is gone.
wd=$1 binary=$2
probe "$@"
echo ready
IFS= read -r line || exit 0
got=
fail() {
  for r in $got; do rm -f -- "$wd/$r.tmp-$$" "$wd/$r.sha256.tmp-$$"; done
  echo "failed $*"; exit 1
}
sweep() {
  for old in "$wd/$1".tmp-* "$wd/$1".sha256.tmp-*; do
    [ -e "$old" ] || continue
    kill -0 "${old##*.tmp-}" 2>/dev/null || rm -f -- "$old"
  done
}
umask 077
mkdir -p -- "$wd/bin" "$wd/run" || fail "cannot create $wd/bin and $wd/run"
while :; do
  # The request line is split into its fields on purpose; set -f keeps
  # them from being taken as glob patterns.
  set -f
  # shellcheck disable=SC2086 # word splitting wanted
  set -- $line
  set +f
  if [ "$1" != file ] || [ $# -ne 5 ]; then fail "bad request"; fi
  rel=$2 mode=$3 want=$4 enc=$5 t=$wd/$2.tmp-$$
  [ -d "$wd/$rel" ] && fail "$wd/$rel is a directory"
  sweep "$rel"
  got="$got $rel"
  if [ "$enc" = b64 ]; then
    IFS= read -r data || fail "$rel: the data ended early"
    printf '%s' "$data" | base64 -d > "$t" || fail "cannot write $t"
  else
    cat > "$t" || fail "cannot write $t"
  fi
  have=$(sum "$t")
  [ "$have" = "$want" ] || fail "mismatch $rel $have"
  chmod "$mode" -- "$t" || fail "cannot chmod $t"
  { m=$(stat -c '%s %Y %i' -- "$t") && echo "$want $m" > "$wd/$rel.sha256.tmp-$$"; } || fail "cannot write the stamp of $rel"
  [ "$enc" = b64 ] || break
  IFS= read -r line || fail "the request ended early"
done
for r in $got; do
  { mv -f -- "$wd/$r.tmp-$$" "$wd/$r" && mv -f -- "$wd/$r.sha256.tmp-$$" "$wd/$r.sha256"; } || fail "cannot rename $r into place"
  echo "installed $r"
done
# The binary lived at bin/pampactl before bin/pampa-worker; a worker that
# still runs it keeps its open file.
[ "$binary" = bin/pampactl ] || rm -f -- "$wd/bin/pampactl" "$wd/bin/pampactl.sha256"
