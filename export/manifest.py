"""manifest.json: what the artifact holds, where it came from, and the sha256 of every file."""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from pathlib import Path

from bertpack.errors import BertpackError, first_line
from bertpack.files import sha256_file, write_json_atomic
from serving.engine import ARTIFACT_FORMAT, MANIFEST, load_tokenizer, read_manifest, verify_files

# Tokenizer and config files copied beside the models (tokenizer.json is what the engine reads).
SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "config.json")


def file_table(folder: Path, hashed: bool = True) -> dict[str, dict]:
    """sha256 and size of every file under `folder` except the manifest itself (sha256 "" when not hashed)."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): {"sha256": sha256_file(p) if hashed else "", "bytes": p.stat().st_size}
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST}


def make_version(checkpoint: Path, when: datetime) -> str:
    """A short id, valid as a BentoML model version: export time to the microsecond + the weights' hash prefix. The
    microseconds keep two exports of one checkpoint started in the same second (a script exporting --int8 static and
    dynamic side by side) from sharing a version: the second's store registration failed after all its work."""
    digest = hashlib.sha256()
    for p in sorted(Path(checkpoint).glob("*.safetensors")):
        digest.update(sha256_file(p).encode())
    return f"{when:%Y%m%d-%H%M%S-%f}-{digest.hexdigest()[:8]}"


def write_manifest(folder: Path, body: dict, hash_files: bool = True) -> dict:
    """Hash the folder's files and write manifest.json atomically; returns what was written. hash_files=False
    writes a provisional manifest (sizes, no hashes) for the export's own loads (verify=False) while it builds:
    hashing every model after each int8 try cost seconds per try for BERT-base."""
    manifest = {"format": ARTIFACT_FORMAT, **{k: v for k, v in body.items() if k != "files"}}
    manifest.setdefault("created", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    manifest["files"] = file_table(folder, hashed=hash_files)
    write_json_atomic(Path(folder) / MANIFEST, manifest)
    return manifest


# BentoML's own record beside the files of a model in its store (bentoml.models.get(tag).path is an artifact folder).
STORE_RECORD = "model.yaml"


def verify_artifact(artifact_dir: Path, load_models: bool = True) -> list[str]:
    """`bertpack verify`: re-hash every file against the manifest, then load the tokenizer, and each model
    with ORT and run one sentence through it. Returns one line per check; raises on the first failure."""
    import numpy as np
    import onnxruntime as ort

    artifact_dir = Path(artifact_dir)
    manifest = read_manifest(artifact_dir)
    lines = []
    verify_files(artifact_dir, manifest)
    listed = set(manifest["files"])
    extra = [p.relative_to(artifact_dir).as_posix() for p in artifact_dir.rglob("*")
             if p.is_file() and p.relative_to(artifact_dir).as_posix() not in listed | {MANIFEST, STORE_RECORD}]
    if extra:
        raise BertpackError(f"{artifact_dir} holds files the manifest does not list: {', '.join(sorted(extra))}; re-run bertpack export")
    lines.append(f"{len(manifest['files'])} files match their sha256 and size")
    if not load_models:
        return lines
    tokenizer = load_tokenizer(artifact_dir)
    lines.append(f"tokenizer.json loads ({tokenizer.get_vocab_size()} tokens)")
    probe = np.array([tokenizer.encode("this").ids], dtype=np.int64)  # [CLS] this [SEP]
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    for name, variant in manifest["variants"].items():
        path = artifact_dir / variant["file"]
        try:
            session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
            feed = {}
            for inp in session.get_inputs():
                feed[inp.name] = probe if inp.name == "input_ids" else (
                    np.ones_like(probe) if inp.name == "attention_mask" else np.zeros_like(probe))
            out = session.run(None, feed)[0]
        except Exception as exc:  # noqa: BLE001 - ORT raises its own Fail/InvalidProtobuf types
            raise BertpackError(f"{path} does not load or run in ONNX Runtime ({first_line(exc)}); re-run bertpack export") from None
        if out.shape != (1, len(manifest["labels"])) or not np.isfinite(out).all():
            raise BertpackError(f"{path} returns logits of shape {out.shape} (finite: {bool(np.isfinite(out).all())}); expected (1, {len(manifest['labels'])})")
        lines.append(f"{name}: {variant['file']} loads and runs")
    return lines
