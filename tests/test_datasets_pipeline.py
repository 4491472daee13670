"""A data set of one's own through every stage, as a user runs them (real processes): a 3-class CSV and a binary JSON
Lines set each trained briefly from the tiny BERT, exported (parity), predicted, served by a real `bentoml serve` and
benchmarked; the labels every stage answers with are the data's."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest

from serving import local_server
from tests.conftest import run_cli
from tests.test_datasets import write_reviews_jsonl, write_tickets_csv

pytestmark = pytest.mark.slow

# data set -> (writer, its folder name, the labels in id order, the store name export gives it, its text column)
CASES = {
    "tickets-csv": (write_tickets_csv, "tickets", ["billing", "bug", "feature"], "bertpack-tickets", "text"),
    "reviews-jsonl": (write_reviews_jsonl, "reviews", ["0", "1"], "bertpack-reviews", "sentence"),
}


@pytest.fixture(scope="module", params=list(CASES))
def pipeline(request, tiny_run, tmp_path_factory) -> dict:
    """The data set trained (8 steps) and exported without --data: export reads the data the run recorded."""
    writer, folder, labels, name, text_column = CASES[request.param]
    root = tmp_path_factory.mktemp(request.param)
    data = writer(root / folder)
    run, artifact, home = root / "run", root / "artifact", root / "bentoml"
    train = run_cli(
        "train",
        "--model",
        str(tiny_run / "model"),
        "--data",
        str(data),
        "--out",
        str(run),
        "--max-steps",
        "8",
        "--batch-size",
        "8",
        "--lr",
        "2e-3",
        "--seed",
        "1",
    )
    assert train.returncode == 0, train.stderr[-3000:]
    export = run_cli(
        "export",
        str(run),
        "--out",
        str(artifact),
        "--calibration-samples",
        "16",
        "--no-flip-check",
        env={"BENTOML_HOME": str(home)},
    )
    assert export.returncode == 0, export.stdout[-3000:] + export.stderr[-3000:]
    return {
        "data": data,
        "run": run,
        "artifact": artifact,
        "home": home,
        "labels": labels,
        "name": name,
        "text_column": text_column,
        "train": train,
        "export": export,
        "manifest": json.loads((artifact / "manifest.json").read_text()),
        "root": root,
    }


def test_train_takes_its_labels_from_the_data(pipeline: dict) -> None:
    labels, run = pipeline["labels"], pipeline["run"]
    config = json.loads((run / "model" / "config.json").read_text())
    assert config["id2label"] == {str(i): name for i, name in enumerate(labels)}
    assert config["label2id"] == {name: i for i, name in enumerate(labels)}
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["labels"] == labels
    recorded = {
        "data": str(pipeline["data"].resolve()),
        "text_column": pipeline["text_column"],
        "label_column": "label",
    }
    assert metrics["data_source"] == recorded
    assert set(metrics["data_sha256"]) == {str(p) for p in sorted(pipeline["data"].iterdir())}
    stdout = pipeline["train"].stdout
    assert f"{len(labels)} labels: {', '.join(labels)}" in stdout and "(detected)" in stdout
    if len(labels) > 2:  # macro-F1 in the table, the best row and metrics.json; never CoLA's per-domain columns
        assert "macro_f1" in metrics["best"] and "macro-F1" in stdout and "in-domain" not in stdout
        assert (
            "note: --model" in pipeline["train"].stderr
            and "new 3-label head for the data's labels" in pipeline["train"].stderr
        )
    else:
        assert "macro_f1" not in metrics["best"] and "macro-F1" not in stdout
    assert metrics["best"]["mcc_in_domain"] is None


def test_export_checks_parity_on_the_data_and_registers_its_name(pipeline: dict) -> None:
    manifest, artifact, name = pipeline["manifest"], pipeline["artifact"], pipeline["name"]
    assert manifest["labels"] == pipeline["labels"] and manifest["name"] == name
    assert manifest["data_source"] == {
        "data": str(pipeline["data"].resolve()),
        "text_column": pipeline["text_column"],
        "label_column": "label",
    }  # what verify --parity and bench read
    assert manifest["status"] == "ok"
    report = json.loads((artifact / "parity.json").read_text())
    rows = {row["variant"]: row for row in report["rows"]}
    assert report["sentences"] == 24 and report["split"] == "validation split"
    for variant in ("fp32", "optimized"):
        assert rows[variant]["status"] == "pass" and rows[variant]["agreement"] == 100.0
    assert ("macro_f1" in rows["fp32"]) == (len(pipeline["labels"]) > 2) and "mcc_in_domain" not in rows["fp32"]
    out = pipeline["export"].stdout
    assert f"parity on validation split: 24 sentences from {pipeline['data'].resolve()}" in out
    assert f"registered in the BentoML model store as {name}:{manifest['version']}" in out
    assert f"serve it with: BERTPACK_MODEL={name}:latest bentoml serve" in out
    assert (pipeline["home"] / "models" / name / manifest["version"] / "manifest.json").is_file()
    assert not (pipeline["home"] / "models" / "bertpack-cola").exists()  # CoLA's default tag is left alone
    verify = run_cli("verify", "--parity", str(artifact))  # the data the report used, from the manifest
    assert verify.returncode == 0 and f"{artifact}: verified" in verify.stdout, verify.stderr[-2000:]


def test_predict_answers_with_the_data_labels(pipeline: dict) -> None:
    proc = run_cli("predict", str(pipeline["artifact"]), "The app crashes when I save.", "A wonderful film.", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    for line in proc.stdout.splitlines():
        answer = json.loads(line)
        assert answer["label"] in pipeline["labels"] and list(answer["probabilities"]) == pipeline["labels"]
        assert sum(answer["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)


def test_bentoml_serve_answers_with_the_data_labels(pipeline: dict) -> None:
    """`bentoml serve` with BERTPACK_MODEL=NAME:latest: /classify gives the data's labels, one probability each."""
    env = {**os.environ, "BENTOML_HOME": str(pipeline["home"]), "BERTPACK_MODEL": f"{pipeline['name']}:latest"}
    proc, url = local_server.start_server(env, pipeline["root"] / "serve.log")
    try:
        r = httpx.post(f"{url}/classify", json={"sentences": ["Please refund my payment.", "A dull film."]}, timeout=60)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == f"{pipeline['name']}:{pipeline['manifest']['version']}"
        for prediction in body["predictions"]:
            assert prediction["label"] in pipeline["labels"] and list(prediction["probabilities"]) == pipeline["labels"]
        info = httpx.get(f"{url}/info", timeout=30).json()
        assert info["labels"] == pipeline["labels"] and info["model"] == body["model"]
    finally:
        local_server.stop_server(proc)


def test_bench_reads_the_recorded_data(pipeline: dict, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    proc = run_cli(
        "bench",
        str(pipeline["artifact"]),
        "--out",
        str(out),
        "--engines",
        "pytorch_fp32,onnx_optimized",
        "--batch-sizes",
        "1,8",
        "--min-time",
        "0",
        "--min-samples",
        "1",
        "--max-passes",
        "1",
        "--e2e-sentences",
        "8",
        "--no-profile",
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "bench: 24 validation sentences" in proc.stdout
    bench = json.loads((out / "bench.json").read_text())
    assert bench["data"] == str(pipeline["data"].resolve()) and bench["labels"] == pipeline["labels"]
    rows = {(r["engine"], r["batch_size"]): r for r in bench["rows"]}
    assert rows[("onnx_optimized", 8)]["agreement"] == 100.0 and rows[("onnx_optimized", 8)]["mcc"] is not None
    assert ("macro_f1" in rows[("pytorch_fp32", 1)]) == (len(pipeline["labels"]) > 2)
    assert "24 validation sentences" in (out / "bench.md").read_text()


def test_a_bento_of_the_model_serves_it_without_bertpack_model(pipeline: dict, tmp_path: Path) -> None:
    """`bentoml build -f` with a bentofile that lists NAME:latest: the built Bento serves that model by default (it
    looked for bertpack-cola's tag only, and then fell back to bertpack-cola:latest)."""
    import subprocess
    import sys

    from tests.conftest import REPO

    if len(pipeline["labels"]) == 2:
        pytest.skip("one data set suffices: a Bento finds its model by what it carries, whatever the labels")
    bentofile = tmp_path / "bentofile.yaml"
    bentofile.write_text(
        (REPO / "bentofile.yaml").read_text().replace('"bertpack-cola:latest"', f'"{pipeline["name"]}:latest"')
    )
    env = {**os.environ, "BENTOML_HOME": str(pipeline["home"]), "BENTOML_DO_NOT_TRACK": "True"}
    bentoml = str(Path(sys.executable).parent / "bentoml")
    built = subprocess.run(
        [bentoml, "build", "-f", str(bentofile), "--output", "tag"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    bento = built.stdout.strip().splitlines()[-1].replace("__tag__:", "")
    proc, url = local_server.start_server(env, tmp_path / "serve.log", target=bento)
    try:
        info = httpx.get(f"{url}/info", timeout=30).json()
    finally:
        local_server.stop_server(proc)
    assert (
        info["model"] == f"{pipeline['name']}:{pipeline['manifest']['version']}"
        and info["labels"] == pipeline["labels"]
    )
