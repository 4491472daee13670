"""CLI commands of this stage, registered on the `bertpack` Typer app. Keep imports inside the
command functions: `bertpack --help` must not import torch or onnxruntime."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from bertpack.errors import BertpackError


def export(
    run_dir: Path = typer.Argument(
        ..., help="Run folder written by `bertpack train` (holding model/), or a checkpoint folder."
    ),
    out: Optional[Path] = typer.Option(None, help="Artifact folder (default artifacts/<run name>)."),
    data: Optional[str] = typer.Option(
        None,
        help=(
            "Data for the parity report and static calibration: a CoLA folder, a data set (read with the columns the "
            "run "
            "recorded), 'glue' or 'glue/sst2' (default: the data the run was trained on; for CoLA's labels "
            "shared/data/cola beside the repository)."
        ),
    ),
    store: bool = typer.Option(True, help="Register the artifact in the BentoML model store as NAME:<version>."),
    name: Optional[str] = typer.Option(
        None,
        help="The model store's name (default: bertpack-cola for CoLA's labels, "
        "else bertpack-<the data's folder name>).",
    ),
    overwrite: bool = typer.Option(
        False, help="Replace an output folder that holds a different export or other files."
    ),
    tolerance: Optional[str] = typer.Option(
        None, help="int8/fp16 MCC drop (e.g. 0.01), or key=value pairs: mcc_drop=0.01,agreement=98,logit=1e-3."
    ),
    int8: str = typer.Option(
        "auto",
        help="int8 method: static (calibrated on training sentences), dynamic, auto (both; the default picked from "
        "the figures), or none (no int8: a GPU-only deployment; the CPU then serves `optimized`).",
    ),
    quant_target: str = typer.Option(
        "auto", help="Quantization preset: auto (from this CPU's flags), avx2, avx512, avx512_vnni, arm64."
    ),
    calibration_samples: int = typer.Option(
        256, help="Training sentences used to calibrate static int8 and the SmoothQuant step of dynamic int8."
    ),
    flip_check: bool = typer.Option(
        True, help="Measure prediction flips: each sentence alone vs inside mixed batches of 32."
    ),
    require_int8: bool = typer.Option(
        False, help="Fail (exit 3) when no int8 method meets the tolerance, instead of shipping without int8."
    ),
    limit: Optional[int] = typer.Option(
        None,
        help="Score N validation sentences spread evenly over the split, both domains (quick checks; the report gives "
        "the count).",
    ),
) -> None:
    """Export a fine-tuned checkpoint to ONNX (fp32, optimized, fp16, int8) and check parity with PyTorch on its
    validation data."""
    from export.config import ExportConfig
    from export.checkpoint import run_folder_of
    from export.parity import Tolerance
    from export.pipeline import run_export

    cfg = ExportConfig(
        run_dir=run_dir,
        out=out or Path("artifacts") / run_folder_of(run_dir).resolve().name,
        data=data,
        store=store,
        name=name,
        overwrite=overwrite,
        tolerance=Tolerance.parse(tolerance),
        int8=int8,
        quant_target=quant_target,
        calibration_samples=calibration_samples,
        flip_check=flip_check,
        limit=limit,
        require_int8=require_int8,
    )
    run_export(cfg, typer.echo)


def predict(
    artifact_dir: Path = typer.Argument(..., help="Folder written by `bertpack export`."),
    sentences: List[str] = typer.Argument(
        ..., help="One or more sentences to classify; - reads them from stdin, one per line."
    ),
    variant: Optional[str] = typer.Option(
        None, help="fp32, optimized, fp16, int8, ... (default: the manifest's serving default)."
    ),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    json_output: bool = typer.Option(False, "--json", help="Print JSON lines instead of a table."),
) -> None:
    """Classify sentences with an exported model (ONNX Runtime + tokenizers; no PyTorch)."""
    import json

    from serving.engine import OnnxClassifier

    if device not in ("auto", "cpu", "cuda"):
        raise BertpackError(f"--device must be auto, cpu or cuda, not {device!r}")
    numbers, name = list(range(1, len(sentences) + 1)), "sentence {}"  # how messages point at a sentence
    if list(sentences) == ["-"]:
        import sys

        # Blank lines are skipped, so a sentence is named by its line: the number a user finds in the file.
        sentences, numbers, name = [], [], "line {} on stdin"
        for number, line in enumerate(sys.stdin.buffer.read().splitlines(), 1):
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError:
                raise BertpackError(
                    f"line {number} on stdin is not UTF-8 text; convert the input to UTF-8 "
                    "(e.g. iconv -f latin1 -t utf-8)"
                ) from None
            if text.strip():
                sentences.append(text)
                numbers.append(number)
        if not sentences:
            raise BertpackError("no sentences on stdin (predict ARTIFACT - reads one sentence per line)")
    for number, sentence in enumerate(sentences, 1):
        try:
            sentence.encode("utf-8")
        except UnicodeEncodeError:  # bytes the shell passed that are not UTF-8 arrive as lone surrogates
            raise BertpackError(
                f"sentence {number} is not UTF-8 text; pass UTF-8 (e.g. convert it with iconv -t utf-8)"
            ) from None
    clf = OnnxClassifier(artifact_dir, variant=variant, device=device)
    encoded = clf.prepare(sentences)
    if encoded.unreadable:  # the service refuses these too (400)
        which = name.format(", ".join(str(numbers[i]) for i in encoded.unreadable))
        raise BertpackError(
            f"{which} has no text the tokenizer can read (only emoji or symbols the "
            "vocabulary lacks, invisible characters, or words over 100 characters); pass sentences with words"
        )
    for i, n in encoded.too_long:  # the service refuses these unless asked to truncate; here the user sees the cut
        typer.echo(
            f"note: {name.format(numbers[i])} has {n} tokens, over the model's {clf.max_length}: classified on its "
            "first "
            f'{clf.max_length - 2} tokens (--json: "truncated": true)',
            err=True,
        )
    if why := clf.int8_kernel_warning():
        typer.echo(f"warning: {why}", err=True)
    results = clf.classify_ids(encoded.ids)
    for sentence, seq, cut, result in zip(sentences, encoded.ids, encoded.truncated, results):
        prob = result["probabilities"][result["label"]]
        if json_output:  # the fields of the service's predictions
            typer.echo(
                json.dumps(
                    {"sentence": sentence, **result, "tokens": len(seq), "truncated": cut, "variant": clf.variant}
                )
            )
        else:
            typer.echo(f"{result['label']:<13} {prob:.3f}  {sentence}")
    if not json_output:
        typer.echo(f"({clf.variant} on {clf.provider})", err=True)


def verify(
    artifact_dir: Path = typer.Argument(..., help="Folder written by `bertpack export`."),
    parity: bool = typer.Option(
        False,
        "--parity",
        help="Also re-run the parity report against the source checkpoint (needs PyTorch and the validation data).",
    ),
    data: Optional[str] = typer.Option(
        None,
        help=(
            "Data for --parity, as for `bertpack export` (default: the data the export's report used; for CoLA's "
            "labels "
            "shared/data/cola beside the repository)."
        ),
    ),
    tolerance: Optional[str] = typer.Option(None, help="As for `bertpack export`."),
) -> None:
    """Re-hash an artifact's files against its manifest and run each model; exit 3 if its export failed parity.

    With --parity the parity report is run again against the source checkpoint; a recorded failure then counts
    only if the re-check fails too."""
    from bertpack.errors import ParityError
    from export.verify import verify_artifact
    from export.parity import Tolerance
    from bertpack.manifest import parity_failure, read_manifest

    tol = Tolerance.parse(tolerance)
    for line in verify_artifact(artifact_dir):
        typer.echo(f"ok  {line}")
    recorded = read_manifest(artifact_dir)
    why = parity_failure(recorded)
    if parity:
        from export.pipeline import recheck_artifact

        report = recheck_artifact(artifact_dir, data, tol, typer.echo)
        if why:
            rechecked = {row["variant"] for row in report["rows"] if row.get("status") in ("pass", "FAIL")}
            recorded_fails = [
                name for name, row in recorded.get("parity", {}).get("rows", {}).items() if row.get("status") == "FAIL"
            ]
            if missing := sorted(set(recorded_fails) - rechecked):  # e.g. fp16 failed on a GPU, re-checked without one
                raise ParityError(
                    f"{artifact_dir}: its export failed parity ({why}), and this host cannot re-check "
                    f"{', '.join(missing)} (no GPU); run verify --parity where it can"
                )
            typer.echo(
                "note: the export recorded a parity failure; this re-check passes with the tolerance given here",
                err=True,
            )
    elif why:
        raise ParityError(
            f"{artifact_dir}: its files and models check out, but its export failed parity ({why}); "
            f"see {artifact_dir}/parity.md, and re-export it (a looser --tolerance, or another checkpoint)"
        )
    typer.echo(f"{artifact_dir}: verified")


def register(app: typer.Typer) -> None:
    """Add this stage's commands to `app`."""
    app.command()(export)
    app.command()(predict)
    app.command()(verify)
