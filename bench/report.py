"""The benchmark's outputs: the payload (bench.json), a table on screen, bench.md and bench.png."""

from __future__ import annotations

import dataclasses
import statistics
from datetime import datetime, timezone
from pathlib import Path

from bench.config import REFERENCE, BenchConfig
from bertpack.files import write_json_atomic, write_text_atomic
from bertpack.labels import COLA_NAMES

# What `bertpack bench` checks the export gained, printed under "Checks" and enforced by `--check`:
# (name, engine, compared with, batch size, measure, at least).
CHECKS = [
    ("int8 CPU p50 latency vs PyTorch fp32 eager, batch 1", "onnx_int8", REFERENCE, 1, "speedup_p50", 4.0),
    ("int8 CPU sentences/s vs PyTorch fp32 eager, batch 32", "onnx_int8", REFERENCE, 32, "speedup_throughput", 1.5),
    ("ONNX fp16 CUDA p50 latency vs PyTorch fp32 eager, batch 1", "onnx_fp16_cuda", REFERENCE, 1, "speedup_p50", 8.0),
    (
        "ONNX fp16 CUDA graph (the service's GPU path, model call) p50 latency vs PyTorch fp32 eager, batch 1",
        "onnx_fp16_cuda_graph",
        REFERENCE,
        1,
        "speedup_p50",
        8.0,
    ),
    (
        "ONNX fp16 CUDA sentences/s vs PyTorch fp16 eager (model.half()), batch 128",
        "onnx_fp16_cuda",
        "pytorch_fp16",
        128,
        "throughput_vs",
        1.5,
    ),
]
MCC_TOLERANCE = 0.01
E2E_AT_LEAST = 10.0


def _settings(cfg: BenchConfig, threads: int, split: str = "CoLA validation") -> dict:
    out = {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(cfg).items()}
    out.pop("command", None)  # recorded at the top level of bench.json
    out.update(
        threads=threads,
        batch_sizes=list(cfg.batch_sizes),
        engines=list(cfg.engines),
        timing="time.perf_counter around each batch call, after one untimed warm-up pass over every batch (every "
        "shape); "
        "inputs already on the device and logits left there for every GPU engine, CUDA synchronised before the "
        "clock is read; GPU engines are also timed per call with their copies (inputs to the device, logits "
        "back: p50_with_copies_ms)",
        batching=f"{split} sentences sorted by token count, cut into batches, each padded to its longest; "
        "the same batches for every engine",
        process="each engine in its own process; torch threads = ORT intra-op threads = `threads`, inter-op 1",
        peak_memory="peak RSS of the worker process (VmHWM: its own, not the parent's ru_maxrss carried across exec), "
        "measured after each batch size in increasing order; "
        "CUDA: torch.cuda.max_memory_allocated per batch size",
    )
    return out


def _round_rows(results: list[dict], labels: list, domains: list, speed_only: bool, num_labels: int = 2) -> list[dict]:
    """One round's table rows: every engine's figures, its speed-ups against the same round's reference."""
    from bertpack.metrics import scores as score

    ref = next(r for r in results if r["engine"] == REFERENCE)
    ref_rows = {row["batch_size"]: row for row in ref["rows"]}
    rows = []
    for res in results:
        for row in res["rows"]:
            b = row["batch_size"]
            base = ref_rows.get(b)
            preds = row["predictions"]
            scores = score(labels, preds, domains, num_labels)
            out = {
                "engine": res["engine"],
                "device": res["device"],
                "batch_size": b,
                "round": res["round"],
                **{
                    k: row[k]
                    for k in (
                        "p50_ms",
                        "p95_ms",
                        "p99_ms",
                        "mean_ms",
                        "sentences_per_s",
                        "passes",
                        "timed_calls",
                        "batches",
                    )
                },
                "speedup_p50": base["p50_ms"] / row["p50_ms"] if base else None,
                "speedup_throughput": row["sentences_per_s"] / base["sentences_per_s"] if base else None,
                "p50_with_copies_ms": row.get("p50_with_copies_ms"),
                "peak_rss_mib": row["peak_rss_mib"],
                "cuda_max_allocated_mib": row.get("cuda_max_allocated_mib"),
                "model_mb": res["model_bytes"] / 1e6,
                "mcc": None if speed_only else scores["mcc"],
                "accuracy": None if speed_only else scores["accuracy"],
                **({"macro_f1": None if speed_only else scores["macro_f1"]} if "macro_f1" in scores else {}),
                "agreement": 100.0 * sum(p == q for p, q in zip(preds, base["predictions"])) / len(preds)
                if base
                else None,
            }
            if not speed_only and base is not None:
                out["mcc_delta"] = out["mcc"] - score(labels, base["predictions"], domains)["mcc"]
            else:
                out["mcc_delta"] = None
            if "profile" in row:
                out["profile"] = row["profile"]
            rows.append(out)
    return rows


ROUND_FIELDS = (
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "mean_ms",
    "sentences_per_s",
    "speedup_p50",
    "speedup_throughput",
    "p50_with_copies_ms",
)


def _merge_rounds(per_round: list[list[dict]]) -> list[dict]:
    """With --rounds > 1: each (engine, batch size) row holds the median of its rounds' figures (speed-ups: the median
    of the per-round ratios, each against that round's reference) and every round's own figures under "rounds";
    accuracy comes from the first round (the same batches every round), peak memory is the highest."""
    if len(per_round) == 1:
        return per_round[0]
    keys = list(dict.fromkeys((r["engine"], r["batch_size"]) for rows in per_round for r in rows))
    merged = []
    for key in keys:
        same = [r for rows in per_round for r in rows if (r["engine"], r["batch_size"]) == key]
        out = {k: v for k, v in same[0].items() if k != "round"}  # accuracy and profile: the first round that has it
        for field in ROUND_FIELDS:
            values = [r[field] for r in same if r[field] is not None]
            out[field] = statistics.median(values) if values else None
        out["peak_rss_mib"] = max(r["peak_rss_mib"] for r in same)
        allocated = [r["cuda_max_allocated_mib"] for r in same if r["cuda_max_allocated_mib"] is not None]
        out["cuda_max_allocated_mib"] = max(allocated) if allocated else None
        out["rounds"] = [{"round": r["round"], **{field: r[field] for field in ROUND_FIELDS}} for r in same]
        merged.append(out)
    return merged


def _check_value(by_engine: dict, engine: str, other: str, b: int, measure: str, p50: str = "p50_ms") -> float | None:
    """`p50="p50_with_copies_ms"`: both engines' times with their host copies (GPU engines only)."""
    a, o = by_engine.get(engine, {}).get(b), by_engine.get(other, {}).get(b)
    if a is None or o is None or a.get(p50) is None or o.get(p50) is None:
        return None
    return o[p50] / a[p50] if measure == "speedup_p50" else a["sentences_per_s"] / o["sentences_per_s"]


def _check_values(
    by_round: list[dict], engine: str, other: str, b: int, measure: str, p50: str = "p50_ms"
) -> list[float]:
    """The check's ratio in every round that measured both engines (each against the same round's other engine)."""
    values = (_check_value(by_engine, engine, other, b, measure, p50) for by_engine in by_round)
    return [v for v in values if v is not None]


def build_payload(
    *,
    cfg: BenchConfig,
    artifact: Path,
    manifest: dict,
    machine: dict,
    threads: int,
    started: datetime,
    sentences: int,
    labels: list,
    domains: list,
    rounds: list[list[dict]],
    skipped: list[dict],
    padding: dict,
    e2e: dict | None,
    cola: str | Path,
) -> dict:
    """`rounds`: the workers' results of each round (one round unless --rounds)."""
    speed_only = cfg.arch == "bert-base"
    names = manifest.get("labels", list(COLA_NAMES))
    split = "CoLA validation" if tuple(names) == COLA_NAMES else "validation"
    rows = _merge_rounds([_round_rows(results, labels, domains, speed_only, len(names)) for results in rounds])
    by_round = [{r["engine"]: {row["batch_size"]: row for row in r["rows"]} for r in results} for results in rounds]
    checks = []
    for name, engine, other, b, measure, target in CHECKS:
        values = _check_values(by_round, engine, other, b, measure)
        if not values:
            ran = set().union(*by_round)
            why = next((s["reason"] for s in skipped if s["engine"] in (engine, other)), None)
            if why is None:
                missing = [e for e in (engine, other) if e not in ran]
                why = f"{', '.join(missing)} not run (--engines)" if missing else f"batch size {b} not measured"
            checks.append(
                {"check": name, "target": target, "value": None, "passed": None, "note": f"not measured: {why}"}
            )
            continue
        value = statistics.median(values)
        check = {"check": name, "target": target, "value": value, "passed": value >= target}
        if len(rounds) > 1:
            check["rounds"] = values
        copied = (
            [] if measure != "speedup_p50" else _check_values(by_round, engine, other, b, measure, "p50_with_copies_ms")
        )
        if copied:
            check["with_host_copies"] = statistics.median(copied)
        checks.append(check)
    if not speed_only and any("onnx_int8" in by_engine for by_engine in by_round):
        worst = max(
            (abs(r["mcc_delta"]) for r in rows if r["engine"] == "onnx_int8" and r["mcc_delta"] is not None),
            default=None,
        )
        checks.append(
            {
                "check": "int8 MCC within 0.01 of PyTorch fp32 (worst batch size)",
                "target": MCC_TOLERANCE,
                "value": worst,
                "passed": None if worst is None else worst <= MCC_TOLERANCE,
                "kind": "at most",
            }
        )
    if e2e is not None:
        value = e2e.get("speedup")
        checks.append(
            {
                "check": f"serving path vs the book's way (pad to {cfg.e2e_pad_to}, PyTorch fp32, "
                f"batch {cfg.e2e_batch_size}), sentences/s",
                "target": E2E_AT_LEAST,
                "value": value,
                "passed": None if value is None else value >= E2E_AT_LEAST,
            }
        )
    source = manifest.get("source", {})
    return {
        "format": "bertpack-bench/1",
        "command": cfg.command,
        "created": started.isoformat(timespec="seconds"),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "arch": cfg.arch,
        "speed_only": speed_only,
        "artifact": str(artifact),
        "artifact_version": manifest.get("version"),
        "checkpoint": source.get("checkpoint"),
        "serving_default": manifest.get("serving_default"),
        # every engine's predictions (MCC, agreement) are labels at this decision, as predict and the service give them
        "decision": manifest.get("decision"),
        "int8": {k: manifest["variants"][k].get("settings") for k in manifest["variants"] if k.startswith("int8")},
        "data": str(cola),
        "split": split,
        "labels": names,
        "sentences": sentences,
        "settings": _settings(cfg, threads, split),
        "machine": machine,
        "padding": padding,
        "rows": rows,
        "skipped": skipped,
        "end_to_end": _strip(e2e),
        "checks": checks,
        "workers": [
            {
                k: r[k]
                for k in (
                    "engine",
                    "round",
                    "device",
                    "threads",
                    "load_s",
                    "rss_after_load_mib",
                    "model_bytes",
                    "info",
                    "wall_s",
                    "skipped",
                    "failed",
                )
                if k in r
            }
            for results in rounds
            for r in results
        ],
    }


def _strip(e2e: dict | None) -> dict | None:
    """The end-to-end record without the book's per-sentence predictions; the serving path's stay (label indices, at
    the artifact's decision, of the sentences it ran, in order): what the service answers for them."""
    if e2e is None:
        return None
    out = dict(e2e)
    out["book"] = {k: v for k, v in e2e["book"].items() if k != "predictions"}
    return out


# -- presentation --------------------------------------------------------------------------------
COLUMNS = [
    ("engine", "engine"),
    ("device", "dev"),
    ("batch_size", "batch"),
    ("p50_ms", "p50 ms"),
    ("p95_ms", "p95 ms"),
    ("p99_ms", "p99 ms"),
    ("sentences_per_s", "sent/s"),
    ("speedup_p50", "x p50"),
    ("speedup_throughput", "x sent/s"),
    ("mcc", "MCC"),
    ("agreement", "agree %"),
    ("peak_rss_mib", "peak MiB"),
    ("model_mb", "model MB"),
]


def _cell(key: str, row: dict) -> str:
    v = row.get(key)
    if key == "peak_rss_mib" and row.get("cuda_max_allocated_mib") is not None:
        return f"{row['cuda_max_allocated_mib']:.0f} (CUDA)"
    if v is None:
        return "n/a" if key == "mcc" else "-"
    if isinstance(v, str):
        return v
    if key == "batch_size":
        return str(v)
    if key in ("p50_ms", "p95_ms", "p99_ms"):
        return f"{v:.2f}" if v < 100 else f"{v:.0f}"
    if key == "sentences_per_s":
        return f"{v:.1f}" if v < 100 else f"{v:.0f}"
    if key.startswith("speedup"):
        return f"{v:.2f}x"
    if key == "mcc":
        return f"{v:.4f}"
    if key == "agreement":
        return f"{v:.1f}"
    return f"{v:.0f}" if v >= 10 else f"{v:.1f}"


def _table(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    return [h for _, h in COLUMNS], [
        [_cell(k, r) for k, _ in COLUMNS] for r in sorted(rows, key=lambda r: (r["batch_size"], _order(r)))
    ]


def _order(row: dict) -> int:
    from bench.config import ENGINES

    return ENGINES.index(row["engine"]) if row["engine"] in ENGINES else len(ENGINES)  # extra files last


def _check_lines(payload: dict) -> list[str]:
    out = []
    for check in payload["checks"]:
        verdict = "PASS" if check["passed"] else "MISS"
        if check["value"] is None:
            out.append(f"- {check['check']}: {check.get('note', 'not measured')}")
        elif check.get("kind") == "at most":
            out.append(f"- {check['check']}: |dMCC| {check['value']:.4f} (at most {check['target']}) -> {verdict}")
        else:
            spread = ""
            if check.get("rounds"):
                r = check["rounds"]
                spread = (
                    f", median of {_count(len(r), 'round')}: {min(r):.2f}x-{max(r):.2f}x, "
                    f"{sum(v >= check['target'] for v in r)} of {len(r)} at or over {check['target']:g}x"
                )
            copies = (
                ""
                if check.get("with_host_copies") is None
                else f"; with each side's host copies in its time: {check['with_host_copies']:.2f}x"
            )
            out.append(
                f"- {check['check']}: {check['value']:.2f}x (at least {check['target']:g}x{spread}) "
                f"-> {verdict}{copies}"
            )
    return out


def missed_checks(payload: dict) -> list[str]:
    """The checks that were measured and missed, one line each (checks that could not be measured are not misses)."""
    return [line[2:] for check, line in zip(payload["checks"], _check_lines(payload)) if check["passed"] is False]


def _e2e_lines(payload: dict) -> list[str]:
    e2e = payload.get("end_to_end")
    if not e2e:
        return []
    book, serving = e2e["book"], e2e["serving"]
    lines = [
        f"End to end, {e2e['sentences']} sentences, batch {e2e['batch_size']}, tokenization included, the median of "
        "each side's timed passes:"
    ]
    if "error" in book or "error" in serving:
        return lines + [f"- failed: {book.get('error') or serving.get('error')}"]
    passes = lambda side: f"{side['passes']} pass{'es' if side['passes'] != 1 else ''}"  # noqa: E731
    mcc = lambda side: "" if payload["speed_only"] else f", MCC {side['mcc']:.4f}"  # noqa: E731
    lines.append(
        f"- the book's way (pad every sentence to {book['pad_to']}, input order, PyTorch fp32 eager): "
        f"{book['sentences_per_s']:.1f} sentences/s ({passes(book)}){mcc(book)}; padding ratio "
        f"{e2e['padding_book']['padding_ratio']:.2f}"
    )
    padding = f"buckets {serving['buckets']}" if serving.get("buckets") else "each batch padded to its longest"
    lines.append(
        f"- bertpack serving path (OnnxClassifier as the service builds it: length-sorted, {padding}, variant "
        f"{serving['variant']} on "
        f"{serving['provider']}): {serving['sentences_per_s']:.1f} sentences/s ({passes(serving)}){mcc(serving)}"
    )
    lines.append(f"- ratio: {e2e['speedup']:.1f}x")
    return lines


def _copies_line(payload: dict) -> str | None:
    rows = sorted(
        (r for r in payload["rows"] if r.get("p50_with_copies_ms") is not None),
        key=lambda r: (_order(r), r["batch_size"]),
    )
    if not rows:
        return None
    parts = [
        f"{r['engine']} batch {r['batch_size']}: {r['p50_with_copies_ms']:.3f} ms (model call {r['p50_ms']:.3f})"
        for r in rows
    ]
    return (
        "p50 with the host copies, per call (the batch to the device, for the CUDA-graph engine padded into its fixed "
        "inputs as the service does, and the logits back to the host; the p50 column leaves them out): "
        + "; ".join(parts)
    )


def _padding_line(payload: dict) -> str:
    parts = [
        f"batch {b}: {p['padding_ratio']:.2f} (lengths {p['seq_len_min']}-{p['seq_len_max']}, median "
        f"{p['seq_len_median']:.0f})"
        for b, p in payload["padding"].items()
    ]
    return "Padding ratio (padded tokens / real tokens): " + "; ".join(parts)


def _machine_line(payload: dict) -> str:
    m = payload["machine"]
    flags = ", ".join(f for f, on in m["cpu_flags"].items() if on)
    v = m["versions"]
    return (
        f"{m['cpu_model']} ({m['physical_cores']} physical cores; {flags}); GPU: {m['gpu'] or 'none'}; "
        f"torch {v.get('torch')}, onnxruntime {v.get('onnxruntime-gpu') or v.get('onnxruntime')}, transformers "
        f"{v.get('transformers')}; "
        f"load average at start {m['load_average_at_start']}"
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _rounds_note(payload: dict) -> str:
    n = payload["settings"].get("rounds", 1)
    return (
        (
            f"; medians of {n} rounds (every engine in a fresh process each round, engines interleaved), the speed-ups "
            "the median of the per-round ratios (so x p50 need not equal the ratio of the p50 columns)"
        )
        if n > 1
        else ""
    )


def format_text(payload: dict) -> str:
    header, body = _table(payload["rows"])
    widths = [max(len(header[i]), *(len(r[i]) for r in body)) for i in range(len(header))]
    line = lambda cells: "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    out = [
        f"bertpack bench: {payload['arch']}{' (random weights: speed only)' if payload['speed_only'] else ''}, "
        f"{payload['sentences']} sentences, {payload['settings']['threads']} threads{_rounds_note(payload)}",
        _machine_line(payload),
        "",
        line(header),
        line(["-" * w for w in widths]),
        *(line(r) for r in body),
        "",
    ]
    out += [f"skipped {s['engine']}: {s['reason']}" for s in payload["skipped"]]
    out += [
        _padding_line(payload),
        *filter(None, [_copies_line(payload)]),
        *_e2e_lines(payload),
        "Checks (`--check` exits 3 when a measured one misses):",
        *_check_lines(payload),
    ]
    return "\n".join(out)


def format_markdown(payload: dict) -> str:
    header, body = _table(payload["rows"])
    s = payload["settings"]
    out = [
        f"# bertpack bench: {payload['arch']}",
        "",
        f"Artifact `{payload['artifact']}` (version {payload['artifact_version']}); {payload['sentences']} "
        f"{payload.get('split', 'CoLA validation')} sentences "
        f"from `{payload['data']}`. {'Random weights: speed only (MCC n/a). ' if payload['speed_only'] else ''}"
        f"Started {payload['created']}, finished {payload['finished']}.",
        "",
        f"Machine: {_machine_line(payload)}",
        "",
        f"Settings: {s['threads']} threads; {s['batching']}; {s['timing']}; {s['process']}; at least {s['min_time_s']} "
        "s and "
        f"{s['min_samples']} timed batches per (engine, batch size). Speed-ups are against {REFERENCE} (eager, "
        "no_grad) on the same batches"
        f"{_rounds_note(payload)}.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    out += ["| " + " | ".join(r) + " |" for r in body]
    out.append("")
    out += [f"- skipped {s['engine']}: {s['reason']}" for s in payload["skipped"]]
    out += ["", _padding_line(payload), ""]
    copies = _copies_line(payload)
    if copies:
        out += [copies, ""]
    out += [*_e2e_lines(payload), "", "## Checks", "", *_check_lines(payload)]
    if any(r.get("rounds") for r in payload["rows"]):
        out += ["", "## Rounds (p50 ms and speed-up against the same round's reference, round by round)", ""]
        for r in sorted(payload["rows"], key=lambda r: (r["batch_size"], _order(r))):
            each = ", ".join(
                f"round {x['round']} {x['p50_ms']:.2f} ms"
                + (f" ({x['speedup_p50']:.2f}x)" if x["speedup_p50"] is not None else "")
                for x in r.get("rounds", [])
            )
            out.append(f"- {r['engine']}, batch {r['batch_size']}: {each}")
    profiles = [r for r in payload["rows"] if r.get("profile")]
    if profiles:
        out += [
            "",
            f"## Where the time goes (ONNX Runtime profiler, batch {s['profile_batch_size']}, ms per batch by "
            "operator)",
            "",
        ]
        for r in profiles:
            p = r["profile"]
            ops = ", ".join(f"{o['op']} {o['ms_per_run']:.2f} ({100 * o['share']:.0f}%)" for o in p["ops"])
            out.append(f"- {r['engine']}: model_run {p['model_run_ms']:.2f} ms; {ops}")
    return "\n".join(out) + "\n"


def write_plot(payload: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_lat, ax_tput) = plt.subplots(1, 2, figsize=(12, 4.8))
    engines = sorted({r["engine"] for r in payload["rows"]}, key=lambda e: _order({"engine": e}))
    for engine in engines:
        rows = sorted((r for r in payload["rows"] if r["engine"] == engine), key=lambda r: r["batch_size"])
        xs = [r["batch_size"] for r in rows]
        ax_lat.plot(xs, [r["p50_ms"] for r in rows], marker="o", label=engine)
        ax_tput.plot(xs, [r["sentences_per_s"] for r in rows], marker="o", label=engine)
    for ax, title, ylabel in ((ax_lat, "p50 latency per batch", "ms"), (ax_tput, "throughput", "sentences / s")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    ax_tput.legend(fontsize=8)
    m = payload["machine"]
    split = payload.get("split", "CoLA validation")
    fig.suptitle(
        f"bertpack bench ({payload['arch']}, {payload['sentences']} {split} sentences) on {m['cpu_model']}, "
        f"{payload['settings']['threads']} threads" + (f", {m['gpu']}" if m.get("gpu") else ""),
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


OUTPUT_FILES = ("bench.json", "bench.md", "bench.png")  # everything a bench writes into --out


def write_outputs(payload: dict, folder: Path) -> None:
    json_file, md_file, png_file = OUTPUT_FILES
    write_json_atomic(folder / json_file, payload)
    write_text_atomic(folder / md_file, format_markdown(payload))
    write_plot(payload, folder / png_file)
