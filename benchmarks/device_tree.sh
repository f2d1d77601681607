#!/usr/bin/env bash
# The device tool sends the working tree (tracked files, untracked files git does not ignore, carried paths), at
# most 64 MiB. Tracked files are about 47 MB, 35 MB of them tests/fixtures/diffbir_e2e (which no benchmark reads),
# and PyAV's wheel (for the video section) is 36 MB: with it the tree fits only without that folder.
#   bash benchmarks/device_tree.sh size .whl .bench   # MB that would travel with these carried
#   bash benchmarks/device_tree.sh slim               # before the call: a local branch without that folder
#   bash benchmarks/device_tree.sh restore            # after it: back on the branch you were on, folder tracked
set -euo pipefail
cd "$(dirname "$0")/.."
fixture=tests/fixtures/diffbir_e2e
case "${1:-}" in
  size)
    shift
    { git ls-files -z; git ls-files -z --others --exclude-standard; printf '%s\0' "$@"; } |
      xargs -0 -r du -scb 2>/dev/null | awk '$2 == "total" {n += $1} END {printf "%.1f MB (limit 67.1 MB)\n", n / 1e6}' ;;
  slim)
    git diff --quiet && git diff --cached --quiet || { echo "commit first: the tree has uncommitted changes" >&2; exit 1; }
    git rev-parse --abbrev-ref HEAD > .git/device-slim-from
    git switch -q -c device-slim
    git rm -rq --cached "$fixture"
    git commit -qm "device run: $fixture left out of the tree that travels"
    echo "/$fixture/" >> .git/info/exclude ;;
  restore)
    git switch -q "$(cat .git/device-slim-from)"  # git rewrites the (ignored, identical) files it tracks again
    git branch -q -D device-slim
    sed -i "\#^/$fixture/\$#d" .git/info/exclude
    rm .git/device-slim-from
    git status --short | head ;;
  *) echo "usage: $0 size [CARRIED...] | slim | restore" >&2; exit 2 ;;
esac
