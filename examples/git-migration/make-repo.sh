#!/bin/sh
# Makes the git-mode demo's repository: a bare remote DIR/shop.git (branch
# main) holding a toy shop written in sh, fresh each time. Twenty modules
# call the old API `old_fetch`; mod21 and mod22 exist but are not in the
# registry yet; `sh tests.sh` is the suite the merge train runs on every
# candidate. Usage: make-repo.sh DIR (the manifest expects DIR to be
# examples/git-migration/work).
set -eu
[ $# -eq 1 ] || { echo "usage: $0 DIR" >&2; exit 2; }
mkdir -p "$1"
dir=$(cd "$1" && pwd)
rm -rf "$dir/shop.git"
src=$(mktemp -d)
trap 'rm -rf "$src"' EXIT

mkdir -p "$src/src"
cat >"$src/src/http.sh" <<'SH'
# The shop's HTTP client. old_fetch is the API the migration retires.
old_fetch() { printf 'fetched:%s\n' "$1"; }
SH
cat >"$src/src/registry.sh" <<'SH'
# The modules the shop runs: one `register` line each, the newest last.
REGISTERED=""
register() { REGISTERED="$REGISTERED $1"; }
SH
for n in $(seq -w 1 22); do
  printf '# Module %s: loads item %s.\nmod%s() { old_fetch "item%s"; }\n' \
    "$n" "$n" "$n" "$n" >"$src/src/mod$n.sh"
  [ "$n" -le 20 ] && printf 'register mod%s\n' "$n" >>"$src/src/registry.sh"
done
cat >"$src/tests.sh" <<'SH'
#!/bin/sh
# The shop's test suite: every registered module must load its own item.
set -u
. src/http.sh
. src/registry.sh
failed=0
for m in $REGISTERED; do
  . "src/$m.sh"
  want="fetched:item${m#mod}"
  got=$("$m")
  if [ "$got" = "$want" ]; then
    echo "ok   $m"
  else
    echo "FAIL $m: expected '$want', got '$got'"
    failed=1
  fi
done
[ $failed -eq 0 ] && echo "all $(echo $REGISTERED | wc -w) modules pass"
exit $failed
SH
printf '# shop\n\nA toy codebase for the regatta git-mode demo. Run `sh tests.sh`.\n' >"$src/README.md"

git() {
  command git -c user.name=demo -c user.email=demo@example.invalid \
    -c commit.gpgsign=false -c init.defaultBranch=main -c core.hooksPath=/dev/null "$@"
}
git -C "$src" init -q
git -C "$src" add -A
git -C "$src" commit -q -m "The shop before the migration: 22 modules on old_fetch"
(cd "$src" && sh tests.sh >/dev/null) || { echo "the fresh shop fails its tests" >&2; exit 1; }
git init -q --bare "$dir/shop.git"
git -C "$src" push -q "$dir/shop.git" HEAD:refs/heads/main
echo "made $dir/shop.git (main at $(git -C "$dir/shop.git" rev-parse --short main))"
