"""Which artifact the service serves and how: a BentoML model tag or an artifact folder, and the
engine settings, read from the environment (BentoML services take no constructor arguments)."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from bertpack.errors import BertpackError

DEFAULT_MODEL = "bertpack-cola:latest"
REQUEST_TIMEOUT_S = 30  # BentoML's request timeout for the service (504 past it)
# Set by `bentoml serve`'s own process once it has hashed every file; its workers inherit it (circus copies the
# environment).
VERIFIED_FILES = "BERTPACK_VERIFIED_FILES"
# Set by `bentoml serve`'s own process to the model_identity() it checked: a worker serves that model or none.
SERVED_MODEL = "BERTPACK_SERVED_MODEL"


@dataclass(frozen=True)
class ServeConfig:
    model: str = DEFAULT_MODEL  # BERTPACK_MODEL: a model tag or an artifact folder
    device: str = "auto"  # BERTPACK_DEVICE: auto, cpu or cuda
    workers: int = 1  # BERTPACK_WORKERS: server processes, each with its own model session (default: default_workers())
    threads: int | None = None  # BERTPACK_THREADS: ORT intra-op threads per worker (default: physical cores / workers)
    max_batch_size: int = 64  # BERTPACK_MAX_BATCH_SIZE: sentences per adaptive batch (read at import, in the decorator)
    engine_batch: int = 16  # BERTPACK_ENGINE_BATCH: rows per ORT run inside one adaptive batch (CPU)
    cuda_graphs: bool = True  # BERTPACK_CUDA_GRAPHS: capture CUDA graphs for bucketed shapes on the GPU
    variant: str | None = None  # BERTPACK_VARIANT: serve this variant instead of the manifest's default for the device
    max_latency_ms: int = 10_000  # BERTPACK_MAX_LATENCY_MS: a request queued longer than this for a batch gets 503
    access_log: bool = True  # BERTPACK_ACCESS_LOG: BentoML's access log (read at import, in the service's decorator)
    tracing: bool = False  # BERTPACK_TRACING: BentoML's OpenTelemetry spans for /classify (read at import)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, default_model: str = DEFAULT_MODEL) -> "ServeConfig":
        """`default_model`: what an unset BERTPACK_MODEL means (a built Bento passes the version it was built with).
        Values are read as compose files and shells write them: surrounding spaces dropped, empty = unset."""
        env = {k: v.strip() for k, v in (os.environ if env is None else env).items() if k.startswith("BERTPACK_")}
        device = env.get("BERTPACK_DEVICE", "").lower() or "auto"
        if device not in ("auto", "cpu", "cuda"):
            raise BertpackError(
                f"BERTPACK_DEVICE must be auto, cpu or cuda, not {env['BERTPACK_DEVICE']!r}; set one of those "
                "(or unset it for auto: CUDA when usable, else the CPU)"
            )
        max_latency_ms = _positive(env, "BERTPACK_MAX_LATENCY_MS", 10_000) or cls.max_latency_ms
        if max_latency_ms >= REQUEST_TIMEOUT_S * 1000:
            raise BertpackError(
                f"BERTPACK_MAX_LATENCY_MS={max_latency_ms} is not below the {REQUEST_TIMEOUT_S} s request timeout: a "
                "request would time out (504) before the batching bound could shed it (503); set a value such as 10000"
            )
        return cls(
            model=env.get("BERTPACK_MODEL") or default_model,
            device=device,
            workers=_positive(env, "BERTPACK_WORKERS", 2) or default_workers(device),
            threads=_positive(env, "BERTPACK_THREADS", 4),
            engine_batch=_positive(env, "BERTPACK_ENGINE_BATCH", 16) or cls.engine_batch,
            max_batch_size=_positive(env, "BERTPACK_MAX_BATCH_SIZE", 64) or cls.max_batch_size,
            cuda_graphs=_switch(env, "BERTPACK_CUDA_GRAPHS", cls.cuda_graphs),
            variant=env.get("BERTPACK_VARIANT") or None,
            max_latency_ms=max_latency_ms,
            access_log=_switch(env, "BERTPACK_ACCESS_LOG", cls.access_log),
            tracing=_switch(env, "BERTPACK_TRACING", cls.tracing),
        )

    @classmethod
    def at_import(cls) -> "ServeConfig":
        """The settings the service's decorator takes when its module is imported; a bad value gives the defaults
        here and is refused with its one line by preflight() when `bentoml serve` starts."""
        try:
            return cls.from_env()
        except BertpackError:
            return cls(workers=default_workers("auto"))

    def threads_per_worker(self) -> int:
        """ONNX Runtime intra-op threads of one worker: BERTPACK_THREADS, else the physical cores shared by the
        workers."""
        from serving.engine import physical_cores

        return self.threads or max(1, physical_cores() // self.workers)


def default_workers(device: str, cores: int | None = None, gpu: bool | None = None) -> int:
    """Server processes when BERTPACK_WORKERS is unset. On the CPU one worker per 4 cores, so one up to 4 cores: two
    workers on 2 cores serve more single-sentence requests, but the rate of a few busy connections then depends on how
    they fall on the workers, and one worker's does not. On a GPU host one per 4 cores, at most 4, sharing the GPU
    (each with its own session and CUDA graphs): there the per-request Python work, not the GPU, is the limit.
    `cores` and `gpu` (a GPU is visible) are this host's unless given."""
    from serving.engine import physical_cores
    from serving.cuda import gpu_present

    cores = cores or physical_cores()
    gpu = device != "cpu" and (gpu_present() if gpu is None else gpu)
    return max(1, min(4, cores // 4)) if gpu else max(1, cores // 4)


def _positive(env: dict[str, str], name: str, example: int) -> int | None:
    value = env.get(name)
    if not value:
        return None
    if not value.isascii() or not value.isdigit() or int(value) < 1:
        raise BertpackError(
            f"{name} must be a positive integer, not {value!r}; set a whole number such as {example} (or unset it for "
            "the default)"
        )
    return int(value)


_ON, _OFF = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _switch(env: dict[str, str], name: str, default: bool) -> bool:
    value = env.get(name, "").strip().lower()
    if not value:
        return default
    if value not in _ON + _OFF:
        raise BertpackError(
            f"{name} must be 1 or 0, not {env[name]!r}; set 1 (on) or 0 (off), or unset it for the default "
            f"({'on' if default else 'off'})"
        )
    return value in _ON


@dataclass(frozen=True)
class ModelSource:
    path: Path
    tag: str  # NAME:<version> (bertpack-cola for CoLA), also for a plain folder (from its manifest)
    origin: str  # "store" or "folder"


def looks_like_path(spec: str) -> bool:
    """A spec with a path separator, or starting with '.' or '~', means a folder (BentoML tags have neither)."""
    return "/" in spec or os.sep in spec or spec.startswith((".", "~"))


def resolve_model(spec: str) -> ModelSource:
    """An existing folder is an artifact folder; a spec that looks like a path must be one; anything
    else is a BentoML model tag."""
    from bertpack.manifest import MANIFEST, read_manifest

    folder = Path(spec).expanduser()
    if folder.is_dir():
        manifest = read_manifest(folder)
        name = manifest.get("name") or DEFAULT_MODEL.split(":")[0]  # exports before names were CoLA's
        return ModelSource(folder.resolve(), f"{name}:{manifest['version']}", "folder")
    if folder.exists():
        raise BertpackError(
            f"model {spec!r} is a file, not an artifact folder: set BERTPACK_MODEL to the folder written by "
            f"`bertpack export` (the one holding {MANIFEST}), or to a model tag such as {DEFAULT_MODEL}"
        )
    if looks_like_path(spec):
        raise BertpackError(
            f"artifact folder {spec!r} does not exist ({folder.absolute()}): check the path in BERTPACK_MODEL, "
            f"write the folder with `bertpack export RUN_DIR --out {spec}`, or set BERTPACK_MODEL to a model tag "
            f"such as {DEFAULT_MODEL}"
        )
    import bentoml
    from bentoml.exceptions import BentoMLException, NotFound

    try:
        model = bentoml.models.get(spec)
    except NotFound:
        # A bare name is a folder when one of that name is here, else a tag: say both, the user may have meant either.
        folder_too = (
            "" if ":" in spec else f", nor a folder {spec!r} in {Path.cwd()} (write a folder's path as ./{spec})"
        )
        raise BertpackError(
            f"model {spec!r} is not in the BentoML model store "
            f"({os.environ.get('BENTOML_HOME', '~/bentoml')}){folder_too}: "
            "run `bertpack export RUN_DIR`, or set BERTPACK_MODEL to a tag or an artifact folder"
        ) from None
    except (BentoMLException, ValueError) as exc:
        raise BertpackError(
            f"BERTPACK_MODEL={spec!r} is neither an artifact folder nor a usable model tag ({exc}); "
            f"set it to a tag such as {DEFAULT_MODEL} or to an artifact folder's path"
        ) from None
    return ModelSource(Path(model.path), str(model.tag), "store")


def files_fingerprint(folder: Path, manifest: dict) -> str | None:
    """Size, mtime and inode of every file the manifest lists (None if one is missing): equal to the
    fingerprint taken when the files were hashed means no file was rewritten or replaced since."""
    stats = {}
    try:
        for name in sorted(manifest["files"]):
            st = (folder / name).stat()
            stats[name] = [st.st_size, st.st_mtime_ns, st.st_ino]
    except OSError:
        return None
    return json.dumps({"path": str(folder.resolve()), "files": stats}, sort_keys=True)


def model_identity(manifest: dict) -> str:
    """The version and the files' hashes: what two manifests must share to describe the same model. A new export
    into the same folder (export --overwrite) always differs, if only by its version."""
    files = json.dumps({name: meta.get("sha256") for name, meta in manifest["files"].items()}, sort_keys=True)
    return f"{manifest['version']} {hashlib.sha256(files.encode()).hexdigest()[:16]}"


def check_still_served(source: ModelSource, manifests: list[dict], pinned: str | None) -> None:
    """In a worker: every manifest it read (preflight's, the engine's, one read after loading) is the model `bentoml
    serve` checked at start (`pinned`). A folder replaced since (an export --overwrite while serving) would otherwise
    be picked up by a worker that restarts, alone, next to workers still serving the old model from memory."""
    if pinned is None:
        return
    for manifest in manifests:
        if model_identity(manifest) != pinned:
            raise BertpackError(
                f"{source.path} was replaced since `bentoml serve` started (it checked version {pinned.split()[0]}, "
                f"the folder now holds {manifest['version']}: an export --overwrite?); a worker does not switch "
                "models on its own: restart `bentoml serve` to serve the new export"
            )


def device_problem(device: str) -> str | None:
    """Why BERTPACK_DEVICE cannot be honoured on this host (cuda asked for, none usable), or None."""
    from serving.cuda import cuda_problem

    if device == "cuda" and cuda_problem():
        return f"BERTPACK_DEVICE=cuda, but {cuda_problem()}; set BERTPACK_DEVICE=auto or cpu"
    return None


def preflight(
    env: dict[str, str] | None = None, verified: str | None = None, default_model: str = DEFAULT_MODEL
) -> tuple[ServeConfig, ModelSource, dict]:
    """Everything that can make start-up fail on the artifact or the settings, checked without loading
    a model: the BERTPACK_* settings, the model spec, the manifest, every file's hash, the tokenizer, the
    variant, CUDA when asked for. `bentoml serve` runs it before any worker starts; `bertpack doctor` runs it too.
    `verified`: the files_fingerprint() taken when the files were last hashed; if it still matches, the
    files are not hashed again (a worker after the serve process's own check: one pass is 0.3 s for the
    demo's 250 MB artifact here, ~1.5 s at that rate for a bert-base artifact)."""
    from serving.engine import load_tokenizer
    from bertpack.manifest import left_out, read_manifest, verify_files

    config = ServeConfig.from_env(env, default_model)
    source = resolve_model(config.model)
    manifest = read_manifest(source.path)
    if verified is None or verified != files_fingerprint(source.path, manifest):
        verify_files(source.path, manifest)  # every file, before anything is served
        load_tokenizer(source.path)  # a file can match its hash and still not parse (tens of ms)
    if config.variant and config.variant not in manifest["variants"]:
        default = manifest["serving_default"]
        if missing := left_out(manifest, config.variant):
            raise BertpackError(
                f"BERTPACK_VARIANT={config.variant!r} ({missing[0]}, the export's reference graph) was left out of "
                f"{source.tag} in the model store, so a Bento does not carry it; set BERTPACK_VARIANT=optimized "
                "(the same logits from the fused graph), or serve the export's folder, which has every variant: "
                f"BERTPACK_MODEL={missing[1]}"
            )
        raise BertpackError(
            f"BERTPACK_VARIANT={config.variant!r} is not in {source.tag} (it has {', '.join(manifest['variants'])}); "
            f"set one of those, or unset it for the default ({default['cpu']} on the CPU, {default['cuda']} on CUDA)"
        )
    if problem := device_problem(config.device):
        raise BertpackError(problem)
    return config, source, manifest
