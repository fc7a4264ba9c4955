"""Paths and small helpers shared by the tests (imported as `helpers`: tests/ is on sys.path)."""

from __future__ import annotations

import importlib
import json
import os
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BIGEARTH_SHARED", REPO.parent / "shared"))
BEN = SHARED / "bigearthnet"
REAL_V1 = BEN / "real" / "v1"
REAL_V2 = BEN / "real" / "v2"
LISTS_V1 = BEN / "lists" / "v1"
LISTS_V2 = BEN / "lists" / "v2"
FACTS = BEN / "FACTS.md"
BENCH = REPO / "bench"


def bench_module(name: str) -> ModuleType:
    """bench/NAME.py imported as the module NAME (bench/ holds scripts, not a package). bench/ goes at the end of
    sys.path, as a script's own folder is on its path when it runs: its siblings (bench/procs.py) import as they do
    there, and it shadows no other module."""
    if str(BENCH) not in sys.path:
        sys.path.append(str(BENCH))
    return importlib.import_module(name)


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `predicate` every 0.05 s until it holds; fail naming `what` after `timeout` s."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def metrics_history(run: Path) -> list[dict]:  # type: ignore[type-arg]
    """A training run's `metrics.jsonl`, a dict an epoch (empty while it does not exist yet)."""
    path = run / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


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


def ingest_in_process(archive: Path, out: Path, shard_size: int = 1000, **options: Any) -> Any:
    """`bigearth.ingest.job.ingest` of a local archive with the local executor (no Ray; `options`: `lists`,
    `patches`, `include_snow_cloud`, ...): the manifest. tests/integration/test_ingest.py checks that the Ray
    executor writes the same shard set."""
    from bigearth.execution.executors import LocalExecutor
    from bigearth.ingest.job import ingest

    return ingest(str(archive), str(out), shard_size=shard_size, executor=LocalExecutor(progress=False), **options)


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


def cli_subparser(name: str) -> Any:
    """The argparse parser of `bigearth NAME` (tests/unit/test_cli.py, tests/e2e/test_cli.py)."""
    import argparse

    from bigearth.cli import build_parser

    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices[name]


def cli_options(parser: Any) -> set[str]:
    """Every option string (`--x`, `-h`) of an argparse parser."""
    return {flag for action in parser._actions for flag in action.option_strings}


def craft_tiff(
    entries: list[tuple[int, int, int, int | None]], tail: bytes = b"", order: str = "<", big: bool = False
) -> bytes:
    """A TIFF written by hand, classic or BigTIFF, in either byte order: one directory of `entries` (tag, type,
    count, value or offset; None: the offset of `tail`, which follows the directory). tests/*/test_geotiff.py."""
    first, head, size, word = (16, 8, 20, "Q") if big else (8, 2, 12, "I")
    at = first + head + size * len(entries) + struct.calcsize(word)
    out = (b"II" if order == "<" else b"MM") + struct.pack(order + "H", 43 if big else 42)
    out += struct.pack(order + "HHQ", 8, 0, first) if big else struct.pack(order + "I", first)
    out += struct.pack(order + ("Q" if big else "H"), len(entries))
    for tag, typ, count, value in sorted(entries):
        value = at if value is None else value
        code = {3: "H", 4: "I", 16: "Q"}.get(typ, "B") if count * {3: 2, 4: 4, 16: 8}.get(typ, 1) <= 4 else word
        field = struct.pack(order + code, value).ljust(struct.calcsize(word), b"\0")
        out += struct.pack(order + "HH" + word, tag, typ, count) + field
    return out + bytes(struct.calcsize(word)) + tail


#: A 120x120 uint16 image in one strip at the start of the tail (28,800 bytes).
TIFF_IMAGE = [(256, 3, 1, 120), (257, 3, 1, 120), (258, 3, 1, 16), (259, 3, 1, 1), (262, 3, 1, 1), (273, 4, 1, None)]
TIFF_IMAGE += [(277, 3, 1, 1), (278, 3, 1, 120), (279, 4, 1, 28800)]
TIFF_FORMATS = [("<", False), (">", False), ("<", True), (">", True)]

#: The KubeRay deployment (tests/*/test_infra.py) and the Kubernetes version its built-in kinds are validated for.
INFRA = REPO / "infra" / "kuberay"
K8S_VERSION = "1.32.0"


def assert_same_shards(a: Path, b: Path) -> None:
    """Two shard sets hold the same pairs in the same shards (manifests alike but for their sources, tables equal)."""
    import pyarrow.parquet as pq

    from bigearth.core.storage import open_fs
    from bigearth.shards.format import Manifest

    ma, mb = Manifest.load(*open_fs(str(a))), Manifest.load(*open_fs(str(b)))
    assert (ma.pairs, ma.splits, ma.shards, ma.excluded) == (mb.pairs, mb.splits, mb.shards, mb.excluded)
    assert [(q["patch_id"], q["kind"]) for q in quarantined(a)] == [(q["patch_id"], q["kind"]) for q in quarantined(b)]
    for s in ma.shards:
        assert pq.read_table(a / s.path).equals(pq.read_table(b / s.path)), s.path


def quarantined(shards: Path | str) -> list[dict[str, Any]]:
    """Every pair a shard set's ingest quarantined ({patch_id, kind, reason}, by patch id): from its
    quarantine.parquet, or from an older manifest's list."""
    from bigearth.core.storage import open_fs
    from bigearth.shards.format import Manifest

    fs, root = open_fs(str(shards))
    rows: list[dict[str, Any]] = Manifest.load(fs, root).quarantine_table(fs, root).to_pylist()
    return rows


def shards_in_process(archive: Path, out: Path, shard_size: int = 20) -> Path:
    """An extracted archive ingested in this process (the local executor, no Ray): a shard set for tests of the tier
    without Ray."""
    ingest_in_process(archive, out, shard_size=shard_size)
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


def openapi_operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(path, METHOD, operation) of every operation of an OpenAPI document (tests/*/test_openapi.py)."""
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            yield path, method.upper(), operation


def openapi_refs(node: Any) -> Iterator[str]:
    """Every `$ref` anywhere under `node` of an OpenAPI document."""
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from openapi_refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from openapi_refs(value)
