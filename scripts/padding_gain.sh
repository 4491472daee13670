#!/usr/bin/env bash
# Training throughput with dynamic padding + length grouping against padding every batch to 128, in one run
# (same model, data subset, steps and seed). Usage: scripts/padding_gain.sh DATA_DIR [STEPS]
set -euo pipefail
DATA=${1:?usage: scripts/padding_gain.sh DATA_DIR [STEPS]}
STEPS=${2:-60}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
common=(--data "$DATA" --limit $((STEPS * 32)) --max-steps "$STEPS" --max-length 128 --seed 42)
bertpack train "${common[@]}" --out "$OUT/dynamic" > "$OUT/dynamic.log" 2>&1
bertpack train "${common[@]}" --out "$OUT/max" --padding max --no-group-by-length > "$OUT/max.log" 2>&1
python - "$OUT" <<'PY'
import json, sys
d = json.load(open(f"{sys.argv[1]}/dynamic/metrics.json"))["train_samples_per_second"]
m = json.load(open(f"{sys.argv[1]}/max/metrics.json"))["train_samples_per_second"]
print(f"padded to 128:                  {m:7.1f} training samples/s")
print(f"dynamic padding + length groups: {d:7.1f} training samples/s")
print(f"gain: {d / m:.2f}x")
PY
