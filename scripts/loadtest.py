"""Load test of the served model on this host, loopback only: the product beside its peers, under the same load.

    python scripts/loadtest.py --model artifacts/demo [--duration 60] [--workers 1,2] [--json-out FILE]

In one run, one after the other on the same host:
1. the raw engine (serving.engine.OnnxClassifier as the service runs it): sentences/s at several batch sizes (E, the
   best) and the p50/p99 of one sentence at a time (tokenization included);
2. each server started with `bentoml serve` on 127.0.0.1: the no-op BentoML service (scripts/peers/noop.py, BentoML's
   own ceiling N), the transformers pipeline in PyTorch (scripts/peers/pipeline.py, what a BentoML example would
   serve) and the product (serving.service:Bertpack) with each --workers count. Each gets the same loads:
   - one client sending single sentences one after the other (`--lone` requests): the latency a lone user sees;
   - `--clients` concurrent clients, one sentence per request, for `--duration` seconds (after `--warmup`);
   - `--batch-clients` clients sending `--per-request` sentences per request, for half as long;
   - the lone client again: BentoML's adaptive batcher waits for a batch as long as it learned to under the load
     (its estimate decays over minutes), so a lone request just after a burst is slower than on a fresh server.
3. the bound a server can reach on a host where HTTP and the model share the cores, B = 1 / (1/N + 1/E), and the
   product's rate as a share of it and of the peer's; with --check, exit 1 unless the product carries >= 75% of B
   and >= 1.5x the peer, with zero errors, and a lone request's p50 is within 3 ms of the engine's and at most half
   the peer's.

The load generator (aiohttp, or wrk with --client wrk) runs on the same cores as the servers; its figures compare
servers measured in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from serving import local_server  # noqa: E402 - after the repo is on the path

PRODUCT, NOOP, PEER = "serving.service:Bertpack", "scripts.peers.noop:Noop", "scripts.peers.pipeline:Pipeline"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="artifact folder written by `bertpack export`")
    p.add_argument("--checkpoint", help="the PyTorch checkpoint for the pipeline peer (default: the artifact's source)")
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "cola"), help="CoLA folder (dev sentences)")
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--batch-clients", type=int, default=16)
    p.add_argument("--per-request", type=int, default=16, help="sentences per request of the batch clients")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of measured load (batch clients: half)")
    p.add_argument("--warmup", type=float, default=5.0, help="seconds of unmeasured load first")
    p.add_argument("--lone", type=int, default=300, help="sequential single-sentence requests")
    p.add_argument("--workers", default="1,2", help="BERTPACK_WORKERS values to measure the product with")
    p.add_argument("--skip", default="", help="servers to leave out: noop, pipeline")
    p.add_argument("--batch-sizes", default="1,8,16,32,64", help="raw engine batch sizes")
    p.add_argument("--engine-seconds", type=float, default=5.0, help="seconds per raw engine batch size")
    p.add_argument(
        "--client",
        choices=("aiohttp", "wrk"),
        default="aiohttp",
        help="load generator for the concurrent loads: Python's aiohttp, or wrk (a C program: less CPU)",
    )
    p.add_argument("--json-out", type=Path, help="write the figures as JSON")
    p.add_argument("--check", action="store_true", help="exit 1 unless the product meets the checks above")
    args = p.parse_args()
    if not (1 <= args.clients <= 1024 and 1 <= args.batch_clients <= 1024 and 0 < args.duration <= 3600):
        p.error("--clients and --batch-clients 1..1024, --duration 0..3600 s")
    return args


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def raw_engine(folder: Path, sentences: list[str], batch_sizes: list[int], seconds: float, lone: int) -> dict:
    """The engine as one worker of the service runs it: sentences/s per adaptive batch size, and one sentence's latency.

    Each batch is the next `size` sentences in arrival order, run as the service runs an adaptive batch (sorted by
    length, cut into ORT runs of the engine batch): a server never sees its whole input at once, so the rate of one
    length-sorted pass over all the sentences (also printed) is out of its reach."""
    from serving.engine import OnnxClassifier
    from serving.source import ServeConfig

    config = ServeConfig.from_env({"BERTPACK_WORKERS": "1"})
    engine = OnnxClassifier(
        folder, device=config.device, threads=config.threads_per_worker(), buckets="served", spin=False
    )
    ids = engine.encode(sentences)
    rates = {}
    for size in batch_sizes:
        engine.logits_from_ids(ids[:128], batch_size=config.engine_batch)  # warm the shapes
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            for i in range(0, len(ids), size):
                engine.logits_from_ids(ids[i : i + size], batch_size=config.engine_batch)
            done += len(ids)
        rates[size] = done / (time.perf_counter() - start)
        print(f"  engine, adaptive batches of {size:>3}: {rates[size]:8.1f} sentences/s", flush=True)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        engine.logits_from_ids(ids, batch_size=config.engine_batch)
        done += len(ids)
    sorted_rate = done / (time.perf_counter() - start)
    print(f"  engine, one length-sorted pass over all: {sorted_rate:8.1f} sentences/s", flush=True)
    latencies = []
    for sentence in (sentences * (lone // len(sentences) + 1))[:lone]:
        start = time.perf_counter()
        engine.classify([sentence], batch_size=1)
        latencies.append(time.perf_counter() - start)
    best = max(rates, key=rates.get)
    one = {"p50_ms": percentile(latencies, 0.5) * 1000, "p99_ms": percentile(latencies, 0.99) * 1000}
    print(f"  engine, one sentence at a time: p50 {one['p50_ms']:.2f} ms, p99 {one['p99_ms']:.2f} ms", flush=True)
    return {
        "variant": engine.variant,
        "provider": engine.provider,
        "threads": config.threads_per_worker(),
        "engine_batch": config.engine_batch,
        "sentences_per_s": {str(k): v for k, v in rates.items()},
        "best_batch": best,
        "best_sentences_per_s": rates[best],
        "sorted_pass_sentences_per_s": sorted_rate,
        "lone": one,
    }


async def load(url: str, sentences: list[str], clients: int, per_request: int, warmup: float, duration: float) -> dict:
    """`clients` concurrent clients posting `per_request` sentences per request, round-robin over `sentences`."""
    import aiohttp  # lighter per request than httpx: the client shares the cores with the server

    latencies: list[float] = []
    errors: dict[str, int] = {}
    counter = {"next": 0}
    t0 = time.perf_counter()
    measure_from, stop_at = t0 + warmup, t0 + warmup + duration

    async def client(session: aiohttp.ClientSession) -> None:
        while time.perf_counter() < stop_at:
            i = counter["next"]
            counter["next"] += per_request
            batch = [sentences[(i + k) % len(sentences)] for k in range(per_request)]
            start = time.perf_counter()
            try:
                async with session.post(f"{url}/classify", json={"sentences": batch}) as resp:
                    answer = json.loads(await resp.read()) if resp.status == 200 else None
                    answers = answer.get("predictions") if isinstance(answer, dict) else answer  # the peers: a list
                    key = None if isinstance(answers, list) and len(answers) == per_request else f"HTTP {resp.status}"
            except Exception as exc:  # noqa: BLE001 - every failure is counted, none stops the test
                key = type(exc).__name__
            end = time.perf_counter()
            if start >= measure_from and end <= stop_at:
                if key is None:
                    latencies.append(end - start)
                else:
                    errors[key] = errors.get(key, 0) + 1

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        await asyncio.gather(*(client(session) for _ in range(clients)))
    seconds = min(time.perf_counter(), stop_at) - measure_from
    return {
        "clients": clients,
        "sentences_per_request": per_request,
        "seconds": round(seconds, 2),
        "requests": len(latencies),
        "errors": errors,
        "requests_per_s": len(latencies) / seconds,
        "sentences_per_s": len(latencies) * per_request / seconds,
        "p50_ms": percentile(latencies, 0.5) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
    }


def wrk_load(url: str, sentences: list[str], clients: int, per_request: int, warmup: float, duration: float) -> dict:
    """The same load as `load`, generated by wrk (one thread) from a Lua script that rotates the request bodies."""
    import re
    import subprocess
    import tempfile

    bodies = [
        json.dumps({"sentences": [sentences[(i + k) % len(sentences)] for k in range(per_request)]})
        for i in range(0, len(sentences), per_request)
    ]
    script = (
        "bodies = {" + ",".join(f"[==[{b}]==]" for b in bodies) + "}\ni = 0\nrequest = function()\n  i = i + 1\n"
        '  return wrk.format("POST", "/classify", {["Content-Type"] = "application/json"}, bodies[(i % #bodies) + '
        "1])\nend\n"
    )
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(script)
    try:
        command = ["wrk", "-t1", f"-c{clients}", "--latency", "-s", fh.name, url]
        subprocess.run([*command, f"-d{max(1, round(warmup))}s"], capture_output=True, check=True)
        out = subprocess.run(
            [*command, f"-d{max(1, round(duration))}s"], capture_output=True, text=True, check=True
        ).stdout
    finally:
        os.unlink(fh.name)

    def ms(label: str) -> float:
        value, unit = re.search(rf"{label}\s+([\d.]+)(us|ms|s)\b", out).groups()
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    requests = int(re.search(r"(\d+) requests in", out).group(1))
    bad = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    socket = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)) * (requests - bad) / max(requests, 1)
    errors = {k: v for k, v in (("HTTP non-2xx", bad), ("socket", socket)) if v}
    return {
        "clients": clients,
        "sentences_per_request": per_request,
        "seconds": duration,
        "requests": requests - bad,
        "errors": errors,
        "requests_per_s": rate,
        "sentences_per_s": rate * per_request,
        "p50_ms": ms("50%"),
        "p99_ms": ms("99%"),
        "client": "wrk",
    }


def lone_requests(url: str, sentences: list[str], count: int) -> dict:
    """One client, one sentence per request, each sent when the last was answered."""
    import httpx

    latencies = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for i in range(count + 20):
            start = time.perf_counter()
            client.post("/classify", json={"sentences": [sentences[i % len(sentences)]]}).raise_for_status()
            if i >= 20:  # the first few warm the connection and the batcher
                latencies.append(time.perf_counter() - start)
    return {
        "requests": count,
        "p50_ms": percentile(latencies, 0.5) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "mean_ms": statistics.fmean(latencies) * 1000,
    }


def measure_server(name: str, target: str, env: dict[str, str], sentences: list[str], args: argparse.Namespace) -> dict:
    log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"bertpack-loadtest-{name}-{os.getpid()}.log"
    try:
        proc, url = local_server.start_server({**os.environ, **env}, log_path, target=target, timeout=300)
    except RuntimeError as exc:
        sys.exit(str(exc))
    concurrent = wrk_load if args.client == "wrk" else (lambda *a: asyncio.run(load(*a)))
    try:
        lone = lone_requests(url, sentences, args.lone)
        single = concurrent(url, sentences, args.clients, 1, args.warmup, args.duration)
        batched = concurrent(url, sentences, args.batch_clients, args.per_request, args.warmup, args.duration / 2)
        after = lone_requests(url, sentences, args.lone)
    finally:
        local_server.stop_server(proc)
    result = {
        "target": target,
        "env": env,
        "single": single,
        "batched": batched,
        "lone": lone,
        "lone_after_load": after,
    }
    print(
        f"  {name:<12} {single['requests_per_s']:7.1f} req/s (p50 {single['p50_ms']:6.1f}, p99 "
        f"{single['p99_ms']:6.1f} ms, "
        f"errors {sum(single['errors'].values())}) | {args.per_request}/request: {batched['sentences_per_s']:7.1f} "
        f"sentences/s (errors {sum(batched['errors'].values())}) | lone p50 {lone['p50_ms']:.2f} ms, "
        f"p99 {lone['p99_ms']:.2f} ms, after the load {after['p50_ms']:.1f} ms",
        flush=True,
    )
    return result


def bound(server_rate: float, engine_rate: float) -> float:
    """What one host can serve when each sentence costs both the HTTP side (1/N) and the model (1/E) on its cores."""
    return 1 / (1 / server_rate + 1 / engine_rate)


def main() -> int:
    args = parse_args()
    from bertpack.data import validation_sentences
    from bertpack.machine import cpu_model, library_versions
    from bertpack.manifest import read_manifest

    sentences, _, _ = validation_sentences(args.data)
    folder = Path(args.model).resolve()
    manifest = read_manifest(folder)
    checkpoint = args.checkpoint or manifest.get("source", {}).get("checkpoint")
    skip = set(filter(None, args.skip.split(",")))
    print(f"{folder}: {len(sentences)} dev sentences; {cpu_model()}, {os.cpu_count()} CPUs", flush=True)
    print("1. raw engine, in-process:", flush=True)
    engine = raw_engine(
        folder, sentences, [int(b) for b in args.batch_sizes.split(",")], args.engine_seconds, args.lone
    )
    print(
        f"2. servers: {args.clients} clients x 1 sentence, {args.batch_clients} clients x {args.per_request} "
        "sentences, "
        "one client one at a time:",
        flush=True,
    )
    servers = {}
    if "noop" not in skip:
        servers["noop"] = measure_server("noop", NOOP, {}, sentences, args)
    if "pipeline" not in skip and checkpoint:
        servers["pipeline"] = measure_server("pipeline", PEER, {"PEER_MODEL": str(checkpoint)}, sentences, args)
    for workers in [int(w) for w in args.workers.split(",")]:
        servers[f"bertpack-{workers}w"] = measure_server(
            f"bertpack-{workers}w",
            PRODUCT,
            {"BERTPACK_MODEL": str(folder), "BERTPACK_WORKERS": str(workers)},
            sentences,
            args,
        )

    result = {
        "command": shlex.join(["python", "scripts/loadtest.py", *sys.argv[1:]]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_model(), "cpus": os.cpu_count()},
        "versions": library_versions(),
        "artifact": folder.name,
        "variant": engine["variant"],
        "engine": engine,
        "servers": servers,
        "settings": {
            k: getattr(args, k) for k in ("client", "clients", "batch_clients", "per_request", "duration", "lone")
        },
    }
    checks = []
    if "noop" in servers:
        e = engine["best_sentences_per_s"]
        limit_1 = bound(servers["noop"]["single"]["requests_per_s"], e)
        limit_16 = bound(servers["noop"]["batched"]["sentences_per_s"], e)
        result["bound"] = {"single": limit_1, "batched": limit_16}
        print(
            f"3. bound B = 1/(1/N + 1/E): {limit_1:.1f} requests/s at one sentence each, {limit_16:.1f} sentences/s at "
            f"{args.per_request} per request (E {e:.1f} sentences/s)"
        )
        peer = servers.get("pipeline")
        for name, server in servers.items():
            if not name.startswith("bertpack"):
                continue
            single, batched, lone = server["single"], server["batched"], server["lone"]
            ratios = {
                "of_bound": single["requests_per_s"] / limit_1,
                "batched_of_bound": batched["sentences_per_s"] / limit_16,
                "lone_p50_over_engine_ms": lone["p50_ms"] - engine["lone"]["p50_ms"],
            }
            if peer:
                ratios["of_peer"] = single["requests_per_s"] / peer["single"]["requests_per_s"]
                ratios["lone_p50_of_peer"] = lone["p50_ms"] / peer["lone"]["p50_ms"]
            server["ratios"] = ratios
            errors = sum(single["errors"].values()) + sum(batched["errors"].values())
            ok = (
                errors == 0
                and ratios["of_bound"] >= 0.75
                and ratios["batched_of_bound"] >= 0.75
                and ratios["lone_p50_over_engine_ms"] <= 3
                and (not peer or (ratios["of_peer"] >= 1.5 and ratios["lone_p50_of_peer"] <= 0.5))
            )
            checks.append(ok)
            print(
                f"  {name}: {ratios['of_bound']:.0%} of B at one sentence, {ratios['batched_of_bound']:.0%} at "
                f"{args.per_request}"
                + (f", {ratios['of_peer']:.2f}x the pipeline" if peer else "")
                + f"; lone p50 {ratios['lone_p50_over_engine_ms']:+.2f} ms over the engine's"
                + (f", {ratios['lone_p50_of_peer']:.0%} of the pipeline's" if peer else "")
                + f"; errors {errors}"
            )
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(result, indent=2) + "\n")
    return 1 if args.check and not (checks and any(checks)) else 0


if __name__ == "__main__":
    sys.exit(main())
