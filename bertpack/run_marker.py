"""A run folder's record, OUT/bertpack_run.json: `bertpack train` (and the bench's random BERT-base) write it,
`bertpack export` reads its status and recipe. Standard library only."""

from __future__ import annotations

from pathlib import Path

from bertpack.files import write_json_atomic

RUN_MARKER = "bertpack_run.json"
RUN_KIND = "bertpack-run"


def write_run_marker(out: Path, status: str, config: dict, reason: str | None = None) -> None:
    """Status "training", "complete" or "failed" (with its reason), and the recipe the run was started with."""
    body = {"kind": RUN_KIND, "status": status, **({"reason": reason} if reason else {}), "config": config}
    write_json_atomic(Path(out) / RUN_MARKER, body)
