"""Shared fixtures: CoLA data (the real copy beside the project, or a tiny synthetic one) and a
tiny random-weight BERT run folder in the training contract's layout (no training, no download)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
REAL_COLA = REPO.parent / "shared" / "data" / "cola"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The serving settings a developer may have exported in their shell (docs/serving.md) would change what the
# service and `bertpack doctor` do under test; every test that wants one passes it explicitly.
for _name in [k for k in os.environ if k.startswith("BERTPACK_")]:
    del os.environ[_name]

_GOOD = [
    "The cat sat on the mat.",
    "John gave Mary a book.",
    "She voted for herself.",
    "The book was written by John.",
    "I saw that gas can explode.",
    "We walked to the station.",
    "They like apples.",
    "He has finished the work.",
    "The children are playing outside.",
    "It rained all day.",
]
_BAD = [
    "Books were sent to each other by the students.",
    "The cat sat mat the on.",
    "John gave a book Mary to.",
    "She voted for himself.",
    "They likes apples.",
    "He have finished the work.",
    "Children the outside playing are.",
    "It rained day all the.",
]


def write_synthetic_cola(root: Path, train_rows: int = 64, seed: int = 0) -> Path:
    """A tiny CoLA in the release layout (raw/*.tsv), in-domain and out-of-domain sources as the real one."""
    rng = random.Random(seed)
    raw = root / "raw"
    raw.mkdir(parents=True, exist_ok=True)

    def rows(n: int, sources: list[str]) -> str:
        out = []
        for i in range(n):
            label = 1 if i % 3 else 0
            sentence = rng.choice(_GOOD if label else _BAD)
            out.append(f"{rng.choice(sources)}\t{label}\t{'' if label else '*'}\t{sentence}")
        return "\n".join(out) + "\n"

    (raw / "in_domain_train.tsv").write_text(rows(train_rows, ["gj04", "bc01"]))
    (raw / "in_domain_dev.tsv").write_text(rows(24, ["gj04", "bc01"]))
    (raw / "out_of_domain_dev.tsv").write_text(rows(24, ["clc95", "swb04"]))
    return root


@pytest.fixture(scope="session")
def synthetic_cola(tmp_path_factory) -> Path:
    return write_synthetic_cola(tmp_path_factory.mktemp("cola"))


@pytest.fixture(scope="session")
def cola_dir(synthetic_cola) -> Path:
    """The real CoLA 1.1 copy when it is beside the project, else the synthetic one."""
    return REAL_COLA if (REAL_COLA / "raw" / "in_domain_train.tsv").is_file() else synthetic_cola


def make_tiny_run(root: Path, seed: int = 0, distinct: bool = False) -> Path:
    """A run folder as `bertpack train` writes it, holding a tiny random BERT (2 layers, hidden 32)
    with the embedded model's real WordPiece tokenizer. `distinct`: attention and pooler weights scaled up so
    that different sentences get clearly different logits (at init they agree within ~0.003)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from bertpack.models import LABELS, embedded_model_path

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        num_labels=2,
        id2label=LABELS,
        label2id={v: k for k, v in LABELS.items()},
    )
    model = BertForSequenceClassification(config).eval()
    with torch.no_grad():  # a visible margin between the two logits, so argmax is not a coin toss
        model.classifier.weight.mul_(20.0)
        if distinct:
            for layer in model.bert.encoder.layer:
                layer.attention.self.value.weight.mul_(30.0)
                layer.attention.output.dense.weight.mul_(30.0)
            model.bert.pooler.dense.weight.mul_(20.0)
    (root / "model").mkdir(parents=True, exist_ok=True)
    model.save_pretrained(root / "model", safe_serialization=True)
    AutoTokenizer.from_pretrained(str(embedded_model_path())).save_pretrained(root / "model")
    cfg = {"model": "tiny-random-bert", "max_length": 64, "seed": seed}
    (root / "bertpack_run.json").write_text(json.dumps({"kind": "bertpack-run", "status": "complete", "config": cfg}))
    (root / "metrics.json").write_text(
        json.dumps(
            {
                "model": "tiny-random-bert",
                "config": cfg,
                "seed": seed,
                "best": {
                    "checkpoint": "checkpoint-1",
                    "accuracy": 0.5,
                    "mcc": 0.0,
                    "mcc_in_domain": 0.0,
                    "mcc_out_domain": 0.0,
                },
                "epochs": [],
                "data_sha256": {},
            }
        )
    )
    return root


def make_balanced_tiny_run(root: Path, sentences: list[str]) -> Path:
    """make_tiny_run(distinct=True) with its classifier bias set so that the model predicts both classes on
    `sentences` (the plain tiny model answers one class everywhere, where scores cannot show a misplaced prediction),
    with a margin: the threshold sits in the middle of the widest gap between the sentences' logit differences near
    their median, so that padding, batching or int8 rounding moves few predictions."""
    import numpy as np
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    make_tiny_run(root, distinct=True)
    folder = root / "model"
    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForSequenceClassification.from_pretrained(str(folder)).eval()
    with torch.no_grad():
        diff = np.array([float(np.diff(model(**tok(s, return_tensors="pt")).logits[0].numpy())[0]) for s in sentences])
        values = np.unique(diff)
        middle = values[len(values) // 4 : 3 * len(values) // 4 + 1]
        k = int(np.argmax(np.diff(middle)))
        model.classifier.bias[1] -= float((middle[k] + middle[k + 1]) / 2)
    model.save_pretrained(str(folder), safe_serialization=True)
    return root


def model_that_fails_when_run() -> bytes:
    """A valid ONNX model with the artifact's inputs that ONNX Runtime loads but cannot run on a real batch
    (it reshapes the ids to 3 x 7)."""
    from onnx import TensorProto, helper

    inputs = [
        helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "seq"])
        for n in ("input_ids", "attention_mask", "token_type_ids")
    ]
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [3, 7])
    nodes = [
        helper.make_node("Reshape", ["input_ids", "shape"], ["reshaped"]),
        helper.make_node("Cast", ["reshaped"], ["logits"], to=TensorProto.FLOAT),
    ]
    graph = helper.make_graph(
        nodes,
        "fails-when-run",
        inputs,
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)],
        initializer=[shape],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8).SerializeToString()


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    return make_tiny_run(tmp_path_factory.mktemp("tiny-run"))


@pytest.fixture(scope="session")
def tiny_artifact(tiny_run, synthetic_cola, tmp_path_factory) -> Path:
    """The tiny run exported in-process with every tolerance open (its int8 is kept whatever it scores),
    no model store: for tests of what reads an artifact, not of the export itself."""
    from export.parity import Tolerance
    from export.pipeline import export_artifact

    out = tmp_path_factory.mktemp("tiny-artifact") / "artifact"
    wide_open = Tolerance(exact_max_logit_diff=1e9, exact_agreement=0.0, mcc_drop=1e9, min_agreement=0.0)
    export_artifact(
        tiny_run,
        out,
        data=synthetic_cola,
        store=False,
        tolerance=wide_open,
        limit=24,
        calibration_samples=16,
        flip_check=False,
    )
    return out


def glue_hub(monkeypatch: pytest.MonkeyPatch, cola_root: Path) -> list:
    """Stand in for the hub in `datasets.load_dataset("nyu-mll/glue", "cola")` (nothing else): answer with the CoLA
    release under `cola_root` in the hub's schema and order (sentence, ClassLabel label, idx; validation = in-domain
    dev then out-of-domain dev). Returns the list of calls it answered."""
    import datasets

    def split(*names: str) -> datasets.Dataset:
        rows = [
            line.split("\t") for name in names for line in (cola_root / "raw" / name).read_text().splitlines() if line
        ]
        features = datasets.Features(
            sentence=datasets.Value("string"),
            label=datasets.ClassLabel(names=["unacceptable", "acceptable"]),
            idx=datasets.Value("int32"),
        )
        return datasets.Dataset.from_dict(
            {"sentence": [r[3] for r in rows], "label": [int(r[1]) for r in rows], "idx": list(range(len(rows)))},
            features=features,
        )

    real_load, asked = datasets.load_dataset, []

    def load_dataset(path, name=None, **kwargs):
        if path != "nyu-mll/glue":
            return real_load(path, name, **kwargs)
        asked.append((path, name))
        return datasets.DatasetDict(
            train=split("in_domain_train.tsv"), validation=split("in_domain_dev.tsv", "out_of_domain_dev.tsv")
        )

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return asked


def sigint_at_default() -> None:
    """preexec_fn for a child that a test sends SIGINT (Ctrl-C): a shell started in the background (`cmd &`)
    ignores SIGINT and its children inherit that, so the child would never see the Ctrl-C the test sends."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_process_group(cmd: list[str], env: dict, timeout: float) -> subprocess.CompletedProcess:
    """Run CMD from the repo root in its own process group; on timeout kill the whole group (torchrun's
    ranks too, which would otherwise keep both cores busy for the rest of the suite), then fail."""
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"{' '.join(cmd[:4])} ... still running after {timeout:g} s; stderr tail:\n{stderr[-2000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def run_cli(
    *args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 900
) -> subprocess.CompletedProcess:
    """Run `bertpack ARGS` as a user would (a real process), capturing its output."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "bertpack.cli", *args],
        cwd=cwd or REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
