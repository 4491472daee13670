"""CLI commands of this stage, registered on the `bertpack` Typer app. Keep imports inside the
command functions: `bertpack --help` must not import torch or onnxruntime."""

from __future__ import annotations

import typer


def doctor(json_output: bool = typer.Option(False, "--json", help="Print the report as JSON.")) -> None:
    """Check this host for serving: ONNX Runtime providers, CPU, GPUs, threads, BERTPACK_* settings, the model.

    Prints versions, which providers really work, CPU flags, threads, GPUs, the BERTPACK_* serve settings and
    the model they name; exit status 1 when one would stop the service."""
    import json

    from serving.doctor import format_report, report

    rep = report()
    typer.echo(json.dumps(rep, indent=2) if json_output else format_report(rep))
    problems = rep["serve_settings"]["problems"]
    if problems:
        typer.echo(
            f"doctor: {len(problems)} problem{'s' if len(problems) > 1 else ''} would stop `bentoml serve`: "
            + " | ".join(problems),
            err=True,
        )
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add this stage's commands to `app`."""
    app.command()(doctor)
