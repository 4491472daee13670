"""Find and check the checkpoint inside a training run folder (the run folder contract)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from bertpack.data import DataSpec
from bertpack.errors import BertpackError
from bertpack.labels import COLA_NAMES, MAX_CLASSES
from bertpack.locks import held_by
from bertpack.models import has_safe_weights
from bertpack.run_marker import RUN_MARKER

DEFAULT_MAX_LENGTH = 128


@dataclass
class Checkpoint:
    run_dir: Path
    path: Path  # folder with config.json + model.safetensors + tokenizer files
    max_length: int
    metrics: dict = field(default_factory=dict)
    labels: list[str] = field(default_factory=lambda: list(COLA_NAMES))  # id -> name, from config.json's id2label
    num_layers: int = 0
    data: DataSpec | None = None  # the data the run was trained on, as it recorded it (None: not recorded)
    decision: dict = field(default_factory=dict)  # metrics.json "decision": temperature and threshold, where fitted
    selection: dict = field(default_factory=dict)  # metrics.json "selection": the rows the checkpoint was chosen on


def run_folder_of(path: Path) -> Path:
    """The run folder a path names: RUN itself, or RUN for RUN/model (whose records, trained length and metrics,
    are in RUN)."""
    path = Path(path)
    if path.name == "model" and not (path / "model").is_dir() and (path.parent / RUN_MARKER).is_file():
        return path.parent
    return path


def locate_checkpoint(run_dir: Path) -> Checkpoint:
    """RUN/model (as `bertpack train` writes it), or RUN itself when it is a checkpoint folder."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise BertpackError(
            f"run folder {run_dir} does not exist; pass the folder written by `bertpack train --out DIR`"
        )
    if not run_dir.is_dir():
        raise BertpackError(f"{run_dir} is a file; pass the run folder written by `bertpack train` (holding model/)")
    run_dir = run_folder_of(run_dir)
    path = run_dir / "model" if (run_dir / "model").is_dir() else run_dir
    if not (path / "config.json").is_file() or not has_safe_weights(path):
        status = _run_status(run_dir)
        trainer = (
            held_by(run_dir) if status == "training" else None
        )  # a "training" run that no process holds was killed
        if status == "failed" or (status == "training" and trainer is None):
            killed = ", but no bertpack train is running on it: it was killed" if status == "training" else ""
            fix = (
                f"continue it with `bertpack train --resume --out {run_dir}` or retrain with --overwrite"
                if any((run_dir / "checkpoints").glob("checkpoint-*"))
                else f"it has no checkpoint to resume from: retrain with `bertpack train --overwrite --out {run_dir}`"
            )
            hint = f" (its bertpack_run.json says status {status!r}{killed}: {fix})"
        elif status == "training":
            hint = f" (its bertpack_run.json says status 'training': wait for {trainer} to finish)"
        else:
            hint = (
                f" (its bertpack_run.json says status {status!r}: wait for training to finish)"
                if status and status != "complete"
                else ""
            )
        pickle = (
            " (bertpack loads only safetensors weights, never a pickle such as pytorch_model.bin)"
            if (path / "config.json").is_file() and any(path.glob("*.bin"))
            else ""
        )
        raise BertpackError(
            f"{run_dir} holds no checkpoint: expected {run_dir}/model/ with config.json and "
            f"model.safetensors{pickle}{hint}"
        )
    if not (path / "tokenizer.json").is_file():
        raise BertpackError(f"{path} has no tokenizer.json (fast tokenizer); re-save the checkpoint with its tokenizer")
    try:
        config = json.loads((path / "config.json").read_text())
    except json.JSONDecodeError as exc:
        raise BertpackError(f"{path}/config.json is not valid JSON ({exc.msg}); the checkpoint is damaged") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BertpackError(
            f"{path}/config.json cannot be read ({getattr(exc, 'strerror', None) or 'not UTF-8 text'}); check its "
            "permissions"
        ) from None
    if not isinstance(config, dict):
        raise BertpackError(
            f"{path}/config.json holds a JSON {type(config).__name__}, not a model config object; the checkpoint is "
            "damaged"
        )
    archs = config.get("architectures") or []
    if config.get("model_type") != "bert" or not any(a.endswith("ForSequenceClassification") for a in archs):
        raise BertpackError(
            f"{path} is a {config.get('model_type')!r} checkpoint with architectures {archs}, not a BERT sequence "
            "classifier; export the run folder written by `bertpack train` (BertForSequenceClassification)"
        )
    id2label = config.get("id2label") or {}
    if not isinstance(id2label, dict):
        raise BertpackError(
            f"{path}/config.json: id2label must map label ids to names, not {type(id2label).__name__}; the checkpoint "
            "is damaged"
        )
    labels = [str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(len(id2label) or 2)]
    if not 2 <= len(labels) <= MAX_CLASSES or len(set(labels)) != len(labels):
        raise BertpackError(
            f"{path}/config.json: id2label holds {len(labels)} labels ({len(set(labels))} distinct "
            f"names); a classifier has 2 to {MAX_CLASSES}, each with its own name: the checkpoint is "
            "damaged"
        )
    recorded = _json_object(run_dir / "metrics.json")
    best, decision, selection = (recorded.get(k) for k in ("best", "decision", "selection"))
    return Checkpoint(
        run_dir=run_dir.resolve(),
        path=path.resolve(),
        max_length=_max_length(run_dir, config),
        metrics=best if isinstance(best, dict) else {},
        labels=labels,
        num_layers=int(config.get("num_hidden_layers", 0)),
        data=recorded_data(recorded, _json_object(run_dir / RUN_MARKER)),
        decision=decision if isinstance(decision, dict) else {},
        selection=selection if isinstance(selection, dict) else {},
    )


def named_by_artifact(checkpoint: Path, artifact_dir: Path) -> Path:
    """The source checkpoint an artifact's manifest names (verify --parity and bench load it with PyTorch), checked as
    an export checks its input: a manifest can come from anyone, and the folder it names must hold a BERT classifier
    with safetensors weights (transformers would otherwise unpickle a pytorch_model.bin, or ask on stdin to run a
    config's own code)."""
    try:
        return locate_checkpoint(checkpoint).path
    except BertpackError as exc:
        raise BertpackError(
            f"the PyTorch checkpoint named in {artifact_dir}/manifest.json cannot be loaded: {exc}"
        ) from None


def _json_object(path: Path) -> dict:
    """A run file's JSON object, or {} when it is missing or unreadable: the metrics and the run record only inform
    the export (a checkpoint copied without them exports the same)."""
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError):  # ValueError: JSONDecodeError and UnicodeDecodeError
        return {}
    return payload if isinstance(payload, dict) else {}


def recorded_data(metrics: dict, marker: dict) -> DataSpec | None:
    """The data a run was trained on: metrics.json's data_source (an absolute path, the columns read), else the --data
    its bertpack_run.json recorded (as it was given)."""
    return DataSpec.from_record(metrics.get("data_source")) or DataSpec.from_record(marker.get("config"))


def _run_status(run_dir: Path) -> str | None:
    status = _json_object(run_dir / RUN_MARKER).get("status")
    return status if isinstance(status, str) else None


def _max_length(run_dir: Path, config: dict) -> int:
    """The length the model was trained with (bertpack_run.json), capped by its position embeddings."""
    limit = int(config.get("max_position_embeddings", 512))
    try:
        trained = int(_json_object(run_dir / RUN_MARKER)["config"]["max_length"])
    except (KeyError, TypeError, ValueError):
        trained = DEFAULT_MAX_LENGTH
    return min(trained, limit)
