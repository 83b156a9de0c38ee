#!/usr/bin/env bash
# Cold compile of the default run, OLD (a checkout to compare) and this trpo.py side by side,
# alternating, each with a fresh compile cache: OLD=/path/to/checkout bash bench/cold_compile.sh
set -e
new=$(cd "$(dirname "$0")/.." && pwd)/trpo.py
old=${OLD:?set OLD to a checkout of the code to compare}/trpo.py
for i in 1 2 3; do
  for side in old new; do
    dir=$(mktemp -d)
    file=$([ $side = old ] && echo "$old" || echo "$new")
    echo "$i $side $(cd "$dir" && XDG_CACHE_HOME=$dir python "$file" --quiet 2>/dev/null \
      | grep '^compile')"
    rm -rf "$dir"
  done
done
