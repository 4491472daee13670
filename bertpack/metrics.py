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


def expected_calibration_error(labels: Sequence[int], probs: np.ndarray, bins: int = 15) -> float:
    """ECE: the gap between confidence (the top probability) and accuracy, averaged over `bins` equal-width
    confidence bins weighted by their share of the rows (Guo et al., 2017)."""
    labels, probs = np.asarray(labels), np.asarray(probs, dtype=np.float64)
    if not len(labels):
        return 0.0
    confidence, correct = probs.max(axis=-1), probs.argmax(axis=-1) == labels
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    gap = sum(abs(correct[which == b].mean() - confidence[which == b].mean()) * np.sum(which == b)
              for b in range(bins) if np.any(which == b))
    return float(gap / len(labels))
