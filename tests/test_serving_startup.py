"""`bentoml serve` with a bad setting or a bad artifact: a real `bentoml serve` process must stop on its own,
promptly, with a non-zero exit status and one readable line naming the problem and the fix; no traceback,
no worker restarted over and over. (The settings and the artifact are checked in `bentoml serve`'s own
process before any worker starts, so most of these cases take about a second.)"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

try:  # tests/ may or may not be a package
    from conftest import REPO
except ImportError:
    from tests.conftest import REPO

from serving.local_server import free_port

pytestmark = pytest.mark.slow
BENTOML = str(Path(sys.executable).parent / "bentoml")


def serve_expecting_failure(env: dict[str, str], home: Path, timeout: float = 60) -> tuple[int, str, float]:
    """Run `bentoml serve` until it exits by itself; (exit status, output, seconds). A server still running
    after `timeout` seconds (the old behaviour: a worker restarted forever) fails the test."""
    full_env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True", **env}
    start = time.monotonic()
    proc = subprocess.Popen(
        [BENTOML, "serve", "serving.service:Bertpack", "--host", "127.0.0.1", "--port", str(free_port())],
        cwd=REPO,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=30)
        pytest.fail(f"`bentoml serve` with {env} still running after {timeout} s; output tail:\n{out[-3000:]}")
    return proc.returncode, out, time.monotonic() - start


def assert_one_line_failure(rc: int, out: str, seconds: float, *fragments: str, limit: float = 20) -> None:
    assert rc != 0, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    errors = [line for line in out.splitlines() if "cannot serve:" in line]
    assert len(errors) == 1, out[-3000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    assert seconds < limit, f"took {seconds:.1f} s"


@pytest.mark.parametrize(
    "env,fragments",
    [
        ({"BERTPACK_DEVICE": "gpu"}, ["BERTPACK_DEVICE must be auto, cpu or cuda, not 'gpu'", "set one of those"]),
        ({"BERTPACK_THREADS": "two"}, ["BERTPACK_THREADS must be a positive integer, not 'two'", "set a whole number"]),
        ({"BERTPACK_THREADS": "0"}, ["BERTPACK_THREADS must be a positive integer, not '0'"]),
        ({"BERTPACK_MAX_LATENCY_MS": "fast"}, ["BERTPACK_MAX_LATENCY_MS must be a positive integer, not 'fast'"]),
        ({"BERTPACK_ACCESS_LOG": "maybe"}, ["BERTPACK_ACCESS_LOG must be 1 or 0, not 'maybe'"]),
        ({"BERTPACK_WORKERS": "many"}, ["BERTPACK_WORKERS must be a positive integer, not 'many'"]),
        ({"BERTPACK_MODEL": "bertpack-cola:nosuchversion"}, ["not in the BentoML model store", "bertpack export"]),
        ({"BERTPACK_MODEL": "/nope/artifact"}, ["artifact folder '/nope/artifact' does not exist", "check the path"]),
        ({"BERTPACK_MODEL": "./artifacts/typo"}, ["artifact folder './artifacts/typo' does not exist"]),
    ],
    ids=[
        "device-gpu",
        "threads-two",
        "threads-zero",
        "latency-word",
        "access-log-word",
        "workers-word",
        "unknown-tag",
        "absolute-path",
        "relative-path",
    ],
)
def test_bad_setting_stops_serve_with_one_line(tmp_path, env, fragments):
    rc, out, seconds = serve_expecting_failure(env, tmp_path / "empty-home")
    assert_one_line_failure(rc, out, seconds, *fragments)


def _damage(art: Path, how: str) -> None:
    manifest = json.loads((art / "manifest.json").read_text())
    model = art / manifest["variants"][manifest["serving_default"]["cpu"]]["file"]
    if how == "truncated model":
        model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    elif how == "no manifest":
        (art / "manifest.json").unlink()
    elif how == "manifest not JSON":
        (art / "manifest.json").write_text('{"format": "bertpack-artifact/1", ')
    elif how == "tokenizer that does not parse":  # its hash rewritten to match: only loading it can tell
        broken = b"{broken"
        (art / "tokenizer.json").write_bytes(broken)
        manifest["files"]["tokenizer.json"] = {"sha256": hashlib.sha256(broken).hexdigest(), "bytes": len(broken)}
        (art / "manifest.json").write_text(json.dumps(manifest))
    elif how == "a file, not a folder":
        shutil.rmtree(art)
        art.write_text("not an artifact")


@pytest.mark.parametrize(
    "how,fragments",
    [
        ("tokenizer that does not parse", ["tokenizer.json is not a tokenizer", "re-run bertpack export"]),
        ("truncated model", ["truncated or replaced", "re-run bertpack export"]),
        ("no manifest", ["has no manifest.json", "bertpack export"]),
        ("manifest not JSON", ["is not valid JSON", "re-run bertpack export"]),
        ("a file, not a folder", ["is a file, not an artifact folder"]),
    ],
)
def test_bad_artifact_stops_serve_with_one_line(tiny_artifact, tmp_path, how, fragments):
    art = tmp_path / "art"
    shutil.copytree(tiny_artifact, art)
    _damage(art, how)
    rc, out, seconds = serve_expecting_failure({"BERTPACK_MODEL": str(art)}, tmp_path / "empty-home")
    assert_one_line_failure(rc, out, seconds, *fragments)


def test_unknown_variant_stops_serve(tiny_artifact, tmp_path):
    rc, out, seconds = serve_expecting_failure(
        {"BERTPACK_MODEL": str(tiny_artifact), "BERTPACK_VARIANT": "int4"}, tmp_path / "empty-home"
    )
    assert_one_line_failure(
        rc, out, seconds, "BERTPACK_VARIANT='int4' is not in", "optimized", "unset it for the default"
    )


def test_variant_left_out_of_the_store_stops_serve_naming_the_fix(tiny_artifact, tmp_path):
    """The model store's copy (what a Bento carries) leaves out the fp32 reference graph; BERTPACK_VARIANT=fp32 against
    it stops `bentoml serve` with one line that says so and names both fixes (optimized, or the export's folder)."""
    home = tmp_path / "home"
    code = (
        "import json, sys; from export.store import register; print(register(sys.argv[1], "
        "json.load(open(sys.argv[2]))))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tiny_artifact), str(tiny_artifact / "manifest.json")],
        cwd=REPO,
        env={**os.environ, "BENTOML_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    tag = proc.stdout.strip().splitlines()[-1]
    assert not (home / "models" / "bertpack-cola" / tag.split(":")[1] / "model.onnx").exists()
    rc, out, seconds = serve_expecting_failure({"BERTPACK_VARIANT": "fp32"}, home)
    assert_one_line_failure(
        rc,
        out,
        seconds,
        f"BERTPACK_VARIANT='fp32' (model.onnx, the export's reference graph) was left out of {tag}",
        "set BERTPACK_VARIANT=optimized",
        f"BERTPACK_MODEL={tiny_artifact.resolve()}",
    )


def test_model_that_onnxruntime_refuses_stops_serve(tiny_artifact, tmp_path):
    """A model file whose hash matches its manifest but that ONNX Runtime cannot load passes the checks before
    serving and fails in the worker: the worker logs one line and stops the whole server (exit status 1)."""
    art = tmp_path / "art"
    shutil.copytree(tiny_artifact, art)
    manifest = json.loads((art / "manifest.json").read_text())
    name = manifest["variants"][manifest["serving_default"]["cpu"]]["file"]
    garbage = b"this is not an ONNX model" * 100
    (art / name).write_bytes(garbage)
    manifest["files"][name] = {
        **manifest["files"][name],
        "sha256": hashlib.sha256(garbage).hexdigest(),
        "bytes": len(garbage),
    }
    (art / "manifest.json").write_text(json.dumps(manifest))
    rc, out, seconds = serve_expecting_failure({"BERTPACK_MODEL": str(art)}, tmp_path / "empty-home")
    assert_one_line_failure(rc, out, seconds, "ONNX Runtime cannot load", name, limit=45)


def test_model_that_fails_on_its_first_run_stops_serve(tiny_artifact, tmp_path):
    """A model that ONNX Runtime loads but cannot run fails the worker's warm-up: one line, the server stops."""
    from tests.conftest import model_that_fails_when_run

    art = tmp_path / "art"
    shutil.copytree(tiny_artifact, art)
    manifest = json.loads((art / "manifest.json").read_text())
    name = manifest["variants"][manifest["serving_default"]["cpu"]]["file"]
    model = model_that_fails_when_run()
    (art / name).write_bytes(model)
    manifest["files"][name] = {
        **manifest["files"][name],
        "sha256": hashlib.sha256(model).hexdigest(),
        "bytes": len(model),
    }
    (art / "manifest.json").write_text(json.dumps(manifest))
    rc, out, seconds = serve_expecting_failure({"BERTPACK_MODEL": str(art)}, tmp_path / "empty-home")
    assert_one_line_failure(
        rc, out, seconds, "loads but fails on its first run", name, "re-run bertpack export", limit=45
    )
