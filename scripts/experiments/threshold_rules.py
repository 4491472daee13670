"""Experiment: how the decision threshold is fitted on the selection rows, and what it is worth on held-out rows.

For each run folder (a `bertpack train` run or a `bertpack soup`) it computes the model's PyTorch logits on the run's
selection rows and on the validation split, fits the temperature on the selection rows, then fits the threshold on
p(acceptable) by each rule and scores the validation split at it:

- argmax: p >= 0.5 (no threshold);
- max: the cut with the highest selection MCC (one sample of 855 rows: its maximum is noisy);
- bagged: the cut with the highest MCC averaged over bootstrap resamples of the selection rows (a smoothed curve);
- out_of_bag: the max cut only where, fitted on bootstrap resamples, it beat p >= 0.5 on the rows each left out.

    python scripts/experiments/threshold_rules.py runs/seeds/seed42 runs/soup --json-out thresholds.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bertpack.data import hold_out, load_cola  # noqa: E402
from bertpack.metrics import mcc  # noqa: E402
from bertpack.models import load_classifier, load_tokenizer  # noqa: E402
from bertpack.postprocess import Decision, probabilities  # noqa: E402
from trainer.decision import (  # noqa: E402
    ThresholdFit,
    bagged_threshold,
    best_threshold,
    fit_temperature,
    out_of_bag_gain,
)
from trainer.soup import Scorer, average_weights  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--json-out", type=Path)
    args = p.parse_args()
    results = []
    for run in args.runs:
        m = json.loads((run / "metrics.json").read_text())
        config = m["config"]
        data = load_cola(m["data"], limit=config.get("limit"))
        sel = m["selection"]
        _, selection, indices = hold_out(data["train"], sel["fraction"], sel["seed"])
        assert indices == sel["indices"]
        model = run / "model"
        scorer = Scorer(load_classifier(model).eval(), load_tokenizer(model), config["max_length"], 64)
        state = average_weights([model])
        s_logits, s_labels = scorer.logits(state, list(selection["sentence"])), np.asarray(selection["label"])
        d_logits, d_labels = (
            scorer.logits(state, list(data["validation"]["sentence"])),
            np.asarray(data["validation"]["label"]),
        )
        t = fit_temperature(s_logits, s_labels)
        s_p = probabilities(s_logits, Decision(temperature=t))[:, 1]
        d_p = probabilities(d_logits, Decision(temperature=t))[:, 1]
        fitted, gain = best_threshold(s_p, s_labels), out_of_bag_gain(s_p, s_labels)
        cuts = {
            "argmax": 0.5,
            "max": fitted,
            "bagged": bagged_threshold(s_p, s_labels),
            "out_of_bag": ThresholdFit(fitted, gain).threshold,
        }
        row = {
            "run": str(run),
            "temperature": t,
            "out_of_bag_gain": gain,
            **{
                rule: {
                    "threshold": c,
                    "selection_mcc": mcc(s_labels, s_p >= c),
                    "validation_mcc": mcc(d_labels, d_p >= c),
                }
                for rule, c in cuts.items()
            },
        }
        results.append(row)
        print(json.dumps(row), flush=True)
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
