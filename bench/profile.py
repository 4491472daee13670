"""Per-operator time from ONNX Runtime's own profiler (`SessionOptions.enable_profiling`).

The profiler writes a Chrome-trace JSON; each node event ("cat": "Node", name "<node>_kernel_time")
carries its op type and duration. Summing by op type shows where an engine spends its time, e.g.
whether int8 pays more for DynamicQuantizeLinear than it saves in MatMulInteger.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path


def summarize_trace(trace_path: Path, top: int = 12, skip_runs: int = 0) -> dict:
    """Milliseconds per run by op type, ignoring the first `skip_runs` runs (warm-up)."""
    events = json.loads(Path(trace_path).read_text())
    starts = sorted(float(ev["ts"]) for ev in events if ev.get("cat") == "Session" and ev.get("name") == "model_run")
    cutoff = starts[skip_runs] if 0 < skip_runs < len(starts) else float("-inf")
    events = [ev for ev in events if float(ev.get("ts", 0)) >= cutoff]
    by_op: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    runs = 0
    run_us = 0.0
    for ev in events:
        if ev.get("cat") == "Session" and ev.get("name") == "model_run":
            runs += 1
            run_us += float(ev.get("dur", 0))
        if ev.get("cat") != "Node" or not str(ev.get("name", "")).endswith("_kernel_time"):
            continue
        op = ev.get("args", {}).get("op_name", "?")
        by_op[op] += float(ev.get("dur", 0))
        calls[op] += 1
    total = sum(by_op.values()) or 1.0
    ops = sorted(by_op.items(), key=lambda kv: -kv[1])
    rows = [
        {
            "op": op,
            "ms_per_run": us / 1000 / max(runs, 1),
            "share": us / total,
            "calls_per_run": calls[op] / max(runs, 1),
        }
        for op, us in ops[:top]
    ]
    rest = sum(us for _, us in ops[top:])
    if rest:
        rows.append(
            {"op": "(other)", "ms_per_run": rest / 1000 / max(runs, 1), "share": rest / total, "calls_per_run": None}
        )
    return {
        "runs": runs,
        "model_run_ms": run_us / 1000 / max(runs, 1),
        "kernel_ms": total / 1000 / max(runs, 1),
        "ops": rows,
    }


def profile_session(model_path: Path, threads: int, feeds: list[dict], output_name: str, out_dir: Path) -> dict:
    """Run `feeds` once through a profiling session (after one untimed warm-up run of each) and summarise."""
    import onnxruntime as ort

    from serving.engine import session_options

    opts = session_options(threads)
    opts.enable_profiling = True
    out_dir.mkdir(parents=True, exist_ok=True)
    opts.profile_file_prefix = str(out_dir / Path(model_path).stem)
    sess = ort.InferenceSession(str(model_path), sess_options=opts, providers=["CPUExecutionProvider"])
    for _ in range(2):  # the first pass warms up every shape; only the second is summarised
        for feed in feeds:
            sess.run([output_name], feed)
    trace = Path(sess.end_profiling())
    summary = summarize_trace(trace, skip_runs=len(feeds))
    summary["trace"] = str(trace)
    return summary
