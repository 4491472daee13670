"""The training recipe as data. The defaults are the best recipe measured for the embedded model
(see README, "Recipes tried"); every field is a `bertpack train` option."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Literal


@dataclass
class TrainConfig:
    model: str = "embedded"
    data: str = ""
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
    # "balanced": cross-entropy weighted by inverse class frequency in the training split (CoLA is
    # 70% acceptable; MCC rewards getting the minority class right); "none": plain cross-entropy.
    class_weights: Literal["balanced", "none"] = "balanced"
    # Validation points per epoch; the best one (by dev MCC) is kept.
    evals_per_epoch: int = 2
    seed: int = 42
    max_steps: int = -1
    limit: int | None = None
    padding: Literal["dynamic", "max"] = "dynamic"
    group_by_length: bool = True
    keep_checkpoints: bool = False
    overwrite: bool = False
    resume: bool = False

    def to_dict(self) -> dict:
        d = asdict(self)
        d["out"] = str(self.out)
        return d

    @classmethod
    def from_dict(cls, recorded: dict) -> TrainConfig:
        """The config recorded in a run's bertpack_run.json; keys an older version did not write keep their defaults."""
        known = {f.name for f in fields(cls)}
        cfg = cls(**{k: v for k, v in recorded.items() if k in known})
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
