"""A classifier's label space: the label names in id order, as the data defines them and the model records them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

# CoLA's labels, ids as its 0/1 column (bertpack.models.LABELS is the same mapping as a dict).
COLA_NAMES = ("unacceptable", "acceptable")
# More classes than this is almost always a column of ids or free text given as the label column.
MAX_CLASSES = 1000


@dataclass(frozen=True)
class Labels:
    """Label names in id order (id i is names[i]): the model's id2label, the manifest's labels, the service's
    answers."""

    names: tuple[str, ...]

    @property
    def count(self) -> int:
        return len(self.names)

    @property
    def cola(self) -> bool:
        """CoLA's two labels: the data (or model) gets CoLA's own features (per-domain MCC, the default model name)."""
        return self.names == COLA_NAMES

    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.names))

    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.names)}


COLA = Labels(COLA_NAMES)


def label_name(value: object) -> str | None:
    """A label cell as its name: integers (also 2.0 from a column pandas read as floats) and booleans as text,
    strings as they are. None for a value that is no class label (empty, a fraction, a list)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if math.isfinite(value) and value.is_integer() else None
    if isinstance(value, str):
        return value if value.strip() else None
    return None


def sorted_labels(names: Iterable[str]) -> Labels:
    """The label space of a data set's names, sorted: numerically when every name is an integer (so 2 comes before 10),
    else as text. Sorting makes the ids the same whatever order the rows come in."""
    unique = set(names)
    numeric = all(n.lstrip("-").isdigit() for n in unique)
    return Labels(tuple(sorted(unique, key=lambda n: (int(n), n) if numeric else (0, n))))


def listed(names: Iterable[object], limit: int = 12) -> str:
    """Names for a message, the first `limit` of them."""
    names = [str(n) for n in names]
    return ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")
