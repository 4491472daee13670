"""An artifact's manifest.json: what it holds, where it came from, the sha256 of every file; read, checked and
written here, for every stage (export writes it; serve, predict, verify and bench read it). Standard library only:
the Bento carries this module."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from bertpack.errors import BertpackError
from bertpack.files import sha256_file, write_json_atomic

MANIFEST = "manifest.json"
ARTIFACT_FORMAT = "bertpack-artifact/1"
# An export's manifest is a few kB (about 7 kB for six variants); one far larger is not a bertpack export, and reading
# it whole (an artifact folder from elsewhere, a manifest.json linked to a large file) would cost its size in memory.
MAX_MANIFEST_BYTES = 1 << 20
# Tokenizer and config files copied beside the models (tokenizer.json is what the engine reads).
SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "config.json")


def read_manifest(artifact_dir: Path) -> dict:
    """The artifact's manifest.json, checked for the shape every reader relies on."""
    artifact_dir = Path(artifact_dir)
    path = artifact_dir / MANIFEST
    if artifact_dir.is_file():
        raise BertpackError(
            f"{artifact_dir} is a file, not an artifact folder; pass the folder written by `bertpack export` (holding "
            f"{MANIFEST})"
        )
    if not artifact_dir.is_dir():
        if ":" in str(artifact_dir) and len(artifact_dir.parts) == 1:  # bertpack-cola:latest
            raise BertpackError(
                f"{artifact_dir} looks like a BentoML model tag, but this takes an artifact folder: pass the folder "
                "written by `bertpack export` (a stored model's files are in $BENTOML_HOME/models/NAME/VERSION)"
            )
        raise BertpackError(
            f"artifact folder {artifact_dir} does not exist; create it with `bertpack export RUN_DIR --out "
            f"{artifact_dir}`"
        )
    if not path.is_file():
        what = f"whose {MANIFEST} is a folder, not a file" if path.exists() else f"has no {MANIFEST}"
        raise BertpackError(f"{artifact_dir} {what}; it is not a bertpack export (run `bertpack export RUN_DIR`)")
    try:
        size = path.stat().st_size
        if size > MAX_MANIFEST_BYTES:
            raise BertpackError(
                f"{path} is {size} bytes, over the {MAX_MANIFEST_BYTES} bytes a bertpack manifest may hold (an export "
                "writes a few kB): it is not a bertpack export; re-run bertpack export"
            )
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BertpackError(
            f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}); re-run bertpack export"
        ) from None
    except RecursionError:  # brackets nested deeper than Python's parser goes: not an export's manifest
        raise BertpackError(f"{path} is not valid JSON (nested too deeply to parse); re-run bertpack export") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BertpackError(
            f"{path} cannot be read ({exc.strerror if isinstance(exc, OSError) else 'not UTF-8 text'}); "
            "check its permissions or re-run bertpack export"
        ) from None
    if not isinstance(manifest, dict) or manifest.get("format") != ARTIFACT_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise BertpackError(
            f"{path}: unknown artifact format {found!r} (expected {ARTIFACT_FORMAT}); re-run bertpack export"
        )
    problem = manifest_problem(manifest)
    if problem:
        raise BertpackError(f"{path} is damaged: {problem}; re-run bertpack export")
    return manifest


def manifest_problem(manifest: dict) -> str | None:
    """What is wrong with the fields every reader uses (None when nothing): checked once here so no
    reader meets a KeyError or TypeError in the middle of its work."""
    files, variants, default = manifest.get("files"), manifest.get("variants"), manifest.get("serving_default")
    if not isinstance(manifest.get("version"), str) or not manifest["version"]:
        return "'version' is missing or not a string"
    if not isinstance(files, dict) or not files:
        return "'files' is missing or not a table of file names"
    for name, meta in files.items():
        if not (
            isinstance(meta, dict)
            and isinstance(meta.get("sha256"), str)
            and type(meta.get("bytes")) is int
            and meta["bytes"] >= 0
        ):
            return f"files[{name!r}] needs a sha256 string and a byte count"
        if Path(name).is_absolute() or ".." in Path(name).parts:
            return f"files[{name!r}] points outside the artifact folder"
    if not isinstance(variants, dict) or not variants:
        return "'variants' is missing or empty"
    for name, variant in variants.items():
        if not isinstance(variant, dict) or not isinstance(variant.get("file"), str):
            return f"variants[{name!r}] has no 'file'"
        if variant["file"] not in files:
            return f"variants[{name!r}] names {variant['file']!r}, which 'files' does not list"
    if not isinstance(default, dict) or any(default.get(k) not in variants for k in ("cpu", "cuda")):
        return f"'serving_default' {default!r} must name an existing variant for cpu and for cuda"
    labels = manifest.get("labels")
    if not isinstance(labels, list) or len(labels) < 2 or not all(isinstance(x, str) for x in labels):
        return "'labels' must be a list of label names"
    if type(manifest.get("max_length")) is not int or not 2 < manifest["max_length"] <= 8192:
        return "'max_length' must be a whole number of tokens"
    if type(manifest.get("pad_token_id", 0)) is not int:
        return "'pad_token_id' must be an integer"
    return None


def parity_failure(manifest: dict) -> str | None:
    """What the export's parity check recorded as failing (None when it passed, or for exports that predate the
    status): such an artifact is written but not registered, so verify, doctor and the service say so."""
    if manifest.get("status", "ok") == "ok":
        return None
    return "; ".join(manifest.get("parity", {}).get("failures", [])) or str(manifest["status"])


def left_out(manifest: dict, variant: str) -> tuple[str, str] | None:
    """(file, export folder) when `variant` was left out of this copy of the artifact (the model store's copy, and so a
    Bento, carries only the variants a service can be asked for: export/store.py), else None."""
    copy = manifest.get("store_copy")
    files = copy.get("left_out") if isinstance(copy, dict) else None
    if not isinstance(files, dict) or variant not in files:
        return None
    return str(files[variant]), str(copy.get("of", "?"))


def encoding_variant(manifest: dict) -> str:
    """The fp32 graph to tokenize and batch with when only the ids matter (bench, verify --parity): fp32, or optimized
    (the same model fused) in the model store's copy, which leaves fp32 out."""
    return "fp32" if "fp32" in manifest["variants"] else "optimized"


def verify_files(artifact_dir: Path, manifest: dict, names: Sequence[str] | None = None) -> None:
    """Re-hash files against the manifest (all of them, or `names`); raise on any mismatch."""
    artifact_dir = Path(artifact_dir)
    for name, meta in manifest["files"].items():
        if names is not None and name not in names:
            continue
        path = artifact_dir / name
        if not path.is_file():
            raise BertpackError(f"{path} is missing (listed in the manifest); re-run bertpack export")
        size = path.stat().st_size
        if size != meta["bytes"]:
            raise BertpackError(
                f"{path} is {size} bytes, the manifest says {meta['bytes']}: truncated or replaced; re-run bertpack "
                "export"
            )
        if sha256_file(path) != meta["sha256"]:
            raise BertpackError(
                f"{path} does not match its sha256 in the manifest: corrupt or modified; re-run bertpack export"
            )


def file_table(folder: Path, hashed: bool = True) -> dict[str, dict]:
    """sha256 and size of every file under `folder` except the manifest itself (sha256 "" when not hashed)."""
    folder = Path(folder)
    return {
        p.relative_to(folder).as_posix(): {"sha256": sha256_file(p) if hashed else "", "bytes": p.stat().st_size}
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


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
