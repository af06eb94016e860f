#!/bin/bash
# Default `hgdefend evaluate` on digits, wall time: today's main (eafe7d8) against this change, alternating, 3 runs each.
cd "$(dirname "$0")/.."; . .venv/bin/activate  # BASE: a checkout of the baseline commit
for i in 1 2 3; do
  for tree in "${BASE:?set BASE to a checkout of the baseline}" "$PWD"; do
    rm -rf /tmp/tdef; s=$(date +%s.%N)
    (cd $tree && PYTHONPATH=$tree python -m hgdefend evaluate --seed 0 --out /tmp/tdef --quiet) >/dev/null 2>&1
    e=$(date +%s.%N); echo "$tree run $i: $(echo "$e - $s" | bc) s"
  done
done
