#!/usr/bin/env bash
# The default recipe on full CoLA with several seeds, their weight average (bertpack soup), then the table with
# the validation split's mean and spread. Every run holds out the same selection rows (--selection-seed is fixed).
# Usage: scripts/seeds.sh DATA_DIR [OUT_ROOT] [SEEDS...]   (default seeds: 42 1 2)
set -euo pipefail
DATA=${1:?usage: scripts/seeds.sh DATA_DIR [OUT_ROOT] [SEEDS...]}
ROOT=${2:-runs/seeds}
shift $(( $# >= 2 ? 2 : 1 ))
SEEDS=("${@:-42 1 2}")
mkdir -p "$ROOT"
for seed in ${SEEDS[@]}; do
  [ -f "$ROOT/seed$seed/metrics.json" ] && continue
  echo "=== seed $seed"
  bertpack train --data "$DATA" --out "$ROOT/seed$seed" --overwrite --seed "$seed" > "$ROOT.seed$seed.log" 2>&1 || echo "failed: seed $seed"
done
members=()
for seed in ${SEEDS[@]}; do [ -f "$ROOT/seed$seed/metrics.json" ] && members+=("$ROOT/seed$seed"); done
if [ ${#members[@]} -ge 2 ]; then
  bertpack soup "${members[@]}" --data "$DATA" --out "$ROOT/soup" --overwrite > "$ROOT.soup.log" 2>&1 || echo "failed: soup"
fi
python scripts/summarize_runs.py "${members[@]/%//metrics.json}" $( [ -f "$ROOT/soup/metrics.json" ] && echo "$ROOT/soup/metrics.json" )
