#!/usr/bin/env bash
# The main job on the embedded defaults, from a fresh clone: install, train, export, serve, classify.
# Usage: bash scripts/demo.sh [COLA_DIR]   (default: ../shared/data/cola)
set -euo pipefail
DATA=${1:-}
if [ -n "$DATA" ]; then  # a relative COLA_DIR is taken from where the script was run
  [ -d "$DATA" ] || { echo "error: COLA_DIR $DATA is not a folder; pass the CoLA 1.1 folder (holding raw/)" >&2; exit 2; }
  DATA=$(cd "$DATA" && pwd)
fi
cd "$(dirname "$0")/.."
if [ -z "$DATA" ]; then  # the default, checked before the install so a missing copy is said at once, in this script's terms
  [ -d ../shared/data/cola ] || { echo "error: no CoLA at $(cd .. && pwd)/shared/data/cola (the default); pass the CoLA 1.1 folder (holding raw/): bash scripts/demo.sh COLA_DIR" >&2; exit 2; }
  DATA=../shared/data/cola
fi
RUN=runs/demo
ART=artifacts/demo
PORT=${PORT:-3000}
export HF_HUB_OFFLINE=1 BENTOML_HOME=${BENTOML_HOME:-$PWD/.bentoml}

python3 -m venv .venv && .venv/bin/pip install -q --upgrade pip && .venv/bin/pip install -q -e .
source .venv/bin/activate

bertpack train --data "$DATA" --out "$RUN" --overwrite
bertpack export "$RUN" --data "$DATA" --out "$ART" --overwrite
bertpack predict "$ART" "The book was written by John." "Books were sent to each other by the students."

bentoml serve serving.service:Bertpack --host 127.0.0.1 --port "$PORT" > runs/demo-serve.log 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 120); do curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && break; sleep 1; done
curl -sf -X POST "http://127.0.0.1:$PORT/classify" -H 'content-type: application/json' \
     -d '{"sentences": ["The book was written by John.", "Books were sent to each other by the students."]}'
echo
curl -sf "http://127.0.0.1:$PORT/info"; echo
