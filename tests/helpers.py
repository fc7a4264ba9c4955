"""Paths and small helpers shared by the tests (imported as `helpers`: tests/ is on sys.path)."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BIGEARTH_SHARED", REPO.parent / "shared"))
BEN = SHARED / "bigearthnet"
REAL_V1 = BEN / "real" / "v1"
REAL_V2 = BEN / "real" / "v2"
LISTS_V1 = BEN / "lists" / "v1"
LISTS_V2 = BEN / "lists" / "v2"
FACTS = BEN / "FACTS.md"


def free_ports(n: int) -> list[int]:
    """`n` distinct TCP ports free on 127.0.0.1 now (all bound at once, then released)."""
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def wait_ready(url: str, timeout: float = 120) -> None:
    """Poll `url`/readyz every 0.5 s until it answers 200; fail with its last answer after `timeout` s."""
    import time

    import httpx

    deadline = time.time() + timeout
    while (r := httpx.get(f"{url}/readyz")).status_code != 200:
        assert time.time() < deadline, r.text
        time.sleep(0.5)


def deploy_app(app: Any, name: str, timeout: float = 120) -> str:
    """Start Serve's HTTP proxy on a free local port, run `app` at `/` as `name`, wait until it is ready: its base
    URL. The caller tears down (`serve.delete(name)` / `serve.shutdown()`)."""
    from ray import serve

    (port,) = free_ports(1)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(app, name=name, route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, timeout)
    return url


def split_rows(shards: Path, split: str) -> dict[str, dict]:  # type: ignore[type-arg]
    """The rows of one split of a shard set, by patch id (pixels as the bytes the shards hold)."""
    import pyarrow.parquet as pq

    from bigearth.core.storage import open_fs
    from bigearth.shards.format import Manifest

    m = Manifest.load(*open_fs(str(shards)))
    return {r["patch_id"]: r for p in m.shard_paths(str(shards), split) for r in pq.read_table(p).to_pylist()}


def assert_batch_holds_rows(batch: dict, rows: dict[str, dict]) -> None:  # type: ignore[type-arg]
    """Every pair of a torch batch has its shard row's labels and, band by band, its exact pixels."""
    import numpy as np
    import torch

    from bigearth.core import labels as lab
    from bigearth.core.bands import BANDS, GROUPS

    for i, pid in enumerate(batch["patch_id"]):
        row = rows[pid]
        assert torch.equal(batch["labels"][i], torch.from_numpy(lab.encode(row["labels"])))
        for group, names in GROUPS.items():
            for c, name in enumerate(names):
                b = BANDS[name]
                expected = np.frombuffer(row[name], dtype=b.dtype).reshape(b.shape)
                assert np.array_equal(batch[group][i, c].numpy(), expected), (pid, name)


def kill_cli_ingest(archive: Path, out: Path, shard_size: int, reports: int, timeout: float) -> list[Path]:
    """Run `bigearth ingest` (one shard task at a time, attached to the session's Ray) and SIGKILL it once `reports`
    shard reports exist; return the reports written. Fails if the ingest ends before it could be interrupted."""
    import signal
    import subprocess
    import sys
    import time

    import ray

    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    cmd = [sys.executable, "-m", "bigearth.cli", "ingest", "--archive", str(archive), "--out", str(out)]
    cmd += ["--shard-size", str(shard_size), "--concurrency", "1", "--trust-md5sums"]  # synthetic downloads
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    folder = out / "_ingest" / "reports"
    deadline = time.time() + timeout
    while time.time() < deadline and len(list(folder.rglob("*.json"))) < reports:
        assert proc.poll() is None, "the ingest finished before it could be interrupted"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return list(folder.rglob("*.json"))


def shards_in_process(archive: Path, out: Path, shard_size: int = 20) -> Path:
    """An extracted archive ingested shard by shard in this process (`ingest_shard`, no Ray): a shard set for tests
    of the tier without Ray."""
    from bigearth.archive.catalogue import build_catalogue
    from bigearth.core.storage import StorageOptions, open_fs
    from bigearth.ingest.job import _manifest, ingest_shard, plan_shards

    cat = build_catalogue(str(archive))
    reports = [
        ingest_shard(plan, cat.layout.name, str(archive), str(out), StorageOptions(), include_no_19=False)
        for plan in plan_shards(cat, shard_size)
    ]
    _manifest(cat, reports, str(archive)).save(*open_fs(str(out)))
    return out


def random_checkpoint(
    path: Path, model: str = "tiny", classes: int = 19, model_kwargs: dict[str, Any] | None = None, **meta: Any
) -> Path:
    """A checkpoint folder of a randomly initialised registered model (default: `tiny`, late fusion), written
    through `bigearth.models.checkpoints`, for tests that need a checkpoint and not a trained one; `meta` adds
    fields of its `CheckpointMeta` (`epoch`, `metrics`, ...)."""
    from bigearth.models import checkpoints
    from bigearth.models.registry import create_model

    kwargs = model_kwargs if model_kwargs is not None else ({"fusion": "late"} if model == "tiny" else {})
    net: Any = create_model(model, num_classes=classes, **kwargs)
    record = checkpoints.CheckpointMeta(
        model={"name": model, **kwargs}, num_classes=classes, bands=list(net.bands), **meta
    )
    checkpoints.write(str(path), net, record)
    return path
