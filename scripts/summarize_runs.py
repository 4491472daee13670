"""Print a markdown table of training runs (and soups) from their metrics.json files: the recipe, where the checkpoint
was chosen, its figure there, and the validation split's MCC at the run's decision (and at the argmax), then the mean
and spread of the validation MCC.

    python scripts/summarize_runs.py runs/seeds/seed*/metrics.json runs/soup/metrics.json [--json OUT.json]
"""

import argparse
import json
import shlex
import statistics
import sys
from datetime import datetime, timezone
from pathlib import Path


def recipe(c: dict) -> str:
    return (
        f"lr {c['learning_rate']:g}, {c['epochs']:g} ep, bs {c['batch_size']}, warmup {c['warmup_ratio']:g}, "
        f"llrd {c['layer_decay']:g}, head x{c['head_lr_multiplier']:g}"
        + (", pooler re-init" if c.get("reinit_pooler") else "")
        + (f", top {c['reinit_top_layers']} layer(s) re-init" if c.get("reinit_top_layers") else "")
        + (", balanced class weights" if c.get("class_weights") == "balanced" else "")
        + (f", {c['evals_per_epoch']} evals/ep" if c.get("evals_per_epoch", 1) > 1 else ", 1 eval/ep")
    )


def row(path: Path) -> dict:
    m = json.loads(path.read_text())
    b, d = m["best"], m.get("decision") or {}
    soup = m.get("kind") == "soup"
    return {
        "run": path.parent.name,
        "soup": soup,
        "method": m["method"] if soup else None,  # uniform or greedy
        "recipe": f"{m['method']} soup of " + ", ".join(x["name"] for x in m["members"] if x["in_soup"])
        if soup
        else recipe(m["config"]) + f", seed {m['config']['seed']}",
        "chosen": b.get("checkpoint"),
        "selected_on": b.get("selected_on", "validation split"),
        "selection_mcc": b.get("selection_mcc"),
        "threshold": d.get("threshold"),
        "temperature": d.get("temperature"),
        "mcc": b["mcc"],
        "mcc_argmax": (b.get("argmax") or {}).get("mcc", b["mcc"]),
        "mcc_in_domain": b.get("mcc_in_domain"),
        "mcc_out_domain": b.get("mcc_out_domain"),
        "accuracy": b["accuracy"],
        "ece_before": b.get("ece_before"),
        "ece_after": b.get("ece_after"),
        "minutes": m["wall_time_s"] / 60 if m.get("wall_time_s") is not None else None,
        "machine": f"{m['device']}, {m.get('precision')}" if m.get("device") else None,
    }


def _f(value, fmt: str = ".3f") -> str:
    return "-" if value is None else format(value, fmt)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("metrics", nargs="+", type=Path, help="metrics.json files of runs or soups")
    parser.add_argument("--json", dest="json_out", type=Path, help="also write the rows and the summary here")
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.metrics if not p.is_file()]
    if missing:
        parser.error(f"no metrics.json at {', '.join(missing)}; pass the metrics.json of finished runs")
    json_out, argv = args.json_out, [str(p) for p in args.metrics]
    rows = [row(p) for p in args.metrics]
    print(
        "| run | recipe | chosen | on | selection MCC | threshold | T | **validation MCC** | (argmax) | in-domain | "
        "out-of-domain | accuracy | ECE before -> after | minutes |"
    )
    print("|" + " --- |" * 14)
    for r in rows:
        print(
            f"| {r['run']} | {r['recipe']} | {r['chosen']} | {r['selected_on']} | {_f(r['selection_mcc'])} | "
            f"{_f(r['threshold'])} "
            f"| {_f(r['temperature'], '.2f')} | **{_f(r['mcc'])}** | {_f(r['mcc_argmax'])} | {_f(r['mcc_in_domain'])} "
            f"| {_f(r['mcc_out_domain'])} | {_f(r['accuracy'])} | {_f(r['ece_before'])} -> {_f(r['ece_after'])} | "
            f"{_f(r['minutes'], '.1f')} |"
        )
    singles = [r for r in rows if not r["soup"]]
    summary = {}
    if len(singles) > 1:
        for key in ("mcc", "mcc_argmax", "selection_mcc"):
            values = [r[key] for r in singles]
            summary[key] = {
                "mean": statistics.mean(values),
                "sd": statistics.stdev(values),
                "min": min(values),
                "max": max(values),
            }
        s = summary["mcc"]
        print(
            f"\nvalidation MCC of the {len(singles)} single runs: mean {s['mean']:.3f} ± {s['sd']:.3f} (sd; min "
            f"{s['min']:.3f}, "
            f"max {s['max']:.3f}); at the argmax {summary['mcc_argmax']['mean']:.3f} ± "
            f"{summary['mcc_argmax']['sd']:.3f}; selection MCC {summary['selection_mcc']['mean']:.3f} ± "
            f"{summary['selection_mcc']['sd']:.3f}"
        )
    if json_out:
        record = {
            "rows": rows,
            "single_runs": summary,
            "machine": next((r["machine"] for r in rows if r["machine"]), None),
            "command": shlex.join(["python", "scripts/summarize_runs.py", *argv, "--json", str(json_out)]),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        json_out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
