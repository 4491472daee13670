"""The batches every engine runs: the same sentences, sorted by length, padded to each batch's longest.

Built from token ids by one function, so every worker process gets identical arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from serving.engine import length_order, pad_ids


@dataclass
class Batch:
    rows: list[int]  # positions in the sentence list, for putting predictions back in order
    inputs: dict[str, np.ndarray]
    real_tokens: int

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.inputs["input_ids"].shape)  # type: ignore[return-value]


def make_batches(ids: Sequence[Sequence[int]], batch_size: int, pad_id: int, input_names: Sequence[str]) -> list[Batch]:
    order = length_order(ids)
    out = []
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        chunk = [ids[i] for i in rows]
        out.append(Batch(rows=rows, inputs=pad_ids(chunk, pad_id, input_names), real_tokens=sum(len(s) for s in chunk)))
    return out


def padding_stats(batches: Sequence[Batch]) -> dict:
    """Padding ratio = padded tokens / real tokens (0 = no padding; the compute spent on padding)."""
    computed = sum(b.shape[0] * b.shape[1] for b in batches)
    real = sum(b.real_tokens for b in batches)
    lengths = [b.shape[1] for b in batches]
    return {
        "batches": len(batches),
        "real_tokens": real,
        "computed_tokens": computed,
        "padding_ratio": (computed - real) / real if real else 0.0,
        "seq_len_min": min(lengths),
        "seq_len_median": float(np.median(lengths)),
        "seq_len_max": max(lengths),
    }


def fixed_padding_stats(ids: Sequence[Sequence[int]], batch_size: int, length: int) -> dict:
    """Padding of the book's way (every sentence padded to `length`, input order), for the report."""
    real = sum(min(len(s), length) for s in ids)
    computed = len(ids) * length
    return {
        "batches": -(-len(ids) // batch_size),
        "real_tokens": real,
        "computed_tokens": computed,
        "padding_ratio": (computed - real) / real if real else 0.0,
    }
