#!/usr/bin/env bash
# Peer comparison, in one run: the same checkpoint through what a user would do by hand
# (`optimum-cli export onnx` + `optimum-cli onnxruntime quantize --avx2`, and --avx512_vnni when this
# CPU has VNNI) against `bertpack export`; prints MCC, agreement with PyTorch, flip rate and size of
# each int8 model on the full CoLA validation set.
#   usage: scripts/compare_optimum_cli.sh RUN_DIR [DATA_DIR] [WORK_DIR]
# Run it on an otherwise idle machine: the figures compare sizes and agreement, the timings are its own.
set -euo pipefail
RUN=${1:?usage: scripts/compare_optimum_cli.sh RUN_DIR [DATA_DIR] [WORK_DIR]}
DATA=${2:-$(cd "$(dirname "$0")/../.." && pwd)/shared/data/cola}
WORK=${3:-/tmp/bertpack-compare}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
rm -rf "$WORK" && mkdir -p "$WORK"
CKPT="$RUN/model"
echo "== CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "== flags: $(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|avx512f|avx512_vnni|avx_vnni|amx_int8)$' | xargs)"

echo "== optimum-cli export onnx"
optimum-cli export onnx -m "$CKPT" --task text-classification "$WORK/optimum-onnx" > "$WORK/optimum-export.log" 2>&1
MODELS=()
echo "== optimum-cli onnxruntime quantize --avx2"
optimum-cli onnxruntime quantize --onnx_model "$WORK/optimum-onnx" --avx2 -o "$WORK/optimum-avx2" > "$WORK/q-avx2.log" 2>&1
MODELS+=("optimum-cli --avx2 (dynamic)=$WORK/optimum-avx2/model_quantized.onnx")
if grep -qw avx512_vnni /proc/cpuinfo; then
  echo "== optimum-cli onnxruntime quantize --avx512_vnni (this CPU has AVX-512 VNNI)"
  optimum-cli onnxruntime quantize --onnx_model "$WORK/optimum-onnx" --avx512_vnni -o "$WORK/optimum-vnni" > "$WORK/q-vnni.log" 2>&1
  MODELS+=("optimum-cli --avx512_vnni (dynamic)=$WORK/optimum-vnni/model_quantized.onnx")
fi

echo "== bertpack export"
bertpack export "$RUN" --out "$WORK/bertpack" --data "$DATA" --no-store --overwrite | tail -n 30
METHOD=$(python -c "import json,sys; print(json.load(open(sys.argv[1]))['variants']['int8']['method'])" "$WORK/bertpack/manifest.json")
MODELS+=("bertpack int8 ($METHOD, serving default)=$WORK/bertpack/model_int8.onnx")
for other in "$WORK"/bertpack/model_int8_*.onnx; do
  [ -e "$other" ] || continue
  m=$(basename "$other" .onnx); MODELS+=("bertpack ${m#model_} (alternative)=$other")
done

echo "== scoring every int8 model against PyTorch on CoLA validation"
python "$(dirname "$0")/compare_int8.py" "$WORK/bertpack" "$DATA" "${MODELS[@]}"
