#!/usr/bin/env bash
# Every GPU check in one run, on a CUDA machine where bertpack's Python
# packages are importable (onnxruntime-gpu, transformers < 4.58, optimum-onnx, datasets):
#
#   OUT=results DATA=CoLA_folder SHAPE=model_shape_dir META=artifact_dir bash scripts/gpu_checks.sh
#
#   1. bertpack doctor (providers that really load, GPU)
#   2. bertpack bench --arch bert-base on the GPU engines, then the batch-1 speed-up check's
#      engines alone for ROUNDS rounds (`bench --rounds`: fresh processes, engines interleaved), reusing that
#      export: PyTorch's batch-1 time changes from one process to the next, so the check reads the median ratio
#   2b. (kernels) a probe: the graph path at batch 1 with each ONNX Runtime attention kernel, and without the
#      embedding fusion, on that export (scripts/experiments/attention_kernels.py)
#   3. bertpack train, a few hundred steps on the GPU (mixed precision, samples/s) from random weights
#      of SHAPE's shape (the embedded model's config + tokenizer: throughput does not depend on weights)
#   4. bertpack export of that run (fp16 parity checked on the CUDA provider), no int8
#   5. bertpack bench of that artifact: the served model's shape on CUDA, IO binding with and without
#      CUDA graphs, and the serving path end to end
#   6. the tests that need a GPU (fp16 on the CUDA provider against the CPU's fp32, with and without CUDA
#      graphs; needs pytest on the machine)
# META is any bertpack artifact (its manifest and tokenizer seed step 2). PARTS picks the steps
# (default all: doctor,bench,kernels,repeat,train,export,served,tests; about 15 minutes on an H100, over one device
# call's 10: name only what is still open, e.g. PARTS=bench,kernels,repeat,tests ROUNDS=3). Every step has its own
# time limit; results are packed into $OUT/results.tgz after each step, so a cut-off run still
# returns what finished. scripts/gpu_stage.sh stages the wheels and data for a machine without network.
set -uo pipefail
: "${OUT:?set OUT}" "${DATA:?set DATA}" "${SHAPE:?set SHAPE}" "${META:?set META}"
WORK=${WORK:-/tmp/bertpack-gpu}
STEPS=${STEPS:-300}
ROUNDS=${ROUNDS:-5}
PARTS=${PARTS:-doctor,bench,kernels,repeat,train,export,served,tests}
BB_ENGINES=${BB_ENGINES:-pytorch_fp32,pytorch_fast,pytorch_bf16,pytorch_fp16,onnx_fp16_cuda,onnx_fp16_cuda_graph}
MINI_ENGINES=${MINI_ENGINES:-pytorch_fp32,pytorch_fast,pytorch_fp16,onnx_fp16_cuda,onnx_fp16_cuda_graph}
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || { echo "error: ROUNDS must be a whole number >= 1, not '$ROUNDS'" >&2; exit 2; }
RES="$WORK/results"
rm -rf "$RES" && mkdir -p "$OUT" "$RES"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false TQDM_DISABLE=1
want() { [[ ",$PARTS," == *",$1,"* ]]; }
step() { echo "== $1 ($(date +%T))"; }
pack() { tar czf "$OUT/results.tgz" -C "$RES" . ; }

step "machine"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; nproc; python3 -V; } 2>&1 | tee "$RES/machine.txt"
if want doctor; then
step "doctor"
timeout -k 5 90 python3 -m bertpack.cli doctor 2>&1 | tee "$RES/doctor.txt"
pack
fi

if want bench; then
step "bench bert-base"
timeout -k 10 330 python3 -m bertpack.cli bench "$META" --arch bert-base --data "$DATA" --engines "$BB_ENGINES" \
  --batch-sizes 1,8,32,128 --min-time 0.5 --min-samples 20 --no-profile --export-dir "$WORK/bert-base" \
  --out "$RES/bench-bert-base" 2>&1 | tee "$RES/bench-bert-base.log"
pack
fi
if want kernels; then
step "attention kernels and embedding fusion at batch 1 (a probe: scripts/experiments/attention_kernels.py)"
if [ -f "$WORK/bert-base/artifact/model_fp16.onnx" ]; then
  timeout -k 10 300 python3 scripts/experiments/attention_kernels.py "$WORK/bert-base/artifact" --data "$DATA" \
    --unfused-embeddings --out "$RES/attention-kernels.json" 2>&1 | tee "$RES/attention-kernels.log"
else
  echo "no bert-base export in $WORK/bert-base: run the bench part first" | tee "$RES/attention-kernels.log"
fi
pack
fi
if want repeat; then
step "bench bert-base, batch 1 only, $ROUNDS rounds"
timeout -k 10 $((60 + 45 * ROUNDS)) python3 -m bertpack.cli bench "$META" --arch bert-base --data "$DATA" \
  --engines pytorch_fp32,onnx_fp16_cuda,onnx_fp16_cuda_graph --batch-sizes 1 --rounds "$ROUNDS" --min-time 0.5 --min-samples 20 \
  --no-end-to-end --no-profile --export-dir "$WORK/bert-base" --out "$RES/bench-bert-base-b1-rounds" 2>&1 | tee "$RES/bench-bert-base-b1-rounds.log"
pack
fi

if want train; then
step "train on the GPU"
python3 scripts/random_model.py "$SHAPE" "$WORK/shape-random" 2>&1 | tail -1
timeout -k 10 240 python3 -m bertpack.cli train --model "$WORK/shape-random" --data "$DATA" --max-steps "$STEPS" \
  --out "$WORK/run" --overwrite 2>&1 | grep -v "it/s]$" | tee "$RES/train.log"
cp "$WORK/run/metrics.json" "$RES/train-metrics.json" 2>/dev/null
pack
fi

if want export; then
step "export the GPU run (fp16 parity on CUDA)"
timeout -k 10 240 python3 -m bertpack.cli export "$WORK/run" --out "$WORK/artifact" --data "$DATA" --int8 none --no-store \
  2>&1 | tee "$RES/export.log"
cp "$WORK/artifact/parity.md" "$WORK/artifact/manifest.json" "$RES/" 2>/dev/null
pack
fi

if want served; then
step "bench the served shape on CUDA"
timeout -k 10 240 python3 -m bertpack.cli bench "$WORK/artifact" --data "$DATA" --engines "$MINI_ENGINES" \
  --batch-sizes 1,8,32,64 --sentences 512 --min-time 0.5 --min-samples 20 --no-profile \
  --out "$RES/bench-served-shape" 2>&1 | tee "$RES/bench-served-shape.log"
pack
fi
if want tests; then
step "the tests that need a GPU"
timeout -k 10 240 python3 -m pytest -q -rs -p no:cacheprovider tests/test_serving_light.py -k cuda 2>&1 | tee "$RES/gpu-tests.log"
status=${PIPESTATUS[0]}
if grep -q "^SKIPPED" "$RES/gpu-tests.log"; then status="$status, but tests were skipped: the CUDA path was NOT tested here"; fi
echo "pytest exit status: $status" | tee -a "$RES/gpu-tests.log"
pack
fi
step "done"
