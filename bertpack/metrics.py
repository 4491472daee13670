"""Classification metrics shared by training, the parity report and the benchmark."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn.metrics import accuracy_score, matthews_corrcoef


def mcc(labels: Sequence[int], preds: Sequence[int]) -> float:
    return float(matthews_corrcoef(np.asarray(labels), np.asarray(preds)))


def accuracy(labels: Sequence[int], preds: Sequence[int]) -> float:
    return float(accuracy_score(np.asarray(labels), np.asarray(preds)))


def cola_scores(labels: Sequence[int], preds: Sequence[int], domains: Sequence[str]) -> dict[str, float]:
    """Accuracy and MCC overall, plus MCC on the in-domain and out-of-domain rows."""
    labels, preds, domains = np.asarray(labels), np.asarray(preds), np.asarray(domains)
    scores = {"accuracy": accuracy(labels, preds), "mcc": mcc(labels, preds)}
    for name in ("in", "out"):
        mask = domains == name
        if mask.any():
            scores[f"mcc_{name}_domain"] = mcc(labels[mask], preds[mask])
    return scores
