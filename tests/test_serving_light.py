"""Serving pieces that need no server: import weight, `bertpack doctor`, configuration errors, and
the GPU path where a GPU exists (skipped here otherwise)."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys

import numpy as np
import pytest

try:  # tests/ may or may not be a package
    from conftest import REPO, make_tiny_run, run_cli
except ImportError:
    from tests.conftest import REPO, make_tiny_run, run_cli


HEAVY = (
    "torch",
    "transformers",
    "optimum",
    "datasets",
    "sklearn",
    "accelerate",
    "onnx",
)  # the export's; never the Bento's


def test_service_import_loads_neither_torch_nor_transformers():
    code = (
        "import sys, json\nimport serving.service, serving.engine, serving.doctor\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


def test_a_started_service_holds_none_of_the_exports_libraries(tiny_artifact):
    """What a worker runs after the import (the checks before serving, the engine's start, a classification) imports
    inside functions too: none of it may pull in torch, transformers or the export's other libraries."""
    code = (
        "import os, sys, json; os.environ['BERTPACK_MODEL'] = sys.argv[1]\n"
        "from serving.service import Bertpack\nfrom serving.source import preflight\n"
        "from serving.schema import ClassifyRequest\n"
        "preflight(); svc = Bertpack.inner(); svc.info(); svc.classify(svc.tokenize(ClassifyRequest(sentences=['The "
        "cat sat.'])))\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tiny_artifact)], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


def test_doctor_reports_providers_cpu_threads_gpus(tiny_artifact):
    proc = run_cli("doctor", "--json", env={"BERTPACK_MODEL": str(tiny_artifact)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    rep = json.loads(proc.stdout)
    probes = {p["provider"]: p for p in rep["onnxruntime"]["providers"]}
    assert probes["CPUExecutionProvider"]["works"] is True
    assert set(probes) == set(rep["onnxruntime"]["available_providers"])
    flags = open("/proc/cpuinfo").read()
    assert rep["cpu"]["flags"]["avx2"] == (" avx2" in flags)
    assert rep["threads"]["logical_cpus"] >= 1 and rep["threads"]["engine_intra_op_threads"] >= 1
    assert isinstance(rep["gpu"]["present"], bool)
    assert rep["http"] == {
        "uvloop": True,
        "httptools": True,
        "loop": "uvloop",
        "http": "httptools",
    }  # project dependencies
    if not rep["gpu"]["present"]:
        assert probes.get("CUDAExecutionProvider", {"works": False})["works"] is False
        assert "no NVIDIA device" in rep["gpu"]["cuda_problem"]
    manifest = json.loads((tiny_artifact / "manifest.json").read_text())
    device = "cuda" if rep["gpu"]["cuda_problem"] is None else "cpu"
    assert rep["serve_settings"]["model"] == {
        "checked": True,
        "tag": f"bertpack-cola:{manifest['version']}",
        "origin": "folder",
        "path": str(tiny_artifact.resolve()),
        "device": device,
        "variant": manifest["serving_default"][device],
        "provider": "CUDAExecutionProvider" if device == "cuda" else "CPUExecutionProvider",
        "parity_passed": True,
        "variant_made_for": None,
        "int8_kernels": None,
    }  # exported and checked on one CPU
    text = run_cli("doctor", env={"BERTPACK_MODEL": str(tiny_artifact)})
    assert text.returncode == 0 and "CPUExecutionProvider" in text.stdout and "threads:" in text.stdout
    assert f"serve model: bertpack-cola:{manifest['version']} (folder: " in text.stdout
    assert "http server: uvicorn on uvloop + httptools" in text.stdout


def test_doctor_probe_model_runs():
    from serving.doctor import probe_provider

    assert probe_provider("CPUExecutionProvider")["works"] is True


def test_serve_config_from_env():
    from bertpack.errors import BertpackError
    from serving.source import ServeConfig

    cfg = ServeConfig.from_env({"BERTPACK_MODEL": "/x", "BERTPACK_THREADS": "3", "BERTPACK_CUDA_GRAPHS": "0"})
    assert (cfg.model, cfg.threads, cfg.cuda_graphs, cfg.device) == ("/x", 3, False, "auto")
    assert ServeConfig.from_env({}).model == "bertpack-cola:latest"
    with pytest.raises(BertpackError, match="BERTPACK_DEVICE"):
        ServeConfig.from_env({"BERTPACK_DEVICE": "tpu"})
    with pytest.raises(BertpackError, match="BERTPACK_THREADS"):
        ServeConfig.from_env({"BERTPACK_THREADS": "-1"})
    # on/off settings take the usual spellings, and refuse anything else rather than guess
    assert ServeConfig.from_env({"BERTPACK_ACCESS_LOG": "yes", "BERTPACK_CUDA_GRAPHS": "Off"}).access_log is True
    assert ServeConfig.from_env({"BERTPACK_ACCESS_LOG": "false"}).access_log is False
    assert ServeConfig.from_env({}).cuda_graphs is True and ServeConfig.from_env({}).access_log is True
    for name in ("BERTPACK_ACCESS_LOG", "BERTPACK_CUDA_GRAPHS"):
        with pytest.raises(BertpackError, match=f"{name} must be 1 or 0, not 'maybe'; set 1 \\(on\\) or 0 \\(off\\)"):
            ServeConfig.from_env({name: "maybe"})
    with pytest.raises(BertpackError, match="such as 10000"):
        ServeConfig.from_env({"BERTPACK_MAX_LATENCY_MS": "-1"})
    # values as compose files and shells write them: spaces around, upper case, empty meaning unset
    cfg = ServeConfig.from_env(
        {
            "BERTPACK_DEVICE": " CPU ",
            "BERTPACK_THREADS": " 2 ",
            "BERTPACK_MODEL": "bertpack-cola:latest ",
            "BERTPACK_ENGINE_BATCH": "",
            "BERTPACK_VARIANT": " int8 ",
        }
    )
    assert (cfg.device, cfg.threads, cfg.model, cfg.engine_batch, cfg.variant) == (
        "cpu",
        2,
        "bertpack-cola:latest",
        16,
        "int8",
    )
    assert ServeConfig.from_env({"BERTPACK_DEVICE": ""}).device == "auto"
    assert (
        ServeConfig.from_env({"BERTPACK_MODEL": " ", "BERTPACK_VARIANT": ""}).model,
        ServeConfig.from_env({"BERTPACK_VARIANT": ""}).variant,
    ) == ("bertpack-cola:latest", None)
    assert (
        ServeConfig.from_env({}, default_model="bertpack-cola:v1").model == "bertpack-cola:v1"
    )  # a Bento's own version
    with pytest.raises(BertpackError, match="BERTPACK_MAX_LATENCY_MS=30000 is not below the 30 s request timeout"):
        ServeConfig.from_env(
            {"BERTPACK_MAX_LATENCY_MS": "30000"}
        )  # 504 would always come first: the bound would mean nothing


def test_workers_threads_batching_and_tracing_settings():
    """BERTPACK_WORKERS (default from the cores and the device), threads per worker (the physical cores shared among
    the workers, unless BERTPACK_THREADS), BERTPACK_MAX_BATCH_SIZE and BERTPACK_TRACING reach the service's
    decorator."""
    from bertpack.errors import BertpackError
    from serving.engine import physical_cores
    from serving.service import Bertpack, SETTINGS
    from serving.source import ServeConfig, default_workers

    assert [default_workers("cpu", cores=c, gpu=False) for c in (1, 2, 4, 8, 16, 64)] == [1, 1, 1, 2, 4, 16]
    assert [default_workers("auto", cores=c, gpu=True) for c in (2, 8, 16, 64)] == [1, 2, 4, 4]
    assert default_workers("cpu", cores=64, gpu=True) == 16  # BERTPACK_DEVICE=cpu on a GPU host: the CPU rule
    two = ServeConfig.from_env({"BERTPACK_WORKERS": "2", "BERTPACK_MAX_BATCH_SIZE": "16", "BERTPACK_TRACING": "1"})
    assert (two.workers, two.max_batch_size, two.tracing) == (2, 16, True)
    assert two.threads_per_worker() == max(1, physical_cores() // 2)
    assert ServeConfig.from_env({"BERTPACK_WORKERS": "2", "BERTPACK_THREADS": "3"}).threads_per_worker() == 3
    assert ServeConfig.from_env({}).workers == default_workers("auto") and ServeConfig.from_env({}).tracing is False
    for name in ("BERTPACK_WORKERS", "BERTPACK_MAX_BATCH_SIZE"):
        with pytest.raises(BertpackError, match=f"{name} must be a positive integer, not '0'"):
            ServeConfig.from_env({name: "0"})
    config = Bertpack.config
    assert config["workers"] == SETTINGS.workers
    assert Bertpack.apis["classify"].max_batch_size == SETTINGS.max_batch_size
    assert config["tracing"]["excluded_urls"] == ["/classify"]  # no spans unless BERTPACK_TRACING=1


def test_missing_model_tag_is_a_clear_error(tmp_path):
    code = (
        "import sys\nfrom bertpack.errors import BertpackError\nfrom serving.source import resolve_model\n"
        "try:\n    resolve_model('bertpack-cola:latest')\nexcept BertpackError as e:\n    print(e); sys.exit(3)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**__import__("os").environ, "BENTOML_HOME": str(tmp_path)},
    )
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "not in the BentoML model store" in proc.stdout and "bertpack export" in proc.stdout
    assert "nor a folder" not in proc.stdout  # a tag with a version is no folder name
    # a bare name may have meant a folder: the message says where it looked and how to write a folder
    bare = subprocess.run(
        [sys.executable, "-c", code.replace("bertpack-cola:latest", "myart")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**__import__("os").environ, "BENTOML_HOME": str(tmp_path / "home"), "PYTHONPATH": str(REPO)},
    )
    assert bare.returncode == 3, bare.stderr[-2000:]
    assert f"nor a folder 'myart' in {tmp_path} (write a folder's path as ./myart)" in bare.stdout, bare.stdout


@pytest.fixture(scope="module")
def cuda_artifact(synthetic_cola, tmp_path_factory):
    from serving.cuda import cuda_available

    if not cuda_available():
        pytest.skip(
            "no NVIDIA GPU with the CUDA provider on this host: the fp16/CUDA path and CUDA graphs are untested here"
        )
    root = tmp_path_factory.mktemp("cuda")
    run = make_tiny_run(
        root / "run", distinct=True
    )  # a stale answer must differ from the right one by more than the tolerance
    out = root / "artifact"
    proc = run_cli("export", str(run), "--out", str(out), "--data", str(synthetic_cola), "--no-store", "--int8", "none")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


@pytest.mark.parametrize("graphs", [False, True])
def test_cuda_fp16_matches_cpu(cuda_artifact, graphs):
    from serving.engine import OnnxClassifier

    sentences = [
        "The cat sat on the mat.",
        "Mat the on sat cat the.",
        "It rained all day long in the city.",
        "John seems that Mary left.",
        "Who did you see?",
        "Books were read by the students yesterday.",
        "She likes.",
    ]
    cpu = OnnxClassifier(cuda_artifact, variant="optimized", device="cpu").logits(sentences)
    closest = min(abs(cpu[i] - cpu[j]).max() for i in range(len(sentences)) for j in range(i))
    assert closest > 0.1, f"the test model answers two sentences within {closest:.4f}: it cannot tell a stale input"
    gpu = OnnxClassifier(cuda_artifact, device="cuda", cuda_graph=graphs)
    assert gpu.provider == "CUDAExecutionProvider" and gpu.variant == "fp16"
    # Different sentences on one shape in turn: a graph replays on its bound device tensors, so an input
    # copy skipped when it should have happened answers for the previous batch.
    for start, stop in [(0, 3), (3, 6), (0, 3), (6, 7), (1, 4), (0, 7), (0, 7)]:
        got = gpu.logits(sentences[start:stop], batch_size=4)
        assert abs(got - cpu[start:stop]).max() < 2e-2, (start, stop)
    assert (gpu.graphs is not None) == graphs
    if graphs:
        assert gpu.graphs.slots, "no CUDA graph was captured"


def test_cuda_graph_shapes_are_bounded():
    """Which batch shapes get a CUDA graph (pure bookkeeping; the capture itself needs a GPU): rows up to the
    largest graph batch, and at most MAX_GRAPHS shapes; anything else takes plain IO binding."""
    from serving.cuda import CudaGraphs

    graphs = CudaGraphs(session=None, input_names=["input_ids"], output_name="logits", n_labels=2, pad_id=0)
    assert graphs.fits(1, 16) and graphs.fits(64, 128) and not graphs.fits(65, 16)
    graphs.slots = {(1, n): None for n in range(graphs.MAX_GRAPHS)}
    assert graphs.fits(1, 0) and not graphs.fits(1, 10_000)
    with pytest.raises(RuntimeError, match="no CUDA graph"):
        graphs.run({"input_ids": np.zeros((65, 16), dtype=np.int64)})


def test_cuda_graph_bookkeeping_on_cpu_buffers(tiny_artifact):
    """The graph engine's own logic (a bound tensor per shape, filler rows, copies skipped when the device
    already holds the same values) driven through a CPU session and CPU tensors, as the GPU test cannot run
    here: batch after batch on one shape, the logits must equal the plain session's, so a skipped copy that
    should have happened shows up as a stale input."""
    from serving.engine import OnnxClassifier
    from serving.cuda import CudaGraphs

    clf = OnnxClassifier(tiny_artifact, variant="optimized", device="cpu", buckets=(16, 32))
    graphs = CudaGraphs(clf.session, clf.input_names, clf.output_name, len(clf.labels), clf.pad_id, device="cpu")
    ids = clf.encode(
        [
            "The cat sat on the mat.",
            "Mat the on sat cat the.",
            "It rained all day long in the city.",
            "John seems that Mary left.",
            "Who did you see?",
            "Books were read by the students yesterday.",
            "She likes.",
        ]
    )
    for chunk in (ids[0:3], ids[3:6], ids[0:3], ids[6:7], ids[1:4]):
        batch = clf.pad(chunk)
        np.testing.assert_allclose(graphs.run(batch.inputs), clf.run(batch), atol=1e-6)
    assert set(graphs.slots) == {(4, 16), (1, 16)}
    slot = graphs.slots[(4, 16)]
    zeros = slot.on_device["token_type_ids"]
    graphs.run(clf.pad(ids[3:6]).inputs)
    assert slot.on_device["token_type_ids"] is zeros  # all zeros every time: copied once for this shape


@pytest.mark.parametrize(
    "spec,wanted",
    [
        ("/nope/artifact", "artifact folder '/nope/artifact' does not exist"),
        ("./artifacts/typo", "artifact folder './artifacts/typo' does not exist"),
        ("~/no-such-bertpack-artifact", "does not exist"),
    ],
)
def test_model_path_that_does_not_exist_is_named(spec, wanted):
    """A BERTPACK_MODEL that looks like a path is a folder that must exist, not a (bad) BentoML tag."""
    from bertpack.errors import BertpackError
    from serving.source import resolve_model

    with pytest.raises(BertpackError) as err:
        resolve_model(spec)
    assert wanted in str(err.value) and "bertpack export" in str(err.value) and "tag" in str(err.value)
    assert "not a valid BentoML tag" not in str(err.value)


def test_model_path_to_a_file_is_named(tmp_path):
    from bertpack.errors import BertpackError
    from serving.source import resolve_model

    (tmp_path / "model.onnx").write_bytes(b"x")
    with pytest.raises(BertpackError, match="is a file, not an artifact folder"):
        resolve_model(str(tmp_path / "model.onnx"))


def test_serve_config_errors_name_the_fix():
    from bertpack.errors import BertpackError
    from serving.source import ServeConfig

    for env, wanted in [
        ({"BERTPACK_THREADS": "two"}, "set a whole number"),
        ({"BERTPACK_THREADS": "\u0663"}, "positive integer"),
        ({"BERTPACK_DEVICE": "gpu"}, "set one of those"),
    ]:
        with pytest.raises(BertpackError, match=wanted):
            ServeConfig.from_env(env)


def test_doctor_flags_bad_serve_settings():
    """The settings the service refuses are problems for doctor too: reported, exit status 1, no traceback."""
    proc = run_cli("doctor", "--json", env={"BERTPACK_THREADS": "0", "BERTPACK_DEVICE": "tpu"})
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    problems = json.loads(proc.stdout)["serve_settings"]["problems"]
    assert any("BERTPACK_THREADS must be a positive integer, not '0'" in p for p in problems), problems
    assert any("BERTPACK_DEVICE must be auto, cpu or cuda, not 'tpu'" in p for p in problems), problems
    text = run_cli("doctor", env={"BERTPACK_THREADS": "abc"})
    assert text.returncode == 1 and "Traceback" not in text.stdout + text.stderr, text.stderr[-2000:]
    assert "PROBLEM: BERTPACK_THREADS must be a positive integer, not 'abc'" in text.stdout
    assert text.stderr.strip().count("\n") == 0 and "BERTPACK_THREADS" in text.stderr  # one line
    # doctor reads a setting as the service does (spaces, case), and its serving-device line follows BERTPACK_DEVICE
    cpu = run_cli("doctor", env={"BERTPACK_DEVICE": " CPU ", "BERTPACK_THREADS": " 7 "})
    assert "serving device: cpu (BERTPACK_DEVICE=cpu)" in cpu.stdout and "engine intra-op 7," in cpu.stdout, cpu.stdout[
        -2000:
    ]
    assert "BERTPACK_DEVICE must be" not in cpu.stdout and "BERTPACK_THREADS must be" not in cpu.stdout


def test_doctor_checks_the_model_as_serve_does(tiny_artifact, tmp_path):
    """No model in the store, a variant the artifact lacks, a damaged file: each stops `bentoml serve`
    (tests/test_serving_startup.py), so doctor reports it as a problem and exits 1."""
    empty = run_cli("doctor", env={"BENTOML_HOME": str(tmp_path / "empty-home")})
    assert empty.returncode == 1 and "Traceback" not in empty.stderr, empty.stderr[-2000:]
    assert "PROBLEM: model 'bertpack-cola:latest' is not in the BentoML model store" in empty.stdout
    assert empty.stderr.startswith("doctor: 1 problem would stop `bentoml serve`: model 'bertpack-cola:latest'")
    gpu_model = run_cli(
        "doctor", env={"BERTPACK_MODEL": str(tiny_artifact), "BERTPACK_VARIANT": "fp16", "BERTPACK_DEVICE": "cpu"}
    )
    assert gpu_model.returncode == 0, gpu_model.stderr[-2000:]  # served, as the service does, with its warning
    assert "WARNING: BERTPACK_VARIANT=fp16 was made for cuda but would run on cpu" in gpu_model.stdout
    own = run_cli(
        "doctor", env={"BERTPACK_MODEL": str(tiny_artifact), "BERTPACK_VARIANT": "optimized", "BERTPACK_DEVICE": "cpu"}
    )
    assert own.returncode == 0 and "was made for" not in own.stdout, own.stdout[-2000:]
    variant = run_cli("doctor", "--json", env={"BERTPACK_MODEL": str(tiny_artifact), "BERTPACK_VARIANT": "int4"})
    assert variant.returncode == 1
    assert any(
        "BERTPACK_VARIANT='int4' is not in" in p for p in json.loads(variant.stdout)["serve_settings"]["problems"]
    )
    art = tmp_path / "art"
    shutil.copytree(tiny_artifact, art)
    (art / "vocab.txt").write_text("changed")
    damaged = run_cli("doctor", env={"BERTPACK_MODEL": str(art)})
    assert damaged.returncode == 1 and "vocab.txt" in damaged.stderr, damaged.stderr[-2000:]


def _replace_listed_file(art, name: str, data: bytes) -> None:
    """Rewrite a file and its manifest entry: the hashes match, only loading it can tell."""
    import hashlib

    (art / name).write_bytes(data)
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (art / "manifest.json").write_text(json.dumps(manifest))


def test_doctor_loads_the_model_and_tokenizer_as_the_worker_would(tiny_artifact, tmp_path):
    """Files that match their manifest but that ONNX Runtime or `tokenizers` refuse, or a model that loads and
    fails on its first run, stop `bentoml serve` (tests/test_serving_startup.py), so doctor loads and runs both
    and reports the same line, exit status 1."""
    from tests.test_export_errors import _one_line_error

    manifest = json.loads((tiny_artifact / "manifest.json").read_text())
    model = manifest["variants"][manifest["serving_default"]["cpu"]]["file"]
    from tests.conftest import model_that_fails_when_run

    for case, name, data, wanted in [
        ("load", model, b"not an ONNX model" * 50, "ONNX Runtime cannot load"),
        ("run", model, model_that_fails_when_run(), "loads but fails on its first run on CPUExecutionProvider"),
        (
            "tokenizer",
            "tokenizer.json",
            b"{broken",
            "tokenizer.json is not a tokenizer the `tokenizers` library can load",
        ),
    ]:
        art = tmp_path / case
        shutil.copytree(tiny_artifact, art)
        _replace_listed_file(art, name, data)
        proc = run_cli("doctor", env={"BERTPACK_MODEL": str(art), "BERTPACK_DEVICE": "cpu"})
        assert proc.returncode == 1 and "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-2000:]
        assert any(line.startswith("  PROBLEM: ") and wanted in line for line in proc.stdout.splitlines()), proc.stdout[
            -2000:
        ]
        if name == "tokenizer.json":  # the artifact commands name it too: one line, exit 2
            for args in (["predict", str(art), "The cat sat."], ["verify", str(art)]):
                assert wanted in _one_line_error(run_cli(*args)), args


def test_failed_parity_is_flagged_by_verify_and_doctor(tiny_run, synthetic_cola, tmp_path):
    """An export that broke its tolerance is still written (marked failed, not registered): `verify` exits 3
    naming the failure unless --parity re-checks it and it passes, and doctor warns (the service serves it,
    with a warning in its log)."""
    art = tmp_path / "failed"
    proc = run_cli(
        "export",
        str(tiny_run),
        "--out",
        str(art),
        "--data",
        str(synthetic_cola),
        "--int8",
        "none",
        "--no-store",
        "--tolerance",
        "logit=1e-12",
        "--no-flip-check",
    )
    assert proc.returncode == 3, proc.stderr[-2000:]
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["status"] == "failed parity" and manifest["quantization_target"] is None  # --int8 none
    verify = run_cli("verify", str(art))
    err = verify.stderr.strip()
    assert verify.returncode == 3 and err.startswith("error: ") and len(err.splitlines()) == 1, verify.stderr[-2000:]
    assert "its files and models check out, but its export failed parity (fp32:" in err and "parity.md" in err
    assert "ok  tokenizer.json loads" in verify.stdout
    recheck = run_cli("verify", str(art), "--parity", "--data", str(synthetic_cola))
    assert recheck.returncode == 0 and "this re-check passes" in recheck.stderr, recheck.stderr[-2000:]
    from serving.cuda import cuda_available

    if not cuda_available():  # a failure recorded for fp16 (on a GPU host) cannot be cleared by a re-check without one
        manifest["parity"]["failures"] = ["fp16: agreement 90% < 98%"]
        manifest["parity"]["rows"] = {
            **manifest["parity"]["rows"],
            "fp32": {"status": "pass"},
            "fp16": {"status": "FAIL"},
        }
        (art / "manifest.json").write_text(json.dumps(manifest))
        gpu_fail = run_cli("verify", str(art), "--parity", "--data", str(synthetic_cola))
        assert gpu_fail.returncode == 3 and "this host cannot re-check fp16 (no GPU)" in gpu_fail.stderr, (
            gpu_fail.stderr[-2000:]
        )
    doctor = run_cli("doctor", env={"BERTPACK_MODEL": str(art), "BERTPACK_DEVICE": "cpu"})
    assert doctor.returncode == 0, doctor.stderr[-2000:]
    assert "WARNING: this export failed its parity check" in doctor.stdout


def test_error_lines_name_the_fix():
    """How the service words each 400 problem (serving.schema.error_body), from pydantic's error entries."""
    from serving.schema import error_body

    body = error_body(
        [
            {
                "type": "too_long",
                "loc": ("sentences",),
                "msg": "List should have at most 64 items after validation, not 65",
            },
            {"type": "extra_forbidden", "loc": ("sentense",), "msg": "Extra inputs are not permitted"},
        ]
    )
    assert body["errors"] == [
        "sentences: send 1 to 64 sentences per request (got 65); split the list over several requests",
        "sentense: unknown field; the valid fields are sentences, truncate (check the spelling)",
    ]
    assert body["error"] == "2 problems: " + " | ".join(body["errors"])
    odd = error_body([{"type": "something_new", "loc": ["sentences", 0], "msg": "Odd"}])
    assert odd["error"] == "sentences[0]: Odd; see GET /docs.json for the request schema"


def test_preflight_hashes_again_unless_the_files_are_unchanged(tiny_artifact, tmp_path):
    """The serve process hashes every file and hands its workers a fingerprint (size, mtime, inode): a worker
    skips the second pass only while the fingerprint matches; a file rewritten since is hashed and refused."""
    import os

    from bertpack.errors import BertpackError
    from serving.source import files_fingerprint, preflight

    art = tmp_path / "art"
    shutil.copytree(tiny_artifact, art)
    env = {"BERTPACK_MODEL": str(art)}
    _, source, manifest = preflight(env)
    fingerprint = files_fingerprint(source.path, manifest)
    vocab = art / "vocab.txt"
    before = vocab.stat()
    original = vocab.read_bytes()
    changed = original.replace(b"[UNK]", b"[UNX]")
    assert changed != original and len(changed) == len(original)
    vocab.write_bytes(changed)  # same size and inode, new mtime
    with pytest.raises(BertpackError, match="vocab.txt"):
        preflight(env, verified=fingerprint)
    # with the old mtime put back the fingerprint matches and the files are trusted without hashing:
    # proof that the worker's second pass is really skipped (and of what the fingerprint can miss)
    os.utime(vocab, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert files_fingerprint(source.path, manifest) == fingerprint
    preflight(env, verified=fingerprint)
    with pytest.raises(BertpackError, match="vocab.txt"):
        preflight(env)


def test_keep_within_cuts_before_the_final_sep():
    from serving.engine import keep_within

    assert keep_within([101, 5, 6, 7, 102], 4) == [101, 5, 6, 102]
    assert keep_within([101, 5, 102], 4) == [101, 5, 102]


# Text that tokenizers normalise, split or refuse: accents composed and combining, compatibility forms, CJK, control,
# zero-width and bidi characters, exotic spaces, emoji sequences, a BOM, words at and over WordPiece's 100 characters,
# special tokens typed as text, and lengths around the model's 64 tokens.
AWKWARD_TEXT = [
    "Café",
    "Cafe\u0301",
    "x\u0301\u0301",
    "\u0301",
    "\ufb01ne Ａｂｃ",
    "日本語の文 中文",
    "한국어",
    "a\x00b\x01c\x7f",
    "a\u200bb\u200e\u200f\u202ec\u2066",
    "a\u00a0b\u2003c\u3000d\u202fe\u2028f\u0085",
    "cat \U0001f642 \U0001f44d\U0001f3fd \U0001f468\u200d\U0001f469",
    "\ufeffThe cat",
    "a" * 100,
    "A\u00c9" * 60,
    "a" * 101 + " cat",
    " lead",
    "trail \t\n",
    "tab\tin\nside\r\nit",
    "[CLS] x [SEP] [UNK] [PAD]",
    "İstanbul straße ΣΑΣ",
    "\ue000 \U000e0001 \ufffd",
    *(("word " * n).strip() for n in (61, 62, 63, 64, 100)),
]


def test_serving_tokenizes_as_training_does(tiny_run, tiny_artifact):
    """The token ids predict and the service feed the model (tokenizers on the exported tokenizer.json, cut by
    keep_within) are the ids training and its evaluation fed it (transformers' AutoTokenizer with max_length
    truncation)."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from transformers import AutoTokenizer

    from serving.engine import OnnxClassifier

    trained = AutoTokenizer.from_pretrained(str(tiny_run / "model"), use_fast=True)
    engine = OnnxClassifier(tiny_artifact, variant="fp32", device="cpu")

    def same(sentences: list[str]) -> None:
        want = trained(sentences, truncation=True, max_length=engine.max_length)["input_ids"]
        assert engine.prepare(sentences).ids == want, sentences

    same(AWKWARD_TEXT)
    awkward = st.sampled_from(list("ab cé\u0301\u200b\u00a0\t\n日\U0001f642\x00\x1f\u2028\ufeff"))
    settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))(
        given(
            st.lists(
                st.text(st.characters(blacklist_categories=("Cs",)), max_size=80) | st.text(awkward, max_size=150),
                min_size=1,
                max_size=8,
            )
        )(same)
    )()


def _through_json_only(status: int, body: bytes, path: str = "/classify") -> tuple[int, dict]:
    """One request through the service's JsonOnly middleware in front of an app that answers `status` with `body`
    (BentoML's own answers for max_concurrency and the request timeout)."""
    import asyncio

    from serving.http_guard import JsonOnly
    from serving.service import MAX_CONCURRENCY, REQUEST_TIMEOUT_S, SETTINGS

    async def app(scope, receive, send):
        await send(
            {"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]}
        )
        await send({"type": "http.response.body", "body": body})

    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "headers": [(b"content-type", b"application/json")]}
    asyncio.run(JsonOnly(app, MAX_CONCURRENCY, REQUEST_TIMEOUT_S, SETTINGS.max_latency_ms)(scope, receive, send))
    _through_json_only.headers = dict(sent[0]["headers"])  # type: ignore[attr-defined]
    return sent[0]["status"], json.loads(sent[1]["body"])


def test_bentomls_429_and_504_name_the_fix():
    from serving.service import MAX_CONCURRENCY, REQUEST_TIMEOUT_S as TIMEOUT_S

    status, body = _through_json_only(429, b'{"error":"Too many requests"}')
    assert status == 429 and body["error"].startswith("too many requests in flight at once: retry after a moment")
    assert f"takes {MAX_CONCURRENCY} at a time" in body["error"]
    assert _through_json_only.headers[b"retry-after"] == b"1"  # type: ignore[attr-defined]
    status, body = _through_json_only(504, b'{"error":"Not able to process the request in 30 seconds"}')
    assert (
        status == 504
        and f"not answered within {TIMEOUT_S} s" in body["error"]
        and "send the whole body at once" in body["error"]
    )
    assert _through_json_only(200, b'{"ok": 1}') == (200, {"ok": 1})


def test_serve_config_reads_latency_and_engine_batch():
    """BERTPACK_MAX_LATENCY_MS and BERTPACK_ENGINE_BATCH are used, not only validated."""
    from serving.source import ServeConfig

    cfg = ServeConfig.from_env({"BERTPACK_MAX_LATENCY_MS": "250", "BERTPACK_ENGINE_BATCH": "8"})
    assert (cfg.max_latency_ms, cfg.engine_batch) == (250, 8)
    assert (ServeConfig.from_env({}).max_latency_ms, ServeConfig.from_env({}).engine_batch) == (10_000, 16)


@pytest.fixture
def service(tiny_artifact, tmp_path, monkeypatch):
    """The real service class, built in-process on the tiny artifact (as test_serves_an_artifact_folder_by_env does)."""
    monkeypatch.setenv("BERTPACK_MODEL", str(tiny_artifact))
    monkeypatch.setenv("BERTPACK_DEVICE", "cpu")
    monkeypatch.setenv("BERTPACK_ENGINE_BATCH", "4")
    monkeypatch.setenv("BERTPACK_VARIANT", "optimized")  # fp32: int8 rounds away the tiny model's small differences
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "empty-home"))
    from serving.service import Bertpack

    return Bertpack.inner()


def test_requests_are_tokenized_and_checked_before_they_join_a_batch(service):
    """What /classify's batch receives: a request's sentences as token ids within the limit, cut only with truncate; a
    sentence over the limit without truncate, or with no readable text, is one ValidationError naming each sentence
    (BentoML's 400) before any batch; the batch counts its sizes and answers in order."""
    from pydantic import ValidationError

    from serving.engine import keep_within
    from serving.schema import ClassifyRequest

    limit = service.engine.max_length
    long = " ".join(["word"] * (limit + 20))
    full = service.engine.tokenizer.encode(long).ids
    with pytest.raises(ValidationError) as refused:
        service.tokenize(ClassifyRequest(sentences=["The cat sat.", long, "\U0001f642"]))
    assert [(e["type"], e["loc"]) for e in refused.value.errors()] == [
        ("too_many_tokens", ("sentences", 1)),
        ("no_tokens", ("sentences", 2)),
    ]
    assert f"sentence has {len(full)} tokens, over the model's limit of {limit}" in refused.value.errors()[0]["msg"]
    cut = service.tokenize(ClassifyRequest(sentences=["The cat sat.", long], truncate=True))
    assert cut[1].ids == keep_within(full, limit) and cut[1].truncated and not cut[0].truncated
    before = service.info()["batching"]
    answers = service.classify(cut + cut[:1])
    assert [a.tokens for a in answers] == [len(cut[0].ids), limit, len(cut[0].ids)] and answers[1].truncated
    assert answers[0] == answers[2]
    raw = service.engine.logits_from_ids([keep_within(full, limit)], batch_size=1)
    assert answers[1].label == service.engine.labels[int(raw[0].argmax())]
    after = service.info()["batching"]
    assert after["sentences"] - before["sentences"] == 3 and after["sizes"]["3"] == before["sizes"].get("3", 0) + 1
    assert after["largest"] == max(int(k) for k in after["sizes"])


def test_info_reports_the_engine_batch_it_uses(service):
    """BERTPACK_ENGINE_BATCH=4 is the CPU engine's rows per ORT run (README, serve)."""
    assert service.engine.provider == "CPUExecutionProvider"
    assert service.config.engine_batch == 4 and service.info()["engine"]["engine_batch"] == 4


def test_server_errors_keep_their_traceback():
    """Client errors (4xx) and 503 become one WARNING line; a 500 stays an ERROR with its traceback."""
    from bentoml.exceptions import BadInput, InternalServerError

    from serving.service import ONE_LINE_ERRORS

    def record(exc):
        try:
            raise exc
        except Exception:  # noqa: BLE001
            return logging.LogRecord(
                "bentoml", logging.ERROR, __file__, 1, "%s %s", ("/classify", "POST"), sys.exc_info()
            )

    server = record(InternalServerError("engine exploded"))
    assert ONE_LINE_ERRORS.filter(server)
    assert server.levelno == logging.ERROR and server.exc_info is not None
    client = record(BadInput("bad"))
    assert ONE_LINE_ERRORS.filter(client)
    assert client.levelno == logging.WARNING and client.exc_info is None


def test_doctor_counts_avx_vnni_as_vnni(tmp_path):
    """Alder Lake and later: AVX-VNNI without AVX-512; doctor's int8 note must not say "without VNNI"."""
    from serving.doctor import cpu_info

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse4_2 avx2 fma avx_vnni\n")
    got = cpu_info(info)
    assert got["vnni"] is True and got["int8_note"].startswith("VNNI int8 dot products")


def test_doctor_reports_a_bad_setting_once():
    """A bad setting is one problem: the model is not checked (and the setting not re-reported) until the settings are
    fine."""
    proc = run_cli("doctor", "--json", env={"BERTPACK_THREADS": "0"})
    assert proc.returncode == 1, proc.stderr[-2000:]
    settings = json.loads(proc.stdout)["serve_settings"]
    assert len(settings["problems"]) == 1 and settings["model"] is None, settings


def test_a_gpu_whose_cuda_does_not_load_gets_the_cpu_model(tiny_artifact, monkeypatch):
    """A visible GPU with broken CUDA libraries: ONNX Runtime falls back to the CPU. The engine then serves the CPU
    default (not the fp16 GPU model on the CPU), padded as the CPU pads; with device cuda asked for, it is an error.
    (Here the GPU is declared visible and CUDA usable, and ONNX Runtime's CUDA provider then fails for real: on a
    host without a GPU for want of one, on a GPU host because it is asked for a device number that does not exist.)"""
    import serving.cuda as cuda
    from bertpack.errors import BertpackError
    from bertpack.manifest import read_manifest
    from serving.engine import OnnxClassifier

    monkeypatch.setattr(cuda, "cuda_available", lambda: True)
    monkeypatch.setattr(cuda, "gpu_present", lambda: True)
    monkeypatch.setattr(cuda, "cuda_problem", lambda: None)
    no_such_gpu = {"device_id": "4095"}
    manifest = read_manifest(tiny_artifact)
    clf = OnnxClassifier(tiny_artifact, device="auto", verify=False, cuda_options=no_such_gpu)
    assert clf.provider == "CPUExecutionProvider"
    assert clf.variant == manifest["serving_default"]["cpu"] != manifest["serving_default"]["cuda"]
    assert clf.buckets == ()  # the CPU's padding: each run to its own longest sentence
    assert clf.logits(["The cat sat."]).shape == (1, 2)
    with pytest.raises(BertpackError, match="device cuda was asked for, but ONNX Runtime could not use CUDA"):
        OnnxClassifier(tiny_artifact, device="cuda", verify=False, cuda_options=no_such_gpu)


def test_batches_take_rows_in_the_order_given(tiny_artifact):
    """The runs a list is cut into: by length by default, else in the order asked for (the flip check's shuffle)."""
    from serving.engine import OnnxClassifier

    clf = OnnxClassifier(tiny_artifact, variant="fp32", device="cpu", verify=False)
    ids = [[101, 5, 6, 7, 102], [101, 102], [101, 5, 6, 102], [101, 5, 102]]
    assert [rows for rows, _ in clf.batches(ids, 2, order=[3, 0, 2, 1])] == [[3, 0], [2, 1]]
    assert [rows for rows, _ in clf.batches(ids, 2)] == [[1, 3], [2, 0]]  # shortest first, so a run pads little
    assert [batch.lengths for _, batch in clf.batches(ids, 2)] == [[2, 3], [4, 5]]


XEON_AVX2 = "model name\t: Intel(R) Xeon(R) CPU E5-2680 v4 @ 2.40GHz\nflags\t\t: fpu sse4_2 avx avx2 fma bmi2\n"
XEON_VNNI = (
    "model name\t: Intel(R) Xeon(R) Platinum 8375C\nflags\t\t: fpu sse4_2 avx2 fma avx512f avx512bw avx512_vnni\n"
)
CORE_AVX_VNNI = "model name\t: 12th Gen Intel(R) Core(TM) i7-12700\nflags\t\t: fpu sse4_2 avx2 fma avx_vnni\n"


@pytest.mark.skipif(__import__("platform").machine().lower() not in ("x86_64", "amd64"), reason="x86 int8 kernels")
def test_int8_kernel_warning_names_a_cpu_that_can_saturate_what_the_export_measured_without(tiny_artifact, tmp_path):
    """u8s8 int8 quantized without reduce_range is exact on VNNI and saturates on AVX2/AVX-512 without it (ORT's
    quantization docs): a model checked on a VNNI CPU and served on one without must say so, and nothing else may."""
    from serving.engine import int8_kernel_warning, read_manifest

    manifest = read_manifest(tiny_artifact)
    manifest["cpu_flags"] = {"machine": "x86_64", "model": "AMD EPYC", "vnni": True}
    int8 = manifest["variants"]["int8"]
    cpus = {}
    for name, text in (("avx2", XEON_AVX2), ("vnni", XEON_VNNI), ("avx_vnni", CORE_AVX_VNNI)):
        cpus[name] = tmp_path / name
        cpus[name].write_text(text)

    def warning(cpu: str, **settings) -> str | None:
        int8["settings"] = {**int8["settings"], **settings}
        return int8_kernel_warning(manifest, "int8", tiny_artifact, cpus[cpu])

    why = warning("avx2", target="avx512_vnni", reduce_range=False)
    assert why and "E5-2680" in why and "no VNNI" in why and "AMD EPYC" in why
    assert f"bertpack verify --parity {tiny_artifact}" in why and "--quant-target avx2" in why
    assert warning("avx2", target="avx512", reduce_range=False)  # the avx512 preset's first try is u8s8 too
    assert warning("avx2", target="avx512_vnni", reduce_range=True) is None  # 7-bit weights cannot saturate
    assert warning("avx2", target="avx2", reduce_range=False) is None  # the avx2 preset's weights are u8
    assert warning("vnni", target="avx512_vnni", reduce_range=False) is None
    assert warning("avx_vnni", target="avx512_vnni", reduce_range=False) is None
    manifest["cpu_flags"] = {
        "machine": "x86_64",
        "model": "Intel Xeon E5",
        "vnni": False,
    }  # measured on saturating kernels too
    assert warning("avx2", target="avx512", reduce_range=False) is None
    del manifest["cpu_flags"]  # an export that did not record its CPU
    assert "another CPU" in warning("avx2", target="avx512_vnni", reduce_range=False)
    assert int8_kernel_warning(manifest, "optimized", tiny_artifact, cpus["avx2"]) is None  # fp32: no int8 kernels
