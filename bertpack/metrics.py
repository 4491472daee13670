"""Classification metrics shared by training, the parity report and the benchmark."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef


def mcc(labels: Sequence[int], preds: Sequence[int]) -> float:
    """Matthews correlation; for more than two classes sklearn's multi-class form (Gorodkin's R_K)."""
    return float(matthews_corrcoef(np.asarray(labels), np.asarray(preds)))


def accuracy(labels: Sequence[int], preds: Sequence[int]) -> float:
    return float(accuracy_score(np.asarray(labels), np.asarray(preds)))


def macro_f1(labels: Sequence[int], preds: Sequence[int]) -> float:
    """F1 averaged over the classes present in labels or predictions, each class counting the same."""
    return float(f1_score(np.asarray(labels), np.asarray(preds), average="macro", zero_division=0))


def scores(
    labels: Sequence[int], preds: Sequence[int], domains: Sequence[str] | None = None, num_labels: int = 2
) -> dict[str, float]:
    """Accuracy and MCC overall, macro-F1 when there are more than two classes, and (CoLA) MCC on the in-domain and
    out-of-domain rows."""
    labels, preds = np.asarray(labels), np.asarray(preds)
    out = {"accuracy": accuracy(labels, preds), "mcc": mcc(labels, preds)}
    if num_labels > 2:
        out["macro_f1"] = macro_f1(labels, preds)
    domains = np.asarray(domains if domains is not None else [""] * len(labels))
    for name in ("in", "out"):
        mask = domains == name
        if mask.any():
            out[f"mcc_{name}_domain"] = mcc(labels[mask], preds[mask])
    return out


def cola_scores(labels: Sequence[int], preds: Sequence[int], domains: Sequence[str]) -> dict[str, float]:
    """Accuracy and MCC overall, plus MCC on the in-domain and out-of-domain rows."""
    return scores(labels, preds, domains)


def expected_calibration_error(labels: Sequence[int], probs: np.ndarray, bins: int = 15) -> float:
    """ECE: the gap between confidence (the top probability) and accuracy, averaged over `bins` equal-width
    confidence bins weighted by their share of the rows (Guo et al., 2017)."""
    labels, probs = np.asarray(labels), np.asarray(probs, dtype=np.float64)
    if not len(labels):
        return 0.0
    confidence, correct = probs.max(axis=-1), probs.argmax(axis=-1) == labels
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    gap = sum(
        abs(correct[which == b].mean() - confidence[which == b].mean()) * np.sum(which == b)
        for b in range(bins)
        if np.any(which == b)
    )
    return float(gap / len(labels))
