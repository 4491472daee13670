"""`bertpack doctor`: what this host gives ONNX Runtime, the first thing to run when serving is slow.

Versions, the execution providers ORT lists and the ones that really run (a one-node model, on
each provider that can be tried), CPU instruction sets (int8 speed depends on VNNI/AMX), thread
settings and visible GPUs. Imports no torch.
"""

from __future__ import annotations

import base64
import contextlib
import io
import os
import shutil
import subprocess
from pathlib import Path

from bertpack.errors import first_line
from bertpack.machine import library_versions

# A one-node ONNX model (y = x + x, float[1,4], opset 13, IR 8), serialized with onnx.helper. Embedded
# so the probe needs only onnxruntime (the Bento does not ship the `onnx` package).
PROBE_MODEL = base64.b64decode(
    "CAgSD2JlcnRwYWNrLWRvY3RvcjpBCg4KAXgKAXgSAXkiA0FkZBIFcHJvYmVaEwoBeBIOCgwIARIICgIIAQoCCARiEwoBeRIOCgwIARIICgIIAQoCCARCBAoAEA0="
)
_NEEDS_GPU = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


def probe_provider(provider: str) -> dict:
    """Create a session on `provider` alone and run it; report whether ORT really used it."""
    import numpy as np
    import onnxruntime as ort

    from serving.engine import quiet_ort_logs
    from serving.cuda import gpu_present, preload_cuda_libraries

    if provider in _NEEDS_GPU and not gpu_present():
        return {"provider": provider, "works": False, "detail": "not tried: no NVIDIA device visible"}
    if provider == "TensorrtExecutionProvider" and not _loadable("libnvinfer.so.10"):
        return {
            "provider": provider,
            "works": False,
            "detail": "not tried: the TensorRT libraries (libnvinfer.so.10) are not installed",
        }
    if provider in _NEEDS_GPU:
        preload_cuda_libraries()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    # A provider that fails to load makes ORT log to stderr and print a fallback notice to stdout;
    # keep both out of the report (stdout may be `doctor --json`).
    try:
        with quiet_ort_logs(), contextlib.redirect_stdout(io.StringIO()):
            session = ort.InferenceSession(PROBE_MODEL, sess_options=opts, providers=[provider])
        used = session.get_providers()[0]
        out = session.run(None, {"x": np.ones((1, 4), dtype=np.float32)})[0]
    except Exception as exc:  # noqa: BLE001 - a provider that fails to load is what doctor reports
        return {"provider": provider, "works": False, "detail": first_line(exc, 300)}
    if used != provider:
        return {"provider": provider, "works": False, "detail": f"session fell back to {used}"}
    ok = bool(np.allclose(out, 2.0))
    return {
        "provider": provider,
        "works": ok,
        "detail": "ran a one-node model" if ok else f"wrong result {out.tolist()}",
    }


def _loadable(library: str) -> bool:
    import ctypes

    try:
        ctypes.CDLL(library)
        return True
    except OSError:
        return False


def cpu_info(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict:
    from export.cpu import cpu_report

    report = cpu_report(cpuinfo)
    flags = {f for f, present in report["flags"].items() if present}
    if "amx_int8" in flags:
        note = "AMX and VNNI int8 instructions: int8 should be the fastest CPU variant"
    elif report["vnni"]:
        note = "VNNI int8 dot products: int8 is the fastest CPU variant"
    elif "avx2" in flags:
        note = (
            "AVX2 without VNNI: int8 uses u8s8 VPMADDUBSW (can saturate; export picks a safe preset), expect a "
            "smaller int8 gain"
        )
    else:
        note = "no AVX2: int8 and fp32 kernels both slow; prefer a newer CPU"
    return {**report, "int8_note": note}


def thread_info() -> dict:
    from serving.engine import physical_cores

    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    quota = None
    try:
        max_line = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if max_line and max_line[0] != "max":
            quota = round(int(max_line[0]) / int(max_line[1]), 2)
    except (OSError, ValueError, IndexError):
        pass
    env = {
        k: os.environ[k]
        for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "BERTPACK_THREADS", "CUDA_VISIBLE_DEVICES")
        if k in os.environ
    }
    from bertpack.errors import BertpackError
    from serving.source import ServeConfig

    try:  # read as the service reads it; an invalid value is reported by serve_settings() (the service would not start)
        config = ServeConfig.from_env(
            {k: os.environ.get(k, "") for k in ("BERTPACK_THREADS", "BERTPACK_WORKERS", "BERTPACK_DEVICE")}
        )
    except BertpackError:
        config = ServeConfig.at_import()
    return {
        "logical_cpus": os.cpu_count(),
        "physical_cores": physical_cores(),
        "affinity": affinity,
        "cgroup_cpu_quota": quota,
        "workers": config.workers,
        "engine_intra_op_threads": config.threads_per_worker(),
        "engine_inter_op_threads": 1,
        "env": env,
    }


SERVE_SETTINGS = (
    "BERTPACK_MODEL",
    "BERTPACK_DEVICE",
    "BERTPACK_WORKERS",
    "BERTPACK_THREADS",
    "BERTPACK_ENGINE_BATCH",
    "BERTPACK_MAX_BATCH_SIZE",
    "BERTPACK_CUDA_GRAPHS",
    "BERTPACK_VARIANT",
    "BERTPACK_MAX_LATENCY_MS",
    "BERTPACK_ACCESS_LOG",
    "BERTPACK_TRACING",
)


def serve_settings(env: dict[str, str] | None = None) -> dict:
    """The BERTPACK_* settings `bentoml serve` reads, checked as the service checks them (ServeConfig.from_env),
    each on its own so that every bad one is reported; `problems` lists what would stop the service from starting."""
    from bertpack.errors import BertpackError
    from serving.source import ServeConfig, device_problem

    env = dict(os.environ if env is None else env)
    given = {k: env[k] for k in SERVE_SETTINGS if k in env}
    problems = []
    for name, value in given.items():
        try:
            ServeConfig.from_env({name: value})
        except BertpackError as exc:
            problems.append(str(exc))
    try:
        device = ServeConfig.from_env({"BERTPACK_DEVICE": given.get("BERTPACK_DEVICE", "")}).device
    except BertpackError:  # reported above
        device = None
    if device and (problem := device_problem(device)):
        problems.append(problem)
    model = None
    if not problems:  # the settings are fine: the model they name, checked as `bentoml serve` checks it
        model, problem = serve_model(env)
        problems += [problem] if problem else []
    return {"env": given, "device": device, "problems": problems, "model": model}


def serve_model(env: dict[str, str]) -> tuple[dict | None, str | None]:
    """(what `bentoml serve` would serve, None) or (None, why it would stop): the same preflight(), then the
    model loaded and run once on the device the service would use."""
    from bertpack.errors import BertpackError
    from serving.engine import OnnxClassifier
    from bertpack.manifest import parity_failure
    from serving.source import preflight

    try:
        config, source, manifest = preflight(env)
    except BertpackError as exc:
        return None, str(exc)
    except ImportError as exc:  # a host with the engine but not the server (bentoml): the tag cannot be looked up
        return {"checked": False, "why": f"{exc.name or exc} is not installed"}, None
    # A file can match its hash and still be refused by ONNX Runtime: load and run it as a worker would
    # (without CUDA graphs; their capture failing only falls back, it never stops the service).
    try:
        engine = OnnxClassifier(
            source.path,
            variant=config.variant,
            device=config.device,
            threads=config.threads,
            verify=False,
            cuda_graph=False,
            spin=False,
        )
        engine.warm_up()
    except BertpackError as exc:
        return None, str(exc)
    model = {
        "checked": True,
        "tag": source.tag,
        "origin": source.origin,
        "path": str(source.path),
        "variant": engine.variant,
        "device": engine.runs_on,
        "provider": engine.provider,
        "parity_passed": parity_failure(manifest) is None,
        # the service logs the same warning: a variant made for the other device runs, slower than the default
        "variant_made_for": engine.made_for_another_device(),
        "int8_kernels": engine.int8_kernel_warning(),
    }
    return model, None


def gpu_info() -> dict:
    from serving.cuda import cuda_problem, gpu_present

    devices = sorted(str(p) for p in Path("/dev").glob("nvidia[0-9]*"))
    listing = None
    if shutil.which("nvidia-smi"):
        try:
            proc = subprocess.run(
                ["nvidia-smi", "--query-gpu=index,name,memory.total,driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=15,
            )
            listing = [line.strip() for line in proc.stdout.splitlines() if line.strip()] or [proc.stderr.strip()[:200]]
        except (OSError, subprocess.TimeoutExpired) as exc:
            listing = [f"nvidia-smi failed: {exc}"]
    return {"present": gpu_present(), "device_nodes": devices, "nvidia_smi": listing, "cuda_problem": cuda_problem()}


def http_stack() -> dict:
    """What uvicorn (BentoML's HTTP server) will run on: with uvloop and httptools installed it uses
    them ("auto"), otherwise asyncio and the pure-Python h11 parser, which costs more CPU per request."""
    import importlib.util

    found = {name: importlib.util.find_spec(name) is not None for name in ("uvloop", "httptools")}
    return {
        **found,
        "loop": "uvloop" if found["uvloop"] else "asyncio",
        "http": "httptools" if found["httptools"] else "h11",
    }


def report() -> dict:
    import onnxruntime as ort

    from serving.cuda import onnxruntime_packages

    available = ort.get_available_providers()
    return {
        "versions": library_versions(),
        "onnxruntime": {
            "version": ort.__version__,
            "device": ort.get_device(),
            "packages": onnxruntime_packages(),
            "available_providers": available,
            "providers": [probe_provider(p) for p in available],
        },
        "cpu": cpu_info(),
        "threads": thread_info(),
        "gpu": gpu_info(),
        "http": http_stack(),
        "serve_settings": serve_settings(),
    }


def format_report(rep: dict) -> str:
    lines = ["versions: " + ", ".join(f"{k} {v}" for k, v in rep["versions"].items())]
    o = rep["onnxruntime"]
    lines.append(
        f"onnxruntime {o['version']} ({o['device']} build; installed: "
        f"{', '.join(f'{k} {v}' for k, v in o['packages'].items())})"
    )
    if len(o["packages"]) > 1:
        if "CUDAExecutionProvider" in o["available_providers"]:
            lines.append(
                "  note: onnxruntime and onnxruntime-gpu are both installed; this process imports the GPU build, "
                "but one reinstall can swap them: keep only onnxruntime-gpu"
            )
        else:
            lines.append(
                "  WARNING: onnxruntime and onnxruntime-gpu are both installed; the CPU build shadows the GPU one"
            )
    lines.append("providers (listed -> works?):")
    for p in o["providers"]:
        lines.append(f"  {p['provider']:<28} {'yes' if p['works'] else 'no '}  {p['detail']}")
    c = rep["cpu"]
    on = [f for f, v in c["flags"].items() if v]
    lines.append(f"cpu: {c['model'] or c['machine']}; flags: {' '.join(on) or '(none found)'}")
    lines.append(f"  int8: {c['int8_note']} (quantization preset: {c['quantization_target']})")
    t = rep["threads"]
    lines.append(
        f"threads: {t['logical_cpus']} logical CPUs, {t['physical_cores']} physical cores, affinity {t['affinity']}, "
        f"cgroup quota {t['cgroup_cpu_quota'] or 'none'}; engine intra-op {t['engine_intra_op_threads']}, inter-op 1 "
        "in "
        f"each of {t['workers']} worker{'s' if t['workers'] > 1 else ''}" + (f"; env {t['env']}" if t["env"] else "")
    )
    g = rep["gpu"]
    lines.append(
        f"gpu: {'visible' if g['present'] else 'none visible'}"
        + (f" ({', '.join(g['device_nodes'])})" if g["device_nodes"] else "")
    )
    for line in g["nvidia_smi"] or []:
        lines.append(f"  {line}")
    h = rep["http"]
    lines.append(
        f"http server: uvicorn on {h['loop']} + {h['http']}"
        + ("" if h["uvloop"] and h["httptools"] else "  (slower per request: pip install uvloop httptools)")
    )
    settings = rep.get("serve_settings", {"env": {}, "device": "auto", "problems": []})
    asked = settings["device"] or "auto"  # as ServeConfig read BERTPACK_DEVICE (None: refused, one of the problems)
    if asked == "cpu":
        lines.append("serving device: cpu (BERTPACK_DEVICE=cpu)")
    else:
        lines.append(
            f"serving device: {'cuda' if not g['cuda_problem'] else 'cpu: ' + g['cuda_problem']}"
            + (f" (BERTPACK_DEVICE={asked})" if asked != "auto" else "")
        )
    lines.append(
        "serve settings: "
        + (", ".join(f"{k}={v}" for k, v in settings["env"].items()) or "defaults (no BERTPACK_* set)")
    )
    model = settings.get("model")
    if model and model["checked"]:
        lines.append(
            f"serve model: {model['tag']} ({model['origin']}: {model['path']}), every file's hash checked, "
            f"{model['variant']} loads and runs; would serve it on {model['device']} ({model['provider']})"
        )
        if model.get("variant_made_for"):
            lines.append(
                f"  WARNING: BERTPACK_VARIANT={model['variant']} was made for {model['variant_made_for']} but would "
                "run on "
                f"{model['device']}: expect it to be slower than the default"
            )
        if model.get("int8_kernels"):
            lines.append(f"  WARNING: {model['int8_kernels']}")
        if not model["parity_passed"]:
            lines.append(
                "  WARNING: this export failed its parity check (see parity.md in its folder); "
                "the service serves it, with a warning in its log"
            )
    elif model:
        lines.append(f"serve model: not checked ({model['why']})")
    for problem in settings["problems"]:
        lines.append(f"  PROBLEM: {problem}")
    return "\n".join(lines)
