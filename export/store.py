"""Registration in the BentoML model store, so the service can load the artifact by tag."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from bertpack.errors import BertpackError, storage_problem
from bertpack.labels import COLA_NAMES
from bertpack.locks import pid_running

MODEL_NAME = "bertpack-cola"  # CoLA's model name; a model of other labels is named after its data (default_name)
TAG_NAME = re.compile(r"[a-z0-9]([-._a-z0-9]*[a-z0-9])?")  # BentoML's rule for a tag's name, at most 63 characters
STAGING_PREFIX = ".bertpack-register-"  # + PID-: beside the store's models/ folder, never inside it


def _plain(value):
    """BentoML metadata accepts only simple JSON-like values, and no None: absent figures are left out."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value if v is not None]
    if isinstance(value, (float, int, str, bool)):
        return value
    return str(value)


def store_manifest(artifact_dir: Path, manifest: dict) -> dict:
    """The manifest of the store's copy: the artifact's, less the variants made only as the parity reference (fp32's
    unfused model.onnx: `optimized` is the same model fused, and the service never loads it unless asked by name). A
    Bento
    carries its models whole, so each such file would ship in every Bento built on the tag (91 MB of the embedded
    model's 261 MB). `store_copy` names what was left out and the folder that still has it."""
    variants, default = manifest["variants"], set(manifest["serving_default"].values())
    dropped = {
        name: meta["file"] for name, meta in variants.items() if meta.get("for") == "reference" and name not in default
    }
    return {
        **manifest,
        "variants": {name: meta for name, meta in variants.items() if name not in dropped},
        "files": {name: meta for name, meta in manifest["files"].items() if name not in dropped.values()},
        "store_copy": {"of": str(Path(artifact_dir).resolve()), "left_out": dropped},
    }


def default_name(labels: list[str], data: str | None, run_dir: Path) -> str:
    """The store name of an export without --name: bertpack-cola for CoLA's labels, else bertpack-<the data's name> (its
    folder, or the GLUE task), or bertpack-<run folder> when the run recorded no data. Never bertpack-cola for other
    labels: the service serves bertpack-cola:latest by default, and a ticket classifier must not replace it there."""
    if tuple(labels) == COLA_NAMES:
        return MODEL_NAME
    if data and data.startswith("glue/"):
        base = data.split("/", 1)[1]
    elif data:
        path = Path(data)
        base = path.parent.name if path.is_file() else path.name  # a train file: its folder
    else:
        base = Path(run_dir).name
    slug = re.sub(r"[^a-z0-9._-]+", "-", base.lower()).strip("-._") or "model"
    return f"bertpack-{slug}"[:63].rstrip("-._")


def check_name(name: str) -> str:
    """--name as BentoML takes it for a model's name."""
    if len(name) > 63 or not TAG_NAME.fullmatch(name):
        raise BertpackError(
            f"--name {name!r} is not a BentoML model name: use at most 63 lowercase letters, digits, "
            "'-', '_' or '.', starting and ending with a letter or digit, e.g. --name bertpack-tickets"
        )
    return name


def store_home() -> Path:
    """The folder BentoML keeps its stores in: $BENTOML_HOME, else ~/bentoml (BentoML's own rule). Not BentoML's
    resolver: it creates the folder, and a $BENTOML_HOME under a file is then its traceback, not this check's line."""
    return Path(os.path.expandvars(os.environ.get("BENTOML_HOME") or "~/bentoml")).expanduser()


def check_store_writable(name: str = MODEL_NAME) -> None:
    """Before the export's slow work: a model store that cannot be written would otherwise fail only at the end."""
    entries = store_home() / "models" / name
    nearest = next(p for p in (entries, *entries.parents) if p.exists())
    problem = None
    if not nearest.is_dir():
        problem = f"{nearest} is a file, not a folder"
    else:
        try:
            os.rmdir(tempfile.mkdtemp(prefix=".bertpack-probe-", dir=nearest))
        except OSError as exc:
            problem = f"cannot write in {nearest} ({exc.strerror or exc})"
    if problem:
        raise BertpackError(
            f"the BentoML model store in {store_home()} cannot take the export: {problem}; set BENTOML_HOME to "
            "a folder you can write to, or pass --no-store to skip registering"
        )


def register(artifact_dir: Path, manifest: dict) -> str:
    """Copy the artifact into the store as `NAME:<version>` (the manifest's name; bertpack-cola for CoLA and for exports
    that predate names); returns the tag.

    The store entry is an artifact folder of its own (store_manifest: every variant the service can serve, and its
    manifest), so the service can point OnnxClassifier at `bentoml.models.get(tag).path`. The entry appears whole or
    not at all: BentoML's own save creates the version folder in the store first and copies into it, so a run killed
    while copying (SIGKILL) left a folder without model.yaml that breaks `bentoml models list`, `get` and `delete` for
    the whole store. Here BentoML saves into a private store beside the real one, the files are copied there, and one
    rename moves the finished entry in; a private store that a killed export left is removed by the next registration.
    """
    import bentoml
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml._internal.models.model import ModelStore

    from bertpack.files import write_json_atomic
    from bertpack.manifest import MANIFEST

    name = manifest.get("name") or MODEL_NAME
    tag = f"{name}:{manifest['version']}"
    stored = store_manifest(artifact_dir, manifest)
    version = manifest["version"]
    metadata = _plain(
        {
            "parity": manifest.get("parity", {}),
            "serving_default": manifest.get("serving_default", {}),
            "source_metrics": manifest.get("source", {}).get("metrics", {}),
            "int8_method": manifest["variants"].get("int8", {}).get("method"),
            "labels": manifest["labels"],
        }
    )
    stage: Path | None = None
    try:
        models = Path(BentoMLContainer.model_store_dir.get()).resolve()
        entries = models / name
        _remove_dead_stages(models.parent)
        # Beside models/, on its filesystem, so the closing rename is atomic.
        stage = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=models.parent))
        task = "cola" if tuple(manifest["labels"]) == COLA_NAMES else "text-classification"
        labels = {"task": task, "format": "bertpack-artifact-1"}
        with bentoml.models.create(
            tag, module="bertpack.export", labels=labels, metadata=metadata, _model_store=ModelStore(stage)
        ) as model:
            pass  # only BentoML's model.yaml: the artifact is copied straight into the staged entry below
        staged = stage / name / version
        for name in stored["files"]:
            (staged / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(Path(artifact_dir) / name, staged / name)
        write_json_atomic(staged / MANIFEST, stored)
        entries.mkdir(parents=True, exist_ok=True)
        os.rename(staged, entries / version)
        _point_latest(entries, name, version, model.info.creation_time)
    except (bentoml.exceptions.BentoMLException, ValueError) as exc:
        raise BertpackError(
            f"could not register {tag} in the BentoML model store ({exc}); pass --no-store to skip"
        ) from None
    except OSError as exc:
        problem, fix = storage_problem(exc, store_home()) or (f"{type(exc).__name__}: {exc}", "fix that")
        raise BertpackError(
            f"could not register {tag} in the BentoML model store ({problem}); the artifact in {artifact_dir} "
            f"is complete: {fix}, then export again (or pass --no-store)"
        ) from None
    finally:
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)
    return tag


def _point_latest(entries: Path, name: str, version: str, created) -> None:
    """`NAME:latest` -> this version, unless a newer one was registered meanwhile (BentoML's rule)."""
    import bentoml

    from bertpack.files import write_text_atomic

    try:
        current = bentoml.models.get(f"{name}:latest").info.creation_time
    except Exception:  # noqa: BLE001 - no latest yet, or one that points at a removed version
        current = None
    if current is None or created >= current:
        write_text_atomic(entries / "latest", version)


def _remove_dead_stages(home: Path) -> None:
    """Private stores of registrations whose process is gone (killed while copying)."""
    for path in home.glob(f"{STAGING_PREFIX}*"):
        pid = path.name[len(STAGING_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not pid_running(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
