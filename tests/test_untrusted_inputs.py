"""Folders someone else made, read by bertpack: an artifact whose manifest names the PyTorch checkpoint that verify
--parity and bench load, a checkpoint to export, a run folder to --resume. Each holds only files bertpack writes
itself or safetensors weights; a pickle or a folder's own code must never be loaded (real processes, real files)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli
from tests.test_export_errors import _one_line_error
from tests.test_train import _one_line_error as _one_error_line
from tests.test_train_errors import _finished_run, _interrupted_error

PICKLE_REFUSED = "never a pickle such as pytorch_model.bin"


def _pickled_checkpoint(source: Path, dest: Path, decoy: bool) -> Path:
    """`source`'s checkpoint with its weights saved as a pickle (pytorch_model.bin, as transformers reads one);
    `decoy`: plus an unrelated .safetensors file, which a check for "any *.safetensors" took for the weights."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(source, dest)
    torch.save(load_file(dest / "model.safetensors"), dest / "pytorch_model.bin")
    (dest / "model.safetensors").unlink()
    if decoy:
        save_file({"note": torch.zeros(1)}, dest / "notes.safetensors")
    return dest


def _pointing_at(artifact: Path, copy: Path, checkpoint: Path) -> Path:
    """A copy of `artifact` whose manifest names `checkpoint` as its source (the manifest is not hashed: anyone
    who hands over an artifact writes it)."""
    shutil.copytree(artifact, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["source"]["checkpoint"] = str(checkpoint)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def test_a_manifest_naming_pickled_weights_is_refused(tiny_artifact, tiny_run, synthetic_cola, tmp_path):
    """verify --parity and bench loaded the checkpoint a manifest names with transformers' defaults: a folder of
    pytorch_model.bin was unpickled (torch.load) and scored as the reference, exit 0."""
    pickled = _pickled_checkpoint(tiny_run / "model", tmp_path / "pickled", decoy=False)
    artifact = _pointing_at(tiny_artifact, tmp_path / "artifact", pickled)
    err = _one_line_error(run_cli("verify", str(artifact), "--parity", "--data", str(synthetic_cola)))
    assert "manifest.json cannot be loaded" in err and PICKLE_REFUSED in err
    out = tmp_path / "bench"
    err = _one_line_error(
        run_cli(
            "bench",
            str(artifact),
            "--out",
            str(out),
            "--data",
            str(synthetic_cola),
            "--engines",
            "pytorch_fp32,onnx_fp32",
            "--batch-sizes",
            "1",
            "--sentences",
            "8",
            "--no-end-to-end",
            "--no-profile",
        )
    )
    assert PICKLE_REFUSED in err
    assert not out.exists()


def test_a_manifest_naming_a_folder_with_its_own_code_never_runs_it(tiny_artifact, tiny_run, synthetic_cola, tmp_path):
    """A config.json with an auto_map and no model_type: transformers asked on stdin whether to run the folder's
    Python, and a "y" (here piped in) ran it."""
    folder = tmp_path / "custom"
    shutil.copytree(tiny_run / "model", folder)
    config = json.loads((folder / "config.json").read_text())
    config.pop("model_type")
    config["auto_map"] = {"AutoConfig": "custom.Config", "AutoModelForSequenceClassification": "custom.Model"}
    (folder / "config.json").write_text(json.dumps(config))
    ran = tmp_path / "custom-code-ran"
    (folder / "custom.py").write_text(
        f"import pathlib\npathlib.Path({str(ran)!r}).write_text('ran')\n"
        "from transformers import BertConfig as Config, BertForSequenceClassification as Model\n"
    )
    artifact = _pointing_at(tiny_artifact, tmp_path / "artifact", folder)
    proc = subprocess.run(
        [sys.executable, "-m", "bertpack.cli", "verify", str(artifact), "--parity", "--data", str(synthetic_cola)],
        cwd=REPO,
        env={**os.environ, "HF_HOME": str(tmp_path / "hf")},
        input="y\n" * 20,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert not ran.exists(), "the checkpoint folder's own code ran"
    err = _one_line_error(proc)
    assert "not a BERT sequence classifier" in err


def test_export_and_train_refuse_pickled_weights_beside_another_safetensors_file(tiny_run, synthetic_cola, tmp_path):
    """Any *.safetensors file passed the check, and transformers then loaded pytorch_model.bin (a pickle)."""
    pickled = _pickled_checkpoint(tiny_run / "model", tmp_path / "pickled", decoy=True)
    out = tmp_path / "artifact"
    err = _one_line_error(
        run_cli(
            "export",
            str(pickled),
            "--out",
            str(out),
            "--data",
            str(synthetic_cola),
            "--no-store",
            "--int8",
            "none",
            "--limit",
            "24",
        )
    )
    assert PICKLE_REFUSED in err
    assert not out.exists()
    _one_error_line(
        run_cli("train", "--model", str(pickled), "--data", str(synthetic_cola), "--out", str(tmp_path / "run")),
        "has no model.safetensors weights; bertpack loads only safetensors",
    )
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def resumable(tiny_run, synthetic_cola, tmp_path_factory) -> tuple[Path, dict]:
    """A finished run with its checkpoints; each test copies it and marks the copy interrupted."""
    out = tmp_path_factory.mktemp("resumable") / "run"
    return out, _finished_run(tiny_run, synthetic_cola, out, "--keep-checkpoints")


def _interrupted_copy(resumable, dest: Path) -> Path:
    run, marker = resumable
    shutil.copytree(run, dest)
    (dest / "bertpack_run.json").write_text(json.dumps({**marker, "status": "training"}))
    return dest / "checkpoints" / "checkpoint-2"


def test_resume_never_unpickles_a_checkpoints_state(resumable, tmp_path):
    """The Trainer reads rng_state.pth with torch.load and no weights_only: under TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 (a
    setting some set for old checkpoints) a run folder from elsewhere ran its code on --resume."""
    import torch

    last = _interrupted_copy(resumable, tmp_path / "run")
    ran = tmp_path / "pickle-ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {ran}",))

    torch.save({"python": Payload()}, last / "rng_state.pth")
    proc = run_cli(
        "train",
        "--out",
        str(tmp_path / "run"),
        "--resume",
        "--max-steps",
        "4",
        env={"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"},
    )
    assert not ran.exists(), "--resume unpickled the checkpoint's rng_state.pth"
    _interrupted_error(proc, "objects other than tensors and plain data, which bertpack never unpickles", code=2)
    assert "note: TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD is ignored" in proc.stderr


def test_resume_refuses_pickled_weights_beside_another_safetensors_file(resumable, tmp_path):
    """A checkpoint whose weights are pytorch_model.bin (plus an unrelated .safetensors file) was resumed from the
    pickle."""
    last = _interrupted_copy(resumable, tmp_path / "run")
    _pickled_checkpoint(last, tmp_path / "pickled", decoy=True)
    shutil.rmtree(last)
    shutil.copytree(tmp_path / "pickled", last)
    proc = run_cli("train", "--out", str(tmp_path / "run"), "--resume", "--max-steps", "4")
    _one_error_line(proc, f"the last checkpoint {last} is damaged (no model.safetensors weights)")


@pytest.mark.parametrize(
    "text", ["[" * 100_000 + "]" * 100_000, "{}" + " " * (2 << 20)], ids=["nested too deeply", "over 1 MiB"]
)
def test_a_manifest_nested_too_deeply_or_too_large(tiny_artifact, tmp_path, text):
    """A deeply nested manifest.json was a RecursionError traceback; one of any size was read whole into memory."""
    artifact = tmp_path / "artifact"
    shutil.copytree(tiny_artifact, artifact)
    (artifact / "manifest.json").write_text(text)
    for args in (["predict", str(artifact), "The cat sat."], ["verify", str(artifact)]):
        err = _one_line_error(run_cli(*args))
        assert "manifest.json" in err and "re-run bertpack export" in err, err
        assert ("nested too deeply" if text.startswith("[") else "over the 1048576 bytes") in err, err
