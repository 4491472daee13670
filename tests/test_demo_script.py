"""scripts/demo.sh's argument checks, which must come before its install step (a minute or more)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_demo_without_the_default_cola_says_so_before_installing(tmp_path):
    """A fresh clone with no shared/data/cola beside it: the demo stops at once, naming the folder it looked for and
    its own COLA_DIR argument (it used to install a virtual environment first, then fail in `bertpack train` with
    advice to pass --data, an option the demo does not take)."""
    clone = tmp_path / "clone"
    (clone / "scripts").mkdir(parents=True)
    shutil.copy(REPO / "scripts" / "demo.sh", clone / "scripts" / "demo.sh")
    proc = subprocess.run(["bash", "scripts/demo.sh"], cwd=clone, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip() == (
        f"error: no CoLA at {tmp_path}/shared/data/cola (the default); pass the CoLA 1.1 "
        "folder (holding raw/): bash scripts/demo.sh COLA_DIR"
    )
    assert not (clone / ".venv").exists()


def test_demo_with_a_missing_cola_dir_says_so_before_installing(tmp_path):
    clone = tmp_path / "clone"
    (clone / "scripts").mkdir(parents=True)
    shutil.copy(REPO / "scripts" / "demo.sh", clone / "scripts" / "demo.sh")
    proc = subprocess.run(["bash", "scripts/demo.sh", "nowhere"], cwd=clone, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "COLA_DIR nowhere is not a folder" in proc.stderr, proc.stdout + proc.stderr
    assert not (clone / ".venv").exists()
