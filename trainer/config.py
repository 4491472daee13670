"""The training recipe as data. The defaults are the recipe that did best for the embedded model (docs/train.md
lists those tried); every field is a `bertpack train` option."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Literal

from bertpack.errors import BertpackError


@dataclass
class TrainConfig:
    model: str = "embedded"
    data: str = ""
    # The columns of a data set's files (None: `text` or `sentence`, and `label`); CoLA's files have fixed columns.
    text_column: str | None = None
    label_column: str | None = None
    out: Path = field(default_factory=lambda: Path("runs"))
    epochs: float = 6.0
    learning_rate: float = 1e-4
    batch_size: int = 32
    eval_batch_size: int = 128
    max_length: int = 64
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    # Layer-wise learning-rate decay: layer l of L gets lr * decay**(L - l); 1.0 disables it.
    layer_decay: float = 0.85
    # The randomly initialised classifier learns this many times faster than the encoder.
    head_lr_multiplier: float = 5.0
    classifier_dropout: float | None = None
    # Re-initialise the pooler (the embedded model's pooler was never trained for its sentence task).
    reinit_pooler: bool = False
    # "balanced": cross-entropy weighted by inverse class frequency in the training split, for any number of
    # classes (CoLA is 70% acceptable; MCC rewards getting the minority class right); "none": plain cross-entropy.
    class_weights: Literal["balanced", "none"] = "balanced"
    # Re-initialise the top N encoder layers before training (0 = keep every pretrained layer).
    reinit_top_layers: int = 0
    # Validation points per epoch; the best one (by MCC on the selection set) is kept.
    evals_per_epoch: int = 2
    # "split": choose the checkpoint, the temperature and the decision threshold on a seeded, label-stratified
    # `selection_split` of the training rows (drawn with `selection_seed`, the same for every --seed, so runs of one
    # recipe share it and can be averaged), and score the validation split once; "dev": choose on the validation split.
    select_on: Literal["split", "dev"] = "split"
    selection_split: float = 0.1
    selection_seed: int = 0
    seed: int = 42
    max_steps: int = -1
    limit: int | None = None
    padding: Literal["dynamic", "max"] = "dynamic"
    group_by_length: bool = True
    keep_checkpoints: bool = False
    overwrite: bool = False
    resume: bool = False

    def validate(self) -> None:
        """Range-check the recipe before anything loads: each message names the option and a value that works."""
        examples = {
            "epochs": "3",
            "learning_rate": "5e-5",
            "warmup_ratio": "0.1",
            "weight_decay": "0.01",
            "layer_decay": "0.85",
            "head_lr_multiplier": "5",
            "classifier_dropout": "0.1",
        }
        for name, example in examples.items():
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):  # click accepts "nan" and "inf" as floats
                raise BertpackError(
                    f"{option_name(name)} must be a finite number, not {value}; e.g. {option_name(name)} {example}"
                )
        if self.padding not in ("dynamic", "max"):
            raise BertpackError(f"--padding must be 'dynamic' or 'max', not {self.padding!r}")
        if self.max_steps == 0 or self.max_steps < -1:
            raise BertpackError(
                f"--max-steps {self.max_steps} is not a step count; pass a positive number, e.g. --max-steps 30, or -1 "
                "(the default) to train for --epochs"
            )
        if self.epochs < 0 or (self.epochs == 0 and self.max_steps == -1):
            raise BertpackError(
                f"--epochs {self.epochs} is out of range; pass a positive number, e.g. --epochs 3 (or set --max-steps)"
            )
        if self.learning_rate <= 0 or self.learning_rate > 1:
            raise BertpackError(f"--lr {self.learning_rate} is out of range; use a small positive rate, e.g. --lr 5e-5")
        if self.batch_size < 1:
            raise BertpackError(
                f"--batch-size {self.batch_size} is out of range; pass at least 1, e.g. --batch-size 32"
            )
        if self.eval_batch_size < 1:
            raise BertpackError(
                f"--eval-batch-size {self.eval_batch_size} is out of range; pass at least 1, e.g. --eval-batch-size 128"
            )
        if not 8 <= self.max_length <= 512:
            raise BertpackError(
                f"--max-length {self.max_length} is out of range; BERT takes 8 to 512 tokens, e.g. --max-length 64"
            )
        if not 0 <= self.warmup_ratio < 1:
            raise BertpackError(
                f"--warmup {self.warmup_ratio} is out of range; it is a fraction of the training steps in [0, 1), e.g. "
                "--warmup 0.1"
            )
        if self.weight_decay < 0:
            raise BertpackError(
                f"--weight-decay {self.weight_decay} is out of range; pass 0 or more, e.g. --weight-decay 0.01"
            )
        if not 0 < self.layer_decay <= 1:
            raise BertpackError(
                f"--layer-decay {self.layer_decay} is out of range; it is in (0, 1], e.g. --layer-decay 0.85 (1 = off)"
            )
        if self.head_lr_multiplier <= 0:
            raise BertpackError(
                f"--head-lr-multiplier {self.head_lr_multiplier} is out of range; pass a positive factor, e.g. "
                "--head-lr-multiplier 5 (1 = the encoder's lr)"
            )
        if self.classifier_dropout is not None and not 0 <= self.classifier_dropout < 1:
            raise BertpackError(
                f"--classifier-dropout {self.classifier_dropout} is out of range; it is a probability in [0, 1), e.g. "
                "--classifier-dropout 0.1"
            )
        if self.limit is not None and self.limit < 1:
            raise BertpackError(
                f"--limit {self.limit} is out of range; pass a positive number of rows, e.g. --limit 512"
            )
        if self.class_weights not in ("balanced", "none"):
            raise BertpackError(f"--class-weights must be 'balanced' or 'none', not {self.class_weights!r}")
        if self.evals_per_epoch < 1:
            raise BertpackError(
                f"--evals-per-epoch {self.evals_per_epoch} is out of range; pass at least 1, e.g. --evals-per-epoch 2"
            )
        if self.reinit_top_layers < 0:
            raise BertpackError(
                f"--reinit-top-layers {self.reinit_top_layers} is out of range; pass 0 (off) or a number of layers, "
                "e.g. 1"
            )
        if self.select_on not in ("split", "dev"):
            raise BertpackError(f"--select-on must be 'split' or 'dev', not {self.select_on!r}")
        if not (math.isfinite(self.selection_split) and 0 < self.selection_split <= 0.5):
            raise BertpackError(
                f"--selection-split {self.selection_split} is out of range; it is a fraction of the training rows in "
                "(0, 0.5], e.g. --selection-split 0.1 (or --select-on dev to choose on the validation split)"
            )
        if not 0 <= self.selection_seed < 2**32:
            raise BertpackError(
                f"--selection-seed {self.selection_seed} is out of range; pass a number from 0 to 4294967295, e.g. 0"
            )
        if not 0 <= self.seed < 2**32:  # numpy's seed range
            raise BertpackError(
                f"--seed {self.seed} is out of range; pass a number from 0 to 4294967295, e.g. --seed 42"
            )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["out"] = str(self.out)
        return d

    @classmethod
    def from_dict(cls, recorded: dict) -> TrainConfig:
        """The config recorded in a run's bertpack_run.json; keys an older version did not write keep their defaults."""
        known = {f.name for f in fields(cls)}
        # Versions before the selection split chose the checkpoint on the validation split.
        cfg = cls(**{"select_on": "dev", **{k: v for k, v in recorded.items() if k in known}})
        cfg.out = Path(cfg.out)
        return cfg


# On --resume these may differ from the recorded run: they lengthen it or change what is kept, not what is
# learned. Every other recipe option must match the recording, or the resumed run would silently be a
# different experiment stitched onto the first one's checkpoint.
RESUME_MAY_CHANGE = frozenset({"epochs", "max_steps", "eval_batch_size", "keep_checkpoints"})
# Fields that are not recipe: where and how this invocation writes.
NOT_RECIPE = frozenset({"out", "overwrite", "resume"})


def option_name(field_name: str) -> str:
    """The `bertpack train` option that sets a TrainConfig field."""
    return {"learning_rate": "--lr", "warmup_ratio": "--warmup"}.get(field_name, "--" + field_name.replace("_", "-"))
