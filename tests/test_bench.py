"""`bertpack bench` on the tiny random model: real export (the export stage's pipeline), real worker
processes, real files. Speed itself is not asserted (that is what the benchmark prints)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from tests.conftest import run_cli

QUICK = ["--min-time", "0", "--min-samples", "1", "--max-passes", "1"]
REQUIRED_ROW_FIELDS = {
    "engine",
    "device",
    "batch_size",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "sentences_per_s",
    "speedup_p50",
    "speedup_throughput",
    "peak_rss_mib",
    "model_mb",
    "mcc",
    "accuracy",
    "agreement",
}


@pytest.fixture(scope="session")
def bench_result(tiny_artifact, synthetic_cola, tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("bench") / "out"
    proc = run_cli(
        "bench",
        str(tiny_artifact),
        "--out",
        str(out),
        "--data",
        str(synthetic_cola),
        "--sentences",
        "32",
        "--batch-sizes",
        "1,8",
        "--e2e-sentences",
        "16",
        "--profile-batch-size",
        "8",
        *QUICK,
    )
    return out, proc


def test_bench_writes_table_json_md_png(bench_result):
    out, proc = bench_result
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "p50 ms" in proc.stdout and "sent/s" in proc.stdout and "MCC" in proc.stdout
    payload = json.loads((out / "bench.json").read_text())
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "bench.md").read_text()
    assert "| engine |" in md and "## Checks" in md
    assert not re.search(r"\bbars?\b", md + proc.stdout, re.IGNORECASE)  # the outputs speak of checks

    engines = {r["engine"] for r in payload["rows"]}
    assert {"pytorch_fp32", "pytorch_fast", "onnx_fp32", "onnx_optimized", "onnx_int8"} <= engines
    assert {(r["engine"], r["batch_size"]) for r in payload["rows"]} >= {(e, b) for e in engines for b in (1, 8)}
    for row in payload["rows"]:
        assert REQUIRED_ROW_FIELDS <= row.keys()
        assert 0 < row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"]
        assert row["sentences_per_s"] > 0 and row["peak_rss_mib"] > 0 and row["model_mb"] > 0
        # every pass runs all 32 sentences: sentences/s = passes x 32 over the summed call times
        assert row["sentences_per_s"] == pytest.approx(
            row["passes"] * 32 / (row["mean_ms"] * row["timed_calls"] / 1000), rel=1e-6
        )
        assert -1.0 <= row["mcc"] <= 1.0
    ref = [r for r in payload["rows"] if r["engine"] == "pytorch_fp32"]
    assert all(r["speedup_p50"] == pytest.approx(1.0) and r["agreement"] == 100.0 for r in ref)
    # Same sentences, same padding: the fp32 graph and PyTorch must predict the same classes.
    assert all(r["agreement"] == 100.0 for r in payload["rows"] if r["engine"] in ("onnx_fp32", "onnx_optimized"))
    int8_size = next(r["model_mb"] for r in payload["rows"] if r["engine"] == "onnx_int8")
    fp32_size = next(r["model_mb"] for r in payload["rows"] if r["engine"] == "onnx_fp32")
    assert int8_size < fp32_size / 2

    assert set(payload["padding"]) == {"1", "8"}
    assert payload["padding"]["1"]["padding_ratio"] == 0.0 and payload["padding"]["8"]["padding_ratio"] > 0.0
    machine = payload["machine"]
    assert (
        machine["cpu_model"] is not None and machine["physical_cores"] >= 1 and "onnxruntime-gpu" in machine["versions"]
    )
    assert payload["settings"]["threads"] >= 1 and payload["sentences"] == 32
    assert payload["command"].startswith("bertpack bench ") and "--sentences 32 --batch-sizes 1,8" in payload["command"]

    e2e = payload["end_to_end"]
    assert e2e["book"]["sentences_per_s"] > 0 and e2e["serving"]["sentences_per_s"] > 0
    assert e2e["speedup"] == pytest.approx(
        e2e["serving"]["sentences_per_s"] / e2e["book"]["sentences_per_s"]
    )  # > 1 = faster
    assert e2e["book"]["pad_to"] == 128 and e2e["padding_book"]["padding_ratio"] > 1.0
    checks = {c["check"]: c for c in payload["checks"]}
    assert any("batch 1" in name and c["value"] is not None for name, c in checks.items() if name.startswith("int8"))
    profiled = [r for r in payload["rows"] if r.get("profile")]
    assert profiled and all(r["batch_size"] == 8 and r["profile"]["ops"] for r in profiled)


def test_gpu_rows_are_skipped_with_a_reason(bench_result):
    from serving.cuda import cuda_available

    if cuda_available():
        pytest.skip("a GPU is present: the CUDA rows run instead of being skipped")
    out, proc = bench_result
    assert proc.returncode == 0, proc.stderr[-2000:]
    payload = json.loads((out / "bench.json").read_text())
    skipped = {s["engine"]: s["reason"] for s in payload["skipped"]}
    assert "no GPU" in skipped["onnx_fp16_cuda"] and "no GPU" in skipped["onnx_fp16_cuda_graph"]
    assert "CUDA" in skipped["pytorch_fp16"]
    assert not {"onnx_fp16_cuda", "onnx_fp16_cuda_graph", "pytorch_fp16"} & {r["engine"] for r in payload["rows"]}
    assert "skipped onnx_fp16_cuda: no GPU" in proc.stdout
    gpu_checks = [c for c in payload["checks"] if "CUDA" in c["check"]]
    assert gpu_checks and all(c["value"] is None and "no GPU" in c["note"] for c in gpu_checks)


def test_end_to_end_sides_follow_the_same_repetition_rule(tiny_artifact, synthetic_cola, tmp_path):
    """Both sides of the end-to-end comparison repeat their pass until --min-time or --max-passes and report the
    median pass: a fast book pass (tens of ms on a GPU) is not timed once."""
    out = tmp_path / "out"
    proc = run_cli(
        "bench",
        str(tiny_artifact),
        "--out",
        str(out),
        "--data",
        str(synthetic_cola),
        "--sentences",
        "8",
        "--batch-sizes",
        "8",
        "--engines",
        "pytorch_fp32",
        "--e2e-sentences",
        "8",
        "--no-profile",
        "--min-time",
        "60",
        "--min-samples",
        "1",
        "--max-passes",
        "3",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    e2e = json.loads((out / "bench.json").read_text())["end_to_end"]
    assert e2e["book"]["passes"] == e2e["serving"]["passes"] == 3
    assert proc.stdout.count("sentences/s (3 passes)") == 2
    for side in ("book", "serving"):
        assert e2e[side]["sentences_per_s"] == pytest.approx(8 / e2e[side]["seconds"])


def test_end_to_end_sentences_cover_both_domains(tiny_artifact, synthetic_cola, tmp_path):
    """The end-to-end comparison's N sentences are spread over the bench's sentences, so both CoLA domains are in it
    (the first N of the validation order were all in-domain)."""
    out = tmp_path / "out"
    proc = run_cli(
        "bench",
        str(tiny_artifact),
        "--out",
        str(out),
        "--data",
        str(synthetic_cola),
        "--batch-sizes",
        "8",
        "--engines",
        "pytorch_fp32",
        "--e2e-sentences",
        "8",
        "--no-profile",
        "--min-time",
        "0",
        "--min-samples",
        "1",
        "--max-passes",
        "1",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    e2e = json.loads((out / "bench.json").read_text())["end_to_end"]
    assert e2e["sentences"] == 8
    for side in ("book", "serving"):
        assert {"mcc_in_domain", "mcc_out_domain"} <= set(e2e[side]), e2e[side]


def test_rounds_report_medians_and_every_round(tiny_artifact, synthetic_cola, tmp_path):
    """--rounds 3: every engine runs three times in fresh processes; rows and checks hold the median of the per-round
    figures (each ratio against the same round's reference), and each round's own figures."""
    import statistics

    out = tmp_path / "out"
    proc = run_cli(
        "bench",
        str(tiny_artifact),
        "--out",
        str(out),
        "--data",
        str(synthetic_cola),
        "--sentences",
        "8",
        "--batch-sizes",
        "1",
        "--engines",
        "pytorch_fp32,onnx_int8",
        "--rounds",
        "3",
        "--no-end-to-end",
        "--no-profile",
        *QUICK,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    order = [line.strip().split()[0] for line in proc.stdout.splitlines() if line.strip().endswith("(cpu) ...")]
    assert order == ["pytorch_fp32", "onnx_int8", "onnx_int8", "pytorch_fp32", "pytorch_fp32", "onnx_int8"]  # rotated
    assert "round 3 of 3" in proc.stdout
    payload = json.loads((out / "bench.json").read_text())
    assert payload["settings"]["rounds"] == 3
    assert sorted((w["engine"], w["round"]) for w in payload["workers"]) == [
        (e, k) for e in ("onnx_int8", "pytorch_fp32") for k in (1, 2, 3)
    ]
    rows = {r["engine"]: r for r in payload["rows"]}
    assert set(rows) == {"pytorch_fp32", "onnx_int8"}
    int8, ref = rows["onnx_int8"], rows["pytorch_fp32"]
    assert [x["round"] for x in int8["rounds"]] == [x["round"] for x in ref["rounds"]] == [1, 2, 3]
    assert int8["p50_ms"] == pytest.approx(statistics.median(x["p50_ms"] for x in int8["rounds"]))
    ratios = [r["p50_ms"] / i["p50_ms"] for r, i in zip(ref["rounds"], int8["rounds"])]
    assert [x["speedup_p50"] for x in int8["rounds"]] == pytest.approx(ratios)
    assert int8["speedup_p50"] == pytest.approx(statistics.median(ratios))
    check = next(c for c in payload["checks"] if c["check"].startswith("int8 CPU p50 latency"))
    assert check["rounds"] == pytest.approx(ratios) and check["value"] == pytest.approx(statistics.median(ratios))
    assert "median of 3 rounds" in proc.stdout and "medians of 3 rounds" in (out / "bench.md").read_text()
    assert "## Rounds" in (out / "bench.md").read_text()


def _payload(cfg, rounds: list) -> dict:
    """The bench record of two sentences from the workers' results, without an artifact or an end-to-end pass."""
    from bench.report import build_payload

    return build_payload(
        cfg=cfg,
        artifact=Path("a"),
        manifest={"variants": {}, "source": {}},
        machine={},
        threads=1,
        started=__import__("datetime").datetime.now(),
        sentences=2,
        labels=[0, 1],
        domains=["in", "in"],
        rounds=rounds,
        skipped=[],
        padding={},
        e2e=None,
        cola=Path("d"),
    )


def test_rounds_merge_keeps_every_round_and_pairs_ratios_by_round():
    """Hand-made rounds: an engine missing from round 2 (it failed there) and a batch size only a later round has
    keep their rows; each ratio pairs an engine with the same round's reference."""
    from bench.config import BenchConfig

    def result(engine: str, number: int, p50: dict[int, float]) -> dict:
        rows = [
            {
                "batch_size": b,
                "p50_ms": ms,
                "p95_ms": ms,
                "p99_ms": ms,
                "mean_ms": ms,
                "sentences_per_s": 1000 / ms,
                "passes": 1,
                "timed_calls": 1,
                "batches": 1,
                "peak_rss_mib": 100.0 + number,
                "predictions": [0, 1],
                "p50_with_copies_ms": ms + (1.0 if engine == "pytorch_fp32" else 0.5),
            }
            for b, ms in p50.items()
        ]
        return {"engine": engine, "device": "cpu", "model_bytes": 1e6, "round": number, "rows": rows}

    rounds = [
        [result("pytorch_fp32", 1, {1: 4.0, 8: 8.0}), result("onnx_int8", 1, {1: 1.0})],
        [result("pytorch_fp32", 2, {1: 8.0, 8: 8.0})],
        [result("pytorch_fp32", 3, {1: 6.0, 8: 8.0}), result("onnx_int8", 3, {1: 2.0, 8: 2.0})],
    ]
    payload = _payload(BenchConfig(artifact_dir=Path("a"), rounds=3, arch="bert-base", end_to_end=False), rounds)
    rows = {(r["engine"], r["batch_size"]): r for r in payload["rows"]}
    assert set(rows) == {("pytorch_fp32", 1), ("pytorch_fp32", 8), ("onnx_int8", 1), ("onnx_int8", 8)}
    int8 = rows[("onnx_int8", 1)]
    assert [(x["round"], x["speedup_p50"]) for x in int8["rounds"]] == [(1, 4.0), (3, 3.0)]
    assert (
        int8["speedup_p50"] == 3.5 and int8["p50_ms"] == 1.5 and int8["peak_rss_mib"] == 103.0 and "round" not in int8
    )
    assert [x["round"] for x in rows[("onnx_int8", 8)]["rounds"]] == [3] and rows[("onnx_int8", 8)][
        "speedup_p50"
    ] == 4.0
    assert rows[("pytorch_fp32", 1)]["p50_ms"] == 6.0
    assert int8["p50_with_copies_ms"] == 2.0 and rows[("pytorch_fp32", 1)]["p50_with_copies_ms"] == 7.0
    from bench.report import format_markdown

    payload.update(
        arch="bert-base",
        artifact="a",
        artifact_version="v",
        data="d",
        finished="f",
        created="c",
        machine={
            "cpu_model": "cpu",
            "physical_cores": 1,
            "cpu_flags": {},
            "gpu": None,
            "versions": {},
            "load_average_at_start": 0,
        },
    )
    md = format_markdown(payload)
    assert "p50 with the host copies, per call" in md
    assert "pytorch_fp32 batch 1: 7.000 ms (model call 6.000)" in md
    assert "onnx_int8 batch 1: 2.000 ms (model call 1.500); onnx_int8 batch 8: 2.500 ms (model call 2.000)" in md
    # the check both ways, each ratio within a round: model call against model call (the verdict), and with each side's
    # copies in its time (round 1: 5.0 / 1.5, round 3: 7.0 / 2.5)
    assert (
        "3.50x (at least 4x, median of 2 rounds: 3.00x-4.00x, 1 of 2 at or over 4x) -> MISS; with each side's host "
        "copies in its time: 3.07x"
    ) in md
    check = next(c for c in payload["checks"] if c["check"].startswith("int8 CPU p50 latency"))
    assert check["rounds"] == [4.0, 3.0] and check["value"] == 3.5 and check["passed"] is False


def test_throughput_ratios_and_checks_point_the_right_way():
    """Faster is a ratio over 1 both ways: int8 at 1 ms per batch of 32 against PyTorch's 4 ms is 4x the
    sentences/s; the GPU throughput check compares fp16 ONNX with fp16 PyTorch at batch 128."""
    from bench.config import BenchConfig

    def result(engine: str, device: str, ms: dict[int, float]) -> dict:
        rows = [
            {
                "batch_size": b,
                "p50_ms": t,
                "p95_ms": t,
                "p99_ms": t,
                "mean_ms": t,
                "sentences_per_s": b * 1000 / t,
                "passes": 1,
                "timed_calls": 1,
                "batches": 1,
                "peak_rss_mib": 1.0,
                "predictions": [0, 1],
            }
            for b, t in ms.items()
        ]
        return {"engine": engine, "device": device, "model_bytes": 1e6, "round": 1, "rows": rows}

    rounds = [
        [
            result("pytorch_fp32", "cpu", {1: 4.0, 32: 4.0}),
            result("onnx_int8", "cpu", {1: 2.0, 32: 1.0}),
            result("pytorch_fp16", "cuda", {128: 6.0}),
            result("onnx_fp16_cuda", "cuda", {128: 2.0}),
        ]
    ]
    payload = _payload(BenchConfig(artifact_dir=Path("a"), end_to_end=False), rounds)
    rows = {(r["engine"], r["batch_size"]): r for r in payload["rows"]}
    assert rows[("onnx_int8", 32)]["speedup_throughput"] == 4.0 and rows[("onnx_int8", 1)]["speedup_p50"] == 2.0
    checks = {c["check"]: c for c in payload["checks"]}
    cpu = checks["int8 CPU sentences/s vs PyTorch fp32 eager, batch 32"]
    assert cpu["value"] == 4.0 and cpu["passed"] is True
    gpu = checks["ONNX fp16 CUDA sentences/s vs PyTorch fp16 eager (model.half()), batch 128"]
    assert gpu["value"] == 3.0 and gpu["passed"] is True
    assert checks["int8 CPU p50 latency vs PyTorch fp32 eager, batch 1"]["passed"] is False  # 2x < 4x
    from bench.report import missed_checks

    # --check fails on exactly the measured misses; the GPU latency checks (no batch 1 on CUDA here) are not misses
    assert missed_checks(payload) == [
        "int8 CPU p50 latency vs PyTorch fp32 eager, batch 1: 2.00x (at least 4x) -> MISS"
    ]


def test_check_flag_exits_3_naming_the_missed_checks(tiny_artifact, synthetic_cola, tmp_path):
    """`bench --check`: a measured check that misses makes the command exit 3 with one line naming it, after the
    outputs are written; a check that is met, or cannot be measured, is not named. The checks are data: this run
    holds one no engine can meet and one every engine meets."""
    import subprocess
    import sys

    from tests.conftest import REPO

    code = (
        "import sys; import bench.report as report; report.CHECKS = ["
        "('int8 out of reach', 'onnx_int8', 'pytorch_fp32', 1, 'speedup_p50', 1e9), "
        "('int8 within reach', 'onnx_int8', 'pytorch_fp32', 1, 'speedup_p50', 0.0), "
        "('fp16 on CUDA', 'onnx_fp16_cuda', 'pytorch_fp32', 1, 'speedup_p50', 1e9)]; "
        "from bertpack.cli import main; sys.argv = ['bertpack', *sys.argv[1:]]; main()"
    )
    out = tmp_path / "out"
    args = [
        "bench",
        str(tiny_artifact),
        "--out",
        str(out),
        "--data",
        str(synthetic_cola),
        "--sentences",
        "8",
        "--batch-sizes",
        "1",
        "--engines",
        "pytorch_fp32,onnx_int8",
        "--no-end-to-end",
        "--no-profile",
        *QUICK,
        "--check",
    ]
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 3, proc.stderr[-2000:]
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith(f"error: 1 check missed ({out} holds the results): int8 out of reach: ") and "MISS" in error
    assert "within reach" not in error and "CUDA" not in error
    payload = json.loads((out / "bench.json").read_text())
    assert [c["passed"] for c in payload["checks"]][:3] == [False, True, None] and "--check" in payload["command"]
    assert "Checks (`--check` exits 3 when a measured one misses):" in proc.stdout


def test_bench_statistics_and_scores_match_an_independent_computation(synthetic_cola, tmp_path, monkeypatch):
    """A worker's p50/p95/p99, mean and sentences/s are those of its timed calls (every call of every pass), and each
    engine's MCC, accuracy, agreement and MCC delta are sklearn's on its predictions put back in the sentences' order.
    The model is real and predicts both classes (the tiny test model otherwise answers one class everywhere, where a
    shuffled prediction order scores the same); the clock is the worker's, advanced by each call by a known time."""
    import random
    import types

    import numpy as np
    import torch
    from sklearn.metrics import accuracy_score, matthews_corrcoef
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import bench.worker as worker
    from bench.report import _round_rows
    from bertpack.data import validation_sentences
    from tests.conftest import make_balanced_tiny_run

    sentences, labels, domains = validation_sentences(synthetic_cola)
    folder = make_balanced_tiny_run(tmp_path / "run", sentences) / "model"
    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForSequenceClassification.from_pretrained(str(folder)).eval()
    with torch.no_grad():  # each sentence alone, in input order: no batching, no padding
        alone = np.array([int(model(**tok(s, return_tensors="pt")).logits.argmax()) for s in sentences])
    assert 0 < alone.sum() < len(alone) and matthews_corrcoef(labels, alone) != 0.0

    clock = types.SimpleNamespace(now=0.0, durations=[])
    monkeypatch.setattr(worker, "time", types.SimpleNamespace(perf_counter=lambda: clock.now))
    rng = random.Random(0)

    class Clocked(worker.TorchEngine):
        def run(self, prepared):
            out = super().run(prepared)
            seconds = rng.uniform(0.001, 0.050)
            clock.now += seconds
            clock.durations.append(seconds)
            return out

    engine = Clocked(str(folder), "fp32", "cpu", 1)
    ids = [tok(s)["input_ids"] for s in sentences]
    spec = {
        "ids": ids,
        "pad_id": tok.pad_token_id,
        "input_names": ["input_ids", "attention_mask", "token_type_ids"],
        "max_passes": 5,
        "min_time_s": 0,
        "min_samples": 1,
    }
    rows = []
    for batch_size in (1, 8):
        clock.durations.clear()
        batches = -(-len(ids) // batch_size)
        row = worker.measure_batch_size(engine, {**spec, "min_samples": 2 * batches + 1}, batch_size)  # so 3 passes
        timed = np.array(clock.durations[batches:]) * 1000  # after one warm-up call per batch
        assert (row["batches"], row["passes"], row["timed_calls"]) == (batches, 3, 3 * batches)
        for key, q in (("p50_ms", 50), ("p95_ms", 95), ("p99_ms", 99)):
            assert row[key] == pytest.approx(np.percentile(timed, q), rel=1e-9), key
        assert row["mean_ms"] == pytest.approx(timed.mean(), rel=1e-9)
        assert row["sentences_per_s"] == pytest.approx(3 * len(ids) / (timed.sum() / 1000), rel=1e-9)
        assert row["predictions"] == alone.tolist()  # back in the sentences' order
        rows.append(row)

    other = alone.copy()
    other[: len(other) // 3] ^= 1  # a second engine that disagrees on a third of the sentences
    results = [
        {"engine": "pytorch_fp32", "device": "cpu", "round": 1, "model_bytes": 1, "rows": rows},
        {
            "engine": "onnx_int8",
            "device": "cpu",
            "round": 1,
            "model_bytes": 1,
            "rows": [dict(r, predictions=other.tolist()) for r in rows],
        },
    ]
    scored = _round_rows(results, labels, domains, speed_only=False)
    for out in scored:
        preds = alone if out["engine"] == "pytorch_fp32" else other
        assert out["mcc"] == pytest.approx(matthews_corrcoef(labels, preds), abs=1e-12)
        assert out["accuracy"] == pytest.approx(accuracy_score(labels, preds), abs=1e-12)
        assert out["agreement"] == pytest.approx(100.0 * np.mean(preds == alone))
        assert out["mcc_delta"] == pytest.approx(
            matthews_corrcoef(labels, preds) - matthews_corrcoef(labels, alone), abs=1e-12
        )
    assert any(out["mcc_delta"] != 0.0 for out in scored)


def test_padding_ratio_counts_padded_tokens_per_real_token():
    from bench.batches import fixed_padding_stats, make_batches, padding_stats

    stats = padding_stats(make_batches([[101, 102], [101, 7, 8, 102]], 2, 0, ["input_ids", "attention_mask"]))
    assert (stats["real_tokens"], stats["computed_tokens"]) == (6, 8) and stats["padding_ratio"] == pytest.approx(2 / 6)
    # The book's way: every sentence padded (or cut) to 8 tokens; the 10-token one counts 8 real tokens.
    book = fixed_padding_stats([[101, 102], [101, 7, 8, 102], [101, *range(8), 102]], 32, 8)
    assert (book["real_tokens"], book["computed_tokens"]) == (14, 24) and book["padding_ratio"] == pytest.approx(
        10 / 14
    )


def test_torch_engine_stages_each_call_and_refuses_an_unstaged_one(tiny_run, synthetic_cola):
    """PyTorch's engine moves each batch to the device in stage() (on a CPU: the same tensors) and runs what was
    staged; with its copies timed, as on CUDA, it reports them, and every call answers for its own batch."""
    import numpy as np
    import torch
    from transformers import AutoTokenizer

    from bench.worker import TorchEngine, measure_batch_size
    from bertpack.data import validation_sentences

    class Recorded(TorchEngine):
        def to_numpy(self, out):
            logits = super().to_numpy(out)
            self.answers.append((self._staged[0], logits))
            return logits

    engine = Recorded(str(tiny_run / "model"), "fp32", "cpu", 1)
    assert engine.host_copies is False  # nothing to copy on a CPU; timed anyway below, as on CUDA
    engine.host_copies, engine.answers = True, []
    tok = AutoTokenizer.from_pretrained(str(tiny_run / "model"))
    ids = [tok(s)["input_ids"] for s in validation_sentences(synthetic_cola)[0][:6]]
    spec = {
        "ids": ids,
        "pad_id": tok.pad_token_id,
        "input_names": ["input_ids", "attention_mask", "token_type_ids"],
        "max_passes": 1,
        "min_time_s": 0,
        "min_samples": 1,
    }
    row = measure_batch_size(engine, spec, 2)
    assert row["timed_calls"] == 3 and row["p50_with_copies_ms"] >= row["p50_ms"]
    assert len(engine.answers) == 6  # 3 warm-up calls, 3 timed
    with torch.no_grad():
        for batch, logits in engine.answers:
            np.testing.assert_allclose(logits, engine.model(**batch).logits.numpy(), atol=1e-6)
    # three batches, three different answers
    assert len({tuple(np.round(logits[0], 4)) for _, logits in engine.answers}) == 3
    with pytest.raises(RuntimeError, match="without stage"):
        engine.run({"input_ids": torch.zeros((1, 4), dtype=torch.long)})


def test_graph_engine_times_the_model_call_and_its_copies_apart(tiny_artifact, synthetic_cola):
    """The CUDA-graph engine (bench.worker.OnnxGraphEngine) driven through a CPU session and CPU buffers, as the GPU
    cannot run here: its copies into the graph's fixed inputs and out of it happen outside the row's clock, like every
    GPU row's transfers, and are in p50_with_copies_ms; every call, timed ones included, answers for its own batch."""
    import time

    import numpy as np

    from bench.worker import OnnxGraphEngine, measure_batch_size
    from bertpack.data import validation_sentences
    from serving.engine import OnnxClassifier
    from serving.cuda import CudaGraphs

    class SlowCopies(OnnxGraphEngine):
        def __init__(self):  # the real engine opens the fp16 model on CUDA; here the same class on a CPU session
            self.clf = OnnxClassifier(tiny_artifact, variant="optimized", device="cpu", buckets=(16, 32, 64))
            self.clf.graphs = CudaGraphs(
                self.clf.session,
                self.clf.input_names,
                self.clf.output_name,
                len(self.clf.labels),
                self.clf.pad_id,
                device="cpu",
            )
            self.answers = []  # (batch, logits) of every call

        def stage(self, prepared):  # copies this slow would dominate the row if they were inside its clock
            time.sleep(0.02)
            super().stage(prepared)

        def to_numpy(self, out):
            time.sleep(0.02)
            logits = super().to_numpy(out)
            self.answers.append((self._staged[0], logits))
            return logits

    engine = SlowCopies()
    ids = engine.clf.encode(validation_sentences(synthetic_cola)[0][:12])
    spec = {
        "ids": ids,
        "pad_id": engine.clf.pad_id,
        "input_names": engine.clf.input_names,
        "max_passes": 1,
        "min_time_s": 0,
        "min_samples": 1,
    }
    row = measure_batch_size(engine, spec, 4)
    assert row["timed_calls"] == 3 and row["p50_with_copies_ms"] >= 40.0
    assert row["p50_ms"] < 20.0, "the copies were timed with the model call"
    assert len(engine.answers) == 6  # 3 warm-up calls, 3 timed
    for batch, logits in engine.answers:
        np.testing.assert_allclose(
            logits,
            engine.clf.run(
                engine.clf.pad([list(r[m == 1]) for r, m in zip(batch["input_ids"], batch["attention_mask"])])
            ),
            atol=1e-5,
        )
    # three batches, three different answers
    assert len({tuple(np.round(logits[0], 4)) for _, logits in engine.answers}) == 3
    with pytest.raises(RuntimeError, match="without stage"):
        engine.run({"input_ids": np.zeros((1, 16), dtype=np.int64)})


def test_bert_base_arch_reuses_an_export_and_reports_speed_only(tiny_artifact, synthetic_cola, tmp_path):
    export_dir = tmp_path / "export"
    shutil.copytree(tiny_artifact, export_dir / "artifact")  # stands in for the random BERT-base export (minutes)
    template = tmp_path / "template"  # bert-base reads only the tokenizer and settings: no model files needed
    shutil.copytree(tiny_artifact, template, ignore=shutil.ignore_patterns("*.onnx", "*.onnx_data"))
    out = tmp_path / "out"
    proc = run_cli(
        "bench",
        str(template),
        "--arch",
        "bert-base",
        "--export-dir",
        str(export_dir),
        "--out",
        str(out),
        "--data",
        str(synthetic_cola),
        "--sentences",
        "16",
        "--batch-sizes",
        "4",
        "--engines",
        "pytorch_fp32,onnx_int8",
        "--no-end-to-end",
        "--no-profile",
        *QUICK,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "reusing the export" in proc.stdout
    payload = json.loads((out / "bench.json").read_text())
    assert payload["speed_only"] and payload["arch"] == "bert-base"
    assert {r["engine"] for r in payload["rows"]} == {"pytorch_fp32", "onnx_int8"}
    assert all(r["mcc"] is None for r in payload["rows"])
    assert not any(c["check"].startswith("int8 MCC") for c in payload["checks"])
    # ... but the tokenizer it does read is checked against the manifest
    (template / "tokenizer.json").write_text("{}")
    proc = run_cli(
        "bench",
        str(template),
        "--arch",
        "bert-base",
        "--export-dir",
        str(export_dir),
        "--out",
        str(tmp_path / "out2"),
        "--data",
        str(synthetic_cola),
    )
    assert proc.returncode == 2 and "tokenizer.json is" in proc.stderr and "re-run bertpack export" in proc.stderr
    assert not (tmp_path / "out2").exists()


def _with_unloadable_int8(artifact: Path, art: Path) -> Path:
    """A copy of the artifact whose int8 file matches its manifest entry but is not an ONNX model (ORT refuses it)."""
    import hashlib

    shutil.copytree(artifact, art)
    manifest = json.loads((art / "manifest.json").read_text())
    junk = b"not an ONNX model" * 50
    (art / "model_int8.onnx").write_bytes(junk)
    manifest["files"]["model_int8.onnx"] = {"sha256": hashlib.sha256(junk).hexdigest(), "bytes": len(junk)}
    (art / "manifest.json").write_text(json.dumps(manifest))
    return art


def test_an_engine_that_fails_is_an_error_after_the_others_are_written(tiny_artifact, synthetic_cola, tmp_path):
    """A model file that matches its manifest but that ONNX Runtime refuses fails its engine's worker: the other
    engines' results are still written, and the exit status says the bench is incomplete (one line naming it)."""
    art = _with_unloadable_int8(tiny_artifact, tmp_path / "art")
    out = tmp_path / "out"
    proc = run_cli(
        "bench",
        str(art),
        "--out",
        str(out),
        "--data",
        str(synthetic_cola),
        "--sentences",
        "8",
        "--batch-sizes",
        "4",
        "--engines",
        "pytorch_fp32,onnx_fp32,onnx_int8",
        "--no-end-to-end",
        "--no-profile",
        *QUICK,
    )
    err = proc.stderr.strip()
    assert proc.returncode == 2 and err.startswith("error: 1 engine failed") and len(err.splitlines()) == 1, (
        proc.stderr[-2000:]
    )
    assert "onnx_int8: failed" in err and "Traceback" not in err
    payload = json.loads((out / "bench.json").read_text())
    assert {r["engine"] for r in payload["rows"]} == {"pytorch_fp32", "onnx_fp32"}
    assert [s["engine"] for s in payload["skipped"]] == ["onnx_int8"]


def test_a_failed_end_to_end_side_is_an_error(tiny_artifact, synthetic_cola, tmp_path):
    """The serving path runs the artifact's CPU default (int8 here); ORT refusing it fails that side: exit 2, named."""
    art = _with_unloadable_int8(tiny_artifact, tmp_path / "art")
    assert json.loads((art / "manifest.json").read_text())["serving_default"]["cpu"] == "int8"
    out = tmp_path / "out"
    proc = run_cli(
        "bench",
        str(art),
        "--out",
        str(out),
        "--data",
        str(synthetic_cola),
        "--sentences",
        "8",
        "--batch-sizes",
        "4",
        "--engines",
        "pytorch_fp32",
        "--e2e-sentences",
        "8",
        "--no-profile",
        *QUICK,
    )
    err = proc.stderr.strip()
    assert proc.returncode == 2 and "end_to_end:serving: failed" in err and len(err.splitlines()) == 1, proc.stderr[
        -2000:
    ]
    assert [s["engine"] for s in json.loads((out / "bench.json").read_text())["skipped"]] == ["end_to_end:serving"]


def test_failed_engines_are_named_once_each():
    """With --rounds an engine can fail in several rounds (one skipped entry each) and keep its row from the others."""
    from bench.runner import failed_engines

    skipped = [
        {"engine": "onnx_fp16_cuda", "reason": "no GPU (CUDA provider not usable)"},
        {"engine": "onnx_int8", "reason": "failed in round 2 (its row holds the other rounds): boom"},
        {"engine": "onnx_int8", "reason": "failed in round 3 (its row holds the other rounds): boom"},
        {"engine": "onnx_fp32", "reason": "failed: bad file"},
    ]
    line = failed_engines(skipped, Path("out"))
    assert line.startswith(
        "2 engines failed (out holds the rest): onnx_int8: failed in round 2 (its row holds the other rounds): boom "
        "(and 1 more rounds) | onnx_fp32: failed: bad file;"
    ), line
    assert failed_engines(skipped[:1], Path("out")) is None  # skipped for want of a GPU is not a failure


def test_worker_peak_memory_is_its_own_not_its_parents():
    """Linux carries ru_maxrss across exec: a worker spawned by a 600 MiB parent would report 600 MiB."""
    import subprocess
    import sys

    from tests.conftest import REPO

    ballast = bytearray(600 * 2**20)
    ballast[::4096] = b"\x01" * len(ballast[::4096])  # touch every page, so it is resident
    code = "from bench.worker import _peak_rss_mib; print(_peak_rss_mib())"
    peak = float(
        subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    )
    del ballast
    assert 5 < peak < 300, peak


def test_int8_candidates_fused_and_unfused(tiny_artifact, tmp_path):
    import collections

    import onnx
    import onnxruntime as ort

    from bench.int8_candidates import build_candidates

    manifest = json.loads((tiny_artifact / "manifest.json").read_text())
    models = build_candidates(tiny_artifact, manifest, tmp_path)
    ops = collections.Counter(n.op_type for n in onnx.load(str(models["int8_fused_all"])).graph.node)
    assert ops["QAttention"] == 2 and ops["Attention"] == 0 and ops["MatMul"] == 0  # one per layer of the tiny model
    ops = collections.Counter(n.op_type for n in onnx.load(str(models["int8_unfused"])).graph.node)
    assert ops["QAttention"] == 0 and ops["Softmax"] == 2 and ops["MatMulInteger"] > 0
    ops = collections.Counter(n.op_type for n in onnx.load(str(models["int8_fused_fp32_attention"])).graph.node)
    assert ops["Attention"] == 2 and ops["MatMulInteger"] > 0
    for path in models.values():
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_bench_of_a_model_store_copy(tiny_artifact, synthetic_cola, tmp_path):
    """The model store's copy has no fp32 reference graph: bench still runs (fp32 skipped with the reason, the
    tokenizer from `optimized`), and --int8-candidates, which needs the unfused graph, says where it is in one line."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    code = (
        "import json, sys; from export.store import register; print(register(sys.argv[1], "
        "json.load(open(sys.argv[2]))))"
    )
    reg = subprocess.run(
        [sys.executable, "-c", code, str(tiny_artifact), str(tiny_artifact / "manifest.json")],
        cwd=REPO,
        env={**os.environ, "BENTOML_HOME": str(tmp_path / "home")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert reg.returncode == 0, reg.stderr[-2000:]
    stored = tmp_path / "home" / "models" / "bertpack-cola" / reg.stdout.strip().splitlines()[-1].split(":")[1]
    assert not (stored / "model.onnx").exists()
    common = [
        "--data",
        str(synthetic_cola),
        "--sentences",
        "8",
        "--batch-sizes",
        "4",
        "--no-end-to-end",
        "--no-profile",
        *QUICK,
    ]
    proc = run_cli(
        "bench",
        str(stored),
        "--out",
        str(tmp_path / "out"),
        "--engines",
        "pytorch_fp32,onnx_fp32,onnx_optimized",
        *common,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    payload = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert {r["engine"] for r in payload["rows"]} == {"pytorch_fp32", "onnx_optimized"}
    assert payload["skipped"] == [{"engine": "onnx_fp32", "reason": "the artifact has no fp32 variant"}]
    proc = run_cli(
        "bench", str(stored), "--out", str(tmp_path / "out2"), "--engines", "pytorch_fp32", "--int8-candidates", *common
    )
    err = proc.stderr.strip()
    assert proc.returncode == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, proc.stderr[-2000:]
    assert "--int8-candidates needs the unfused fp32 graph (model.onnx)" in err and str(tiny_artifact.resolve()) in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--engines", "pytorch_fp32,warp_drive"], "unknown engine"),
        (["--engines", "onnx_int8"], "must include pytorch_fp32"),
        (["--batch-sizes", "1,x"], "comma-separated integers"),
        (["--arch", "gpt"], "--arch must be one of"),
        (["--extra-model", "nothing"], "NAME=PATH"),
        (["--extra-model", "a/b=model.onnx"], "the name (engine file:NAME, also a file name) may hold only"),
        (["--rounds", "0"], "--rounds must be >= 1"),
        (
            ["--batch-sizes", "1,8", "--profile-batch-size", "32"],
            "--profile-batch-size 32 is not one of --batch-sizes 1,8",
        ),
    ],
)
def test_bad_options_are_one_line_errors(tiny_artifact, tmp_path, args, message):
    proc = run_cli("bench", str(tiny_artifact), "--out", str(tmp_path / "out"), *args)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_missing_artifact_and_foreign_out_folder(tiny_artifact, tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    proc = run_cli("bench", str(tmp_path / "nope"), "--out", str(foreign))  # the artifact is named first
    assert proc.returncode == 2 and "artifact folder" in proc.stderr and "does not exist" in proc.stderr
    proc = run_cli("bench", str(tiny_artifact), "--out", str(foreign))
    assert proc.returncode == 2 and "not a previous bench output" in proc.stderr
    assert (foreign / "notes.txt").read_text() == "keep me"
    # a previous bench is replaced whole, so not when other files sit beside it (they would be deleted)
    (foreign / "bench.json").write_text("{}")
    (foreign / "A").mkdir()
    proc = run_cli("bench", str(tiny_artifact), "--out", str(foreign))
    assert proc.returncode == 2 and "holds a previous bench but also A, notes.txt" in proc.stderr, proc.stderr[-2000:]
    assert (foreign / "notes.txt").read_text() == "keep me" and (foreign / "A").is_dir()


def test_profile_batch_size_defaults_to_one_that_is_measured(tiny_artifact, tmp_path):
    from bench.config import BenchConfig
    from bench.runner import check_config

    for sizes, wanted in (((1, 8), 8), ((1, 8, 32, 128), 32), ((64, 128), 64)):
        cfg = BenchConfig(artifact_dir=tiny_artifact, out=tmp_path / "out", batch_sizes=sizes)
        check_config(cfg)
        assert cfg.profile_batch_size == wanted, (sizes, cfg.profile_batch_size)


def test_batch_sizes_are_measured_in_increasing_order_once_each(tiny_artifact, tmp_path):
    """A worker reads its peak memory after each size and stops at the first that does not fit: both need
    increasing sizes, whatever order --batch-sizes gave."""
    from bench.config import BenchConfig
    from bench.runner import check_config

    cfg = BenchConfig(artifact_dir=tiny_artifact, out=tmp_path / "out", batch_sizes=(32, 1, 8, 32))
    check_config(cfg)
    assert cfg.batch_sizes == (1, 8, 32)


def test_out_of_memory_is_a_limit_and_any_other_error_a_failure():
    import torch

    from bench.worker import TooLarge, _does_not_fit

    assert _does_not_fit(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert _does_not_fit(MemoryError()) and _does_not_fit(TooLarge("batch 128 is over the largest CUDA-graph batch 64"))
    assert _does_not_fit(
        Exception("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory for requested buffer")
    )
    assert not _does_not_fit(RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x32 and 64x2)"))
    assert not _does_not_fit(Exception("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Got invalid dimensions for input"))


def test_an_engine_that_fails_at_a_larger_batch_keeps_the_sizes_it_measured(tiny_artifact, synthetic_cola, tmp_path):
    """A model that runs at batch 1 and errors at batch 4 (its batch axis fixed to 1): the batch-1 row is kept and the
    bench exits 2 naming the engine and the size; an error is never taken for "does not fit"."""
    import onnx

    model = onnx.load(str(tiny_artifact / "model.onnx"))
    for tensor in model.graph.input:
        tensor.type.tensor_type.shape.dim[0].dim_value = 1
    fixed = tmp_path / "batch1.onnx"
    onnx.save(model, str(fixed))
    out = tmp_path / "out"
    proc = run_cli(
        "bench",
        str(tiny_artifact),
        "--out",
        str(out),
        "--data",
        str(synthetic_cola),
        "--sentences",
        "8",
        "--batch-sizes",
        "1,4",
        "--engines",
        "pytorch_fp32",
        "--extra-model",
        f"batch1={fixed}",
        "--no-end-to-end",
        "--no-profile",
        *QUICK,
    )
    err = proc.stderr.strip()
    assert proc.returncode == 2 and err.startswith("error: 1 engine failed") and len(err.splitlines()) == 1, (
        proc.stderr[-2000:]
    )
    assert "file:batch1: failed at batch size 4: " in err and "Traceback" not in err
    payload = json.loads((out / "bench.json").read_text())
    assert {(r["engine"], r["batch_size"]) for r in payload["rows"]} == {
        ("pytorch_fp32", 1),
        ("pytorch_fp32", 4),
        ("file:batch1", 1),
    }


def test_an_engine_that_fails_in_round_one_is_not_run_again(tiny_artifact, synthetic_cola, tmp_path):
    """--rounds 2 with an int8 model that ONNX Runtime refuses: it fails once, is not retried in round 2, and is
    named once in the error (exit 2); the reference still runs both rounds."""
    art = _with_unloadable_int8(tiny_artifact, tmp_path / "art")
    out = tmp_path / "out"
    proc = run_cli(
        "bench",
        str(art),
        "--out",
        str(out),
        "--data",
        str(synthetic_cola),
        "--sentences",
        "8",
        "--batch-sizes",
        "4",
        "--engines",
        "pytorch_fp32,onnx_int8",
        "--rounds",
        "2",
        "--no-end-to-end",
        "--no-profile",
        *QUICK,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    started = [line.strip().split()[0] for line in proc.stdout.splitlines() if line.strip().endswith("(cpu) ...")]
    assert started == ["pytorch_fp32", "onnx_int8", "pytorch_fp32"]
    assert [s["engine"] for s in json.loads((out / "bench.json").read_text())["skipped"]] == ["onnx_int8"]
    assert "more rounds" not in proc.stderr


def _row(batch_size: int) -> dict:
    return {"batch_size": batch_size, "p50_ms": 1.0, "sentences_per_s": 100.0}


def test_rounds_bookkeeping_of_limits_and_failures(tmp_path, monkeypatch):
    """run_rounds' accounting over 2 rounds, on canned worker results (each worker is a process measured elsewhere):
    a size limit is noted once, not per round; an engine that measured nothing is a failure; one that failed in round 1
    is not started again; an engine with no rows adds nothing to the rounds; the reference measuring nothing stops."""
    import bench.runner as runner
    from bench.config import BenchConfig
    from bertpack.errors import BertpackError

    results = {
        "pytorch_fp32": {"rows": [_row(1), _row(8)], "skipped": []},
        "onnx_fp32": {
            "rows": [_row(1)],
            "skipped": [{"batch_size": 8, "reason": "MemoryError: "}],
        },  # a limit, both rounds
        "onnx_int8": {"rows": [], "skipped": [{"batch_size": 1, "reason": "MemoryError: "}]},  # nothing measured
        "onnx_optimized": {
            "rows": [_row(1)],
            "skipped": [],
            "failed": {"batch_size": 8, "reason": "RuntimeError: boom"},
        },
    }
    started: list[tuple[str, int]] = []

    def worker(spec, work, threads, timeout):
        started.append((spec["engine"], len(started)))
        return {"engine": spec["engine"], **results[spec["engine"]]}

    monkeypatch.setattr(runner, "run_worker", worker)
    engines = [{"engine": name, "device": "cpu"} for name in results]
    skipped: list[dict] = []
    rounds = runner.run_rounds(
        BenchConfig(artifact_dir=tmp_path, rounds=2),
        engines,
        {"profile_batch_size": None},
        skipped,
        tmp_path,
        1,
        lambda line: None,
    )
    reasons = {}
    for entry in skipped:
        reasons.setdefault(entry["engine"], []).append(entry["reason"])
    assert reasons["onnx_fp32"] == ["batch size 8 and larger not run: MemoryError: "]  # once over the two rounds
    assert all(r.startswith("failed") for r in reasons["onnx_int8"])
    assert reasons["onnx_optimized"] == ["failed at batch size 8: RuntimeError: boom"]
    assert [name for name, _ in started].count("onnx_optimized") == 1  # failed in round 1: not started again
    assert all(r["rows"] for results_ in rounds for r in results_)  # no engine without rows in the rounds
    assert {r["engine"] for r in rounds[0]} == {"pytorch_fp32", "onnx_fp32", "onnx_optimized"}
    assert runner.failed_engines(skipped, tmp_path) is not None  # exit 2

    results["pytorch_fp32"] = {"rows": [], "skipped": [{"batch_size": 1, "reason": "MemoryError: "}]}
    with pytest.raises(BertpackError, match="the reference engine pytorch_fp32 measured no batch size"):
        runner.run_rounds(
            BenchConfig(artifact_dir=tmp_path, rounds=2),
            engines,
            {"profile_batch_size": None},
            [],
            tmp_path,
            1,
            lambda line: None,
        )
