"""Every bad input of `bertpack export` / `predict` / `verify`: one `error:` line, non-zero exit,
no traceback, nothing half-written (real processes)."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.conftest import run_cli


def _one_line_error(proc, code: int = 2) -> str:
    assert proc.returncode == code, proc.stdout[-2000:] + proc.stderr[-2000:]
    err = proc.stderr.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_run_dir_missing(tmp_path, synthetic_cola):
    err = _one_line_error(
        run_cli(
            "export", str(tmp_path / "nope"), "--out", str(tmp_path / "a"), "--data", str(synthetic_cola), "--no-store"
        )
    )
    assert "does not exist" in err
    assert not (tmp_path / "a").exists()


def test_run_dir_without_checkpoint(tmp_path, synthetic_cola):
    run = tmp_path / "run"
    run.mkdir()
    (run / "bertpack_run.json").write_text(json.dumps({"kind": "bertpack-run", "status": "training"}))
    err = _one_line_error(
        run_cli("export", str(run), "--out", str(tmp_path / "a"), "--data", str(synthetic_cola), "--no-store")
    )
    assert "holds no checkpoint" in err and "status 'training'" in err


def test_not_a_sequence_classifier(tmp_path, tiny_run, synthetic_cola):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    config = json.loads((run / "model" / "config.json").read_text())
    config["architectures"] = ["BertForMaskedLM"]
    (run / "model" / "config.json").write_text(json.dumps(config))
    err = _one_line_error(
        run_cli("export", str(run), "--out", str(tmp_path / "a"), "--data", str(synthetic_cola), "--no-store")
    )
    assert "not a BERT sequence classifier" in err


def test_output_dir_holding_other_files_or_another_export(tmp_path, tiny_run, synthetic_cola):
    out = tmp_path / "a"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    err = _one_line_error(
        run_cli("export", str(tiny_run), "--out", str(out), "--data", str(synthetic_cola), "--no-store")
    )
    assert "not empty" in err and "--overwrite" in err
    (out / "notes.txt").unlink()
    (out / "manifest.json").write_text(
        json.dumps({"format": "bertpack-artifact/1", "source": {"checkpoint": "/elsewhere/model"}})
    )
    err = _one_line_error(
        run_cli("export", str(tiny_run), "--out", str(out), "--data", str(synthetic_cola), "--no-store")
    )
    assert "holds a different export" in err and "/elsewhere/model" in err
    assert json.loads((out / "manifest.json").read_text())["source"]["checkpoint"] == "/elsewhere/model"  # untouched


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--int8", "int4"], "--int8 must be one of"),
        (["--tolerance", "fast"], "--tolerance"),
        (["--quant-target", "sse"], "--quant-target"),
        (["--calibration-samples", "0"], "--calibration-samples"),
        (["--int8", "none", "--require-int8"], "--require-int8 contradicts --int8 none"),
    ],
)
def test_bad_options(tmp_path, tiny_run, synthetic_cola, args, needle):
    err = _one_line_error(
        run_cli(
            "export", str(tiny_run), "--out", str(tmp_path / "a"), "--data", str(synthetic_cola), "--no-store", *args
        )
    )
    assert needle in err
    assert not (tmp_path / "a").exists()


def test_bad_data_dir(tmp_path, tiny_run):
    err = _one_line_error(
        run_cli("export", str(tiny_run), "--out", str(tmp_path / "a"), "--data", str(tmp_path), "--no-store")
    )
    assert "no CoLA files" in err


def test_damaged_checkpoint_leaves_nothing(tmp_path, tiny_run, synthetic_cola):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "model" / "model.safetensors").write_bytes(b"\x00" * 64)
    err = _one_line_error(
        run_cli("export", str(run), "--out", str(tmp_path / "out" / "a"), "--data", str(synthetic_cola), "--no-store")
    )
    assert "cannot load the checkpoint" in err
    # no artifact, no staging, work or lock file left behind, nor the parent folder the command made for them
    assert not (tmp_path / "out").exists(), list((tmp_path / "out").iterdir())


def test_predict_and_verify_on_non_artifacts(tmp_path):
    err = _one_line_error(run_cli("predict", str(tmp_path / "nope"), "A sentence."))
    assert "does not exist" in err
    err = _one_line_error(run_cli("verify", str(tmp_path)))
    assert "no manifest.json" in err
    (tmp_path / "manifest.json").write_text("{not json")
    err = _one_line_error(run_cli("verify", str(tmp_path)))
    assert "not valid JSON" in err


@pytest.mark.parametrize("content", [b"[1, 2]", b"\xff\xfe not utf-8", b'{"best": [0.5]}', b'"text"'])
def test_unreadable_run_records_do_not_stop_the_export(tmp_path, tiny_run, content):
    """metrics.json and bertpack_run.json only inform the export: a damaged one is read as absent (it was a
    traceback for a JSON list or bytes that are not UTF-8)."""
    from export.checkpoint import DEFAULT_MAX_LENGTH, locate_checkpoint

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "metrics.json").write_bytes(content)
    (run / "bertpack_run.json").write_bytes(content)
    ckpt = locate_checkpoint(run)
    assert ckpt.metrics == {} and ckpt.max_length == DEFAULT_MAX_LENGTH
    shutil.rmtree(run / "model")
    err = _one_line_error(run_cli("export", str(run), "--out", str(tmp_path / "a"), "--no-store"))
    assert "holds no checkpoint" in err and "status" not in err


def test_out_that_holds_the_checkpoint_is_refused(tmp_path, tiny_run, synthetic_cola):
    """--out the run folder, or a folder above it, would be replaced whole (with --overwrite): the source would be
    gone."""
    run = tmp_path / "nest" / "run"
    shutil.copytree(tiny_run, run)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    for out in (run, run.parent, run / "model"):
        err = _one_line_error(
            run_cli("export", str(run), "--out", str(out), "--overwrite", "--data", str(synthetic_cola), "--no-store")
        )
        assert "holds the checkpoint being exported" in err and "choose another --out" in err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_terminated_export_leaves_nothing(tmp_path, tiny_run, synthetic_cola):
    """SIGTERM (timeout, docker stop, Kubernetes) cleans up as Ctrl-C does: exit 143, one line, no hidden
    staging or work folder beside --out, and the artifact that was there before is untouched."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import REPO

    out = tmp_path / "art"
    out.mkdir()
    (out / "keep.txt").write_text("the previous artifact")
    (out / "manifest.json").write_text(json.dumps({"source": {"checkpoint": str((tiny_run / "model").resolve())}}))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bertpack.cli",
            "export",
            str(tiny_run),
            "--out",
            str(out),
            "--data",
            str(synthetic_cola),
            "--no-store",
        ],
        cwd=REPO,
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and not list(tmp_path.glob(".art.*.partial")):
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    time.sleep(1.0)  # into the export
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "Traceback" not in stderr, stderr[-2000:]
    assert stderr.strip().splitlines()[-1].startswith("terminated (SIGTERM)"), stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt", "manifest.json"]


def test_the_model_folder_of_a_run_exports_as_the_run_does(tiny_run, tmp_path):
    """RUN/model given instead of RUN: the trained length and metrics still come from the run's records beside it
    (not the 128-token default, which would let the service take inputs the model was never checked on)."""
    from export.checkpoint import locate_checkpoint

    from export.checkpoint import run_folder_of

    assert (
        run_folder_of(tiny_run / "model") == tiny_run
    )  # also names the default --out: artifacts/<run>, not artifacts/model
    assert run_folder_of(tiny_run) == tiny_run
    lone = tmp_path / "model"  # a checkpoint folder named model, not inside a run: itself
    shutil.copytree(tiny_run / "model", lone)
    assert run_folder_of(lone) == lone
    whole, model_only = locate_checkpoint(tiny_run), locate_checkpoint(tiny_run / "model")
    assert (model_only.max_length, model_only.metrics, model_only.run_dir) == (
        whole.max_length,
        whole.metrics,
        whole.run_dir,
    )
    assert whole.max_length == 64 and whole.metrics["checkpoint"] == "checkpoint-1"


def test_limit_scores_sentences_spread_over_both_domains(cola_dir):
    """`export --limit N` is a quick check of the whole split: it takes N sentences spread over CoLA's validation
    (in-domain dev, then out-of-domain dev), in order, not its first N (all in-domain)."""
    from bertpack.data import validation_sentences
    from export.pipeline import _load_eval

    sentences, _, domains = validation_sentences(cola_dir)
    quick = _load_eval(cola_dir, 8)
    assert len(quick.sentences) == 8 and set(quick.sentences) <= set(sentences)
    assert quick.sentences[0] == sentences[0] and quick.sentences[-1] != sentences[7]  # not the first 8
    assert set(domains) == {"in", "out"}
    assert (
        abs(quick.domains.count("in") - 8 * domains.count("in") / len(domains)) <= 1
    )  # both domains, in their proportions
    assert quick.domains == sorted(quick.domains)  # in the split's order: in-domain first
    assert _load_eval(cola_dir, len(sentences) + 5).sentences == sentences  # over the split's size: all of it
