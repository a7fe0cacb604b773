# shellcheck shell=sh
# bootstrap.sh (Bootstrap): $1 the public key line, $2 the authorized_keys
# file ("" = ~/.ssh/authorized_keys), $3 work dir. Adds the key unless its
# "type base64" part is there already, so running it twice changes
# nothing; says "key added" or "key present". Creates the work dir with
# its bin and run.
set -e
umask 077
key=$1; f=${2:-$HOME/.ssh/authorized_keys}; wd=$3
mkdir -p -- "$(dirname -- "$f")"
[ -n "$2" ] || chmod 700 -- "$(dirname -- "$f")"
touch -- "$f"
kb=$(printf '%s\n' "$key" | cut -d' ' -f1,2)
if grep -qF -- "$kb" "$f"; then echo "key present"
else
  if [ -s "$f" ] && [ -n "$(tail -c 1 -- "$f")" ]; then echo >> "$f"; fi
  printf '%s\n' "$key" >> "$f"; echo "key added"
fi
umask 022
mkdir -p -- "$wd/bin" "$wd/run"
