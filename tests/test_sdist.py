"""The source distribution carries what a user of it needs: the packages, the tests with their conftest, the scripts
the tests and the README run, and bentofile.yaml for `bentoml build`."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_sdist_holds_tests_scripts_and_bentofile(tmp_path):
    # Built from a copy without *.egg-info: setuptools adds the files an earlier build listed there.
    src = tmp_path / "src"
    shutil.copytree(
        ROOT,
        src,
        ignore=shutil.ignore_patterns(
            ".git",
            ".venv",
            ".whl",
            ".gpu",
            "runs",
            "artifacts",
            "bench-out",
            "docs",
            "*.egg-info",
            "__pycache__",
            ".hypothesis",
            ".pytest_cache",
        ),
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from setuptools import build_meta as b; print(b.build_sdist(sys.argv[1]))",
            str(tmp_path / "dist"),
        ],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    with tarfile.open(tmp_path / "dist" / proc.stdout.strip().splitlines()[-1]) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    wanted = {"bentofile.yaml", "pyproject.toml", "README.md"}
    for folder in ("bertpack", "trainer", "export", "serving", "bench", "tests", "scripts"):
        wanted |= {
            str(p.relative_to(ROOT))
            for p in (ROOT / folder).rglob("*")
            if p.suffix in (".py", ".sh") and "__pycache__" not in p.parts
        }
    assert wanted - names == set()
