"""`--arch bert-base`: a random-weight BERT-base (`BertConfig()`: 12 layers, hidden 768) exported
with the export stage's own pipeline, so its ONNX variants are built exactly as the real ones.

Speed does not depend on the weights; accuracy of random weights means nothing, so the parity
tolerance is opened wide (the export still writes its report) and the MCC columns say n/a.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from bertpack.errors import ParityError
from bertpack.run_marker import write_run_marker

log = logging.getLogger("bertpack.bench")

MAX_LENGTH = 128
PARITY_SENTENCES = 64  # the export's parity run is only a smoke check here
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
)  # read from the template artifact


def write_random_run(run_dir: Path, tokenizer_dir: Path, seed: int = 0, labels: list[str] | None = None) -> Path:
    """A run folder in the training contract's layout holding random BERT-base weights, with `labels` (default
    CoLA's)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from bertpack.models import LABELS, load_tokenizer

    tokenizer = load_tokenizer(tokenizer_dir)
    torch.manual_seed(seed)
    # bert-base's shape; the vocabulary is the template's (30522 for uncased WordPiece), so every token id has a row
    id2label = dict(enumerate(labels)) if labels else LABELS
    config = BertConfig(
        vocab_size=len(tokenizer),
        num_labels=len(id2label),
        id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
    )
    model = BertForSequenceClassification(config).eval()
    (run_dir / "model").mkdir(parents=True, exist_ok=True)
    model.save_pretrained(run_dir / "model", safe_serialization=True)
    tokenizer.save_pretrained(run_dir / "model")
    cfg = {"model": "random BertConfig() (bert-base shape)", "max_length": MAX_LENGTH, "seed": seed}
    write_run_marker(run_dir, "complete", cfg)
    return run_dir


def export_bert_base(
    work: Path,
    tokenizer_dir: Path,
    data,
    int8_method: str,
    echo: Callable[[str], None],
    labels: list[str] | None = None,
) -> Path:
    """Export a random BERT-base with the template's `labels` into work/artifact (reused when a previous export is
    there)."""
    from export.parity import Tolerance
    from export.pipeline import export_artifact

    artifact = work / "artifact"
    if (artifact / "manifest.json").is_file():
        echo(f"bert-base: reusing the export in {artifact}")
        return artifact
    run = write_random_run(work / "run", tokenizer_dir, labels=labels)
    echo(f"bert-base: exporting random weights with export.pipeline.export_artifact into {artifact} (a few minutes)")
    wide_open = Tolerance(exact_max_logit_diff=1e9, exact_agreement=0.0, mcc_drop=1e9, min_agreement=0.0)
    try:
        export_artifact(
            run,
            artifact,
            data=data,
            store=False,
            overwrite=True,
            tolerance=wide_open,
            int8=int8_method,
            limit=PARITY_SENTENCES,
            calibration_samples=PARITY_SENTENCES,
            flip_check=False,
            echo=lambda line: log.info(line),
        )
    except ParityError as exc:  # cannot happen with the open tolerance; the artifact is written anyway
        echo(f"bert-base: export parity: {exc}")
    return artifact
