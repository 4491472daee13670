"""`bertpack verify`: an artifact's files against its manifest, and each model loaded and run once."""

from __future__ import annotations

from pathlib import Path

from bertpack.errors import BertpackError, first_line
from bertpack.manifest import MANIFEST, read_manifest, verify_files
from serving.engine import load_tokenizer

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
    extra = [
        p.relative_to(artifact_dir).as_posix()
        for p in artifact_dir.rglob("*")
        if p.is_file() and p.relative_to(artifact_dir).as_posix() not in listed | {MANIFEST, STORE_RECORD}
    ]
    if extra:
        raise BertpackError(
            f"{artifact_dir} holds files the manifest does not list: {', '.join(sorted(extra))}; re-run bertpack export"
        )
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
                feed[inp.name] = (
                    probe
                    if inp.name == "input_ids"
                    else (np.ones_like(probe) if inp.name == "attention_mask" else np.zeros_like(probe))
                )
            out = session.run(None, feed)[0]
        except Exception as exc:  # noqa: BLE001 - ORT raises its own Fail/InvalidProtobuf types
            raise BertpackError(
                f"{path} does not load or run in ONNX Runtime ({first_line(exc)}); re-run bertpack export"
            ) from None
        if out.shape != (1, len(manifest["labels"])) or not np.isfinite(out).all():
            raise BertpackError(
                f"{path} returns logits of shape {out.shape} (finite: {bool(np.isfinite(out).all())}); expected (1, "
                f"{len(manifest['labels'])})"
            )
        lines.append(f"{name}: {variant['file']} loads and runs")
    return lines
