"""Benchmark: the whole platform at several archive sizes, each stage run as a user runs it (the `bigearth` CLI).

    python bench/scale.py [--sizes 2000,6000,60000] [--work .bench/scale] [--out bench/results/scale.json]
                          [--metadata ../shared/bigearthnet/lists/v2/metadata.parquet] [--keep] [--executor ray]

Per size, on a local Ray cluster started for the size (`ray start --head`, its own temp dir; RAY_ADDRESS points the
commands at it): synthesise the published downloads (`bigearth synth --metadata ... --packed`), ingest them, the
same archive as folders, ingest those, train one epoch of configs/tiny-cpu.yaml, evaluate, index, evaluate retrieval,
and `bigearth serve` with the index until GET /readyz answers 200. Every stage's process tree and the cluster's
processes (Ray workers, staging tasks, the raylet) are sampled at about 5 Hz: wall time, pairs/s/core, the driver's
peak RSS, the largest single other process's peak and the peak of the sum of all of them (each process without the
shared memory it maps; Ray's object store counted once, also reported alone). Then per stage: the per-pair cost at
the largest size over the smallest and, with three sizes, the marginal cost ratio (both target <= 1.3), each memory
peak carried to the full archive (549,488 pairs) along a fitted line, a Markdown table (OUT with .md), a plot of
per-pair cost per stage against size (OUT with .png) and a projection of the full archive on 16 and 64 cores. A line
per stage reports progress; the commands' output goes to WORK/scale.log. Sizes that would not fit on the work
folder's disk are refused before any runs (each size's measured bytes per pair checks the next).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from procs import descendants, free_ports, kill_until_gone, process_table, ray_port_flags, ray_start_env

REPO = Path(__file__).resolve().parents[1]
PLATFORM = REPO / "platform"
METADATA = REPO.parent / "shared" / "bigearthnet" / "lists" / "v2" / "metadata.parquet"
FULL_PAIRS = 549_488
#: Peak bytes on disk per pair before anything was measured: 683 kB measured at 20,000 pairs (the downloads, their
#: staging and shard set, deleted before the folders, their shard set, the run and the index), +10%; each size's
#: measured figure (+10%) replaces it for the next size.
BYTES_PER_PAIR = 760_000
STAGES = (
    "synth_packed",
    "ingest_downloads",
    "synth_folder",
    "ingest_folder",
    "train",
    "evaluate",
    "index",
    "evaluate_retrieval",
    "serve_startup",
)
#: What bounds each stage when cores are added (the projection's note).
BOUNDS = {
    "synth_packed": "CPU (GeoTIFF encode + zstd), parallel over --workers; then one tar stream per modality",
    "ingest_downloads": "one staging task per download (zstd decompress of each stream: 2 tasks at most), then CPU",
    "synth_folder": "CPU (GeoTIFF encode), parallel over --workers; disk writes of small files",
    "ingest_folder": "CPU (GeoTIFF decode, Parquet encode), one task per shard: scales to the shard count",
    "train": "the model (one Ray Train worker in tiny-cpu.yaml): more workers with scaling.num_workers",
    "evaluate": "inference actors (--actors), CPU",
    "index": "embedding actors (--actors), then one writer to the embedded engine",
    "evaluate_retrieval": "a fixed number of queries (500, 100 exact): flat in pairs, the exact queries scan all",
    "serve_startup": "replica start and the index/shard set open: flat in pairs but for what loads per pair",
}


# ---------------------------------------------------------------------------------------------- pure parts


@dataclass
class Peak:
    """Peak RSS (MB) of a stage's processes, each without the shared memory it maps: the driver (the command), the
    largest other process (a Ray worker, a synth process), the sum of all of them plus the shared memory (Ray's
    object store: the largest any one process touched) counted once, and that shared memory alone."""

    driver_mb: float = 0.0
    worker_mb: float = 0.0
    sum_mb: float = 0.0
    processes: int = 0
    shm_mb: float = 0.0
    worker: str = ""  # the largest other process's command (a Ray worker's title names its task or actor)


@dataclass
class StageResult:
    stage: str
    pairs: int
    seconds: float
    cores: int
    peak: Peak = field(default_factory=Peak)
    ok: bool = True
    detail: str = ""

    @property
    def pairs_per_s_per_core(self) -> float:
        return self.pairs / self.seconds / self.cores if self.seconds > 0 else 0.0

    @property
    def ms_per_pair(self) -> float:
        """Core-milliseconds per pair: the per-pair cost compared across sizes."""
        return self.seconds * self.cores * 1000 / self.pairs if self.pairs else 0.0

    def record(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "pairs": self.pairs,
            "seconds": round(self.seconds, 3),
            "cores": self.cores,
            "pairs_per_s_per_core": round(self.pairs_per_s_per_core, 3),
            "core_ms_per_pair": round(self.ms_per_pair, 3),
            "driver_peak_mb": round(self.peak.driver_mb, 1),
            "worker_peak_mb": round(self.peak.worker_mb, 1),
            "sum_peak_mb": round(self.peak.sum_mb, 1),
            "shm_peak_mb": round(self.peak.shm_mb, 1),
            "largest_worker": self.peak.worker,
            "processes": self.peak.processes,
            "ok": self.ok,
            "detail": self.detail,
        }


def parse_sizes(text: str) -> list[int]:
    """`2000,6000,20000` -> [2000, 6000, 20000] (sorted, distinct, each at least 1)."""
    sizes = sorted({int(x.replace("_", "")) for x in text.split(",") if x.strip()})
    if not sizes or sizes[0] < 1:
        raise ValueError(f"--sizes {text!r}: give pair counts >= 1, e.g. 2000,6000,20000")
    return sizes


def refuse_unfit(sizes: Sequence[int], free_bytes: int, bytes_per_pair: float, margin: float = 0.9) -> list[str]:
    """Why each size that would not fit in `margin` of `free_bytes` is refused (empty: all fit). Sizes run one at
    a time and each is deleted before the next, so each size is checked alone."""
    room = free_bytes * margin
    return [
        f"{n:,} pairs need about {n * bytes_per_pair / 1e9:.1f} GB on disk ({bytes_per_pair / 1e6:.2f} MB a pair), "
        f"{room / 1e9:.1f} GB is usable (90% of {free_bytes / 1e9:.1f} GB free)"
        for n in sizes
        if n * bytes_per_pair > room
    ]


def growth(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One stage's rows (one per size): per-pair cost largest/smallest (`cost_ratio`) and, with three sizes or
    more, the marginal cost of the pairs added at the top over those added at the bottom (`marginal_ratio`); linear
    when both are <= 1.3. Peak memory growth against pairs (`memory_vs_pairs`: the sum-of-all peak's growth factor
    over the pairs' growth factor), and each peak (driver, largest worker, sum) carried to the full archive by a
    least-squares line (`*_mb_at_full`); `memory_bounded` when none of them more than doubles from the largest size."""
    rows = sorted((r for r in rows if r["ok"]), key=lambda r: r["pairs"])
    if len(rows) < 2:
        return {"sizes": len(rows)}
    lo, hi = rows[0], rows[-1]
    pairs_x = hi["pairs"] / lo["pairs"]
    cost = hi["core_ms_per_pair"] / lo["core_ms_per_pair"] if lo["core_ms_per_pair"] else float("inf")
    out: dict[str, Any] = {"sizes": len(rows), "pairs_x": round(pairs_x, 2), "cost_ratio": round(cost, 3)}
    for key in ("driver_peak_mb", "worker_peak_mb", "sum_peak_mb"):
        out[key.replace("_peak_mb", "_mem_x")] = round(hi[key] / lo[key], 3) if lo[key] else None
    # the memory that grows with the pairs: the peak above the smallest size's, per added pair
    added = hi["pairs"] - lo["pairs"]
    out["sum_mb_per_1k_pairs"] = round((hi["sum_peak_mb"] - lo["sum_peak_mb"]) / added * 1000, 3) if added else None
    out["memory_vs_pairs"] = round(out["sum_mem_x"] / pairs_x, 3) if out["sum_mem_x"] else None
    if len(rows) >= 3:  # the cost of the pairs added between the two largest sizes over that of the two smallest:
        # start-up costs cancel, so a stage with a fixed start-up cannot hide a per-pair cost that grows
        s_lo = (rows[1]["seconds"] - rows[0]["seconds"]) / (rows[1]["pairs"] - rows[0]["pairs"])
        s_hi = (hi["seconds"] - rows[-2]["seconds"]) / (hi["pairs"] - rows[-2]["pairs"])
        out["marginal_ratio"] = round(s_hi / s_lo, 3) if s_lo > 0 else None
    out["linear"] = cost <= 1.3 and (out.get("marginal_ratio") or 0.0) <= 1.3
    # memory: each peak fitted as a fixed part plus a per-pair part, carried to the full archive; bounded when none
    # of them would more than double from the largest size measured (a fixed start-up cannot hide a per-pair part)
    grows = []
    for key in ("driver_peak_mb", "worker_peak_mb", "sum_peak_mb"):
        base, slope = fit([(r["pairs"], r[key]) for r in rows])
        at_full = base + max(slope, 0.0) * FULL_PAIRS
        out[key.replace("_peak_mb", "_mb_at_full")] = round(at_full, 1)
        if at_full > 2 * hi[key]:
            grows.append(f"{key.split('_')[0]} {at_full / 1024:.1f} GB")
    out["memory_bounded"] = not grows
    out["memory_grows"] = ", ".join(grows)
    return out


def fit(points: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares `y = a + b x` through `points`; (a, b). One point: the line through the origin."""
    if len(points) == 1:
        x, y = points[0]
        return 0.0, y / x if x else 0.0
    n = len(points)
    mx, my = sum(p[0] for p in points) / n, sum(p[1] for p in points) / n
    sxx = sum((p[0] - mx) ** 2 for p in points)
    b = sum((p[0] - mx) * (p[1] - my) for p in points) / sxx if sxx else 0.0
    return my - b * mx, b


def project(rows: Sequence[dict[str, Any]], cores: Sequence[int] = (16, 64), pairs: int = FULL_PAIRS) -> dict[str, Any]:
    """Hours for `pairs` on each core count: the wall time measured fitted as a fixed part (start-up) plus a
    per-pair part, the per-pair part's core-seconds spread over the cores (the stage's bound says where a stage
    does not spread); and the sum-of-all peak RSS at that count from the same fit of memory against pairs."""
    ok = sorted((r for r in rows if r["ok"]), key=lambda r: r["pairs"])
    if not ok:
        return {}
    fixed, per_pair = fit([(r["pairs"], r["seconds"]) for r in ok])
    fixed, per_pair = max(fixed, 0.0), max(per_pair, 0.0)
    core_s = per_pair * ok[-1]["cores"]
    out: dict[str, Any] = {"fixed_s": round(fixed, 2), "core_ms_per_pair_marginal": round(core_s * 1000, 3)}
    for c in cores:
        out[f"{c}_cores_h"] = round((fixed + core_s * pairs / c) / 3600, 3)
    if len(ok) >= 2:
        base, mb = fit([(r["pairs"], r["sum_peak_mb"]) for r in ok])
        out["sum_peak_mb_at_full"] = round(base + max(mb, 0.0) * pairs, 1)
    return out


def markdown(results: Sequence[dict[str, Any]], summary: dict[str, Any], projection: dict[str, Any]) -> str:
    """The table of every stage at every size, then one summary line per stage and the projection."""
    lines = [
        "| stage | pairs | wall s | pairs/s/core | core ms/pair | driver peak MB | largest worker MB | sum peak MB "
        "| of which shared MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(results, key=lambda r: (STAGES.index(r["stage"]) if r["stage"] in STAGES else 99, r["pairs"])):
        mark = "" if r["ok"] else " (failed)"
        lines.append(
            f"| {r['stage']}{mark} | {r['pairs']:,} | {r['seconds']:.1f} | {r['pairs_per_s_per_core']:.1f} | "
            f"{r['core_ms_per_pair']:.1f} | {r['driver_peak_mb']:.0f} | {r['worker_peak_mb']:.0f} | "
            f"{r['sum_peak_mb']:.0f} | {r.get('shm_peak_mb', 0):.0f} |"
        )
    lines += [
        "",
        "| stage | cost ratio largest/smallest (<= 1.3) | marginal ratio | sum peak x (pairs x) | MB per 1k pairs "
        "| full archive, 16 cores | 64 cores | bound |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for stage in STAGES:
        s, p = summary.get(stage, {}), projection.get(stage, {})
        if not s:
            continue
        ratio = f"{s['cost_ratio']:.2f}" if "cost_ratio" in s else "-"
        marginal = f"{s['marginal_ratio']:.2f}" if s.get("marginal_ratio") is not None else "-"
        mem = f"{s['sum_mem_x']:.2f} ({s['pairs_x']:.1f})" if s.get("sum_mem_x") else "-"
        per_k = f"{s['sum_mb_per_1k_pairs']:.1f}" if s.get("sum_mb_per_1k_pairs") is not None else "-"
        h16 = f"{p['16_cores_h']:.2f} h" if p.get("16_cores_h") is not None else "-"
        h64 = f"{p['64_cores_h']:.2f} h" if p.get("64_cores_h") is not None else "-"
        lines.append(f"| {stage} | {ratio} | {marginal} | {mem} | {per_k} | {h16} | {h64} | {BOUNDS.get(stage, '')} |")
    return "\n".join(lines) + "\n"


def summary_line(stage: str, s: dict[str, Any]) -> str:
    if "cost_ratio" not in s:
        return f"{stage}: one size measured, no ratio"
    verdict = "linear" if s["linear"] else "NOT LINEAR"
    mem = "memory bounded" if s["memory_bounded"] else f"MEMORY GROWS: {s['memory_grows']} at {FULL_PAIRS:,} pairs"
    marginal = f", marginal x{s['marginal_ratio']:.2f}" if s.get("marginal_ratio") is not None else ""
    return (
        f"{stage}: per-pair cost x{s['cost_ratio']:.2f} over x{s['pairs_x']:.1f} pairs{marginal} ({verdict}); "
        f"sum peak RSS x{s['sum_mem_x']:.2f} ({mem})"
    )


# ---------------------------------------------------------------------------------------------- processes


def _status(pid: int) -> dict[str, float]:
    """The kB figures of /proc/PID/status (VmRSS:, RssShmem:, ...); empty when the process is gone."""
    out: dict[str, float] = {}
    try:
        for line in (Path("/proc") / str(pid) / "status").read_text().splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                out[parts[0]] = float(parts[1])
    except (OSError, ValueError):
        pass
    return out


class Cluster:
    """A local Ray head for one size: its own short temp dir and ports, stopped by killing only its processes."""

    def __init__(self, cpus: int) -> None:
        self.cpus = cpus
        self.tmp = tempfile.mkdtemp(prefix="bs", dir="/tmp")  # short: Ray's socket paths have a length limit
        self.env = ray_start_env()
        self.port = free_ports(1)[0]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Cluster:
        *ports, client = free_ports(7)
        args = [
            str(Path(sys.executable).with_name("ray")),
            "start",
            "--head",
            f"--port={self.port}",
            "--node-ip-address=127.0.0.1",
            f"--temp-dir={self.tmp}",
            f"--num-cpus={self.cpus}",
            "--include-dashboard=false",
            "--disable-usage-stats",
            *ray_port_flags(ports),
            f"--ray-client-server-port={client}",
        ]
        done = subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=180)
        if done.returncode:
            self.stop()
            raise RuntimeError(f"ray start failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        return self

    def pids(self, table: dict[int, tuple[int, bytes]]) -> set[int]:
        port = re.compile(rb":%d(?!\d)" % self.port)  # this port, not one it is a prefix of (another cluster's)
        mine = [p for p, (_, cmd) in table.items() if self.tmp.encode() in cmd or port.search(cmd)]
        return set(descendants(mine, table))

    def stop(self) -> None:
        kill_until_gone(lambda: self.pids(process_table()))  # every process of the cluster (at most ~10 s)
        shutil.rmtree(self.tmp, ignore_errors=True)


class Sampler:
    """Samples the RSS of a command's process tree and of the cluster's processes at about 5 Hz (and the free space
    of the disk `disk` is on)."""

    def __init__(self, root: int, cluster: Cluster | None, disk: Path | None = None, interval: float = 0.2) -> None:
        self.root, self.cluster, self.interval = root, cluster, interval
        self.peaks: dict[int, float] = {}
        self.sum_mb, self.shm_mb = 0.0, 0.0
        self.titles: dict[int, str] = {}  # what each process was at its peak (Ray names a worker by its task)
        self.free_min = shutil.disk_usage(REPO).free if disk is None else shutil.disk_usage(disk).free
        self.disk = disk
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        table = process_table()
        pids = set(descendants([self.root], table))
        if self.cluster:
            pids |= self.cluster.pids(table)
        total, shm = 0.0, 0.0
        for pid in pids:
            status = _status(pid)
            # a process's own memory: the object store's shared pages it touched are counted once, below
            rss = (status.get("VmRSS:", 0.0) - status.get("RssShmem:", 0.0)) / 1024
            shm = max(shm, status.get("RssShmem:", 0.0) / 1024)
            total += rss
            if rss > self.peaks.get(pid, 0.0):
                self.peaks[pid] = rss
                self.titles[pid] = table[pid][1].split(b"\0")[0].decode(errors="replace")[:60] if pid in table else ""
        self.shm_mb = max(self.shm_mb, shm)
        total += shm
        self.sum_mb = max(self.sum_mb, total)
        if self.disk is not None:  # the least free space seen: what the stage's files took at their peak
            self.free_min = min(self.free_min, shutil.disk_usage(self.disk).free)

    def peak(self) -> Peak:
        others = {p: v for p, v in self.peaks.items() if p != self.root}
        top = max(others, key=lambda p: others[p], default=None)
        driver = self.peaks.get(self.root, 0.0)
        worker = others[top] if top is not None else 0.0
        title = self.titles.get(top, "") if top is not None else ""
        return Peak(driver, worker, self.sum_mb, len(self.peaks), self.shm_mb, title)


def bigearth(*args: str) -> list[str]:
    return [sys.executable, "-m", "bigearth.cli", *args]


def run_stage(
    name: str,
    cmd: list[str],
    pairs: int,
    cores: int,
    env: dict[str, str],
    cluster: Cluster | None,
    log: Path,
    ready_url: str | None = None,
    timeout: float = 6 * 3600,
    disk: Path | None = None,
) -> tuple[StageResult, int]:
    """Run `cmd` (until it exits, or with `ready_url` until that answers 200, then Ctrl-C), sampling its memory;
    (the result, the least free bytes seen on `disk`'s file system)."""
    t0 = time.perf_counter()
    with open(log, "ab") as out:
        out.write(f"\n$ {' '.join(cmd)}\n".encode())
        out.flush()
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
        with Sampler(proc.pid, cluster, disk) as sampler:
            ok, detail = _wait(proc, t0, timeout, ready_url)
            seconds = time.perf_counter() - t0
            sampler.sample()
        if ready_url:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    if not ok:
        tail = log.read_text(errors="replace").splitlines()[-15:]
        detail = detail + "\n" + "\n".join(tail)
    return StageResult(name, pairs, seconds, cores, sampler.peak(), ok, detail), sampler.free_min


def _wait(proc: subprocess.Popen[bytes], t0: float, timeout: float, ready_url: str | None) -> tuple[bool, str]:
    while time.perf_counter() - t0 < timeout:
        code = proc.poll()
        if ready_url is None and code is not None:
            return code == 0, f"exit {code}"
        if ready_url is not None:
            if code is not None:
                return False, f"exited {code} before {ready_url} answered 200"
            try:
                with urllib.request.urlopen(ready_url, timeout=2) as r:
                    if r.status == 200:
                        return True, "ready"
            except OSError:
                pass
            time.sleep(0.2)
        else:
            time.sleep(0.1)
    proc.kill()
    proc.wait()
    return False, f"timed out after {timeout:.0f} s"


# ---------------------------------------------------------------------------------------------- one size


def run_size(pairs: int, a: argparse.Namespace, cores: int, log: Path) -> tuple[list[StageResult], int]:
    """Every stage at `pairs`; (the results, the peak bytes the work folder held)."""
    work = Path(a.work) / f"n{pairs}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    cluster = Cluster(cores).start() if a.executor == "ray" else None
    env = {**(cluster.env if cluster else os.environ), "PYTHONPATH": str(PLATFORM), "RAY_AUTH_MODE": "disabled"}
    if cluster:
        env["RAY_ADDRESS"] = cluster.address
    ex = ["--executor", a.executor]
    meta = ["--metadata", a.metadata] if a.metadata else []
    port = free_ports(1)[0]
    run, shards = work / "runs" / "tiny", work / "shards"
    plan: list[tuple[str, list[str], str | None]] = [
        (
            "synth_packed",
            bigearth(
                "synth",
                "--pairs",
                str(pairs),
                "--out",
                str(work / "downloads"),
                "--packed",
                "--workers",
                str(cores),
                *meta,
            ),
            None,
        ),
        (
            "ingest_downloads",
            bigearth(
                "ingest", "--archive", str(work / "downloads"), "--out", str(work / "shards-dl"), "--trust-md5sums", *ex
            ),
            None,
        ),
        (
            "synth_folder",
            bigearth("synth", "--pairs", str(pairs), "--out", str(work / "archive"), "--workers", str(cores), *meta),
            None,
        ),
        ("ingest_folder", bigearth("ingest", "--archive", str(work / "archive"), "--out", str(shards), *ex), None),
        (
            "train",
            bigearth(
                "train",
                "--config",
                str(REPO / "configs" / "tiny-cpu.yaml"),
                "--data",
                str(shards),
                "--storage",
                str(work / "runs"),
                "--name",
                "tiny",
                "--set",
                "optim.epochs=1",
                "--set",
                "run.patience=1",
                *ex,
            ),
            None,
        ),
        (
            "evaluate",
            bigearth(
                "evaluate",
                "--checkpoint",
                str(run),
                "--data",
                str(shards),
                "--split",
                "test",
                "--out",
                str(work / "eval"),
                *ex,
            ),
            None,
        ),
        (
            "index",
            bigearth("index", "--checkpoint", str(run), "--data", str(shards), "--index", str(work / "index"), *ex),
            None,
        ),
        (
            "evaluate_retrieval",
            bigearth(
                "evaluate-retrieval",
                "--index",
                str(work / "index"),
                "--data",
                str(shards),
                "--out",
                str(work / "retrieval"),
            ),
            None,
        ),
        (
            "serve_startup",
            bigearth(
                "serve",
                "--checkpoint",
                str(run),
                "--index",
                str(work / "index"),
                "--data",
                str(shards),
                "--port",
                str(port),
                "--replica-cpus",
                "0.5",
            ),
            f"http://127.0.0.1:{port}/readyz",
        ),
    ]
    results: list[StageResult] = []
    free_at_start, free_min = shutil.disk_usage(work).free, shutil.disk_usage(work).free
    try:
        for name, cmd, ready in plan:
            if a.executor == "local" and name == "serve_startup":
                continue  # Serve needs Ray
            r, free = run_stage(name, cmd, pairs, cores, env, cluster, log, ready, disk=work)
            results.append(r)
            free_min = min(free_min, free)
            print(
                f"  [{pairs:,}] {name:18s} {r.seconds:8.1f} s  {r.pairs_per_s_per_core:8.1f} pairs/s/core  "
                f"driver {r.peak.driver_mb:5.0f} MB  worker {r.peak.worker_mb:5.0f} MB  sum {r.peak.sum_mb:5.0f} MB "
                f"(shared {r.peak.shm_mb:4.0f} MB)" + ("" if r.ok else f"  FAILED: {r.detail.splitlines()[0]}"),
                flush=True,
            )
            if not r.ok:
                break
            if name == "ingest_downloads" and not a.keep:  # room for the folders: the downloads are done with
                shutil.rmtree(work / "downloads", ignore_errors=True)
                shutil.rmtree(work / "shards-dl", ignore_errors=True)
    finally:
        if cluster:
            cluster.stop()
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    return results, max(0, free_at_start - free_min)


# ---------------------------------------------------------------------------------------------- main


def machine(cores: int) -> str:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {cores} cores, {mem:.0f} GiB memory, {platform.system()} {platform.release()}"


def report(results: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    summary = {s: growth([r for r in results if r["stage"] == s]) for s in STAGES}
    projection = {s: project([r for r in results if r["stage"] == s]) for s in STAGES}
    return {s: v for s, v in summary.items() if v.get("sizes")}, {s: v for s, v in projection.items() if v}


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for stage in STAGES:
        rows = sorted((r for r in results if r["stage"] == stage and r["ok"]), key=lambda r: r["pairs"])
        if rows:
            ax.plot([r["pairs"] for r in rows], [r["core_ms_per_pair"] for r in rows], marker="o", label=stage)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("pairs")
    ax.set_ylabel("core-ms per pair")
    ax.set_title("Per-pair cost per stage against archive size (flat = linear)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="2000,6000,60000", help="pair counts, comma-separated")
    ap.add_argument("--work", default=".bench/scale", help="scratch folder (each size's folder deleted after it)")
    ap.add_argument("--out", default="bench/results/scale.json")
    ap.add_argument(
        "--metadata",
        default=str(METADATA) if METADATA.exists() else None,
        help="the real v2 metadata.parquet (the snow/cloud file beside it is read too); default: "
        "../shared's when there, else synthetic ids",
    )
    ap.add_argument("--keep", action="store_true", help="keep each size's work folder")
    ap.add_argument(
        "--executor",
        choices=["ray", "local"],
        default="ray",
        help="ray (default): every stage on a local Ray cluster started per size; local: no Ray "
        "where the command allows (serve is skipped)",
    )
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="CPUs the cluster and synth get")
    ap.add_argument(
        "--bytes-per-pair", type=float, default=BYTES_PER_PAIR, help="disk per pair assumed for the first size's check"
    )
    a = ap.parse_args(argv)
    sizes = parse_sizes(a.sizes)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    refused = refuse_unfit(sizes, shutil.disk_usage(work).free, a.bytes_per_pair)
    if refused:
        print(
            "bench/scale.py: refused, the work folder's disk is too small:\n  " + "\n  ".join(refused), file=sys.stderr
        )
        return 2
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    log = work / "scale.log"  # every command's output (kept with the scratch, not beside the results)
    log.write_text("")
    cores = a.cores
    print(f"bench/scale.py: sizes {sizes}, {cores} cores, work {work}, commands' output in {log}", flush=True)
    results: list[StageResult] = []
    disk: dict[str, int] = {}
    bytes_per_pair = a.bytes_per_pair
    for n in sizes:
        refused = refuse_unfit([n], shutil.disk_usage(work).free, bytes_per_pair)
        if refused:
            print(f"  [{n:,}] skipped: {refused[0]}", flush=True)
            continue
        print(f"size {n:,} pairs", flush=True)
        rs, held = run_size(n, a, cores, log)
        results += rs
        disk[str(n)] = held
        if held:
            bytes_per_pair = held / n * 1.1  # measured at this size, with a margin
        if any(not r.ok for r in rs):
            print(f"  [{n:,}] a stage failed: see {log}; the larger sizes are not run", flush=True)
            break
    records = [r.record() for r in results]
    summary, projection = report(records)
    table = markdown(records, summary, projection)
    doc = {
        "command": " ".join(["python", "bench/scale.py", *(sys.argv[1:] if argv is None else argv)]),
        "machine": machine(cores),
        "sizes": sizes,
        "metadata": a.metadata,
        "executor": a.executor,
        "disk_peak_bytes": disk,
        "results": records,
        "summary": summary,
        "projection_full_archive": projection,
    }
    out.write_text(json.dumps(doc, indent=1))
    out.with_suffix(".md").write_text(table)
    if records:
        plot(records, out.with_suffix(".png"))
    print()
    print(table)
    for stage, s in summary.items():
        print(summary_line(stage, s))
    return 0 if all(r.ok for r in results) and results else 1


if __name__ == "__main__":
    sys.exit(main())
