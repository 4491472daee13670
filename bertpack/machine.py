"""What machine and libraries this is: CPU model and flags, library versions. Standard library only."""

from __future__ import annotations

import platform
from importlib import metadata
from pathlib import Path

PACKAGES = (
    "bertpack",
    "torch",
    "transformers",
    "datasets",
    "optimum",
    "optimum-onnx",
    "onnx",
    "onnxruntime-gpu",
    "onnxruntime",
    "tokenizers",
    "numpy",
    "bentoml",
    "pydantic",
)


# CPU flags of the int8 dot-product instructions (exact u8s8 products), and platform.machine() names of x86-64.
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni"})
X86_MACHINES = ("x86_64", "amd64")


def library_versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """Installed versions of `packages` (absent ones left out), plus Python's."""
    found = {"python": platform.python_version()}
    for name in packages:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def _cpuinfo_field(prefixes: tuple[str, ...], cpuinfo: Path) -> str | None:
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith(prefixes):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The flags of the first CPU listed in /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    return set((_cpuinfo_field(("flags", "Features"), cpuinfo) or "").split())


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    return _cpuinfo_field(("model name",), cpuinfo) or platform.processor() or platform.machine()
