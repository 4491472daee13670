#!/usr/bin/env bash
# Train the embedded model on full CoLA with each recipe below (one run each, seed 42), then print
# the table of recipes tried (docs/train.md). Each recipe spells out every option that
# differs from today's defaults, so the table reproduces after the defaults changed. Recipe X (mean-pooling
# head) is scripts/experiments/meanpool_head.py. Usage: scripts/recipe_search.sh DATA_DIR [OUT_ROOT]
set -euo pipefail
DATA=${1:?usage: scripts/recipe_search.sh DATA_DIR [OUT_ROOT]}
ROOT=${2:-runs/recipes}
declare -A RECIPES=(
  [A_lr1e-4_ep4]="--lr 1e-4 --epochs 4 --layer-decay 1 --head-lr-multiplier 1 --class-weights none --evals-per-epoch 1"
  [B_lr2e-4_ep5]="--lr 2e-4 --epochs 5 --layer-decay 1 --head-lr-multiplier 1 --class-weights none --evals-per-epoch 1"
  [C_lr1e-4_ep6_llrd0.85_head5]="--lr 1e-4 --epochs 6 --layer-decay 0.85 --head-lr-multiplier 5 --class-weights none --evals-per-epoch 1"
  [E_lr1e-4_ep3_llrd0.85_head10]="--lr 1e-4 --epochs 3 --layer-decay 0.85 --head-lr-multiplier 10 --class-weights none --evals-per-epoch 1"
  [F_lr1.5e-4_ep3_llrd0.8_head10]="--lr 1.5e-4 --epochs 3 --layer-decay 0.8 --head-lr-multiplier 10 --class-weights none --evals-per-epoch 1"
  [G_C_eval2]="--lr 1e-4 --epochs 6 --layer-decay 0.85 --head-lr-multiplier 5 --evals-per-epoch 2 --class-weights none"
  [H_lr5e-5_bs16_ep6_llrd0.85_head5_eval2]="--lr 5e-5 --batch-size 16 --epochs 6 --layer-decay 0.85 --head-lr-multiplier 5 --evals-per-epoch 2 --class-weights none"
  [J_C_balanced_eval2]="--lr 1e-4 --epochs 6 --layer-decay 0.85 --head-lr-multiplier 5 --class-weights balanced --evals-per-epoch 2"
  [I_C_reinit_pooler_eval2]="--lr 1e-4 --epochs 6 --layer-decay 0.85 --head-lr-multiplier 5 --reinit-pooler --evals-per-epoch 2 --class-weights none"
)
for name in $(printf '%s\n' "${!RECIPES[@]}" | sort); do
  if [ -f "$ROOT/$name/metrics.json" ]; then continue; fi
  echo "=== $name: ${RECIPES[$name]}"
  bertpack train --data "$DATA" --out "$ROOT/$name" --overwrite ${RECIPES[$name]} > "$ROOT.$name.log" 2>&1 || echo "failed: $name"
done
python scripts/summarize_runs.py "$ROOT"/*/metrics.json
