"""Score int8 ONNX models against PyTorch on the full CoLA validation set: MCC, agreement with the
PyTorch predictions, file size, and the batch flip rate. Used by compare_optimum_cli.sh.

    python scripts/compare_int8.py ARTIFACT_DIR DATA_DIR NAME=MODEL.onnx [NAME=MODEL.onnx ...]

ARTIFACT_DIR is a `bertpack export` artifact of the same checkpoint: its tokenizer and batching
(the serving engine's) feed every model, and its source checkpoint is the PyTorch reference.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bertpack.data import validation_sentences  # noqa: E402
from export import parity  # noqa: E402
from serving.engine import OnnxClassifier, session_options  # noqa: E402


class RawModel:
    """An ONNX file outside any artifact, run with the artifact's tokenizer and padding."""

    def __init__(self, path: Path, like: OnnxClassifier):
        import onnxruntime as ort

        self.like = like
        self.session = ort.InferenceSession(
            str(path), sess_options=session_options(), providers=["CPUExecutionProvider"]
        )
        self.names = [i.name for i in self.session.get_inputs()]  # feed exactly what the graph declares
        self.pad_id = like.pad_id

    def encode(self, sentences):
        return self.like.encode(sentences)

    def pad(self, ids, length=None):
        return self.like.pad(ids, length)

    def run(self, batch) -> np.ndarray:
        ids = batch.inputs["input_ids"]
        full = {
            "input_ids": ids,
            "attention_mask": (np.arange(ids.shape[1])[None, :] < np.array(batch.lengths)[:, None]).astype(np.int64),
            "token_type_ids": np.zeros_like(ids),
        }
        return self.session.run(None, {n: full[n] for n in self.names})[0].astype(np.float32)

    def logits(self, sentences, batch_size=parity.BATCH_SIZE):
        ids = self.encode(sentences)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out = np.empty((len(ids), 2), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            out[chunk] = self.run(self.pad([ids[i] for i in chunk]))
        return out


def main(argv: list[str]) -> None:
    artifact, data, *models = argv
    sentences, labels, domains = validation_sentences(data)
    evals = parity.Eval(sentences, labels, domains)
    base = OnnxClassifier(artifact, variant="fp32", device="cpu")
    checkpoint = json.loads((Path(artifact) / "manifest.json").read_text())["source"]["checkpoint"]
    reference = parity.reference_logits(Path(checkpoint), base, sentences)
    ref = parity.score("pytorch fp32", reference, reference, evals)
    print(f"CoLA validation: {len(sentences)} sentences; PyTorch fp32 MCC {ref['mcc']:.4f}\n")
    print(
        "| int8 model | MCC | MCC drop | agreement % | flip % (alone vs batch of 32) | size MB | within default "
        "tolerance |"
    )
    print("|---|---|---|---|---|---|---|")
    for spec in models:
        name, _, path = spec.partition("=")
        model = RawModel(Path(path), base)
        row = parity.score(name, model.logits(sentences), reference, evals, Path(path).stat().st_size)
        flips = parity.flip_rate(model, sentences)
        ok = not parity.check(row, ref, parity.Tolerance())
        print(
            f"| {name} | {row['mcc']:.4f} | {ref['mcc'] - row['mcc']:+.4f} | {row['agreement']:.2f} | "
            f"{flips['flip_rate']:.2f} | "
            f"{row['bytes'] / 1e6:.1f} | {'yes' if ok else 'no'} |",
            flush=True,
        )


if __name__ == "__main__":
    main(sys.argv[1:])
