"""Soak test: the Serve application at 32 clients for minutes, over real HTTP on loopback, in one run.

    .venv/bin/python bench/soak.py [--minutes 5] [--clients 32] [--out bench/results/soak.json]

The mix: 40% classify (an uploaded .npz patch), 40% search by patch id with a split filter, 20% quicklooks
(GET /v1/patches/{id}/rgb.png). Every status is counted (5xx must be zero). The resident memory (VmRSS) of every
Serve process (each replica, the proxy, the controller) is sampled every --sample-s seconds; the figure is the
growth from the first sample after the warm-up to the last, per process. Set-up as bench/serve.py (a synthetic
archive, the model with random weights, its embedded index) in --workdir.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
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


def _bench_serve() -> Any:
    """bench/serve.py's set-up and load helpers (loaded by path: `serve` is also a folder of the repository)."""
    spec = importlib.util.spec_from_file_location("bench_serve", REPO / "bench" / "serve.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def serve_processes() -> dict[str, int]:
    """`<process title> (pid N)` -> VmRSS in bytes, for every Ray Serve process on this machine. (Ray appends
    the method a replica is running to its title, `...:Ingress.handle_request`: `memory_by_process` keys by pid.)"""
    out: dict[str, int] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            title = (proc / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            if not title.startswith(("ray::ServeReplica", "ray::ProxyActor", "ray::ServeController")):
                continue
            rss = next(x for x in (proc / "status").read_text().splitlines() if x.startswith("VmRSS:"))
        except (OSError, StopIteration):
            continue
        out[f"{title.split()[0]} (pid {proc.name})"] = int(rss.split()[1]) * 1024
    return out


async def soak(
    url: str, clients: int, seconds: float, bodies: list[bytes], ids: list[str], sample_s: float
) -> dict[str, Any]:
    samples: list[dict[str, Any]] = []
    latencies: dict[str, list[float]] = {"classify": [], "search": [], "quicklook": []}
    statuses: dict[str, dict[int, int]] = {k: {} for k in latencies}
    stop = time.perf_counter() + seconds

    def one(c: Any, i: int) -> tuple[str, Any]:
        r = random.random()
        if r < 0.4:
            body = bodies[random.randrange(len(bodies))]
            return "classify", c.post(
                "/v1/classify", files=[("patch.npz", ("patch.npz", body, "application/octet-stream"))]
            )
        if r < 0.8:
            return "search", c.post(
                "/v1/search", json={"patch_id": random.choice(ids), "k": 10, "filter": {"split": "train"}}
            )
        return "quicklook", c.get(f"/v1/patches/{random.choice(ids)}/rgb.png")

    async def sampler() -> None:
        t0 = time.perf_counter()
        while True:
            done = sum(len(v) for v in latencies.values())
            samples.append({"t_s": round(time.perf_counter() - t0, 1), "requests": done, "rss": serve_processes()})
            print(f"t={samples[-1]['t_s']:6.1f} s  requests={done}", flush=True)
            if time.perf_counter() >= stop:
                break
            await asyncio.sleep(min(sample_s, max(stop - time.perf_counter(), 0)))

    _, _, wall = await _bench_serve().drive(url, clients, seconds, one, (sampler(),), latencies, statuses)
    return {"wall_s": round(wall, 1), "latencies": latencies, "statuses": statuses, "samples": samples}


def memory_by_process(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Per Serve process (by pid): resident memory once the full load has run for one sample interval (the first
    sample is taken before the clients start), at the end, its maximum, and the growth over the whole run and over
    its second half (a leak keeps growing; buffers that a load allocates once level off)."""
    import re

    def by_pid(s: dict[str, Any]) -> dict[str, tuple[str, float]]:
        out = {}
        for title, mb in s["rss_mb"].items():
            m = re.match(r"ray::(\S+?)(?:\.\w+)? \(pid (\d+)\)", title)
            if m:
                out[m.group(2)] = (m.group(1).removeprefix("ServeReplica:").split(".")[0], mb)
        return out

    series = [by_pid(s) for s in samples]
    loaded, half, last = series[1] if len(series) > 2 else series[0], series[len(series) // 2], series[-1]
    out: dict[str, Any] = {}
    for pid, (name, end) in sorted(last.items(), key=lambda kv: kv[1][0]):
        if pid not in loaded:
            out[f"{name} (pid {pid})"] = {"note": "started during the run", "end_mb": end}
            continue
        start, mid = loaded[pid][1], half.get(pid, loaded[pid])[1]
        out[f"{name} (pid {pid})"] = {
            "before_load_mb": series[0].get(pid, (name, None))[1],
            "under_load_mb": start,
            "end_mb": end,
            "max_mb": max(s[pid][1] for s in series if pid in s),
            "growth_pct": round(100 * (end - start) / start, 1),
            "second_half_growth_pct": round(100 * (end - mid) / mid, 1),
        }
    gone = sorted({p for s in series for p in s} - set(last))
    if gone:
        out["gone_during_the_run"] = gone
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="late:resnet18", help="tiny, or late:<timm backbone>")
    ap.add_argument("--pairs", type=int, default=300)
    ap.add_argument("--minutes", type=float, default=5)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--warmup-s", type=float, default=20)
    ap.add_argument("--sample-s", type=float, default=30)
    ap.add_argument("--workdir", default=".bench/serve")
    ap.add_argument("--out", help="also write the JSON here")
    ap.add_argument("--summarize", metavar="JSON", help="only recompute the memory summary of a saved run's samples")
    a = ap.parse_args()
    if a.summarize:
        saved = json.loads(Path(a.summarize).read_text())
        saved["memory"] = memory_by_process(saved["samples"])
        saved.pop("processes_gone_or_new", None)
        Path(a.summarize).write_text(json.dumps(saved, indent=1))
        print(json.dumps(saved["memory"], indent=1))
        return 0
    import ray
    from ray import serve

    bench = _bench_serve()
    workdir = Path(a.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    ckpt, index, shards = bench.setup(workdir, a.pairs, a.model)
    bodies, ids = bench.npz_bodies(shards, 32)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    bench.deploy(url, ckpt, index, shards, 32)
    asyncio.run(soak(url, 8, a.warmup_s, bodies, ids, a.warmup_s + 1))  # warm-up: caches, allocator pools
    run = asyncio.run(soak(url, a.clients, a.minutes * 60, bodies, ids, a.sample_s))
    serve.shutdown()
    ray.shutdown()

    samples = [
        {"t_s": s["t_s"], "requests": s["requests"], "rss_mb": {k: round(v / 2**20, 1) for k, v in s["rss"].items()}}
        for s in run["samples"]
    ]
    requests = sum(len(v) for v in run["latencies"].values())
    result = {
        "model": a.model,
        "machine": f"{platform.node()}, {os.cpu_count()} CPUs",
        "clients": a.clients,
        "minutes": a.minutes,
        "mix": "40% classify (.npz upload), 40% search by patch id with a split filter, 20% quicklook PNG",
        "requests": requests,
        "rps": round(requests / run["wall_s"], 2),
        "per_kind": {
            k: {
                "requests": len(v),
                "p50_ms": round(float(np.percentile(v, 50)) * 1000, 1) if v else None,
                "p99_ms": round(float(np.percentile(v, 99)) * 1000, 1) if v else None,
                "statuses": {str(s): n for s, n in sorted(run["statuses"][k].items())},
            }
            for k, v in run["latencies"].items()
        },
        "5xx": sum(n for st in run["statuses"].values() for s, n in st.items() if s >= 500),
        "transport_errors": sum(st.get(-1, 0) for st in run["statuses"].values()),
        "memory": memory_by_process(samples),
        "samples": samples,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=1))
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "platform"))
    sys.exit(main())
