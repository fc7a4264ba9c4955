"""Benchmark: the Serve application under load, over real HTTP, in one run.

    .venv/bin/python bench/serve.py [--model late:resnet18] [--seconds 20] [--load-seconds 60]

(a) Classification (uploaded .npz patches) at 1, 8 and 32 concurrent clients, first with batch size 1, then with
    dynamic batching (max_batch_size 32): requests/s, p50/p99 latency, mean batch size (from /metrics).
(b) A load test: --load-seconds at 32 clients mixing classify and filtered search 50/50 with dynamic batching:
    status codes (5xx must be zero), requests/s, p50/p99.

Set-up (in --workdir): a synthetic v2 archive of --pairs pairs, ingested; the model with random weights saved as a
checkpoint (throughput does not depend on training); its index in the embedded engine. Clients run in this process
(asyncio + httpx) on the same machine as the service, so they take CPU from it: the ratio between the two modes
is the figure to read, not the absolute rate.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import platform
import random
import socket
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def setup(workdir: Path, pairs: int, model_spec: str) -> tuple[str, str, str]:
    from bigearth.ingest.job import ingest
    from bigearth.models.checkpoints import save
    from bigearth.models.registry import create_model
    from bigearth.retrieval.indexer import build_index
    from bigearth.synth.archive import synthesize

    archive, shards, ckpt, index = (workdir / n for n in ("archive", "shards", "checkpoint", "index"))
    if not (shards / "manifest.json").exists():
        synthesize(str(archive), layout="v2", pairs=pairs, seed=5, progress=False)
        ingest(str(archive), str(shards), shard_size=100)
    name, _, backbone = model_spec.partition(":")
    kwargs = {"fusion": "late"} if name == "tiny" else {"backbone": backbone or "resnet18"}
    model = create_model(name, num_classes=19, **kwargs)
    save(str(ckpt), model, {"model": {"name": name, **kwargs}, "num_classes": 19, "bands": list(model.bands)})
    build_index(str(ckpt), str(shards), str(index), recreate=True, progress=False)
    return str(ckpt), str(index), str(shards)


def npz_bodies(shards: str, n: int) -> tuple[list[bytes], list[str]]:
    from bigearth.core.bands import GROUPS
    from bigearth.input.raydata import read_columns
    from bigearth.shards.patches import PatchStore

    ids = read_columns(shards, ["patch_id"]).column(0).to_pylist()
    store = PatchStore(shards)
    bodies = []
    for pid in ids[:n]:
        arrays = store.arrays(pid, {g: GROUPS[g] for g in ("s1", "s2_10m", "s2_20m")})
        buf = io.BytesIO()
        np.savez(buf, **{g: a[0] for g, a in arrays.items()})
        bodies.append(buf.getvalue())
    return bodies, ids


async def drive(
    url: str,
    clients: int,
    seconds: float,
    make_request: Any,
    alongside: tuple[Any, ...] = (),
    latencies: dict[str, list[float]] | None = None,
    statuses: dict[str, dict[int, int]] | None = None,
) -> tuple[dict[str, list[float]], dict[str, dict[int, int]], float]:
    """`clients` concurrent clients each call `make_request(client, i)` -> `(kind, awaitable response)` in a loop for
    `seconds`: latencies and status counts per kind (-1: a transport error, counted, not fatal to the run; filled
    into `latencies` / `statuses` as they come when given), and the wall time. `alongside`: coroutines run at the
    same time (a sampler)."""
    import httpx

    latencies = {} if latencies is None else latencies
    statuses = {} if statuses is None else statuses
    stop = time.perf_counter() + seconds

    async def worker(i: int) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=120) as c:
            while time.perf_counter() < stop:
                kind, call = make_request(c, i)
                t = time.perf_counter()
                try:
                    status = (await call).status_code
                except httpx.HTTPError as e:
                    status = -1
                    print("transport error:", type(e).__name__, e, flush=True)
                latencies.setdefault(kind, []).append(time.perf_counter() - t)
                counts = statuses.setdefault(kind, {})
                counts[status] = counts.get(status, 0) + 1

    t0 = time.perf_counter()
    await asyncio.gather(*alongside, *(worker(i) for i in range(clients)))
    return latencies, statuses, time.perf_counter() - t0


async def load(url: str, clients: int, seconds: float, make_request: Any) -> dict[str, Any]:
    """`drive` with one kind of request: throughput, latency percentiles, statuses."""
    latencies, statuses, wall = await drive(url, clients, seconds, lambda c, i: ("all", make_request(c, i)))
    times, counts = latencies.get("all", []), statuses.get("all", {})
    return {
        "clients": clients,
        "requests": len(times),
        "rps": round(len(times) / wall, 2),
        "p50_ms": round(float(np.percentile(times, 50)) * 1000, 1),
        "p99_ms": round(float(np.percentile(times, 99)) * 1000, 1),
        "statuses": {str(k): v for k, v in sorted(counts.items())},
    }


def batch_stats(url: str) -> tuple[float, float]:
    import httpx

    text = httpx.get(f"{url}/metrics").text
    total = sum(float(x.split()[-1]) for x in text.splitlines() if x.startswith("bigearth_classifier_batch_size_sum"))
    count = sum(float(x.split()[-1]) for x in text.splitlines() if x.startswith("bigearth_classifier_batch_size_count"))
    return total, count


def deploy(
    url: str, ckpt: str, index: str, shards: str, max_batch_size: int, gpus: float = 0, ready_timeout_s: float = 300
) -> None:
    """The application on the Serve started at `url`, its classifier batching up to `max_batch_size` (on `gpus`
    GPUs a replica); returns once it is ready, raises TimeoutError when it is not after `ready_timeout_s`."""
    import httpx
    from ray import serve

    from bigearth.serving.app import AppArgs, build

    args = AppArgs(
        checkpoint=ckpt,
        index=index,
        data=shards,
        max_batch_size=max_batch_size,
        gpus_per_classifier=gpus,
        replica_cpus=1,
        batch_wait_timeout_s=0.01,
        max_ongoing_requests=128,
    )
    serve.run(build(args), name="bigearth", route_prefix="/")
    deadline = time.monotonic() + ready_timeout_s
    while httpx.get(f"{url}/readyz").status_code != 200:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url}/readyz not ready after {ready_timeout_s:.0f} s")
        time.sleep(0.5)


UNBATCHED, BATCHED = "batch size 1", "dynamic batching (max 32)"


def batching_modes(
    url: str,
    ckpt: str,
    index: str,
    shards: str,
    clients: list[int],
    seconds: float,
    make_request: Any,
    gpus: float = 0,
    warmup_s: float = 3,
    monitor: Any = None,
) -> dict[str, list[dict[str, Any]]]:
    """The application deployed with batch size 1, then with dynamic batching (max 32), each loaded by `clients`
    concurrent clients in turn for `seconds` after a warm-up: a row per client count (`load`'s figures and the
    mean batch size from /metrics), per mode; the application is deleted after each. `monitor`: a function giving
    a context manager held around each load, whose `figures()` join the row (bench/gpu_check.py's GPU sampler)."""
    from ray import serve

    modes: dict[str, list[dict[str, Any]]] = {}
    for mode, mbs in ((UNBATCHED, 1), (BATCHED, 32)):
        deploy(url, ckpt, index, shards, mbs, gpus)
        asyncio.run(load(url, 4, warmup_s, make_request))  # warm-up
        rows = []
        for n in clients:
            before = batch_stats(url)
            with monitor() if monitor else contextlib.nullcontext() as watched:
                row = asyncio.run(load(url, n, seconds, make_request))
            if watched is not None:
                row |= watched.figures()
            after = batch_stats(url)
            row["mean_batch"] = round((after[0] - before[0]) / max(after[1] - before[1], 1), 2)
            rows.append(row)
            print(mode, row, flush=True)
        modes[mode] = rows
        serve.delete("bigearth")
    return modes


def classify_request(bodies: list[bytes]) -> Any:
    """`make_request` for `load`: one classification of a random body of `bodies` (an .npz upload)."""

    def classify(c: Any, i: int) -> Any:
        body = bodies[random.randrange(len(bodies))]
        return c.post("/v1/classify", files=[("patch.npz", ("patch.npz", body, "application/octet-stream"))])

    return classify


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="late:resnet18", help="tiny, or late:<timm backbone>")
    ap.add_argument("--pairs", type=int, default=300)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--load-seconds", type=float, default=60)
    ap.add_argument("--clients", default="1,8,32")
    ap.add_argument("--workdir", default=".bench/serve")
    ap.add_argument("--out", help="also write the JSON here")
    a = ap.parse_args()
    import ray
    from ray import serve

    workdir = Path(a.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    ckpt, index, shards = setup(workdir, a.pairs, a.model)
    bodies, ids = npz_bodies(shards, 32)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    serve.start(http_options={"host": "127.0.0.1", "port": port})

    classify = classify_request(bodies)
    result: dict[str, Any] = {"model": a.model, "machine": f"{platform.node()}, {os.cpu_count()} CPUs"}
    clients = [int(x) for x in a.clients.split(",")]
    result["modes"] = batching_modes(url, ckpt, index, shards, clients, a.seconds, classify)
    top = {m: rows[-1]["rps"] for m, rows in result["modes"].items()}
    result["speedup_at_max_clients"] = round(top[BATCHED] / top[UNBATCHED], 2)

    deploy(url, ckpt, index, shards, 32)
    train = [pid for pid in ids]

    def mixed(c: Any, i: int) -> Any:
        if random.random() < 0.5:
            return classify(c, i)
        body = {"patch_id": random.choice(train), "k": 10, "filter": {"split": "train"}}
        return c.post("/v1/search", json=body)

    result["load_test"] = asyncio.run(load(url, 32, a.load_seconds, mixed))
    result["load_test"]["mix"] = "50% classify (.npz upload), 50% search by patch id with a split filter"
    result["load_test"]["5xx"] = sum(v for k, v in result["load_test"]["statuses"].items() if k.startswith("5"))
    print("load test", result["load_test"], flush=True)
    serve.shutdown()
    ray.shutdown()
    print(json.dumps(result, indent=1))
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "platform"))
    sys.exit(main())
