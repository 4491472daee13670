"""Experiment: choose the checkpoint among fewer validation points (one per epoch instead of two), on runs trained with
--keep-checkpoints. For each run it takes the epoch-end rows of its own validation table (the selection MCC that the
run recorded at each point), picks the best as the Trainer would (the first of equal maxima), loads that checkpoint,
fits its temperature and threshold on the run's selection rows and scores the validation split once.

The checkpoints are the run's own: a run trained with --evals-per-epoch 1 would save the same epoch-end weights up to
the dropout masks (each skipped validation's data loader draws once from the global random state), so this measures
the choice among fewer points on identical trajectories.

    python scripts/experiments/fewer_points.py runs/seeds/seed42 runs/seeds/seed1 --json-out fewer.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bertpack.data import hold_out, load_cola  # noqa: E402
from bertpack.metrics import cola_scores  # noqa: E402
from bertpack.models import load_classifier, load_tokenizer  # noqa: E402
from bertpack.postprocess import decide  # noqa: E402
from trainer.decision import decision_scores, fit_decision  # noqa: E402
from trainer.soup import Scorer, average_weights  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--json-out", type=Path)
    args = p.parse_args()
    results = []
    for run in args.runs:
        m = json.loads((run / "metrics.json").read_text())
        per_epoch = math.ceil(m["train_rows"] / (m["config"]["batch_size"] * m.get("world_size", 1)))  # optimizer steps
        ends = [r for r in m["epochs"] if abs(r["epoch"] - round(r["epoch"])) < 1e-3]
        best = max(ends, key=lambda r: r["mcc"])  # first of equal maxima, as the Trainer keeps it
        ckpt = run / "checkpoints" / f"checkpoint-{round(best['epoch'] * per_epoch)}"
        data = load_cola(m["data"], limit=m["config"].get("limit"))
        sel = m["selection"]
        _, selection, indices = hold_out(data["train"], sel["fraction"], sel["seed"])
        assert indices == sel["indices"]
        scorer = Scorer(load_classifier(ckpt).eval(), load_tokenizer(ckpt), m["config"]["max_length"], 64)
        state = average_weights([ckpt])
        sel_logits = scorer.logits(state, list(selection["sentence"]))
        decision, _ = fit_decision(sel_logits, np.asarray(selection["label"]))
        dev = data["validation"]
        dev_logits = scorer.logits(state, list(dev["sentence"]))
        preds, _ = decide(dev_logits, decision)
        row = {
            "run": run.name,
            "chosen": ckpt.name,
            "epoch": best["epoch"],
            "selection_mcc": best["mcc"],
            "two_per_epoch_chose": m["best"]["checkpoint"],
            "two_per_epoch_mcc": m["best"]["mcc"],
            **cola_scores(dev["label"], preds, dev["domain"]),
            "decision": decision.record(),
            "argmax_mcc": cola_scores(dev["label"], dev_logits.argmax(-1), dev["domain"])["mcc"],
            "ece": {
                k: v
                for k, v in decision_scores(dev_logits, np.asarray(dev["label"]), decision).items()
                if k.startswith("ece")
            },
        }
        results.append(row)
        print(json.dumps(row), flush=True)
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
