"""CPU instruction-set detection, to pick the int8 quantization config for the host that exports.

u8s8 int8 kernels on AVX2/AVX-512 without VNNI (VPMADDUBSW) can saturate; VNNI (VPDPBUSD) does not.
"""

from __future__ import annotations

import platform
from pathlib import Path

from bertpack.machine import VNNI_FLAGS, cpu_flags, cpu_model

TARGETS = ("avx512_vnni", "avx512", "avx2", "arm64")
# What the int8 and bf16 kernels depend on (recorded in the manifest, bench.json and doctor's report).
REPORTED_FLAGS = (
    "sse4_2",
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
)


def quantization_target(flags: set[str] | None = None) -> str:
    """The best AutoQuantizationConfig preset this CPU supports."""
    flags = cpu_flags() if flags is None else flags
    if "avx512_vnni" in flags:
        return "avx512_vnni"
    if {"avx512f", "avx512bw"} <= flags:
        return "avx512"
    if "avx2" in flags:
        return "avx2"
    if platform.machine().lower() in ("aarch64", "arm64"):
        return "arm64"
    return "avx2"


def cpu_report(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict:
    """What the manifest, bench.json and doctor record about this CPU."""
    flags = cpu_flags(cpuinfo)
    return {
        "machine": platform.machine(),
        "model": cpu_model(cpuinfo),
        "flags": {f: f in flags for f in REPORTED_FLAGS},
        "vnni": bool(VNNI_FLAGS & flags),
        "quantization_target": quantization_target(flags),
    }
