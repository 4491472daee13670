"""Logits to probabilities and labels: the one decision rule that training, export, parity, predict, the service and
the benchmark share. numpy only (the Bento carries it).

A model's decision (manifest "decision", from its run's metrics.json) holds a temperature that calibrates the
probabilities (softmax(logits / T)) and, for a 2-label model, the threshold on p(positive label) that the label
follows. The ONNX graphs stay raw logits: the decision is applied here, after them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Decision:
    """temperature: probabilities = softmax(logits / temperature). threshold: label `positive` when its calibrated
    probability is >= threshold, else the other label (2 labels only); None = the most probable label."""

    temperature: float = 1.0
    threshold: float | None = None
    positive: int = 1

    @classmethod
    def from_record(cls, record: Any, num_labels: int) -> "Decision":
        """The decision a manifest or metrics.json records; anything missing or unusable falls back to plain softmax
        and argmax (an export from before decisions were recorded)."""
        if not isinstance(record, dict):
            return cls()
        temperature = record.get("temperature", 1.0)
        threshold = record.get("threshold")
        positive = record.get("positive", 1)
        if not _number(temperature) or temperature <= 0:
            temperature = 1.0
        if num_labels != 2 or not _number(threshold) or not 0 < threshold < 1 or positive not in (0, 1):
            threshold, positive = None, 1
        return cls(
            temperature=float(temperature), threshold=None if threshold is None else float(threshold), positive=positive
        )

    def record(self) -> dict:
        return asdict(self)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and bool(np.isfinite(value))


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def probabilities(logits: np.ndarray, decision: Decision) -> np.ndarray:
    """Calibrated probabilities, one row per sentence."""
    return softmax(np.asarray(logits, dtype=np.float64) / decision.temperature)


def label_ids(probs: np.ndarray, decision: Decision) -> np.ndarray:
    """The label index of each row of calibrated probabilities: the threshold on p(positive) when there is one,
    else the most probable label."""
    probs = np.asarray(probs, dtype=np.float64)
    if decision.threshold is None:
        return probs.argmax(axis=-1)
    positive = probs[:, decision.positive] >= decision.threshold
    return np.where(positive, decision.positive, 1 - decision.positive)


def decide(logits: np.ndarray, decision: Decision) -> tuple[np.ndarray, np.ndarray]:
    """(label indices, calibrated probabilities) for a batch of logits."""
    probs = probabilities(logits, decision)
    return label_ids(probs, decision), probs


def kept_half_note(decision: dict, digits: int = 3) -> str:
    """Why a recorded decision labels at 0.5: ' (its best cut there, 0.529, gained -0.032 MCC out of bag, so 0.5 is
    kept)' where the fitted cut failed its out-of-bag check (metrics.json/manifest "threshold_fit"), else ''."""
    fit = decision.get("threshold_fit")
    if not fit or fit.get("used", True):
        return ""
    return (
        f" (its best cut there, {fit['best_cut']:.{digits}f}, gained {fit['out_of_bag_gain']:+.3f} MCC out of bag, "
        "so 0.5 is kept)"
    )
