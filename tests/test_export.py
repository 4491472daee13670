"""`bertpack export` end to end on the tiny random BERT: the artifact contract, predict, verify,
the BentoML store, and the damaged-model / tolerance failure paths (real processes, real files)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from tests.conftest import REPO, glue_hub, run_cli

MODELS = ["model.onnx", "model_optimized.onnx", "model_fp16.onnx", "model_int8.onnx"]


@pytest.fixture(scope="module")
def exported(tiny_run, synthetic_cola, tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    home = root / "bentoml"
    out = root / "artifact"
    proc = run_cli(
        "export", str(tiny_run), "--out", str(out), "--data", str(synthetic_cola), env={"BENTOML_HOME": str(home)}
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {"out": out, "home": home, "proc": proc, "root": root}


def test_artifact_contract(exported):
    out = exported["out"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == "bertpack-artifact/1"
    assert manifest["labels"] == ["unacceptable", "acceptable"]
    assert manifest["max_length"] == 64 and manifest["pad_token_id"] == 0
    assert manifest["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert {"fp32", "optimized", "fp16", "int8"} <= set(manifest["variants"])
    for name, file in zip(("fp32", "optimized", "fp16", "int8"), MODELS):
        assert manifest["variants"][name]["file"] == file and (out / file).is_file()
    assert manifest["variants"]["int8"]["method"] in ("static", "dynamic")
    assert manifest["serving_default"] == {"cpu": "int8", "cuda": "fp16"}
    assert manifest["status"] == "ok" and manifest["parity"]["passed"]
    assert manifest["source"]["checkpoint"].endswith("/model") and "mcc" in manifest["source"]["metrics"]
    assert "onnxruntime-gpu" in manifest["versions"] or "onnxruntime" in manifest["versions"]
    assert manifest["quantization_target"] == manifest["cpu_flags"]["quantization_target"]  # auto: this CPU's preset
    on_disk = {p.name for p in out.iterdir() if p.name != "manifest.json"}
    assert set(manifest["files"]) == on_disk
    assert {"tokenizer.json", "parity.json", "parity.md", *MODELS} <= on_disk
    # nothing left over from staging beside the artifact
    assert [p.name for p in exported["root"].iterdir() if p.name.startswith(".")] == []


def test_fusions_and_fp16_io(exported):
    out = exported["out"]
    fused = json.loads((out / "manifest.json").read_text())["variants"]["optimized"]["fused_operators"]
    assert fused["Attention"] == 2  # one per layer: the eager-attention export fuses
    assert "EmbedLayerNormalization" not in fused  # the CPU graph stays quantizable
    fp16 = json.loads((out / "manifest.json").read_text())["variants"]["fp16"]
    assert fp16["fused_operators"]["Attention"] == 2 and fp16["fused_operators"]["EmbedLayerNormalization"] == 1
    graph = onnx.load(str(out / "model_fp16.onnx")).graph
    assert all(i.type.tensor_type.elem_type == onnx.TensorProto.INT64 for i in graph.input)
    assert graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in graph.initializer)


def test_dynamic_axes_every_variant(exported):
    from serving.engine import OnnxClassifier

    for variant in ("fp32", "optimized", "fp16", "int8"):
        clf = OnnxClassifier(exported["out"], variant=variant, device="cpu")
        for batch, length in ((1, 5), (3, 17)):
            ids = [[101] + [2000 + i] * (length - 2) + [102] for i in range(batch)]
            assert clf.run(clf.pad(ids, length=length)).shape == (batch, 2)
    # The fp16 graph (fused embeddings, fp16 weights) runs on the CPU provider too: its logits against fp32's,
    # padded rows included (the fused op derives the attention lengths from the mask; ignoring the mask moves these
    # logits by ~0.003, fp16 by ~0.0003).
    ids = [[101, 2023, 2003, 1037, 3231, 102], [101, 2054, 102], [101] + [2000] * 14 + [102]]
    fp32, fp16 = (OnnxClassifier(exported["out"], variant=v, device="cpu") for v in ("fp32", "fp16"))
    np.testing.assert_allclose(fp16.run(fp16.pad(ids, length=20)), fp32.run(fp32.pad(ids, length=20)), atol=1e-3)


def test_parity_report_files(exported):
    out = exported["out"]
    report = json.loads((out / "parity.json").read_text())
    rows = {r["variant"]: r for r in report["rows"]}
    assert report["sentences"] == 48
    assert rows["fp32"]["agreement"] == 100.0 and rows["fp32"]["max_abs_logit_diff"] < 1e-3
    assert rows["optimized"]["agreement"] == 100.0
    assert rows["fp16"]["status"].startswith("not checked")
    assert rows["int8"]["status"] == "pass" and "flip_rate" in rows["int8"]
    assert set(report["int8_tries"]) == {"dynamic", "static"}
    assert all(t["settings"]["name"] for tries in report["int8_tries"].values() for t in tries)
    # Dynamic int8 starts from the fused graph: one QAttention per layer; static from the unfused one.
    assert all(t["settings"]["graph"].startswith("fused") for t in report["int8_tries"]["dynamic"])
    assert all(t["settings"]["graph"].startswith("unfused") for t in report["int8_tries"]["static"])
    dynamic_file = out / ("model_int8.onnx" if report["int8_method"] == "dynamic" else "model_int8_dynamic.onnx")
    if dynamic_file.is_file():
        ops = [n.op_type for n in onnx.load(str(dynamic_file), load_external_data=False).graph.node]
        assert ops.count("QAttention") == 2, ops
    md = (out / "parity.md").read_text()
    assert "| variant |" in md and "pytorch fp32" in md
    assert "agree %" in exported["proc"].stdout and "pytorch fp32" in exported["proc"].stdout


def test_parity_figures_match_an_independent_computation(synthetic_cola, tmp_path):
    """Every figure of parity.json recomputed outside bertpack on the exported files: ONNX Runtime sessions fed
    by the checkpoint's own tokenizer, in length-sorted batches of 32 padded to their longest (the report's
    batching), PyTorch fp32 sentence by sentence as the reference, sklearn for accuracy and MCC; the flip rate is
    each sentence alone against the same sentences in shuffled batches of 32 (seed 0). The model predicts both
    classes, so a misplaced prediction or label changes the scores."""
    import random

    import onnxruntime as ort
    import torch
    from sklearn.metrics import accuracy_score, matthews_corrcoef
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from bertpack.data import validation_sentences
    from export.parity import Tolerance
    from export.pipeline import export_artifact
    from tests.conftest import make_balanced_tiny_run

    sentences, labels, domains = validation_sentences(synthetic_cola)
    run = make_balanced_tiny_run(tmp_path / "run", sentences)
    out = tmp_path / "artifact"
    wide_open = Tolerance(exact_max_logit_diff=1e9, exact_agreement=0.0, mcc_drop=1e9, min_agreement=0.0)
    export_artifact(
        run, out, data=synthetic_cola, store=False, tolerance=wide_open, calibration_samples=16, int8="dynamic"
    )
    report = json.loads((out / "parity.json").read_text())
    rows = {r["variant"]: r for r in report["rows"]}

    tok = AutoTokenizer.from_pretrained(str(run / "model"))
    model = AutoModelForSequenceClassification.from_pretrained(str(run / "model")).eval()
    ids = [tok(s, truncation=True, max_length=64)["input_ids"] for s in sentences]
    with torch.no_grad():
        reference = np.stack([model(input_ids=torch.tensor([seq])).logits[0].numpy() for seq in ids]).astype(np.float64)
    y, dom = np.array(labels), np.array(domains)
    assert 0 < reference.argmax(-1).sum() < len(y)  # both classes predicted

    def batched(session: ort.InferenceSession, order: list[int]) -> np.ndarray:
        logits = np.empty((len(ids), 2))
        for start in range(0, len(order), 32):
            rows_ = order[start : start + 32]
            width = max(len(ids[i]) for i in rows_)
            input_ids = np.zeros((len(rows_), width), dtype=np.int64)
            for k, i in enumerate(rows_):
                input_ids[k, : len(ids[i])] = ids[i]
            feed = {
                "input_ids": input_ids,
                "attention_mask": (input_ids != 0).astype(np.int64),
                "token_type_ids": np.zeros_like(input_ids),
            }
            wanted = {i.name for i in session.get_inputs()}
            logits[rows_] = session.run(None, {k: v for k, v in feed.items() if k in wanted})[0]
        return logits

    by_length = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    shuffled = list(range(len(ids)))
    random.Random(0).shuffle(shuffled)
    changed = False
    for variant, file in (("fp32", "model.onnx"), ("optimized", "model_optimized.onnx"), ("int8", "model_int8.onnx")):
        session = ort.InferenceSession(str(out / file), providers=["CPUExecutionProvider"])
        logits = batched(session, by_length)
        preds, diff = logits.argmax(-1), np.abs(logits - reference)
        row = rows[variant]
        assert row["accuracy"] == pytest.approx(accuracy_score(y, preds), abs=1e-12), variant
        assert row["mcc"] == pytest.approx(matthews_corrcoef(y, preds), abs=1e-12), variant
        for name in ("in", "out"):
            mask = dom == name
            assert row[f"mcc_{name}_domain"] == pytest.approx(matthews_corrcoef(y[mask], preds[mask]), abs=1e-12), (
                variant
            )
        assert row["agreement"] == pytest.approx(100.0 * np.mean(preds == reference.argmax(-1))), variant
        # PyTorch batched (the report's reference) and PyTorch alone (this one) differ by float rounding only
        assert row["max_abs_logit_diff"] == pytest.approx(diff.max(), abs=1e-4), variant
        assert row["mean_abs_logit_diff"] == pytest.approx(diff.mean(), abs=1e-4), variant
        changed |= row["agreement"] < 100.0 or row["mcc"] != rows["pytorch fp32"]["mcc"]
        if variant in ("optimized", "int8"):
            alone = np.stack([batched(session, [i])[i] for i in range(len(ids))])
            in_batches = batched(session, shuffled)
            flips = int(np.sum(alone.argmax(-1) != in_batches.argmax(-1)))
            flip = report["flip_rate"]["optimized" if variant == "optimized" else "int8_dynamic"]
            assert (flip["flips"], flip["sentences"]) == (flips, len(ids)), variant
            assert (
                flip["flip_rate"] == pytest.approx(100.0 * flips / len(ids)) and row["flip_rate"] == flip["flip_rate"]
            )
            assert flip["max_abs_logit_change"] == pytest.approx(np.abs(alone - in_batches).max(), abs=1e-6), variant
    assert report["flip_rate"]["int8_dynamic"]["max_abs_logit_change"] > 1e-3  # dynamic int8's scales follow the batch
    reference_row = rows["pytorch fp32"]
    ref_preds = reference.argmax(-1)
    assert reference_row["mcc"] == pytest.approx(matthews_corrcoef(y, ref_preds), abs=1e-12)
    assert changed  # int8 moved some predictions: agreement and the MCC drop are not trivially 100% and 0


def test_predict_cli(exported):
    proc = run_cli(
        "predict",
        str(exported["out"]),
        "The cat sat on the mat.",
        "Mat the on sat cat.",
        "--variant",
        "optimized",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["sentence"] for r in lines] == ["The cat sat on the mat.", "Mat the on sat cat."]
    for r in lines:
        assert r["label"] in ("acceptable", "unacceptable") and abs(sum(r["probabilities"].values()) - 1) < 1e-5
    table = run_cli("predict", str(exported["out"]), "The cat sat on the mat.")
    assert table.returncode == 0 and "The cat sat on the mat." in table.stdout
    manifest = json.loads((exported["out"] / "manifest.json").read_text())
    long = " ".join(["the dog barked"] * manifest["max_length"])
    cut = run_cli("predict", str(exported["out"]), "The cat sat on the mat.", long, "--json")
    assert cut.returncode == 0, cut.stderr
    rows = [json.loads(line) for line in cut.stdout.splitlines()]
    assert [(r["truncated"], r["tokens"]) for r in rows] == [(False, 9), (True, manifest["max_length"])]
    assert "note: sentence 2 has" in cut.stderr and "truncated" in cut.stderr
    blank = run_cli("predict", str(exported["out"]), "The cat sat on the mat.", "   ")
    assert blank.returncode == 2 and blank.stdout == "" and "Traceback" not in blank.stderr
    assert "sentence 2 has no text" in blank.stderr  # as the service's 400: no score for no text


def test_store_registration(exported, synthetic_cola):
    manifest = json.loads((exported["out"] / "manifest.json").read_text())
    tag = f"bertpack-cola:{manifest['version']}"
    assert f"registered in the BentoML model store as {tag}" in exported["proc"].stdout
    script = (
        "import bentoml, json; m = bentoml.models.get(%r); print(json.dumps({'path': m.path, 'meta': m.info.metadata}))"
    ) % tag
    proc = subprocess.run(
        [sys.executable, "-c", script],
        env={**__import__("os").environ, "BENTOML_HOME": str(exported["home"])},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["meta"]["parity"]["passed"] is True
    assert info["meta"]["parity"]["rows"]["optimized"]["agreement"] == 100.0
    stored = Path(info["path"])
    # The store's copy (what a Bento carries) leaves out the fp32 reference graph, which no service loads by default:
    # the artifact's manifest less that variant and its file, plus a record of what was left out and where it is.
    folder = json.loads((exported["out"] / "manifest.json").read_text())
    copy = json.loads((stored / "manifest.json").read_text())
    assert copy.pop("store_copy") == {"of": str(exported["out"].resolve()), "left_out": {"fp32": "model.onnx"}}
    assert copy == {
        **folder,
        "variants": {k: v for k, v in folder["variants"].items() if k != "fp32"},
        "files": {k: v for k, v in folder["files"].items() if k != "model.onnx"},
    }
    assert sorted(p.name for p in stored.iterdir()) == sorted([*copy["files"], "manifest.json", "model.yaml"])
    assert "(without the parity reference model.onnx" in exported["proc"].stdout
    for extra in ([], ["--parity", "--data", str(synthetic_cola)]):  # the parity re-check runs without fp32 too
        checked = run_cli("verify", str(stored), *extra)
        assert checked.returncode == 0 and checked.stdout.strip().endswith(f"{stored}: verified"), (
            checked.stdout + checked.stderr
        )
    # the engine loads the stored copy (hashes checked) as the service would
    from serving.engine import OnnxClassifier

    assert OnnxClassifier(stored, device="cpu").variant == "int8"
    # asking the copy for the variant it lacks names the folder that has it
    err = run_cli("predict", str(stored), "The cat sat.", "--variant", "fp32")
    assert err.returncode == 2 and err.stdout == "" and len(err.stderr.strip().splitlines()) == 1, err.stderr
    assert "variant 'fp32' (model.onnx) was left out of" in err.stderr and str(exported["out"].resolve()) in err.stderr


def test_verify_ok_then_corrupted_and_truncated(exported, tmp_path):
    ok = run_cli("verify", str(exported["out"]))
    assert ok.returncode == 0 and "verified" in ok.stdout, ok.stderr
    art = tmp_path / "art"
    shutil.copytree(exported["out"], art)
    data = bytearray((art / "model_int8.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (art / "model_int8.onnx").write_bytes(bytes(data))
    bad = run_cli("verify", str(art))
    assert bad.returncode == 2 and "model_int8.onnx does not match its sha256" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr
    (art / "model_optimized.onnx").write_bytes((art / "model_optimized.onnx").read_bytes()[:1000])
    shutil.copyfile(exported["out"] / "model_int8.onnx", art / "model_int8.onnx")
    short = run_cli("verify", str(art))
    assert short.returncode == 2 and "truncated" in short.stderr


def test_verify_rehashed_garbage_model_fails_to_load(exported, tmp_path):
    """A file whose hash was rewritten but which is no ONNX model: verify must load it and fail."""
    from bertpack.manifest import write_manifest

    art = tmp_path / "art"
    shutil.copytree(exported["out"], art)
    (art / "model_fp16.onnx").write_bytes(b"not an onnx model" * 100)
    manifest = json.loads((art / "manifest.json").read_text())
    write_manifest(art, manifest)
    proc = run_cli("verify", str(art))
    assert proc.returncode == 2 and "model_fp16.onnx does not load" in proc.stderr, proc.stderr


def _damage(model_path: Path, initializer_suffix: str, factor: float) -> None:
    model = onnx.load(str(model_path))
    for init in model.graph.initializer:
        if init.name.endswith(initializer_suffix):
            arr = onnx.numpy_helper.to_array(init) * factor
            init.CopyFrom(onnx.numpy_helper.from_array(arr.astype(np.float32), init.name))
            break
    else:
        raise AssertionError(f"no initializer ending in {initializer_suffix}")
    onnx.save(model, str(model_path))


def test_damaged_model_fails_parity(exported, synthetic_cola, tmp_path):
    """An optimized model with a broken classifier (hashes rewritten, so only parity can see it)
    must make `verify --parity` exit non-zero with the variant named."""
    from bertpack.manifest import write_manifest

    art = tmp_path / "art"
    shutil.copytree(exported["out"], art)
    good = run_cli("verify", str(art), "--parity", "--data", str(synthetic_cola))
    assert good.returncode == 0, good.stdout[-2000:] + good.stderr[-2000:]
    _damage(art / "model_optimized.onnx", "classifier.weight", -1.0)
    write_manifest(art, json.loads((art / "manifest.json").read_text()))
    proc = run_cli("verify", str(art), "--parity", "--data", str(synthetic_cola))
    assert proc.returncode == 3, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stderr.startswith("error: ") and "optimized: max |logit diff|" in proc.stderr
    assert "FAIL" in proc.stdout


def test_failed_optimized_graph_leaves_the_cpu_on_fp32(tiny_run, synthetic_cola, tmp_path, monkeypatch):
    """When the optimized graph breaks parity (its classifier damaged as it comes out of ORTOptimizer), the export is
    marked failed and names fp32, which passed, as the CPU default; the optimized graph is never the default."""
    from bertpack.errors import ParityError
    from export import optimize
    from export.pipeline import export_artifact

    real_optimize = optimize.optimize

    def damaged_cpu_graph(src, work, level):
        path, fused = real_optimize(src, work, level)
        if level == optimize.CPU_LEVEL:
            _damage(Path(path), "classifier.weight", -1.0)
        return path, fused

    monkeypatch.setattr(optimize, "optimize", damaged_cpu_graph)
    out = tmp_path / "art"
    with pytest.raises(ParityError, match="optimized: max |logit diff|"):
        export_artifact(tiny_run, out, data=synthetic_cola, store=False, int8="none", flip_check=False)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "failed parity" and manifest["serving_default"]["cpu"] == "fp32"


def test_tolerance_failure_exits_3_and_keeps_report(tiny_run, synthetic_cola, tmp_path):
    """A tolerance nothing can meet: the artifact is written and marked failed, not registered, exit 3."""
    out = tmp_path / "art"
    proc = run_cli(
        "export",
        str(tiny_run),
        "--out",
        str(out),
        "--data",
        str(synthetic_cola),
        "--int8",
        "dynamic",
        "--no-flip-check",
        "--tolerance",
        "logit=1e-12",
        env={"BENTOML_HOME": str(tmp_path / "bentoml")},
    )
    assert proc.returncode == 3, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "error: " in proc.stderr and "fp32: max |logit diff|" in proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "failed parity" and not manifest["parity"]["passed"]
    assert "registered" not in proc.stdout and not (tmp_path / "bentoml" / "models" / "bertpack-cola").exists()


def test_int8_outside_tolerance_is_not_shipped(tiny_run, synthetic_cola, tmp_path):
    """An int8 agreement bar above 100% (the Python API takes any Tolerance): no int8 can pass. The export ships
    without int8 (CPU default: optimized, status ok) and says why; require_int8 turns it into a ParityError (exit 3)."""
    from bertpack.errors import ParityError
    from export.parity import Tolerance
    from export.pipeline import export_artifact

    lines: list[str] = []
    common = dict(
        data=synthetic_cola, store=False, int8="dynamic", flip_check=False, tolerance=Tolerance(min_agreement=100.5)
    )
    result = export_artifact(tiny_run, tmp_path / "art", echo=lines.append, **common)
    out = tmp_path / "art"
    assert not result.failures
    assert any(line.startswith("warning: no int8 method within tolerance") for line in lines), lines[-5:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "ok" and manifest["serving_default"]["cpu"] == "optimized"
    assert "int8" not in manifest["variants"] and not (out / "model_int8.onnx").exists()
    assert "model_int8.onnx" not in manifest["files"] and manifest["parity"]["warnings"]
    rows = {r["variant"]: r for r in json.loads((out / "parity.json").read_text())["rows"]}
    assert rows["int8"]["status"] == "FAIL (not shipped)"
    from serving.engine import OnnxClassifier

    assert OnnxClassifier(out, device="cpu").variant == "optimized"  # what the service will load
    # the store takes it (its metadata has no int8 method: BentoML refuses None values)
    manifest_path = out / "manifest.json"
    code = (
        "import json; from export.store import register; "
        f"print(register({str(out)!r}, json.load(open({str(manifest_path)!r}))))"
    )
    stored = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml")},
    )
    assert stored.returncode == 0 and stored.stdout.startswith("bertpack-cola:"), stored.stderr[-2000:]
    # the store's copy is an artifact folder that verifies (BentoML's own model.yaml beside the listed files)
    entry = tmp_path / "bentoml" / "models" / "bertpack-cola" / stored.stdout.strip().split(":", 1)[1]
    assert (entry / "model.yaml").is_file()
    checked = run_cli("verify", str(entry))
    assert checked.returncode == 0 and checked.stdout.strip().endswith(f"{entry}: verified"), checked.stderr[-2000:]

    with pytest.raises(ParityError) as err:
        export_artifact(tiny_run, tmp_path / "strict", echo=lines.append, require_int8=True, **common)
    assert err.value.exit_code == 3 and "int8 (dynamic)" in str(err.value)
    assert json.loads((tmp_path / "strict" / "manifest.json").read_text())["status"] == "failed parity"


def test_int8_none_ships_no_int8(tiny_run, synthetic_cola, tmp_path):
    """--int8 none (a GPU-only deployment): no quantization, the int8 row says so, the CPU default is optimized.
    Run under umask 027: the artifact's modes follow the umask (not forced world-readable, nor mkstemp's 0600)."""
    out = tmp_path / "art"
    umask = os.umask(0o027)
    try:
        proc = run_cli(
            "export",
            str(tiny_run),
            "--out",
            str(out),
            "--data",
            str(synthetic_cola),
            "--int8",
            "none",
            "--no-store",
            "--no-flip-check",
        )
    finally:
        os.umask(umask)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert stat.S_IMODE(out.stat().st_mode) == 0o750
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in out.iterdir()} == {
        p.name: "0o640" for p in out.iterdir()
    }
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "ok" and manifest["serving_default"]["cpu"] == "optimized"
    assert not any(name.startswith("int8") for name in manifest["variants"]) and not list(out.glob("model_int8*.onnx"))
    rows = {r["variant"]: r for r in json.loads((out / "parity.json").read_text())["rows"]}
    assert rows["int8"]["status"] == "not built (--int8 none)" and rows["optimized"]["status"] == "pass"
    assert "not built (--int8 none)" in (out / "parity.md").read_text()


def test_smoothquant_keeps_the_fp32_model(exported, tmp_path):
    """SmoothQuant moves range from activations into weights: one Mul per smoothed product (QKV, FFN up), fp32 logits
    unchanged, and each scale is s_j = sqrt(max|x_j| / max|W_j|) (alpha 0.5) of the original weight."""
    import onnxruntime as ort

    from export import smoothquant

    art = exported["out"]
    source = art / "model_optimized.onnx"
    feeds = [
        {
            "input_ids": np.array([ids], dtype=np.int64),
            "attention_mask": np.ones((1, len(ids)), dtype=np.int64),
            "token_type_ids": np.zeros((1, len(ids)), dtype=np.int64),
        }
        for ids in ([101, 2023, 2003, 1037, 3231, 102], [101, 7592, 102])
    ]
    names = ["input_ids", "attention_mask", "token_type_ids"]
    ranges = smoothquant.channel_ranges(source, [f["input_ids"][0].tolist() for f in feeds], names)
    smoothed = smoothquant.smooth(source, tmp_path / "smoothed.onnx", ranges, alpha=0.5)

    graph = onnx.load(str(tmp_path / "smoothed.onnx")).graph
    groups = [g for _, g in smoothquant.products(graph)]
    assert len(smoothed) == groups.count("qkv") + groups.count("ffn_in") == 2 * 2  # 2 layers
    assert sum(n.op_type == "Mul" and n.name.endswith("_smooth") for n in graph.node) == len(smoothed)
    before = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
    after = ort.InferenceSession(str(tmp_path / "smoothed.onnx"), providers=["CPUExecutionProvider"])
    for feed in feeds:
        np.testing.assert_allclose(after.run(None, feed)[0], before.run(None, feed)[0], atol=1e-4)
    # what the quantizer sees is x / s with s_j = sqrt(max|x_j| / max|W_j|): its channel maxima are sqrt(max|x_j|
    # max|W_j|)
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
    nodes = {n.name: n for n in graph.node}
    for name in smoothed:
        mul = nodes[f"{name}_smooth"]
        inv_s = inits[mul.input[1]]
        x_max, w_max = (
            ranges[mul.input[0]],
            np.abs(inits[nodes[name].input[1]]).max(axis=1) * inv_s,
        )  # the weight before scaling
        expected = np.clip(np.sqrt(np.maximum(x_max, 1e-5) / np.maximum(w_max, 1e-5)), 1e-2, 1e2)
        np.testing.assert_allclose(1.0 / inv_s, expected, rtol=1e-3)


def test_smoothquant_on_the_unfused_graph_shares_one_scale_per_tensor(exported, tmp_path):
    """Static int8 quantizes the unfused graph, where the query, key and value products read one LayerNorm output:
    they are smoothed together (one Mul, one scale, from the largest of their weights), the FFN up-projection on its
    own, and the fp32 logits stay the same."""
    import onnxruntime as ort

    from export import smoothquant

    source = exported["out"] / "model.onnx"
    feeds = [
        {
            "input_ids": np.array([ids], dtype=np.int64),
            "attention_mask": np.ones((1, len(ids)), dtype=np.int64),
            "token_type_ids": np.zeros((1, len(ids)), dtype=np.int64),
        }
        for ids in ([101, 2023, 2003, 1037, 3231, 102], [101, 7592, 102])
    ]
    ranges = smoothquant.channel_ranges(
        source, [f["input_ids"][0].tolist() for f in feeds], ["input_ids", "attention_mask", "token_type_ids"]
    )
    smoothed = smoothquant.smooth(source, tmp_path / "smoothed.onnx", ranges, alpha=0.5)
    graph = onnx.load(str(tmp_path / "smoothed.onnx")).graph
    assert (
        sum("/attention/self/" in name for name in smoothed) == 3 * 2
        and sum("/intermediate/" in name for name in smoothed) == 2
    )
    muls = [n for n in graph.node if n.op_type == "Mul" and n.name.endswith("_smooth")]
    assert len(muls) == 2 * 2  # per layer: one for Q, K and V, one for the FFN up-projection
    weights = {i.name for i in graph.initializer}
    readers = {
        n.input[0]
        for n in graph.node
        if n.op_type == "MatMul" and "/attention/self/" in n.name and n.input[1] in weights
    }
    assert readers <= {m.output[0] for m in muls}
    before = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
    after = ort.InferenceSession(str(tmp_path / "smoothed.onnx"), providers=["CPUExecutionProvider"])
    for feed in feeds:
        np.testing.assert_allclose(after.run(None, feed)[0], before.run(None, feed)[0], atol=1e-4)


def test_export_and_verify_read_glue_from_the_hub(tiny_run, synthetic_cola, tmp_path, monkeypatch):
    """--data glue (online users without a CoLA folder) works for export and verify --parity, not only for train.
    The hub is the one thing replaced (conftest.glue_hub)."""
    from export.parity import Tolerance
    from export.pipeline import export_artifact, recheck_artifact

    asked = glue_hub(monkeypatch, synthetic_cola)
    out = tmp_path / "art"
    export_artifact(tiny_run, out, data="glue", store=False, int8="none", flip_check=False)
    report = json.loads((out / "parity.json").read_text())
    assert report["data"] == "glue" and report["sentences"] == 48 and asked and set(asked) == {("nyu-mll/glue", "cola")}
    lines = []
    recheck = recheck_artifact(out, "glue", Tolerance(), lines.append)
    assert recheck["sentences"] == 48 and recheck["data"] == "glue" and len(asked) >= 3


def test_export_without_int8_registers_in_the_store(tiny_run, synthetic_cola, tmp_path):
    """--int8 none (a GPU-only deployment) has no int8 method: BentoML metadata refuses None values, so the
    store registration must leave the absent figure out instead of failing the export."""
    home, out = tmp_path / "bentoml", tmp_path / "art"
    proc = run_cli(
        "export",
        str(tiny_run),
        "--out",
        str(out),
        "--data",
        str(synthetic_cola),
        "--int8",
        "none",
        "--no-flip-check",
        "--limit",
        "24",
        env={"BENTOML_HOME": str(home)},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    tag = f"bertpack-cola:{manifest['version']}"
    assert f"registered in the BentoML model store as {tag}" in proc.stdout
    script = f"import bentoml, json; print(json.dumps(bentoml.models.get({tag!r}).info.metadata))"
    got = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "BENTOML_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert got.returncode == 0, got.stderr[-2000:]
    assert "int8_method" not in json.loads(got.stdout.strip().splitlines()[-1])
