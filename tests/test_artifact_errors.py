"""What reads an artifact (predict, verify, bench) against damaged or wrong artifacts and bad
options: one `error:` line, exit 2, nothing on stdout, nothing written (real processes)."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.conftest import run_cli
from tests.test_export_errors import _one_line_error


@pytest.fixture
def artifact_copy(tiny_artifact, tmp_path):
    out = tmp_path / "artifact"
    shutil.copytree(tiny_artifact, out)
    return out


def _edit_manifest(artifact, change) -> None:
    path = artifact / "manifest.json"
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps(change(manifest)))


def _set(key, value):
    def change(m):
        if value is KeyError:
            m.pop(key)
        else:
            m[key] = value
        return m

    return change


@pytest.mark.parametrize(
    "change, needle",
    [
        (lambda m: [1, 2], "unknown artifact format"),
        (_set("files", KeyError), "'files' is missing"),
        (_set("variants", KeyError), "'variants' is missing"),
        (lambda m: {**m, "files": {k: {**v, "bytes": "many"} for k, v in m["files"].items()}}, "byte count"),
        (lambda m: {**m, "serving_default": {"cpu": "int4", "cuda": "fp16"}}, "'serving_default'"),
        (
            lambda m: {**m, "variants": {**m["variants"], "fp32": {"file": "elsewhere.onnx"}}},
            "which 'files' does not list",
        ),
        (_set("max_length", "long"), "'max_length'"),
    ],
)
def test_damaged_manifest_is_one_line_everywhere(artifact_copy, tmp_path, change, needle):
    _edit_manifest(artifact_copy, change)
    for args in (
        ["predict", str(artifact_copy), "The cat sat."],
        ["verify", str(artifact_copy)],
        ["bench", str(artifact_copy), "--out", str(tmp_path / "bench")],
    ):
        proc = run_cli(*args)
        err = _one_line_error(proc)
        assert needle in err and "re-run bertpack export" in err, (args, err)
        assert proc.stdout == ""
    assert not (tmp_path / "bench").exists()


def test_file_or_folder_in_the_wrong_place(artifact_copy, tmp_path):
    model = artifact_copy / "model.onnx"
    err = _one_line_error(run_cli("predict", str(model), "The cat sat."))
    assert "is a file, not an artifact folder" in err
    odd = tmp_path / "odd"
    (odd / "manifest.json").mkdir(parents=True)
    err = _one_line_error(run_cli("verify", str(odd)))
    assert "manifest.json is a folder, not a file" in err


def test_unlisted_file_and_a_same_size_tokenizer_edit(artifact_copy):
    """verify refuses files the manifest does not list; predict hashes tokenizer.json too, so an edit that keeps
    its size (a vocabulary entry renamed) is caught, not served with the wrong token ids."""
    (artifact_copy / "extra.onnx").write_bytes(b"not listed")
    err = _one_line_error(run_cli("verify", str(artifact_copy)))
    assert "holds files the manifest does not list: extra.onnx" in err
    (artifact_copy / "extra.onnx").unlink()
    tokenizer = artifact_copy / "tokenizer.json"
    text = tokenizer.read_text()
    assert '"the":' in text
    tokenizer.write_text(text.replace('"the":', '"thf":', 1))
    err = _one_line_error(run_cli("predict", str(artifact_copy), "The cat sat."))
    assert "tokenizer.json does not match its sha256" in err


def test_padding_is_masked(tiny_artifact):
    """A short sentence gets the same logits alone and padded beside a long one: the attention mask hides the
    padding. (Parity cannot see a broken mask: its PyTorch reference is fed the engine's own padded batch.)"""
    from serving.engine import OnnxClassifier

    clf = OnnxClassifier(tiny_artifact, variant="fp32", device="cpu")
    short, long = clf.encode(["The cat sat.", "The old grey cat sat quietly on the warm mat by the open door all day."])
    alone = clf.run(clf.pad([short]))
    beside = clf.run(clf.pad([short, long]))
    assert clf.pad([short, long]).inputs["input_ids"].shape[1] == len(long) > len(short)
    assert beside[0] == pytest.approx(alone[0], abs=1e-4)


def test_predict_pads_as_the_service_does(tiny_artifact):
    """On the CPU the service pads each run to its longest sentence (no buckets); predict must
    compute exactly that, or the two disagree on int8 (dynamic quantization sees the padding)."""
    from bertpack.postprocess import softmax
    from serving.engine import OnnxClassifier

    sentences = ["The cat sat on the mat.", "Him went there quickly yesterday the."]
    proc = run_cli("predict", str(tiny_artifact), *sentences, "--json")
    assert proc.returncode == 0, proc.stderr
    got = [json.loads(line) for line in proc.stdout.splitlines()]
    engine = OnnxClassifier(tiny_artifact, device="cpu", buckets=None)
    assert engine.variant == got[0]["variant"]
    want = softmax(engine.logits(sentences))
    for row, probs in zip(got, want):
        assert [row["probabilities"][label] for label in engine.labels] == pytest.approx(probs.tolist(), abs=1e-6)
    assert OnnxClassifier(tiny_artifact, device="cpu").buckets == ()  # the default is the service's padding


def test_predict_reads_stdin_and_refuses_cuda_without_gpu(tiny_artifact):
    import subprocess
    import sys

    from serving.cuda import cuda_available
    from tests.conftest import REPO

    proc = subprocess.run(
        [sys.executable, "-m", "bertpack.cli", "predict", str(tiny_artifact), "-", "--json"],
        cwd=REPO,
        input="The cat sat on the mat.\n\nIt rained.\n",
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(line)["sentence"] for line in proc.stdout.splitlines()] == [
        "The cat sat on the mat.",
        "It rained.",
    ]
    err = _one_line_error(run_cli("predict", str(tiny_artifact), "The cat sat.", "\U0001f642\U0001f642"))
    assert "sentence 2 has no text the tokenizer can read" in err  # all [UNK]: the service's 400 too
    # text that is not UTF-8, on stdin and as an argument (the shell passes bytes; Python sees lone surrogates)
    proc = subprocess.run(
        [sys.executable, "-m", "bertpack.cli", "predict", str(tiny_artifact), "-"],
        cwd=REPO,
        input=b"The cat sat.\ncaf\xe9 au lait.\n",
        capture_output=True,
        timeout=300,
    )
    proc = subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode())
    assert "line 2 on stdin is not UTF-8 text" in _one_line_error(proc)
    # Blank lines are skipped; a sentence on stdin is still named by its line, as the UTF-8 error above names it
    long = " ".join(["word"] * 70)
    proc = subprocess.run(
        [sys.executable, "-m", "bertpack.cli", "predict", str(tiny_artifact), "-"],
        cwd=REPO,
        input=f"The cat sat.\n\n{long}\n",
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0 and "note: line 3 on stdin has 72 tokens" in proc.stderr, proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "bertpack.cli", "predict", str(tiny_artifact), "-"],
        cwd=REPO,
        input="The cat sat.\n\n\U0001f642\U0001f642\n",
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "line 3 on stdin has no text the tokenizer can read" in _one_line_error(proc)
    proc = subprocess.run(
        [sys.executable.encode(), b"-m", b"bertpack.cli", b"predict", str(tiny_artifact).encode(), b"caf\xe9"],
        cwd=REPO,
        capture_output=True,
        timeout=300,
    )
    proc = subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode())
    assert "sentence 1 is not UTF-8 text" in _one_line_error(proc)
    err = _one_line_error(run_cli("predict", "bertpack-cola:latest", "The cat sat."))  # a tag, not a folder
    assert (
        "looks like a BentoML model tag, but this takes an artifact folder" in err and "--out bertpack-cola" not in err
    )
    if cuda_available():
        pytest.skip("a usable GPU is present: --device cuda is valid here")
    proc = run_cli("predict", str(tiny_artifact), "The cat sat.", "--device", "cuda", "--json")
    err = _one_line_error(proc)
    assert "device cuda was asked for" in err and "use device auto or cpu" in err
    assert proc.stdout == ""


def test_export_bad_config_unwritable_out_and_glue(tmp_path, tiny_run, synthetic_cola):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "model" / "config.json").write_text("[]")
    err = _one_line_error(
        run_cli("export", str(run), "--out", str(tmp_path / "a"), "--data", str(synthetic_cola), "--no-store")
    )
    assert "not a model config object" in err
    err = _one_line_error(
        run_cli("export", str(tiny_run), "--out", "/sys/bertpack-test/a", "--data", str(synthetic_cola), "--no-store")
    )
    assert "cannot write in /sys (" in err
    (tmp_path / "file").write_text("x")
    err = _one_line_error(
        run_cli(
            "export", str(tiny_run), "--out", str(tmp_path / "file" / "a"), "--data", str(synthetic_cola), "--no-store"
        )
    )
    assert "is a file, not a folder" in err
    err = _one_line_error(
        run_cli("export", str(tiny_run), "--out", str(tmp_path / "b"), "--data", "glue", "--no-store")
    )
    assert "could not load GLUE CoLA from the hub" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    # the checks create nothing: a refused export leaves no parent folders of --out behind
    err = _one_line_error(
        run_cli(
            "export",
            str(tiny_run),
            "--out",
            str(tmp_path / "new" / "deep" / "art"),
            "--data",
            str(tmp_path / "nocola"),
            "--no-store",
        )
    )
    assert "nocola" in err and not (tmp_path / "new").exists()


def test_bench_checks_the_artifact_and_options_before_measuring(artifact_copy, tmp_path):
    (tmp_path / "empty.onnx").write_bytes(b"")
    (tmp_path / "file").write_text("x")
    cases = [
        (["--e2e-sentences", "0"], "--e2e-sentences must be >= 1"),
        (["--e2e-sentences", "-5"], "--e2e-sentences must be >= 1"),
        (["--profile-batch-size", "0"], "--profile-batch-size must be >= 1"),
        (["--extra-model", f"empty={tmp_path / 'empty.onnx'}"], "is not an ONNX model"),
        (["--arch", "bert-base", "--export-dir", str(tmp_path / "file")], "--export-dir"),
        (["--data", "glue"], "could not load GLUE CoLA from the hub"),
    ]
    for args, needle in cases:
        err = _one_line_error(run_cli("bench", str(artifact_copy), "--out", str(tmp_path / "out"), *args))
        assert needle in err, (args, err)
    err = _one_line_error(run_cli("bench", str(artifact_copy), "--out", "/sys/bertpack-test/out"))
    assert "cannot write in /sys (" in err
    int8 = artifact_copy / "model_int8.onnx"
    int8.write_bytes(int8.read_bytes()[:1000])
    err = _one_line_error(run_cli("bench", str(artifact_copy), "--out", str(tmp_path / "out")))
    assert "model_int8.onnx is 1000 bytes" in err and "truncated" in err
    assert not (tmp_path / "out").exists()


def test_predict_json_truncated_only_when_over_the_limit(tiny_artifact):
    """A sentence of exactly max_length tokens is read whole: "truncated": false (as the service says)."""
    manifest = json.loads((tiny_artifact / "manifest.json").read_text())
    limit = manifest["max_length"]
    exact = " ".join(["word"] * (limit - 2))  # [CLS] + limit-2 words + [SEP]
    proc = run_cli("predict", str(tiny_artifact), exact, exact + " word", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [(r["tokens"], r["truncated"]) for r in rows] == [(limit, False), (limit, True)]


def test_version_names_bertpack_and_the_libraries_it_runs_on():
    """`bertpack --version` answers without importing torch (it reads installed metadata) and exits 0."""
    from importlib import metadata

    result = run_cli("--version")
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip()
    assert line.startswith(f"bertpack {metadata.version('bertpack')} (python ")
    assert (
        f"onnxruntime-gpu {metadata.version('onnxruntime-gpu')}" in line
        and f"torch {metadata.version('torch')}" in line
    )
