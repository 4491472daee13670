"""scripts/results.py: docs/results.md and the README's results table, written from the runs' own JSON files.
Small JSON files with the keys the producers write; the real script in a real process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

SCRIPT = REPO / "scripts" / "results.py"
BEGIN, END = "<!-- results: written by scripts/results.py from docs/results/ -->", "<!-- /results -->"
README = f"# A project\n\nIntro.\n\n{BEGIN}\nan old table\n{END}\n\nAfter the table.\n"


def metrics(mcc: float = 0.346) -> dict:
    """A run's metrics.json: `bertpack train --data /data/cola --out runs/demo --seed 1 --lr 5e-05`."""
    config = {
        "model": "embedded",
        "data": "/data/cola",
        "out": "runs/demo",
        "epochs": 6.0,
        "learning_rate": 5e-05,
        "batch_size": 32,
        "seed": 1,
        "class_weights": "balanced",
        "group_by_length": True,
        "overwrite": True,
        "resume": False,
        "limit": None,
    }
    return {
        "model": "embedded",
        "data": "/data/cola",
        "train_rows": 8551,
        "validation_rows": 1043,
        "seed": 1,
        "config": config,
        "device": "AMD EPYC 9B14 (2 cores)",
        "precision": "fp32",
        "world_size": 1,
        "best": {
            "checkpoint": "checkpoint-670",
            "accuracy": 0.727,
            "mcc": mcc,
            "mcc_in_domain": 0.415,
            "mcc_out_domain": 0.276,
        },
        "epochs": [],
        "wall_time_s": 468.0,
        "train_samples_per_second": 135.2,
        "versions": {"torch": "2.13.0"},
    }


def parity() -> dict:
    """An export's parity.json: dynamic int8 shipped, static failed."""
    tolerance = {"exact_max_logit_diff": 0.001, "exact_agreement": 100.0, "mcc_drop": 0.01, "min_agreement": 98.0}
    scores = {"accuracy": 0.7354, "mcc": 0.3544, "mcc_in_domain": 0.4182, "mcc_out_domain": 0.2879}
    rows = [
        {
            "variant": "pytorch fp32",
            **scores,
            "agreement": 100.0,
            "max_abs_logit_diff": 0.0,
            "mean_abs_logit_diff": 0.0,
            "bytes": None,
            "status": "reference",
        },
        {
            "variant": "optimized",
            **scores,
            "agreement": 100.0,
            "max_abs_logit_diff": 1.02e-05,
            "mean_abs_logit_diff": 1.4e-06,
            "bytes": 90_900_000,
            "status": "pass",
        },
        {"variant": "fp16", "bytes": 45_500_000, "status": "not checked (no GPU)"},
        {
            "variant": "int8",
            "method": "dynamic",
            "accuracy": 0.7383,
            "mcc": 0.3620,
            "mcc_in_domain": 0.4328,
            "mcc_out_domain": 0.2879,
            "agreement": 98.95,
            "max_abs_logit_diff": 0.623,
            "mean_abs_logit_diff": 0.0706,
            "bytes": 33_600_000,
            "flip_rate": 0.96,
            "status": "pass",
        },
    ]
    return {
        "source": "/work/runs/demo/model",
        "created": "2026-11-26T14:01:16+00:00",
        "sentences": 1043,
        "data": "/data/cola",
        "provider": "CPUExecutionProvider",
        "tolerance": tolerance,
        "rows": rows,
        "quantization_target": "avx512_vnni",
        "failures": [],
        "int8_tries": {"dynamic": [{"try": 1}]},
        "int8_choice": "dynamic (flip rate 0.96%)",
        "int8_method": "dynamic",
        "serving_default_cpu": "int8",
        "warnings": [],
    }


def manifest() -> dict:
    return {
        "version": "20261126-140116-4ad65fcc",
        "cpu_flags": {"model": "AMD EPYC 9B14", "quantization_target": "avx512_vnni", "flags": {}},
    }


def bench(int8_ms: float = 0.92, command: str | None = "bertpack bench artifacts/demo --out bench-out/epyc") -> dict:
    """bench.json of a CPU bench: PyTorch fp32 and int8 at batch 1 and 32, the end-to-end comparison."""

    def row(engine: str, batch: int, p50: float, ref: float) -> dict:
        rate = batch * 1000 / p50
        return {
            "engine": engine,
            "device": "cpu",
            "batch_size": batch,
            "p50_ms": p50,
            "sentences_per_s": rate,
            "speedup_p50": ref / p50,
            "speedup_throughput": ref / p50,
            "mcc": 0.3457,
            "agreement": 100.0,
        }

    rows = [
        row("pytorch_fp32", 1, 6.0, 6.0),
        row("pytorch_fp32", 32, 46.0, 46.0),
        row("onnx_int8", 1, int8_ms, 6.0),
        row("onnx_int8", 32, 16.0, 46.0),
    ]
    e2e = {
        "sentences": 256,
        "batch_size": 32,
        "speedup": 25.0,
        "book": {"sentences_per_s": 56.5, "pad_to": 128},
        "serving": {"sentences_per_s": 1412.5, "variant": "int8", "provider": "CPUExecutionProvider"},
    }
    checks = [
        {
            "check": "int8 CPU p50 latency vs PyTorch fp32 eager, batch 1",
            "target": 4.0,
            "value": 6.0 / int8_ms,
            "passed": 6.0 / int8_ms >= 4.0,
        }
    ]
    return {
        "format": "bertpack-bench/1",
        "command": command,
        "created": "2026-11-27T16:21:00+00:00",
        "arch": "finetuned",
        "speed_only": False,
        "artifact": "artifacts/demo",
        "sentences": 1043,
        "settings": {
            "threads": 2,
            "rounds": 1,
            "artifact_dir": "artifacts/demo",
            "out": "bench-out/epyc",
            "batch_sizes": [1, 32],
            "engines": ["pytorch_fp32", "onnx_int8"],
            "min_time_s": 2.0,
        },
        "machine": {"cpu_model": "AMD EPYC 9B14", "physical_cores": 2, "gpu": None},
        "rows": rows,
        "end_to_end": e2e,
        "checks": checks,
    }


def loadtest() -> dict:
    """The JSON of scripts/loadtest.py: the no-op service, the pipeline peer and bertpack with one worker."""

    def server(rate: float, p50: float, batched: float, lone: float) -> dict:
        return {
            "single": {"requests_per_s": rate, "p50_ms": p50, "p99_ms": p50 * 2, "errors": {}},
            "batched": {"sentences_per_s": batched, "errors": {}},
            "lone": {"p50_ms": lone},
            "lone_after_load": {"p50_ms": lone * 3},
        }

    servers = {
        "noop": server(980.0, 50.0, 9000.0, 1.0),
        "pipeline": server(150.0, 400.0, 300.0, 9.0),
        "bertpack-1w": server(420.0, 140.0, 1100.0, 3.5),
    }
    servers["bertpack-1w"]["ratios"] = {
        "of_bound": 0.72,
        "batched_of_bound": 0.9,
        "lone_p50_over_engine_ms": 1.5,
        "of_peer": 2.8,
        "lone_p50_of_peer": 0.39,
    }
    return {
        "command": "python scripts/loadtest.py --model artifacts/demo --json-out docs/results/loadtest.json",
        "date": "2026-12-08T10:00:00+00:00",
        "machine": {"cpu": "AMD EPYC 9B14", "cpus": 2},
        "artifact": "demo",
        "variant": "int8",
        "servers": servers,
        "engine": {
            "provider": "CPUExecutionProvider",
            "best_batch": 32,
            "best_sentences_per_s": 1700.0,
            "lone": {"p50_ms": 2.0},
        },
        "settings": {"client": "aiohttp", "clients": 64, "batch_clients": 16, "per_request": 16},
        "bound": {"single": 620.0, "batched": 1430.0},
    }


def write(path: Path, record: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    return path


def run(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    paths = [
        "--results",
        str(tmp / "results"),
        "--out",
        str(tmp / "docs" / "results.md"),
        "--readme",
        str(tmp / "README.md"),
    ]
    return subprocess.run(
        [sys.executable, str(SCRIPT), *paths, *args], capture_output=True, text=True, cwd=tmp, timeout=120
    )


def setup(tmp: Path) -> None:
    (tmp / "docs").mkdir()
    (tmp / "results").mkdir()
    (tmp / "README.md").write_text(README)


def table(readme: str) -> str:
    return readme.split(BEGIN, 1)[1].split(END, 1)[0]


def test_every_section_says_not_measured_yet_without_its_file(tmp_path):
    setup(tmp_path)
    proc = run(tmp_path)
    assert proc.returncode == 0, proc.stderr
    page = (tmp_path / "docs" / "results.md").read_text()
    for heading in ("## Model quality", "## Export parity", "## CPU speed", "## GPU speed", "## Served rate"):
        section = page.split(heading, 1)[1].split("\n## ", 1)[0]
        assert "Not measured yet: add" in section and "python scripts/results.py add" in section, heading
    readme = (tmp_path / "README.md").read_text()
    assert "an old table" not in readme and table(readme).count("not measured yet") == 5
    assert readme.startswith("# A project\n\nIntro.\n\n") and readme.endswith("\n\nAfter the table.\n")


def test_figures_machines_dates_and_commands_come_from_the_files(tmp_path):
    setup(tmp_path)
    results = tmp_path / "results"
    write(results / "train-metrics.json", {**metrics(), "measured_on": "2026-11-27T15:46:00+00:00"})
    write(results / "parity.json", parity())
    write(results / "export-manifest.json", manifest())
    write(results / "bench.json", bench())
    write(results / "loadtest.json", loadtest())
    runs = [
        {
            "run": f"seed{k}",
            "recipe": "the default recipe",
            "mcc": mcc,
            "mcc_in_domain": 0.4,
            "mcc_out_domain": 0.3,
            "accuracy": 0.73,
        }
        for k, mcc in ((42, 0.346), (1, 0.308), (2, 0.327))
    ]
    runs.append(
        {
            "run": "soup",
            "soup": True,
            "method": "uniform",
            "recipe": "uniform soup of seed42, seed1, seed2",
            "mcc": 0.335,
        }
    )
    write(
        results / "quality" / "seeds.json",
        {"rows": runs, "single_runs": {"mcc": {"mean": 0.327, "sd": 0.019, "min": 0.308, "max": 0.346}}},
    )
    (results / "gpu").mkdir()
    shutil.copyfile(REPO / "docs" / "results" / "gpu" / "bert-base.json", results / "gpu" / "h100.json")
    proc = run(tmp_path)
    assert proc.returncode == 0, proc.stderr
    page = (tmp_path / "docs" / "results.md").read_text()

    quality = page.split("## Model quality", 1)[1].split("\n## ", 1)[0]
    assert "| **0.346** | 0.415 | 0.276 | 0.727 | checkpoint-670 | 7.8 min | 135 |" in quality
    assert "Machine: AMD EPYC 9B14 (2 cores), fp32. Date: 2026-11-27 15:46 UTC." in quality
    # options that differ from today's defaults, and only those (epochs 6 and batch 32 are the defaults)
    assert "bertpack train --data /data/cola --out runs/demo --lr 5e-05 --seed 1\n" in quality

    seeds = page.split("## Runs compared: seeds", 1)[1].split("\n## ", 1)[0]
    assert "| seed1 | the default recipe | 0.308 | 0.400 | 0.300 | 0.730 |" in seeds
    assert "over the 3 single runs: mean 0.327 ± 0.019 (sd), min 0.308, max 0.346." in seeds

    export = page.split("## Export parity", 1)[1].split("\n## ", 1)[0]
    assert "Machine: AMD EPYC 9B14. Date: 2026-11-26 14:01 UTC." in export
    assert "bertpack export /work/runs/demo --data /data/cola --int8 dynamic\n" in export
    assert "| int8 (dynamic) | 0.7383 | 0.3620 | 0.4328 | 0.2879 | 98.95 | 6.23e-01 | 0.96 | 33.6 | pass |" in export

    cpu = page.split("## CPU speed", 1)[1].split("\n## ", 1)[0]
    assert "bertpack bench artifacts/demo --out bench-out/epyc\n" in cpu and "Command:" in cpu
    assert (
        "| `onnx_int8` | 0.92 ms (6.52x), 1,087/s (6.52x) | 16.00 ms (2.88x), 2,000/s (2.88x) | 0.3457 | 100.0 |" in cpu
    )
    assert "**25.0x**" in cpu
    assert "- int8 CPU p50 latency vs PyTorch fp32 eager, batch 1: 6.52x (at least 4x): pass" in cpu

    gpu = page.split("## GPU speed: `h100`", 1)[1].split("\n## ", 1)[0]
    assert "NVIDIA H100 80GB HBM3" in gpu and "Date: 2026-11-27 21:31 UTC" in gpu
    # an older bench.json without its command line: rebuilt from its settings, and said so
    assert "Command (rebuilt from the recorded settings):" in gpu
    assert "--arch bert-base" in gpu and "--min-time 0.5" in gpu and "--rounds" not in gpu
    assert "| `onnx_fp16_cuda_graph` | 0.46 ms (9.89x)" in gpu

    served = page.split("## Served rate", 1)[1].split("\n## ", 1)[0]
    assert "python scripts/loadtest.py --model artifacts/demo --json-out docs/results/loadtest.json" in served
    assert "| bertpack-1w | 420 | 140 / 280 | 0 | 1,100 | 3.5 / 10.5 |" in served
    assert (
        "- bertpack-1w: 72% of B at one sentence, 90% at 16, 2.80x the transformers pipeline; a lone request's p50 "
        "+1.50 ms over the engine's, 39% of the pipeline's."
    ) in served

    readme = table((tmp_path / "README.md").read_text())
    assert (
        "| [model quality: validation MCC](docs/results.md#model-quality-bertpack-train) | 0.346 (in-domain 0.415, "
        "out-of-domain 0.276) | AMD EPYC 9B14 (2 cores), fp32 | 2026-11-27 |"
    ) in readme
    assert "| 6.52x p50 at batch 1, 2.88x sentences/s at batch 32 | AMD EPYC 9B14 (2 cores) | 2026-11-27 |" in readme
    assert "| 9.89x | NVIDIA H100 80GB HBM3 | 2026-11-27 |" in readme
    assert "seeds) | mean 0.327 ± 0.019 (sd); their uniform soup 0.335 |" in readme
    assert (
        "| 420 requests/s, 0 errors (2.8x the transformers pipeline) | AMD EPYC 9B14 (2 CPUs) | 2026-12-08 |" in readme
    )
    assert "not measured yet" not in readme


def test_a_replaced_file_replaces_its_figure(tmp_path):
    """`add` puts a new run's file in place of the old one: the page and the README show the new figure only."""
    setup(tmp_path)
    write(tmp_path / "results" / "bench.json", bench(int8_ms=0.92))
    assert run(tmp_path).returncode == 0
    assert "6.52x p50 at batch 1" in (tmp_path / "README.md").read_text()

    newer = write(
        tmp_path / "bench-out" / "new" / "bench.json", bench(int8_ms=1.5, command="bertpack bench artifacts/v2")
    )
    proc = run(tmp_path, "add", "bench", str(newer))
    assert proc.returncode == 0, proc.stderr
    page, readme = (tmp_path / "docs" / "results.md").read_text(), (tmp_path / "README.md").read_text()
    assert "4.00x p50 at batch 1" in readme and "6.52x" not in readme and readme.count(BEGIN) == 1
    assert "0.92 ms" not in page and "1.50 ms (4.00x)" in page and "bertpack bench artifacts/v2\n" in page
    assert json.loads((tmp_path / "results" / "bench.json").read_text())["command"] == "bertpack bench artifacts/v2"


def test_add_dates_a_metrics_json_by_its_file_and_brings_the_manifest_with_parity(tmp_path):
    """metrics.json records no date: `add` notes the file's modification time (the run's end). An export's
    manifest.json comes along with its parity.json (it names the machine)."""
    setup(tmp_path)
    source = write(tmp_path / "runs" / "demo" / "metrics.json", metrics(mcc=0.331))
    os.utime(source, (1_764_258_000, 1_764_258_000))  # 2025-11-27 15:40 UTC
    assert run(tmp_path, "add", "train", str(source)).returncode == 0
    artifact = tmp_path / "artifacts" / "demo"
    write(artifact / "parity.json", parity())
    write(artifact / "manifest.json", manifest())
    proc = run(tmp_path, "add", "parity", str(artifact / "parity.json"))
    assert proc.returncode == 0, proc.stderr
    page = (tmp_path / "docs" / "results.md").read_text()
    assert "Date: 2025-11-27 15:40 UTC" in page and "| **0.331** |" in page
    assert (tmp_path / "results" / "export-manifest.json").is_file()
    assert "Machine: AMD EPYC 9B14. Date: 2026-11-26" in page
    assert "measured_on" not in json.loads(source.read_text())  # the run's own file is left as it was


def test_runs_compared_with_several_soups_name_each_by_method(tmp_path):
    """Two seed triples, each with its greedy and uniform soup: the summary row gives every soup, grouped by method."""
    setup(tmp_path)
    rows = [{"run": f"seed{k}", "recipe": "default", "mcc": 0.3} for k in range(43, 49)]
    rows += [
        {"run": name, "soup": True, "method": method, "recipe": f"{method} soup", "mcc": mcc}
        for name, method, mcc in (
            ("a", "greedy", 0.307),
            ("b", "uniform", 0.295),
            ("c", "greedy", 0.31),
            ("d", "uniform", 0.325),
        )
    ]
    spread = {"mean": 0.3, "sd": 0.01, "min": 0.29, "max": 0.31}
    write(tmp_path / "results" / "quality" / "seeds.json", {"rows": rows, "single_runs": {"mcc": spread}})
    proc = run(tmp_path)
    assert proc.returncode == 0, proc.stderr
    readme = table((tmp_path / "README.md").read_text())
    assert "over 6 seeds: held-out validation MCC" in readme
    assert "| mean 0.300 ± 0.010 (sd); their soups: greedy 0.307 and 0.310, uniform 0.295 and 0.325 |" in readme


def test_a_threshold_that_failed_its_out_of_bag_check_is_said_to_be_kept_at_half(tmp_path):
    setup(tmp_path)
    decision = {
        "temperature": 2.0,
        "threshold": 0.5,
        "positive": 1,
        "positive_label": "acceptable",
        "fitted_on": "selection split",
        "threshold_fit": {"best_cut": 0.529, "out_of_bag_gain": -0.032, "used": False},
    }
    write(tmp_path / "results" / "train-metrics.json", {**metrics(), "decision": decision})
    proc = run(tmp_path)
    assert proc.returncode == 0, proc.stderr
    page = (tmp_path / "docs" / "results.md").read_text()
    assert (
        "Decision: p(acceptable) >= 0.500, fitted on the selection split (its best cut there, 0.529, gained -0.032 "
        "MCC out of bag, so 0.5 is kept)." in page
    )


def test_a_readme_without_the_results_block_is_a_one_line_error(tmp_path):
    setup(tmp_path)
    (tmp_path / "README.md").write_text("# A project\n")
    proc = run(tmp_path)
    assert proc.returncode != 0 and proc.stderr.strip().startswith("error: README.md has no results block")
    assert (tmp_path / "README.md").read_text() == "# A project\n"


def test_the_committed_page_is_the_one_the_committed_files_give(tmp_path):
    """docs/results.md and the README's table are what the script writes from docs/results/ (run it after adding
    a file)."""
    shutil.copyfile(REPO / "README.md", tmp_path / "README.md")
    (tmp_path / "docs").mkdir()
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--out",
            str(tmp_path / "docs" / "results.md"),
            "--readme",
            str(tmp_path / "README.md"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "docs" / "results.md").read_text() == (REPO / "docs" / "results.md").read_text()
    assert (tmp_path / "README.md").read_text() == (REPO / "README.md").read_text()
