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


def store_manifest(artifact_dir: Path, manifest: dict) -> dict:
    """The manifest of the store's copy: the artifact's, less the variants made only as the parity reference (fp32's
    unfused model.onnx: `optimized` is the same model fused, and the service never loads it unless asked by name). A Bento
    carries its models whole, so each such file would ship in every Bento built on the tag (91 MB of the embedded
    model's 261 MB). `store_copy` names what was left out and the folder that still has it."""
    variants, default = manifest["variants"], set(manifest["serving_default"].values())
    dropped = {name: meta["file"] for name, meta in variants.items() if meta.get("for") == "reference" and name not in default}
    return {**manifest, "variants": {name: meta for name, meta in variants.items() if name not in dropped},
            "files": {name: meta for name, meta in manifest["files"].items() if name not in dropped.values()},
            "store_copy": {"of": str(Path(artifact_dir).resolve()), "left_out": dropped}}


def register(artifact_dir: Path, manifest: dict) -> str:
    """Copy the artifact into the store as `bertpack-cola:<version>`; returns the tag.

    The store entry is an artifact folder of its own (store_manifest: every variant the service can serve, and its
    manifest), so the service can point OnnxClassifier at `bentoml.models.get(tag).path`.
    """
    import bentoml

    from bertpack.files import write_json_atomic
    from serving.engine import MANIFEST

    tag = f"{MODEL_NAME}:{manifest['version']}"
    stored = store_manifest(artifact_dir, manifest)
    metadata = _plain({"parity": manifest.get("parity", {}), "serving_default": manifest.get("serving_default", {}),
                       "source_metrics": manifest.get("source", {}).get("metrics", {}),
                       "int8_method": manifest["variants"].get("int8", {}).get("method")})
    try:
        with bentoml.models.create(tag, module="bertpack.export", labels={"task": "cola", "format": "bertpack-artifact-1"},
                                   metadata=metadata) as model:
            for name in stored["files"]:
                (Path(model.path) / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(Path(artifact_dir) / name, Path(model.path) / name)
            write_json_atomic(Path(model.path) / MANIFEST, stored)
    except (bentoml.exceptions.BentoMLException, ValueError) as exc:
        raise BertpackError(f"could not register {tag} in the BentoML model store ({exc}); pass --no-store to skip") from None
    return tag
