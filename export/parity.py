"""The parity report: every variant on the validation split (CoLA's, or a data set's) with ONNX Runtime, against
PyTorch fp32.

Both sides get the same token ids, in the same length-sorted batches of 32, each padded as the engine pads it on
its provider (the engine's own `encode`/`pad`), so a difference is the model's, not the input's.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from bertpack.errors import BertpackError
from bertpack.metrics import expected_calibration_error, scores
from bertpack.postprocess import Decision, decide, kept_half_note, probabilities

BATCH_SIZE = 32
EXACT = ("fp32", "optimized")  # graph rewrites only: must match PyTorch to 1e-3 and 100%


@dataclass(frozen=True)
class Tolerance:
    exact_max_logit_diff: float = 1e-3  # fp32 / optimized
    exact_agreement: float = 100.0
    mcc_drop: float = 0.01  # fp16 / int8
    min_agreement: float = 98.0

    @classmethod
    def parse(cls, text: str | None) -> "Tolerance":
        """`--tolerance`: a bare number is the MCC drop; or key=value pairs, e.g.
        `mcc_drop=0.02,agreement=97,logit=1e-3`."""
        if not text:
            return cls()
        keys = {
            "mcc_drop": "mcc_drop",
            "mcc": "mcc_drop",
            "agreement": "min_agreement",
            "min_agreement": "min_agreement",
            "logit": "exact_max_logit_diff",
            "max_logit_diff": "exact_max_logit_diff",
        }
        values: dict[str, float] = {}
        try:
            if "=" not in text:
                values["mcc_drop"] = float(text)
            else:
                for part in text.split(","):
                    key, _, raw = part.partition("=")
                    key = key.strip()
                    if key not in keys:
                        raise BertpackError(
                            f"--tolerance: unknown key {key!r}; use mcc_drop=, agreement= (percent) or logit="
                        )
                    values[keys[key]] = float(raw)
        except ValueError:
            raise BertpackError(
                f"--tolerance {text!r} is not understood; use e.g. 0.01 or mcc_drop=0.01,agreement=98,logit=1e-3"
            ) from None
        tol = cls(**values)
        if tol.mcc_drop < 0 or not 0 <= tol.min_agreement <= 100 or tol.exact_max_logit_diff <= 0:
            raise BertpackError("--tolerance: mcc_drop must be >= 0, agreement a percentage in [0, 100], logit > 0")
        return tol


@dataclass(frozen=True)
class Eval:
    """The validation split: the sentences (each variant's engine tokenizes them), their label ids (the model's) and
    domains (CoLA's in/out, else "")."""

    sentences: list[str]
    labels: list[int]
    domains: list[str]
    num_labels: int = 2
    split: str = "CoLA validation"  # what the report calls it


def reference_logits(
    checkpoint: Path, classifier, sentences: Sequence[str], batch_size: int = BATCH_SIZE
) -> np.ndarray:
    """PyTorch fp32 logits for the same batches the ONNX classifier runs (see OnnxClassifier.logits)."""
    import torch

    from bertpack.models import load_classifier

    model = load_classifier(checkpoint).eval()
    ids = classifier.encode(sentences)
    out = np.empty((len(ids), model.config.num_labels), dtype=np.float32)
    with torch.inference_mode():
        for rows, batch in classifier.batches(ids, batch_size):
            input_ids = torch.from_numpy(batch.inputs["input_ids"])
            # The mask from the sentence lengths, not the engine's own: a padding bug there would otherwise be in both
            mask = (torch.arange(input_ids.shape[1])[None, :] < torch.tensor(batch.lengths)[:, None]).long()
            out[rows] = (
                model(input_ids=input_ids, attention_mask=mask, token_type_ids=torch.zeros_like(input_ids))
                .logits.float()
                .numpy()
            )
    return out


def score(
    name: str,
    logits: np.ndarray,
    reference: np.ndarray,
    data: Eval,
    file_bytes: int | None = None,
    decision: Decision = Decision(),
) -> dict:
    """One report row: scores (CoLA: per domain too) and agreement with PyTorch, both at the model's decision (a
    binary model's threshold), logit differences."""
    preds, _ = decide(logits, decision)
    row = {"variant": name, **scores(data.labels, preds, data.domains, data.num_labels)}
    diff = np.abs(logits.astype(np.float64) - reference.astype(np.float64))
    row["agreement"] = float(100.0 * np.mean(preds == decide(reference, decision)[0]))
    row["max_abs_logit_diff"] = float(diff.max()) if diff.size else 0.0
    row["mean_abs_logit_diff"] = float(diff.mean()) if diff.size else 0.0
    row["bytes"] = file_bytes
    return row


def check(row: dict, reference_row: dict, tol: Tolerance) -> list[str]:
    """The ways a row breaks its tolerance (empty = passes)."""
    problems = []
    if row["variant"] in EXACT:
        if row["max_abs_logit_diff"] > tol.exact_max_logit_diff:
            problems.append(f"max |logit diff| {row['max_abs_logit_diff']:.2e} > {tol.exact_max_logit_diff:g}")
        if row["agreement"] < tol.exact_agreement:
            problems.append(f"agreement {row['agreement']:.2f}% < {tol.exact_agreement:g}%")
    else:
        drop = reference_row["mcc"] - row["mcc"]
        if drop > tol.mcc_drop + 1e-12:
            problems.append(f"MCC drop {drop:.4f} > {tol.mcc_drop:g}")
        if row["agreement"] < tol.min_agreement:
            problems.append(f"agreement {row['agreement']:.2f}% < {tol.min_agreement:g}%")
    return problems


def calibration(logits: np.ndarray, data: Eval, decision: Decision) -> dict:
    """ECE of the reference logits on the evaluation rows, before and after the decision's temperature."""
    return {
        "temperature": decision.temperature,
        "ece_before": expected_calibration_error(data.labels, probabilities(logits, Decision())),
        "ece_after": expected_calibration_error(data.labels, probabilities(logits, decision)),
    }


def flip_rate(classifier, sentences: Sequence[str], batch_size: int = BATCH_SIZE, seed: int = 0) -> dict:
    """How often a sentence's prediction changes between scoring it alone (no padding) and inside a
    shuffled batch of `batch_size` mixed-length sentences (padded as the classifier pads: to the batch's
    longest on the CPU): mixed lengths are what a served batch holds (the service's batches reach 64 sentences)."""
    ids = classifier.encode(sentences)
    alone = np.stack([classifier.run(classifier.pad([seq], length=len(seq)))[0] for seq in ids])
    order = list(range(len(ids)))
    random.Random(seed).shuffle(order)
    batched = np.empty_like(alone)
    for rows, batch in classifier.batches(ids, batch_size, order):
        batched[rows] = classifier.run(batch)
    decision = getattr(classifier, "decision", Decision())  # the engine's threshold: flips of the served label
    flips = int(np.sum(decide(alone, decision)[0] != decide(batched, decision)[0]))
    return {
        "flips": flips,
        "sentences": len(ids),
        "flip_rate": 100.0 * flips / max(len(ids), 1),
        "max_abs_logit_change": float(np.abs(alone - batched).max()) if len(ids) else 0.0,
        "batch_size": batch_size,
    }


# -- presentation --------------------------------------------------------------------------------
COLUMNS = [
    ("variant", "variant"),
    ("accuracy", "acc"),
    ("mcc", "MCC"),
    ("macro_f1", "macro-F1"),
    ("mcc_in_domain", "MCC in"),
    ("mcc_out_domain", "MCC out"),
    ("agreement", "agree %"),
    ("max_abs_logit_diff", "max |dlogit|"),
    ("mean_abs_logit_diff", "mean |dlogit|"),
    ("flip_rate", "flip %"),
    ("mb", "MB"),
    ("status", "status"),
]
OPTIONAL = ("macro_f1", "mcc_in_domain", "mcc_out_domain")  # shown when a row has them (more than 2 classes; CoLA)


def columns(report: dict) -> list[tuple[str, str]]:
    return [(k, h) for k, h in COLUMNS if k not in OPTIONAL or any(row.get(k) is not None for row in report["rows"])]


def _cell(key: str, row: dict) -> str:
    value = row.get(key)
    if key == "variant" and row.get("method") and value == "int8":
        return f"int8 ({row['method']})"
    if key == "mb":
        value = row.get("bytes")
        return "-" if value is None else f"{value / 1e6:.1f}"
    if value is None:
        return "-"
    if key in ("accuracy", "mcc", "macro_f1", "mcc_in_domain", "mcc_out_domain"):
        return f"{value:.4f}"
    if key in ("agreement", "flip_rate"):
        return f"{value:.2f}"
    if key.endswith("logit_diff"):
        return f"{value:.2e}"
    return str(value)


def table_rows(report: dict) -> list[list[str]]:
    return [[_cell(k, row) for k, _ in columns(report)] for row in report["rows"]]


def format_text(report: dict) -> str:
    header = [h for _, h in columns(report)]
    rows = table_rows(report)
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) for i in range(len(header))]
    line = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    out = [line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)]
    return "\n".join(out) + "\n" + _footer(report)


def format_markdown(report: dict) -> str:
    header = [h.replace("|", "\\|") for _, h in columns(report)]
    out = [
        f"# Parity report: {report['source']}",
        "",
        f"{report.get('split', 'CoLA validation')}, {report['rows'][0].get('sentences', report['sentences'])} "
        f"sentences; ONNX Runtime {report['provider']}; "
        f"reference = PyTorch fp32. Created {report['created']}.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    out += ["| " + " | ".join(r) + " |" for r in table_rows(report)]
    out += [""] + [
        f"- {line.strip()}" if line.startswith("  ") else f"\n{line}\n" for line in _footer(report).splitlines()
    ]
    return "\n".join(out) + "\n"


def _footer(report: dict) -> str:
    tol = report["tolerance"]
    lines = [
        *decision_lines(report),
        f"tolerance: fp32/optimized max |dlogit| <= {tol['exact_max_logit_diff']:g} and {tol['exact_agreement']:g}% "
        "agreement; "
        f"fp16/int8 MCC drop <= {tol['mcc_drop']:g} and agreement >= {tol['min_agreement']:g}%",
    ]
    for method, tries in report.get("int8_tries", {}).items():
        lines.append(f"int8 {method} tries:")
        for t in tries:
            verdict = "pass" if t["passed"] else "fail: " + "; ".join(t["problems"])
            lines.append(
                f"  {t['settings']['name']}: MCC {t['mcc']:.4f}, agreement {t['agreement']:.2f}%, "
                f"max |dlogit| {t['max_abs_logit_diff']:.3f} -> {verdict}"
            )
    if report.get("int8_choice"):
        lines.append(
            f"int8 default: {report['int8_choice']}"
            if report.get("int8_method")
            else f"int8: no method within tolerance (best: {report['int8_choice']})"
        )
    lines.append(f"CPU serving default: {report.get('serving_default_cpu')}")
    if report.get("failures"):
        lines.append("FAILED: " + "; ".join(report["failures"]))
    return "\n".join(lines)


def decision_lines(report: dict) -> list[str]:
    """How the labels were decided and what the validation rows are to this model (held out, or its selection set)."""
    lines = []
    decision = report.get("decision") or {}
    if decision.get("threshold") is not None:
        lines.append(
            f"labels at p({decision.get('positive_label', decision.get('positive'))}) >= {decision['threshold']:.4f} "
            f"(temperature {decision['temperature']:.3f}), fitted on the {decision.get('fitted_on', 'selection set')}"
            + kept_half_note(decision, digits=4)
        )
    elif decision:
        lines.append(f"labels: the most probable (temperature {decision.get('temperature', 1.0):.3f})")
    if selected := report.get("selected_on"):
        lines.append(
            f"checkpoint chosen on the {selected}: "
            + (
                "these validation rows are held out"
                if selected == "selection split"
                else "these validation rows also chose it (not held out)"
            )
        )
    if cal := report.get("calibration"):
        lines.append(
            f"calibration on these rows (PyTorch fp32): ECE {cal['ece_before']:.4f} before, {cal['ece_after']:.4f} "
            "after "
            f"temperature {cal['temperature']:.3f}"
        )
    return lines


def tolerance_dict(tol: Tolerance) -> dict:
    return asdict(tol)
