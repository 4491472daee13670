"""CLI commands of this stage, registered on the `bertpack` Typer app. Keep imports inside the
command functions: `bertpack --help` must not import torch or onnxruntime."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this stage's commands to `app` (e.g. `app.command()(my_command)`)."""
