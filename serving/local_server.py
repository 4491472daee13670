"""Run `bentoml serve` as a child process on 127.0.0.1 (tests and the load test). Not part of the Bento."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(
    env: dict[str, str], log_path: Path, target: str = "serving.service:Bertpack", timeout: float = 180, tries: int = 3
) -> tuple[subprocess.Popen, str]:
    """`bentoml serve TARGET` in its own process group on a free port; returns once /readyz answers 200.
    Raises RuntimeError with the log's tail when it does not come up within `timeout` seconds.
    free_port() releases the port before the server binds it, so another process may take it in between:
    that one case is retried on a new port."""
    for _ in range(tries - 1):
        try:
            return _start_once(env, log_path, target, timeout)
        except RuntimeError as exc:
            if "Address already in use" not in str(exc):
                raise
    return _start_once(env, log_path, target, timeout)


def _start_once(env: dict[str, str], log_path: Path, target: str, timeout: float) -> tuple[subprocess.Popen, str]:
    import httpx

    port = free_port()
    bentoml = str(Path(sys.executable).parent / "bentoml")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [bentoml, "serve", target, "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO,
            env={"BENTOML_DO_NOT_TRACK": "True", **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    exited = proc.poll()
    stop_server(proc)
    why = f"exited with status {exited}" if exited is not None else f"did not become ready within {timeout:g} s"
    raise RuntimeError(f"`bentoml serve` {why}; log tail:\n{Path(log_path).read_text()[-4000:]}")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
