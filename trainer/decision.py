"""Fit a model's decision on held-out logits: the temperature (one scalar, by NLL) and, for 2 labels, the threshold
on p(positive) with the best MCC where it holds up out of bag (else 0.5). Applied by bertpack.postprocess everywhere
the model answers."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bertpack.metrics import expected_calibration_error, mcc
from bertpack.postprocess import Decision, decide, kept_half_note, probabilities


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return float(-log_probs[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature minimising the NLL of softmax(logits / T), searched over log T (T in [0.05, 20])."""
    from scipy.optimize import minimize_scalar

    found = minimize_scalar(
        lambda log_t: nll(logits, labels, float(np.exp(log_t))),
        bounds=(np.log(0.05), np.log(20.0)),
        method="bounded",
        options={"xatol": 1e-6},
    )
    return float(np.exp(found.x))


def _cuts(p: np.ndarray) -> np.ndarray:
    """Candidate cuts: midway between neighbouring distinct probabilities (and beyond both ends), so that a small change
    in a probability does not move a row across the chosen one."""
    values = np.unique(p)
    return np.concatenate([[values[0] / 2], (values[:-1] + values[1:]) / 2, [(values[-1] + 1) / 2]])


def mcc_curve(p: np.ndarray, truth: np.ndarray, cuts: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """MCC of `p >= cut` against boolean `truth` at every cut, with optional row weights (bootstrap counts)."""
    order = np.argsort(p, kind="stable")
    p, truth = p[order], truth[order].astype(np.float64)
    w = np.ones_like(truth) if weights is None else weights[order].astype(np.float64)
    below = np.searchsorted(p, cuts, side="left")  # rows under each cut: predicted negative
    pos_below = np.concatenate([[0.0], np.cumsum(w * truth)])[below]
    all_below = np.concatenate([[0.0], np.cumsum(w)])[below]
    positives, total = float(np.sum(w * truth)), float(np.sum(w))
    tp, fn = positives - pos_below, pos_below
    fp = (total - all_below) - tp
    tn = all_below - pos_below
    den = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return np.where(den > 0, (tp * tn - fp * fn) / np.where(den > 0, den, 1.0), 0.0)


def _nearest_half(cuts: np.ndarray, scores: np.ndarray) -> float:
    best = np.flatnonzero(scores >= scores.max() - 1e-12)
    return float(cuts[best[np.argmin(np.abs(cuts[best] - 0.5))]])


def best_threshold(p_positive: np.ndarray, labels: np.ndarray, positive: int = 1) -> float:
    """The cut on p(positive) with the highest MCC on these rows; among equal MCCs the cut nearest 0.5."""
    p = np.asarray(p_positive, dtype=np.float64)
    cuts = _cuts(p)
    return _nearest_half(cuts, mcc_curve(p, np.asarray(labels) == positive, cuts))


def bagged_threshold(
    p_positive: np.ndarray, labels: np.ndarray, positive: int = 1, resamples: int = 200, seed: int = 0
) -> float:
    """The cut with the highest MCC averaged over bootstrap resamples of the rows: the maximum of one sample's MCC
    curve sits on its noise, the averaged curve's on what the rows have in common."""
    p = np.asarray(p_positive, dtype=np.float64)
    truth = np.asarray(labels) == positive
    cuts = _cuts(p)
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(len(p), np.full(len(p), 1.0 / len(p)), size=resamples)
    mean = np.mean([mcc_curve(p, truth, cuts, w) for w in counts], axis=0)
    return _nearest_half(cuts, mean)


def out_of_bag_gain(
    p_positive: np.ndarray, labels: np.ndarray, positive: int = 1, resamples: int = 200, seed: int = 0
) -> float:
    """What fitting a threshold is worth on rows it was not fitted on: over bootstrap resamples, the best cut is
    fitted on the drawn rows and scored against p >= 0.5 on the rows left out; the mean MCC gain. The maximum of one
    sample's MCC curve overstates its own gain, so the fitted cut has to earn its place on unseen rows."""
    p = np.asarray(p_positive, dtype=np.float64)
    labels = np.asarray(labels)
    truth = labels == positive
    rng = np.random.default_rng(seed)
    gains = []
    for _ in range(resamples):
        drawn = rng.integers(0, len(p), len(p))
        left_out = np.setdiff1d(np.arange(len(p)), drawn)
        if len(left_out) < 2 or truth[left_out].all() or not truth[left_out].any():
            continue
        cut = best_threshold(p[drawn], labels[drawn], positive)
        gains.append(mcc(truth[left_out], p[left_out] >= cut) - mcc(truth[left_out], p[left_out] >= 0.5))
    return float(np.mean(gains)) if gains else 0.0


@dataclass(frozen=True)
class ThresholdFit:
    """The cut with the best MCC on the fitting rows and the MCC it gained over p >= 0.5 out of bag: the cut is used
    only where that gain is positive, else 0.5 (on CoLA's selection split a fitted cut lost MCC on held-out rows)."""

    best_cut: float
    out_of_bag_gain: float

    @property
    def used(self) -> bool:
        return self.out_of_bag_gain > 0

    @property
    def threshold(self) -> float:
        return self.best_cut if self.used else 0.5

    def record(self) -> dict:
        return {"best_cut": self.best_cut, "out_of_bag_gain": self.out_of_bag_gain, "used": self.used}


def fit_decision(
    logits: np.ndarray, labels: np.ndarray, positive: int = 1, threshold: bool = True
) -> tuple[Decision, ThresholdFit | None]:
    """The temperature for any label count; the threshold for 2 labels only (more labels keep the argmax), and only
    when asked: fitted on the rows that are then also reported, a threshold would flatter the figure."""
    labels = np.asarray(labels)
    temperature = fit_temperature(logits, labels)
    if logits.shape[-1] != 2 or not threshold:
        return Decision(temperature=temperature), None
    p = probabilities(logits, Decision(temperature=temperature))[:, positive]
    fit = ThresholdFit(best_threshold(p, labels, positive), out_of_bag_gain(p, labels, positive))
    return Decision(temperature=temperature, threshold=fit.threshold, positive=positive), fit


def decision_scores(logits: np.ndarray, labels: np.ndarray, decision: Decision) -> dict[str, float]:
    """MCC and accuracy at the decision and at the argmax, ECE and NLL before and after the temperature."""
    labels = np.asarray(labels)
    preds, probs = decide(logits, decision)
    raw = probabilities(logits, Decision())
    return {
        "mcc": mcc(labels, preds),
        "accuracy": float(np.mean(preds == labels)),
        "mcc_argmax": mcc(labels, raw.argmax(-1)),
        "accuracy_argmax": float(np.mean(raw.argmax(-1) == labels)),
        "ece_before": expected_calibration_error(labels, raw),
        "ece_after": expected_calibration_error(labels, probs),
        "nll_before": nll(logits, labels, 1.0),
        "nll_after": nll(logits, labels, decision.temperature),
    }


def describe_cut(decision: dict) -> str:
    """The label rule a metrics.json "decision" records, for summaries: the threshold, and why 0.5 where the fitted
    cut was not used."""
    if decision.get("threshold") is None:
        return "argmax"
    return f"p({decision['positive_label']}) >= {decision['threshold']:.3f}" + kept_half_note(decision)
