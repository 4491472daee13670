"""What the benchmark ran on: CPU model, cores and flags, GPU, library versions."""

from __future__ import annotations

import os
import platform
import subprocess

from bertpack.machine import library_versions
from export.cpu import cpu_report


def gpu_name() -> str | None:
    from serving.cuda import gpu_present

    if not gpu_present():
        return None
    try:
        text = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout.strip()
        return text.splitlines()[0] if text else "NVIDIA GPU (nvidia-smi gave no name)"
    except (OSError, subprocess.TimeoutExpired):
        return "NVIDIA GPU (nvidia-smi not available)"


def machine_info() -> dict:
    import psutil

    from serving.cuda import cuda_available

    cpu = cpu_report()
    return {
        "cpu_model": cpu["model"],
        "machine": cpu["machine"],
        "physical_cores": psutil.cpu_count(logical=False),
        "logical_cpus": os.cpu_count(),
        "cpu_flags": cpu["flags"],
        "vnni": cpu["vnni"],
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "gpu": gpu_name(),
        "cuda_provider_usable": cuda_available(),
        "os": platform.platform(),
        "versions": library_versions(),
    }
