"""Registration in the BentoML model store, so the service can load the artifact by tag."""

from __future__ import annotations

import shutil
from pathlib import Path

from bertpack.errors import BertpackError

MODEL_NAME = "bertpack-cola"


def _plain(value):
    """BentoML metadata accepts only simple JSON-like values, and no None: absent figures are left out."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value if v is not None]
    if isinstance(value, (float, int, str, bool)):
        return value
    return str(value)


def register(artifact_dir: Path, manifest: dict) -> str:
    """Copy the artifact into the store as `bertpack-cola:<version>`; returns the tag.

    The store entry holds the same files as the folder (manifest included), so the service can
    point OnnxClassifier at `bentoml.models.get(tag).path`.
    """
    import bentoml

    tag = f"{MODEL_NAME}:{manifest['version']}"
    metadata = _plain({"parity": manifest.get("parity", {}), "serving_default": manifest.get("serving_default", {}),
                       "source_metrics": manifest.get("source", {}).get("metrics", {}),
                       "int8_method": manifest["variants"].get("int8", {}).get("method")})
    try:
        with bentoml.models.create(tag, module="bertpack.export", labels={"task": "cola", "format": "bertpack-artifact-1"},
                                   metadata=metadata) as model:
            for src in sorted(Path(artifact_dir).iterdir()):
                if src.is_file():
                    shutil.copy2(src, Path(model.path) / src.name)
    except (bentoml.exceptions.BentoMLException, ValueError) as exc:
        raise BertpackError(f"could not register {tag} in the BentoML model store ({exc}); pass --no-store to skip") from None
    return tag
