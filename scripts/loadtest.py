"""Bounded load test of the BentoML service, loopback only, against the raw int8 engine.

    flock /tmp/bertpack-measure.lock python scripts/loadtest.py --model artifacts/A [--clients 64 --duration 60]

1. The raw engine (serving.engine.OnnxClassifier, the variant the service serves, same threads)
   classifies the CoLA validation sentences at several batch sizes; the best is the reference.
2. `bentoml serve` starts on 127.0.0.1 (free port) with BERTPACK_MODEL=--model; after a warm-up,
   `--clients` concurrent clients each send one sentence per request, round-robin over the same
   sentences, for `--duration` seconds or `--max-requests` requests, whichever comes first.
3. Prints p50/p95/p99 latency, throughput, errors, the adaptive batches the server formed, and
   served/raw throughput (bar: >= 70%). Exit status 0 only with zero errors and the bar met.

With --url it loads an already running server instead (loopback addresses only).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from serving import local_server  # noqa: E402 - after the repo is on the path

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=os.environ.get("BERTPACK_MODEL", "bertpack-cola:latest"),
                   help="artifact folder or BentoML model tag (default: BERTPACK_MODEL or bertpack-cola:latest)")
    p.add_argument("--url", help="load this running server instead of starting one (loopback only)")
    p.add_argument("--target", default="serving.service:Bertpack",
                   help="service to start (default: the product; scripts.single_pass_probe:SinglePass measures one HTTP pass)")
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "cola"), help="CoLA folder (validation sentences)")
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--duration", type=float, default=60.0, help="seconds of measured load")
    p.add_argument("--warmup", type=float, default=5.0, help="seconds of unmeasured load first")
    p.add_argument("--max-requests", type=int, default=200_000, help="stop after this many measured requests")
    p.add_argument("--batch-sizes", default="1,4,8,16,32,64", help="raw engine batch sizes to try")
    p.add_argument("--engine-seconds", type=float, default=8.0, help="seconds per raw engine batch size")
    p.add_argument("--threads", type=int, help="ORT intra-op threads for both (default: physical cores)")
    p.add_argument("--json-out", type=Path, help="also write the figures as JSON")
    args = p.parse_args()
    if args.url and urlparse(args.url).hostname not in LOOPBACK:
        p.error("--url must be a loopback address (127.0.0.1, localhost, ::1)")
    if not (1 <= args.clients <= 1024 and 0 < args.duration <= 3600 and args.max_requests >= 1):
        p.error("--clients 1..1024, --duration 0..3600 s, --max-requests >= 1")
    return args


def resolve_folder(model: str) -> Path:
    from serving.source import resolve_model

    return resolve_model(model).path


def raw_engine(folder: Path, sentences: list[str], batch_sizes: list[int], seconds: float, threads: int | None) -> dict:
    """Sentences per second of the engine alone, per batch size (its own length sorting included)."""
    from serving.engine import DEFAULT_BUCKETS, OnnxClassifier

    rows = {}
    # Both paddings: the engine's default length buckets, and each run padded to its own longest.
    for padding, buckets in (("buckets", DEFAULT_BUCKETS), ("longest", None)):
        clf = OnnxClassifier(folder, device="cpu", threads=threads, buckets=buckets)
        for bs in batch_sizes:
            clf.logits(sentences[:128], batch_size=bs)  # warm the shapes
            done, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                clf.logits(sentences, batch_size=bs)  # sorted by length: the engine's best case
                done += len(sentences)
            rows[f"{padding} b{bs}"] = done / (time.perf_counter() - start)
            print(f"  raw engine, pad to {padding:<7}, batch {bs:>3}: {rows[f'{padding} b{bs}']:8.1f} sentences/s", flush=True)
    best = max(rows, key=rows.get)
    return {"variant": clf.variant, "provider": clf.provider, "threads": clf.session.get_session_options().intra_op_num_threads,
            "per_setting": rows, "best_setting": best, "best_sentences_per_s": rows[best]}


def start_server(model: str, threads: int | None, log_path: Path, target: str) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "BERTPACK_MODEL": model}
    if threads:
        env["BERTPACK_THREADS"] = str(threads)
    try:
        return local_server.start_server(env, log_path, target=target, timeout=300)
    except RuntimeError as exc:
        sys.exit(str(exc))


async def load(url: str, sentences: list[str], clients: int, warmup: float, duration: float, max_requests: int) -> dict:
    import aiohttp  # lighter per request than httpx: the client shares the 2 cores with the server

    latencies: list[float] = []
    errors: dict[str, int] = {}
    counter = {"next": 0, "measured": 0}
    t0 = time.perf_counter()
    measure_from, stop_at = t0 + warmup, t0 + warmup + duration

    async def client(session: aiohttp.ClientSession) -> None:
        while True:
            now = time.perf_counter()
            if now >= stop_at or counter["measured"] >= max_requests:
                return
            i = counter["next"]
            counter["next"] += 1
            sentence = sentences[i % len(sentences)]
            start = time.perf_counter()
            try:
                async with session.post(f"{url}/classify", json={"sentences": [sentence]}) as resp:
                    body = await resp.read()
                    answer = json.loads(body) if resp.status == 200 else None
                    # the service answers {"predictions": [...]}, the single-pass probe a bare list
                    ok = answer is not None and len(answer["predictions"] if isinstance(answer, dict) else answer) == 1
                    key = None if ok else f"HTTP {resp.status}"
            except Exception as exc:  # noqa: BLE001 - every failure is counted, none stops the test
                key = type(exc).__name__
            end = time.perf_counter()
            if start >= measure_from and end <= stop_at:
                counter["measured"] += 1
                if key is None:
                    latencies.append(end - start)
                else:
                    errors[key] = errors.get(key, 0) + 1

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        await asyncio.gather(*(client(session) for _ in range(clients)))
    elapsed = min(time.perf_counter(), stop_at) - measure_from
    latencies.sort()

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 if latencies else float("nan")

    return {"clients": clients, "seconds": round(elapsed, 2), "requests": len(latencies) + sum(errors.values()),
            "ok": len(latencies), "errors": errors, "sentences_per_s": len(latencies) / elapsed,
            "p50_ms": pct(0.50), "p95_ms": pct(0.95), "p99_ms": pct(0.99), "max_ms": latencies[-1] * 1000 if latencies else None}


def server_info(url: str) -> dict:
    """GET /info; a service without it (the probe) reports no engine and no batch counts."""
    import httpx

    resp = httpx.get(f"{url}/info", timeout=10)
    if resp.status_code == 200:
        return resp.json()
    return {"engine": None, "batching": {"batches": 0, "sentences": 0, "largest": 0}}


def main() -> int:
    args = parse_args()
    from bertpack.data import validation_sentences

    sentences, _, _ = validation_sentences(args.data)
    folder = resolve_folder(args.model)
    print(f"model {args.model} ({folder}); {len(sentences)} CoLA validation sentences; "
          f"{os.cpu_count()} CPUs; {args.clients} clients x {args.duration:.0f} s", flush=True)
    print("1. raw engine, in-process:", flush=True)
    raw = raw_engine(folder, sentences, [int(b) for b in args.batch_sizes.split(",")], args.engine_seconds, args.threads)
    print(f"2. service under load ({args.clients} clients, single-sentence requests):", flush=True)
    proc = None
    log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"bertpack-loadtest-{os.getpid()}.log"
    try:
        if args.url:
            url = args.url.rstrip("/")
        else:
            proc, url = start_server(str(folder), args.threads, log_path, args.target)
        import httpx

        before = server_info(url)
        served = asyncio.run(load(url, sentences, args.clients, args.warmup, args.duration, args.max_requests))
        info = server_info(url)
        healthy = httpx.get(f"{url}/healthz", timeout=10).status_code == 200
    finally:
        if proc is not None:
            local_server.stop_server(proc)
    b0, b1 = before["batching"], info["batching"]
    batches, batched = b1["batches"] - b0["batches"], b1["sentences"] - b0["sentences"]
    ratio = served["sentences_per_s"] / raw["best_sentences_per_s"]
    n_errors = sum(served["errors"].values())
    result = {"model": args.model, "artifact": str(folder), "target": args.target, "engine": info["engine"], "raw": raw, "served": served,
              "adaptive_batches": {"batches": batches, "sentences": batched, "mean_batch": batched / batches if batches else 0,
                                   "largest_ever": b1["largest"]},
              "ratio": ratio, "bar": 0.70, "passed": n_errors == 0 and ratio >= 0.70 and healthy, "healthy_after": healthy}
    print(f"  requests {served['requests']} in {served['seconds']} s, errors {n_errors} {served['errors'] or ''}")
    print(f"  latency p50 {served['p50_ms']:.1f} ms, p95 {served['p95_ms']:.1f} ms, p99 {served['p99_ms']:.1f} ms, max {served['max_ms']:.1f} ms")
    print(f"  throughput {served['sentences_per_s']:.1f} sentences/s; adaptive batches: {batches}, "
          f"mean {result['adaptive_batches']['mean_batch']:.1f} sentences, largest {b1['largest']}")
    print(f"3. served / raw engine (best: {raw['best_setting']}, {raw['best_sentences_per_s']:.1f}/s, "
          f"{raw['variant']} on {raw['provider']}, {raw['threads']} threads): {ratio:.1%}  "
          f"(bar >= 70%, zero errors: {'PASS' if result['passed'] else 'FAIL'})")
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=2))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
