#!/usr/bin/env bash
# The default recipe on full CoLA with several seeds, then the table with mean and spread.
# Usage: scripts/seeds.sh DATA_DIR [OUT_ROOT] [SEEDS...]   (default seeds: 42 1 2)
set -euo pipefail
DATA=${1:?usage: scripts/seeds.sh DATA_DIR [OUT_ROOT] [SEEDS...]}
ROOT=${2:-runs/seeds}
shift $(( $# >= 2 ? 2 : 1 ))
SEEDS=("${@:-42 1 2}")
for seed in ${SEEDS[@]}; do
  [ -f "$ROOT/seed$seed/metrics.json" ] && continue
  echo "=== seed $seed"
  flock /tmp/bertpack-measure.lock bertpack train --data "$DATA" --out "$ROOT/seed$seed" --overwrite --seed "$seed" > "$ROOT.seed$seed.log" 2>&1 || echo "failed: seed $seed"
done
python scripts/summarize_runs.py "$ROOT"/seed*/metrics.json
