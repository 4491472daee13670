"""Experiment: SmoothQuant before dynamic int8, against the int8 the export ships.

Dynamic int8 quantizes each activation with one scale per tensor per batch. Where a few hidden
channels carry outliers, that scale is set by them, the other channels get few levels, and a
sentence's prediction depends on its batch neighbours (the export's flip rate). SmoothQuant
(Xiao et al., 2023) moves part of each channel's range into the weights: x' = x / s, W' = s W with
s_j = max|x_j|^alpha / max|W_j|^(1 - alpha), computed on calibration sentences. The fp32 model is
unchanged up to rounding; the activations the quantizer sees are flatter.

The transform is export/smoothquant.py's (an explicit Mul in front of each smoothed product, on the
fused graph `model_optimized.onnx`); each candidate is then quantized exactly as the export does (ORT
symbolic shape inference, ORTQuantizer dynamic). This script measured which products to smooth and
which alpha; the export's ladder uses the answer. Every candidate is scored on the CoLA validation set in
length-sorted batches
of 1, 8, 32 and 128 (as `bertpack bench` builds them) against the fp32 graph:

    python scripts/experiments/smoothquant.py artifacts/cola --data ../shared/data/cola --alphas 0.5,0.75
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench.batches import make_batches  # noqa: E402
from bertpack.data import load_cola, validation_sentences  # noqa: E402
from bertpack.metrics import mcc  # noqa: E402
from export import quantize as q  # noqa: E402
from export.smoothquant import channel_ranges, smooth  # noqa: E402
from serving.engine import OnnxClassifier, session_options  # noqa: E402

ALL_GROUPS = ("qkv", "attn_out", "ffn_in", "ffn_out")

BATCH_SIZES = (1, 8, 32, 128)


def predictions(
    model_path: Path, ids: list[list[int]], pad_id: int, input_names: list[str]
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path), session_options(2), providers=["CPUExecutionProvider"])
    output = session.get_outputs()[0].name
    out = {}
    for b in BATCH_SIZES:
        logits = np.empty((len(ids), 2), dtype=np.float32)
        for batch in make_batches(ids, b, pad_id, input_names):
            logits[batch.rows] = session.run([output], batch.inputs)[0]
        out[b] = (logits.argmax(axis=1), logits)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("artifact", type=Path)
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "cola")
    p.add_argument("--alphas", default="0.5,0.75")
    p.add_argument(
        "--groups",
        default="qkv,attn_out,ffn_in",
        help="products whose inputs are smoothed (qkv, attn_out, ffn_in); "
        "several sets separated by ';' are tried one after the other",
    )
    p.add_argument("--calibration", type=int, default=256, help="CoLA training sentences for the channel ranges")
    p.add_argument("--with-ffn-out", action="store_true", help="also try quantizing the smoothed FFN down-projections")
    p.add_argument("--json-out", type=Path)
    args = p.parse_args()

    art = args.artifact
    manifest = json.loads((art / "manifest.json").read_text())
    clf = OnnxClassifier(art, variant="fp32", device="cpu", threads=2, verify=False)
    sentences, labels, _ = validation_sentences(args.data)
    ids, pad_id, names = clf.encode(sentences), clf.pad_id, clf.input_names
    calib_ids = clf.encode(q.calibration_sample(load_cola(args.data)["train"]["sentence"], args.calibration, seed=0))
    target = manifest["variants"].get("int8", {}).get("settings", {}).get("target", "avx512_vnni")
    num_layers = json.loads((art / "config.json").read_text())["num_hidden_layers"]

    ref = predictions(art / "model.onnx", ids, pad_id, names)[1][0]  # fp32 = PyTorch within 1e-6 (parity report)
    ref_mcc = mcc(labels, ref)
    rows = []

    def score(name: str, path: Path, note: str = "") -> None:
        t = time.perf_counter()
        preds = predictions(path, ids, pad_id, names)
        row = {"candidate": name, "note": note, "seconds": round(time.perf_counter() - t, 1)}
        for b, (pred, _) in preds.items():
            row[f"agree_b{b}"] = round(100.0 * float((pred == ref).mean()), 2)
            row[f"dmcc_b{b}"] = round(mcc(labels, pred) - ref_mcc, 4)
        # batch dependence: the same sentence alone vs inside its batch of 32
        row["flip_b1_vs_b32"] = round(100.0 * float((preds[1][0] != preds[32][0]).mean()), 2)
        rows.append(row)
        print(json.dumps(row), flush=True)

    print(f"fp32 reference MCC {ref_mcc:.4f}; int8 target {target}; {len(calib_ids)} calibration sentences", flush=True)
    score(
        "shipped int8",
        art / "model_int8.onnx",
        manifest["variants"].get("int8", {}).get("settings", {}).get("name", ""),
    )
    with tempfile.TemporaryDirectory(prefix="smoothquant-") as tmp:
        work = Path(tmp)
        ranges = channel_ranges(art / "model_optimized.onnx", calib_ids, names, groups=ALL_GROUPS)
        for name in sorted(ranges):
            r = ranges[name]
            print(f"  {name}: max {r.max():.1f}, median {np.median(r):.2f}, max/median {r.max() / np.median(r):.1f}")
        plans = [
            ("no smoothing, exclude head+ffn_out", None, {"qkv", "attn_out", "ffn_in", "ffn_out"}, ("head", "ffn_out"))
        ]
        for alpha in (float(a) for a in args.alphas.split(",")):
            for groups in args.groups.split(";"):
                chosen = set(groups.split(","))
                plans.append(
                    (
                        f"alpha {alpha}, smooth {'+'.join(sorted(chosen))}, exclude head+ffn_out",
                        alpha,
                        chosen,
                        ("head", "ffn_out"),
                    )
                )
            if args.with_ffn_out:
                plans.append(
                    (
                        f"alpha {alpha}, exclude head (ffn_out int8 too)",
                        alpha,
                        {"qkv", "attn_out", "ffn_in", "ffn_out"},
                        ("head",),
                    )
                )
        for k, (name, alpha, groups, exclude) in enumerate(plans):
            src = work / f"smooth{k}.onnx"
            if alpha is None:
                src = art / "model_optimized.onnx"
            else:
                smooth(art / "model_optimized.onnx", src, ranges, alpha, tuple(groups))
            fused = q.fused_source(src, art, work / f"fused{k}")
            settings = q.Int8Settings(method="dynamic", target=target, per_channel=True, exclude=exclude)
            path = q.quantize(fused, work / f"int8-{k}", settings, num_layers)
            if alpha is not None:  # the smoothed fp32 graph must be the same model
                fp = predictions(src, ids[:64], pad_id, names)[1][1]
                base = predictions(art / "model_optimized.onnx", ids[:64], pad_id, names)[1][1]
                name += f" (fp32 max |dlogit| after smoothing {np.abs(fp - base).max():.1e})"
            score(name, path, settings.name)
    if args.json_out:
        args.json_out.write_text(json.dumps({"reference_mcc": ref_mcc, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
