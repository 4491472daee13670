"""`export_artifact`: checkpoint -> ONNX variants -> parity on the validation split -> manifest -> (store).

Everything is written into a staging folder beside the output and renamed into place at the end,
so a failure leaves no half-written artifact. A tolerance failure still writes the artifact (its
report says what failed) and then raises ParityError (exit 3), without registering it in the store.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from bertpack.data import DataRef, DataSpec, as_spec
from bertpack.errors import BertpackError, ParityError, storage_errors
from bertpack.files import (
    check_writable_parent,
    remove_leftovers,
    staging_dir,
    umask_mode,
    work_dir,
    write_json_atomic,
    write_text_atomic,
)
from bertpack.labels import COLA_NAMES
from bertpack.locks import writing
from bertpack.machine import library_versions
from bertpack.postprocess import Decision
from bertpack import manifest as mf
from export import optimize, parity, quantize
from export.checkpoint import Checkpoint, locate_checkpoint, named_by_artifact
from export.config import INT8_CHOICES, ExportConfig
from export.cpu import TARGETS, cpu_report
from export.onnx_export import export_fp32, graph_inputs
from export.store import MODEL_NAME
from serving.engine import served_buckets

log = logging.getLogger("bertpack.export")

MODEL_FILES = {
    "fp32": "model.onnx",
    "optimized": "model_optimized.onnx",
    "fp16": "model_fp16.onnx",
    "int8": "model_int8.onnx",
}


@dataclass
class ExportResult:
    out: Path
    manifest: dict
    report: dict
    tag: str | None = None
    failures: list[str] = field(default_factory=list)


def check_inputs(cfg: ExportConfig) -> tuple[ExportConfig, Checkpoint, DataRef]:
    """Every user error that can be found before the slow work starts; returns the config with its store name (--name,
    else the default for the checkpoint's labels and data), the checkpoint and the data of the parity report."""
    from export.store import check_name, default_name

    ckpt = locate_checkpoint(cfg.run_dir)
    trained_on = ckpt.data and ckpt.data.data
    cfg = replace(cfg, name=check_name(cfg.name) if cfg.name else default_name(ckpt.labels, trained_on, ckpt.run_dir))
    if cfg.int8 not in INT8_CHOICES:
        raise BertpackError(f"--int8 must be one of {', '.join(INT8_CHOICES)}, not {cfg.int8!r}")
    if cfg.int8 == "none" and cfg.require_int8:
        raise BertpackError("--require-int8 contradicts --int8 none; drop one of them")
    if cfg.quant_target != "auto" and cfg.quant_target not in TARGETS:
        raise BertpackError(f"--quant-target must be auto or one of {', '.join(TARGETS)}, not {cfg.quant_target!r}")
    if cfg.calibration_samples < 1:
        raise BertpackError("--calibration-samples must be >= 1")
    if cfg.limit is not None and cfg.limit < 1:
        raise BertpackError("--limit must be a positive number of sentences")
    check_output_dir(Path(cfg.out), ckpt, cfg.overwrite)
    from bertpack.data import data_source

    return cfg, ckpt, data_source(cfg.data, "export", ckpt.labels, ckpt.data)


def check_output_dir(out: Path, ckpt: Checkpoint, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise BertpackError(f"--out {out} is a file; pass a folder for the artifact")
    if out.resolve() == ckpt.path or out.resolve() in ckpt.path.parents:
        raise BertpackError(
            f"--out {out} holds the checkpoint being exported ({ckpt.path}), which writing the artifact there "
            "would delete; choose another --out (e.g. artifacts/NAME)"
        )
    check_writable_parent(out, "--out")
    if not out.is_dir() or not any(out.iterdir()) or overwrite:
        return
    manifest_path = out / mf.MANIFEST
    if not manifest_path.is_file():
        raise BertpackError(
            f"--out {out} is not empty and holds no bertpack export; pick another folder or pass --overwrite"
        )
    try:
        previous = json.loads(manifest_path.read_text())
        previous = previous.get("source", {}).get("checkpoint") if isinstance(previous, dict) else None
    except (OSError, UnicodeDecodeError, AttributeError, json.JSONDecodeError):
        previous = None
    if previous != str(ckpt.path):
        raise BertpackError(
            f"--out {out} holds a different export (of {previous}); pick another folder or pass --overwrite to replace "
            "it"
        )


def export_artifact(
    run_dir: Path | str,
    out: Path | str,
    *,
    data: Path | str | None = None,
    store: bool = True,
    overwrite: bool = False,
    tolerance: parity.Tolerance | str | None = None,
    int8: str = "auto",
    quant_target: str = "auto",
    echo: Callable[[str], None] | None = None,
    **options,
) -> ExportResult:
    """Export RUN_DIR's checkpoint into OUT (see ExportConfig for the options). Raises BertpackError
    on bad input and ParityError (after writing the artifact) when a variant breaks its tolerance."""
    tol = tolerance if isinstance(tolerance, parity.Tolerance) else parity.Tolerance.parse(tolerance)
    cfg = ExportConfig(
        run_dir=Path(run_dir),
        out=Path(out),
        data=data or None,
        store=store,
        overwrite=overwrite,
        tolerance=tol,
        int8=int8,
        quant_target=quant_target,
        **options,
    )
    return run_export(cfg, echo or (lambda line: log.info(line)))


def run_export(cfg: ExportConfig, echo: Callable[[str], None]) -> ExportResult:
    cfg, ckpt, cola = check_inputs(cfg)
    if cfg.store:
        from export.store import check_store_writable

        check_store_writable(cfg.name)
    # Held to the end, registration included (it copies from --out): a second export to the same --out is refused.
    with writing(cfg.out, "bertpack export"):
        for line in remove_leftovers(Path(cfg.out)):  # of an export killed outright: hundreds of MB each
            echo(f"note: {line}")
        check_output_dir(Path(cfg.out), ckpt, cfg.overwrite)  # again: another export may have filled --out meanwhile
        return _export(cfg, ckpt, cola, echo)


def _export(cfg: ExportConfig, ckpt: Checkpoint, cola: DataRef, echo: Callable[[str], None]) -> ExportResult:
    cpu = cpu_report()
    target = cpu["quantization_target"] if cfg.quant_target == "auto" else cfg.quant_target
    created = datetime.now(timezone.utc)
    out = Path(cfg.out)
    # A disk that fills up, a file that cannot be read: one line. Outermost for making the folders and the final
    # swap, innermost too, to read the free space before the partial files are removed.
    stopped = storage_errors(out.parent, "export", f"nothing was written to {out}")
    with stopped, work_dir(out) as work, staging_dir(out) as stage, stopped:
        version = mf.make_version(ckpt.path, created)
        echo(f"exporting {ckpt.path} (ONNX, Optimum, eager attention)")
        fp32_path = export_fp32(ckpt.path, work / "fp32")
        opt_path, opt_fused = optimize.optimize(work / "fp32", work, optimize.CPU_LEVEL)
        optimize.check_attention_fused(opt_fused, ckpt.num_layers, "model_optimized.onnx")
        fp16_path, fp16_fused = optimize.optimize(work / "fp32", work, optimize.GPU_LEVEL)
        optimize.check_attention_fused(
            fp16_fused, ckpt.num_layers, "model_fp16.onnx"
        )  # the GPU's graph, never run without one
        echo(f"fused operators: optimized {opt_fused}; fp16 {fp16_fused}")
        for src, name in ((fp32_path, "fp32"), (opt_path, "optimized"), (fp16_path, "fp16")):
            shutil.copyfile(src, stage / MODEL_FILES[name])
        for side in mf.SIDE_FILES:
            if (work / "fp32" / side).is_file():
                shutil.copyfile(work / "fp32" / side, stage / side)

        variants = {
            "fp32": {"file": MODEL_FILES["fp32"], "precision": "fp32", "graph": "as exported", "for": "reference"},
            "optimized": {
                "file": MODEL_FILES["optimized"],
                "precision": "fp32",
                "graph": f"ORTOptimizer {optimize.CPU_LEVEL}",
                "fused_operators": opt_fused,
                "for": "cpu",
            },
            "fp16": {
                "file": MODEL_FILES["fp16"],
                "precision": "fp16 (fp32 inputs/outputs)",
                "graph": f"ORTOptimizer {optimize.GPU_LEVEL} + EmbedLayerNormalization",
                "fused_operators": fp16_fused,
                "for": "cuda",
            },
        }
        body = {
            "created": created.isoformat(timespec="seconds"),
            "version": version,
            "name": cfg.name,
            "labels": ckpt.labels,
            # the parity report's data, which verify --parity and bench read again for a model that is not CoLA's
            "data_source": as_spec(cola).record(),
            "max_length": ckpt.max_length,
            "pad_token_id": _pad_token_id(stage),
            "inputs": graph_inputs(fp32_path),
            "variants": variants,
            "serving_default": {"cpu": "optimized", "cuda": "fp16"},
            "source": {
                "run_dir": str(ckpt.run_dir),
                "checkpoint": str(ckpt.path),
                "metrics": ckpt.metrics,
                "selected_on": ckpt.metrics.get("selected_on", "validation split"),
            },
            "decision": decision_record(ckpt),
            "versions": library_versions(),
            "cpu_flags": cpu,
            # the preset int8 used: detected from this CPU (cpu_flags), or --quant-target
            "quantization_target": None if cfg.int8 == "none" else target,
            "status": "in progress",
        }
        mf.write_manifest(
            stage, body, hash_files=False
        )  # provisional: lets the engine load variants for the parity run

        report = _parity_and_int8(cfg, ckpt, cola, stage, work, body, target, echo)
        body["parity"] = _summary(report)
        body["serving_default"] = {"cpu": report["serving_default_cpu"], "cuda": "fp16"}
        body["status"] = "failed parity" if report["failures"] else "ok"
        write_json_atomic(stage / "parity.json", report)
        write_text_atomic(stage / "parity.md", parity.format_markdown(report))
        manifest = mf.write_manifest(stage, body)
        _make_readable(stage)
    result = ExportResult(out=Path(cfg.out), manifest=manifest, report=report, failures=report["failures"])
    echo("")
    echo(parity.format_text(report))
    for warning in report.get("warnings", []):
        echo(f"warning: {warning}")
    if result.failures:
        raise ParityError(
            f"{cfg.out}: {'; '.join(result.failures)} (artifact written with status 'failed parity', not registered; "
            f"see {cfg.out}/parity.md)"
        )
    if cfg.store:
        from export.store import register, store_manifest

        result.tag = register(result.out, manifest)
        left = store_manifest(result.out, manifest)["store_copy"]["left_out"]
        echo(
            f"registered in the BentoML model store as {result.tag}"
            + (
                f" (without the parity reference {', '.join(left.values())}: a Bento need not carry it; {cfg.out} "
                "keeps it)"
                if left
                else ""
            )
        )
        if cfg.name != MODEL_NAME:  # the service serves bertpack-cola:latest unless told otherwise
            echo(f"serve it with: BERTPACK_MODEL={cfg.name}:latest bentoml serve")
    echo(f'artifact written to {cfg.out}  (next: bertpack predict {cfg.out} "Some sentence.")')
    return result


def recheck_artifact(
    artifact_dir: Path, data: str | Path | None, tolerance: parity.Tolerance, echo: Callable[[str], None]
) -> dict:
    """`bertpack verify --parity`: score every variant of an existing artifact against PyTorch on its
    source checkpoint again (after an ONNX Runtime upgrade, or to catch a damaged model whose file
    hashes were rewritten). Raises ParityError when a variant breaks its tolerance."""
    from serving.engine import OnnxClassifier
    from serving.cuda import cuda_available
    from bertpack.manifest import encoding_variant, read_manifest, verify_files

    artifact_dir = Path(artifact_dir)
    manifest = read_manifest(artifact_dir)
    verify_files(artifact_dir, manifest)
    checkpoint = Path(manifest.get("source", {}).get("checkpoint", ""))
    if not (checkpoint / "config.json").is_file():
        raise BertpackError(
            f"the source checkpoint {checkpoint} of {artifact_dir} is gone; parity needs it (PyTorch is the reference)"
        )
    checkpoint = named_by_artifact(checkpoint, artifact_dir)
    from bertpack.data import data_source

    recorded = DataSpec.from_record(manifest.get("data_source"))
    evals = _load_eval(data_source(data, "verify --parity", manifest["labels"], recorded), None, manifest["labels"])
    encoder = OnnxClassifier(
        artifact_dir,
        variant=encoding_variant(manifest),
        device="cpu",
        verify=False,  # tokenizes for PyTorch
        buckets=served_buckets("cpu"),
    )
    scoring = _Scoring.against(checkpoint, encoder, evals, tolerance, encoder.decision)
    rows, failures = [scoring.ref_row], []
    for name, variant in manifest["variants"].items():
        device = "cpu"
        if variant.get("for") == "cuda":
            if not cuda_available():
                rows.append(
                    {
                        "variant": name,
                        "status": "not checked (no GPU)",
                        "bytes": (artifact_dir / variant["file"]).stat().st_size,
                    }
                )
                continue
            device = "cuda"
        clf = OnnxClassifier(artifact_dir, variant=name, device=device, verify=False, buckets=served_buckets(device))
        row, problems = scoring.check(name, clf, artifact_dir / variant["file"])
        if variant.get("method"):
            row["method"] = variant["method"]
        failures += [f"{name}: {p}" for p in problems]
        rows.append(row)
    report = {
        "source": str(checkpoint),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "sentences": len(evals.sentences),
        "data": str(data),
        "split": evals.split,
        "provider": "CPUExecutionProvider",
        "tolerance": parity.tolerance_dict(tolerance),
        "rows": rows,
        "failures": failures,
        "serving_default_cpu": manifest.get("serving_default", {}).get("cpu"),
        **scoring.decision_report(manifest),
    }
    echo(parity.format_text(report))
    if failures:
        raise ParityError(f"{artifact_dir}: {'; '.join(failures)}")
    return report


def decision_record(ckpt: Checkpoint) -> dict:
    """The manifest's decision: the run's temperature and, for 2 labels, its threshold on p(positive), with where
    they were fitted (plain softmax and argmax for a checkpoint without them)."""
    decision = Decision.from_record(ckpt.decision, len(ckpt.labels))
    return {
        **decision.record(),
        "positive_label": ckpt.labels[decision.positive],
        "fitted_on": ckpt.decision.get("fitted_on") if ckpt.decision else None,
        "rows": ckpt.decision.get("rows"),
        "threshold_fit": ckpt.decision.get("threshold_fit") if ckpt.decision else None,
    }


def _make_readable(folder: Path) -> None:
    """Modes as open()/mkdir() would give under the umask: files copied or written by libraries through mkstemp may
    carry 0600, and an artifact is meant to be read by the service's user too (within what the umask allows)."""
    folder.chmod(umask_mode(0o777))
    for p in folder.iterdir():
        p.chmod(umask_mode(0o666))


def _pad_token_id(stage: Path) -> int:
    try:
        return int(json.loads((stage / "config.json").read_text()).get("pad_token_id") or 0)
    except (OSError, ValueError, json.JSONDecodeError):
        return 0


def _load_eval(cola: DataRef, limit: int | None, model_labels: Sequence[str] = COLA_NAMES) -> parity.Eval:
    import datasets

    from bertpack.data import validation_sentences

    datasets.disable_progress_bars()

    sentences, labels, domains = validation_sentences(cola, model_labels)
    if limit and limit < len(sentences):
        # Spread evenly over the split (CoLA: in-domain dev, then out-of-domain dev): a quick check sees both domains.
        keep = [i * len(sentences) // limit for i in range(limit)]
        sentences, labels, domains = [sentences[i] for i in keep], [labels[i] for i in keep], [domains[i] for i in keep]
    split = "CoLA validation" if tuple(model_labels) == COLA_NAMES else "validation split"
    return parity.Eval(sentences=sentences, labels=labels, domains=domains, num_labels=len(model_labels), split=split)


@dataclass
class _Scoring:
    """What every variant is scored against: PyTorch fp32's logits on the same CoLA rows, and the tolerance."""

    data: parity.Eval
    reference: np.ndarray
    ref_row: dict
    tolerance: parity.Tolerance
    decision: Decision  # every variant is scored at the model's threshold, as it serves

    @classmethod
    def against(
        cls, checkpoint: Path, fp32_engine, data: parity.Eval, tolerance: parity.Tolerance, decision: Decision
    ) -> "_Scoring":
        reference = parity.reference_logits(checkpoint, fp32_engine, data.sentences)
        ref_row = dict(parity.score("pytorch fp32", reference, reference, data, decision=decision), status="reference")
        return cls(data=data, reference=reference, ref_row=ref_row, tolerance=tolerance, decision=decision)

    def decision_report(self, manifest: dict) -> dict:
        """The report's record of the decision, what the rows are to the model, and ECE before/after calibration."""
        return {
            "decision": manifest.get("decision") or self.decision.record(),
            "selected_on": manifest.get("source", {}).get("selected_on"),
            "calibration": parity.calibration(self.reference, self.data, self.decision),
        }

    def check(self, name: str, engine, file: Path) -> tuple[dict, list[str]]:
        """The variant's report row (status pass/FAIL) and the ways it breaks its tolerance."""
        row = parity.score(
            name,
            engine.logits(self.data.sentences),
            self.reference,
            self.data,
            file.stat().st_size,
            decision=self.decision,
        )
        row["provider"] = engine.provider
        problems = parity.check(row, self.ref_row, self.tolerance)
        row["status"] = "FAIL" if problems else "pass"
        return row, problems


def _parity_and_int8(
    cfg: ExportConfig,
    ckpt: Checkpoint,
    cola: DataRef,
    stage: Path,
    work: Path,
    body: dict,
    target: str,
    echo: Callable[[str], None],
) -> dict:
    """Score fp32, optimized and (on a GPU) fp16 against PyTorch, then build int8 (_search_int8) and decide what ships
    (_ship_int8). Returns the parity report."""
    from serving.engine import OnnxClassifier
    from serving.cuda import cuda_available

    data = _load_eval(cola, cfg.limit, ckpt.labels)
    echo(f"parity on {data.split}: {len(data.sentences)} sentences from {cola}")

    def load(variant: str, device: str = "cpu") -> OnnxClassifier:
        return OnnxClassifier(stage, variant=variant, device=device, verify=False, buckets=served_buckets(device))

    fp32 = load("fp32")
    scoring = _Scoring.against(ckpt.path, fp32, data, cfg.tolerance, fp32.decision)
    decided = scoring.decision_report(body)
    cal = decided["calibration"]
    echo(
        f"calibration on CoLA validation (PyTorch fp32): ECE {cal['ece_before']:.4f} before, {cal['ece_after']:.4f} "
        "after "
        f"temperature {cal['temperature']:.3f}"
    )
    rows, failures = [scoring.ref_row], []
    for variant, engine in (("fp32", fp32), ("optimized", load("optimized"))):
        row, problems = scoring.check(variant, engine, stage / MODEL_FILES[variant])
        failures += [f"{variant}: {p}" for p in problems]
        rows.append(row)
    flips = {}
    if cfg.flip_check:
        flips["optimized"] = parity.flip_rate(load("optimized"), data.sentences, seed=cfg.seed)
        rows[-1]["flip_rate"] = flips["optimized"]["flip_rate"]
    if cuda_available():
        row, problems = scoring.check("fp16", load("fp16", device="cuda"), stage / MODEL_FILES["fp16"])
        failures += [f"fp16: {p}" for p in problems]
    else:
        row = {
            "variant": "fp16",
            "bytes": (stage / MODEL_FILES["fp16"]).stat().st_size,
            "status": "not checked (no GPU)",
        }
    rows.append(row)

    cpu_ok = "optimized" if not any(f.startswith("optimized") for f in failures) else "fp32"
    providers = "CPUExecutionProvider" + (
        " (fp16: CUDAExecutionProvider)" if row.get("provider") == "CUDAExecutionProvider" else ""
    )
    report = {
        "source": str(ckpt.path),
        "created": body["created"],
        "sentences": len(data.sentences),
        "data": str(cola),
        "split": data.split,
        "provider": providers,
        "tolerance": parity.tolerance_dict(cfg.tolerance),
        "rows": rows,
        "flip_rate": flips,
        "quantization_target": target,
        "failures": failures,
        **decided,
    }
    if cfg.int8 == "none":  # e.g. a GPU-only deployment: the CPU serves the fp32 `optimized` graph
        rows.append({"variant": "int8", "status": "not built (--int8 none)"})
        return {
            **report,
            "int8_tries": {},
            "int8_choice": None,
            "int8_method": None,
            "serving_default_cpu": cpu_ok,
            "warnings": [],
        }

    methods = list(quantize.METHODS) if cfg.int8 == "auto" else [cfg.int8]
    # Training sentences: static int8's activation ranges, and dynamic int8's SmoothQuant channel ranges.
    calibration = _calibration(cola, fp32, cfg, ckpt)
    fused = (
        quantize.fused_source(stage / MODEL_FILES["optimized"], work / "fp32", work / "fused")
        if "dynamic" in methods
        else None
    )
    tries: dict[str, list[dict]] = {}
    winners: dict[str, dict] = {}
    for method in methods:
        tries[method], winners[method] = _search_int8(
            method,
            quantize.source_dir(method, work / "fp32", fused),
            target,
            ckpt,
            calibration,
            stage,
            work,
            body,
            scoring,
            load,
            echo,
        )
    mf.write_manifest(stage, body, hash_files=False)
    if cfg.flip_check:
        for method, best in winners.items():
            flips[f"int8_{method}"] = parity.flip_rate(load(f"int8_{method}"), data.sentences, seed=cfg.seed)
            best["row"]["flip_rate"] = flips[f"int8_{method}"]["flip_rate"]
    return {**report, **_ship_int8(winners, tries, flips, stage, body, rows, failures, cpu_ok, cfg.require_int8)}


def _search_int8(
    method: str,
    source: Path,
    target: str,
    ckpt: Checkpoint,
    calibration: quantize.Calibration,
    stage: Path,
    work: Path,
    body: dict,
    scoring: _Scoring,
    load: Callable,
    echo: Callable[[str], None],
) -> tuple[list[dict], dict]:
    """Climb one method's ladder until a try is within tolerance; every try is recorded. Leaves the best try (the
    passing one, else the closest) as stage/model_int8_<method>.onnx and its manifest entry; returns (tries, best)."""
    tries: list[dict] = []
    best: dict | None = None
    ranges_cache: dict = {}
    name = f"int8_{method}"
    n_calib = len(calibration.ids)
    for k, settings in enumerate(quantize.ladder(method, target)):
        path = quantize.quantize(
            source, work / f"int8-{method}-{k}", settings, ckpt.num_layers, calibration, ranges_cache
        )
        shutil.copyfile(path, stage / f"model_{name}.onnx")
        body["variants"][name] = {
            "file": f"model_{name}.onnx",
            "method": method,
            "for": "cpu",
            "settings": quantize.settings_record(settings, ckpt.num_layers, source / "model.onnx", n_calib),
        }
        mf.write_manifest(stage, body, hash_files=False)  # provisional (every try): only load() reads it
        row, problems = scoring.check(name, load(name), stage / f"model_{name}.onnx")
        tries.append(
            {
                "try": k + 1,
                "settings": body["variants"][name]["settings"],
                "passed": not problems,
                "problems": problems,
                **{
                    key: row[key]
                    for key in (
                        "accuracy",
                        "mcc",
                        "macro_f1",
                        "mcc_in_domain",
                        "mcc_out_domain",
                        "agreement",
                        "max_abs_logit_diff",
                        "mean_abs_logit_diff",
                        "bytes",
                    )
                    if key in row
                },
            }
        )
        echo(
            f"int8 {method} try {k + 1}: {settings.name}: MCC {row['mcc']:.4f}, agreement {row['agreement']:.2f}% "
            f"-> {'pass' if not problems else 'fail (' + '; '.join(problems) + ')'}"
        )
        if best is None or _try_rank(not problems, row) > _try_rank(best["passed"], best["row"]):
            best = {"k": k, "path": path, "row": row, "problems": problems, "passed": not problems}
        if not problems:
            break
    assert best is not None  # every ladder has at least one rung
    shutil.copyfile(best["path"], stage / f"model_{name}.onnx")
    body["variants"][name]["settings"] = tries[best["k"]]["settings"]  # recorded when it was tried
    return tries, best


def _ship_int8(
    winners: dict[str, dict],
    tries: dict[str, list[dict]],
    flips: dict[str, dict],
    stage: Path,
    body: dict,
    rows: list[dict],
    failures: list[str],
    cpu_ok: str,
    require_int8: bool,
) -> dict:
    """The chosen method becomes `int8` (model_int8.onnx); the other stays beside it as int8_<method> if it passed.
    Every variant that ships passes its tolerance: an int8 method that failed every try is reported and not shipped,
    and when none passed the CPU serves the fp32 `optimized` graph instead (exact, deterministic), unless
    --require-int8 asks for the export to fail. Adds the int8 rows to `rows` and failures to `failures`."""
    choice = _choose_int8(winners, flips)
    chosen = winners[choice]
    (stage / f"model_int8_{choice}.onnx").rename(stage / MODEL_FILES["int8"])
    settings = body["variants"].pop(f"int8_{choice}")
    body["variants"]["int8"] = {**settings, "file": MODEL_FILES["int8"], "for": "cpu"}
    warnings: list[str] = []
    for name in ["int8"] + [f"int8_{m}" for m in winners if m != choice]:
        method = choice if name == "int8" else name.split("_", 1)[1]
        row = dict(winners[method]["row"], variant=name, method=method)
        row["status"] = "FAIL" if winners[method]["problems"] else "pass"
        problems = [f"int8 ({method}): {p} after {len(tries[method])} tries" for p in winners[method]["problems"]]
        if winners[method]["problems"] and (name != "int8" or not require_int8):
            (stage / body["variants"].pop(name)["file"]).unlink()
            row["status"] = "FAIL (not shipped)"
            if name == "int8":
                warnings += problems
        elif name == "int8":
            failures += problems
        rows.append(row)
    if "int8" in body["variants"]:
        body["variants"]["int8"]["parity_passed"] = chosen["passed"]
    if not chosen["passed"] and not require_int8:
        warnings.append("no int8 method within tolerance: int8 not shipped; the CPU serves the fp32 `optimized` graph")
    return {
        "int8_tries": tries,
        "int8_choice": _choice_text(choice, winners, flips),
        "int8_method": choice if chosen["passed"] else None,
        "serving_default_cpu": "int8" if chosen["passed"] else cpu_ok,
        "warnings": warnings,
    }


def _calibration(cola: DataRef, clf, cfg: ExportConfig, ckpt: Checkpoint) -> quantize.Calibration:
    """A seeded sample of training sentences: of the run's held-out selection rows when it recorded them (rows the
    model did not train on, as served sentences are), else of the whole training split."""
    from bertpack.data import load_data

    train = load_data(cola).splits["train"]["sentence"]
    rows = ckpt.selection.get("indices") if ckpt.selection.get("on") == "selection split" else None
    if rows and max(rows) < len(train):
        train = [train[i] for i in rows]
    sample = quantize.calibration_sample(train, cfg.calibration_samples, cfg.seed)
    return quantize.Calibration(ids=clf.encode(sample), input_names=clf.input_names)


def _try_rank(passed: bool, row: dict) -> tuple:
    """How int8 tries of one method compare: a try within tolerance beats any that is not, then agreement, then MCC
    (the best is what ships, or what the report shows when none passed)."""
    return (passed, row["agreement"], row["mcc"])


def _choose_int8(winners: dict[str, dict], flips: dict[str, dict]) -> str:
    """A served prediction should not depend on its neighbours: among the methods within tolerance,
    take the fewest batch-dependent flips, then the higher MCC, then the higher agreement."""

    def key(method: str):
        w = winners[method]
        flip = flips.get(f"int8_{method}", {}).get("flip_rate", 0.0)
        # Ties go to static: its scales are fixed, so no batch can change a prediction.
        return (w["passed"], -flip, round(w["row"]["mcc"], 4), w["row"]["agreement"], method == "static")

    return max(winners, key=key)


def _choice_text(choice: str, winners: dict[str, dict], flips: dict[str, dict]) -> str:
    parts = []
    for method, w in winners.items():
        flip = flips.get(f"int8_{method}", {}).get("flip_rate")
        parts.append(
            f"{method}: {'pass' if w['passed'] else 'FAIL'}, MCC {w['row']['mcc']:.4f}, agreement "
            f"{w['row']['agreement']:.2f}%" + (f", flip rate {flip:.2f}%" if flip is not None else "")
        )
    return f"{choice} ({'; '.join(parts)})"


def _summary(report: dict) -> dict:
    """Per-variant figures for the manifest and the BentoML metadata."""
    keep = (
        "accuracy",
        "mcc",
        "macro_f1",
        "mcc_in_domain",
        "mcc_out_domain",
        "agreement",
        "max_abs_logit_diff",
        "flip_rate",
        "status",
    )
    return {
        "sentences": report["sentences"],
        "passed": not report["failures"],
        "failures": report["failures"],
        "selected_on": report.get("selected_on"),
        "calibration": report.get("calibration"),
        "warnings": report.get("warnings", []),
        "int8_method": report["int8_method"],
        "rows": {row["variant"]: {k: row[k] for k in keep if k in row} for row in report["rows"]},
    }
