"""Experiment: int8 settings beyond the export's ladder, scored as the export scores them (parity at the model's
decision: its threshold), on one exported artifact. Measures whether an averaged model's int8 can meet the tolerance
(MCC within 0.01 of PyTorch fp32, 98% agreement) and which setting does it.

Each candidate is quantized by export/quantize.py exactly as a ladder rung (static: the unfused graph, QDQ; dynamic: the
fused graph, QAttention), with its calibration sentences drawn from the run's held-out selection rows (as the export
now draws them) or from the whole training split; every candidate is scored on the CoLA validation split against
PyTorch fp32 logits, in the parity report's batches, with the batch flip rate.

    python scripts/experiments/int8_settings.py artifacts/soup --data ../shared/data/cola --json-out int8.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bertpack.data import load_cola  # noqa: E402
from export import parity, quantize as q  # noqa: E402
from export.checkpoint import locate_checkpoint  # noqa: E402
from export.pipeline import _load_eval  # noqa: E402
from serving.engine import OnnxClassifier, session_options  # noqa: E402


def candidates(target: str) -> list[tuple[str, q.Int8Settings]]:
    static = q.Int8Settings(method="static", target=target, per_channel=True)
    dynamic = q.Int8Settings(method="dynamic", target=target, per_channel=True)
    out = []
    for alpha in (None, 0.5, 0.75):
        for exclude in (("head",), ("head", "ffn_out")):
            out.append(("static", dataclasses.replace(static, exclude=exclude, smooth_alpha=alpha)))
        out.append(
            (
                "static",
                dataclasses.replace(static, exclude=("head", "ffn_out"), smooth_alpha=alpha, calibration="percentile"),
            )
        )
    for alpha in (0.5, 0.75):
        out.append(("dynamic", dataclasses.replace(dynamic, exclude=("head", "ffn_out"), smooth_alpha=alpha)))
        out.append(
            (
                "dynamic",
                dataclasses.replace(
                    dynamic, exclude=("head", "ffn_out", "last1"), smooth_alpha=alpha, reduce_range=True
                ),
            )
        )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("artifact", type=Path)
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "cola")
    p.add_argument("--calibration", type=int, default=256)
    p.add_argument(
        "--from",
        dest="source",
        choices=("selection", "train"),
        default="selection",
        help="calibration sentences: the run's held-out selection rows, or the whole training split",
    )
    p.add_argument("--only", default="", help="comma-separated candidate numbers to run (default: all)")
    p.add_argument("--json-out", type=Path)
    args = p.parse_args()

    art = args.artifact
    manifest = json.loads((art / "manifest.json").read_text())
    ckpt = locate_checkpoint(Path(manifest["source"]["run_dir"]))
    fp32 = OnnxClassifier(art, variant="fp32", device="cpu", verify=False, buckets=None)
    data = _load_eval(args.data, None)
    reference = parity.reference_logits(ckpt.path, fp32, data.sentences)
    ref = parity.score("pytorch fp32", reference, reference, data, decision=fp32.decision)
    train = load_cola(args.data)["train"]["sentence"]
    rows = ckpt.selection.get("indices") if args.source == "selection" else None
    pool = [train[i] for i in rows] if rows else list(train)
    calibration = q.Calibration(
        ids=fp32.encode(q.calibration_sample(pool, args.calibration, 0)), input_names=fp32.input_names
    )
    target = manifest.get("quantization_target") or "avx512_vnni"
    print(
        f"reference MCC {ref['mcc']:.4f} at {fp32.decision}; {len(calibration.ids)} calibration sentences from "
        f"{args.source}; "
        f"target {target}",
        flush=True,
    )
    results = {
        "artifact": str(art),
        "decision": fp32.decision.record(),
        "reference_mcc": ref["mcc"],
        "calibration_from": args.source,
        "calibration_sentences": len(calibration.ids),
        "rows": [],
    }
    only = {int(x) for x in args.only.split(",") if x}
    with tempfile.TemporaryDirectory(prefix="int8-settings-") as tmp:
        work = Path(tmp)
        fused = q.fused_source(art / "model_optimized.onnx", art, work / "fused")
        caches: dict[str, dict] = {"static": {}, "dynamic": {}}
        for k, (method, settings) in enumerate(candidates(target)):
            if only and k not in only:
                continue
            t0 = time.perf_counter()
            source = fused if method == "dynamic" else art
            path = q.quantize(source, work / f"c{k}", settings, ckpt.num_layers, calibration, caches[method])
            import onnxruntime as ort

            engine = OnnxClassifier(
                art, variant="fp32", device="cpu", verify=False, buckets=None
            )  # its tokenizer and padding
            engine.session = ort.InferenceSession(str(path), session_options(), providers=["CPUExecutionProvider"])
            row = parity.score(
                settings.name,
                engine.logits(data.sentences),
                reference,
                data,
                path.stat().st_size,
                decision=fp32.decision,
            )
            row["flip_rate"] = parity.flip_rate(engine, data.sentences)["flip_rate"]
            row["passes"] = not parity.check(row, ref, parity.Tolerance())
            row["mcc_drop"] = ref["mcc"] - row["mcc"]
            row["seconds"] = round(time.perf_counter() - t0, 1)
            row["candidate"] = k
            results["rows"].append(row)
            print(
                f"#{k} {settings.name}: MCC {row['mcc']:.4f} (drop {row['mcc_drop']:+.4f}), agreement "
                f"{row['agreement']:.2f}%, "
                f"flip {row['flip_rate']:.2f}% -> {'PASS' if row['passes'] else 'fail'} ({row['seconds']} s)",
                flush=True,
            )
            if args.json_out:
                args.json_out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
