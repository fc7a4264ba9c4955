"""Faults, each with the real component: damaged shards read by training and evaluation, an indexing job killed
half way and re-run."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bigearth.data import read_columns
from bigearth.shards import Manifest
from bigearth.storage import open_fs
from helpers import REPO

pytestmark = pytest.mark.usefixtures("ray_local")


def _damaged_copy(shards: Path, where: Path, split: str, how: str) -> Path:
    """A copy of the shard set with one shard of `split` damaged: bytes flipped in the middle, or cut short."""
    shutil.copytree(shards, where)
    m = Manifest.load(*open_fs(str(where)))
    victim = where / next(s["path"] for s in m.shards if s["split"] == split)
    data = bytearray(victim.read_bytes())
    if how == "flipped":
        mid = len(data) // 2
        data[mid : mid + 16] = bytes(255 - b for b in data[mid : mid + 16])
    else:
        data = data[: len(data) * 2 // 3]
    victim.write_bytes(bytes(data))
    return victim


def test_training_on_a_shard_with_flipped_bytes_stops_naming_the_file(shards_v2: Path, tmp_path: Path) -> None:
    """Flipped bytes fail a page checksum while the epoch reads (each worker-group restart meets it again: no
    restarts here, to keep the test short). A file cut short: the evaluation test below, the same reader."""
    from bigearth.training.config import load_config
    from bigearth.training.trainer import train

    victim = _damaged_copy(shards_v2, tmp_path / "shards", "train", "flipped")
    overrides = ["optim.epochs=1", "data.batch_size=16", "run.max_failures=0"]
    cfg = load_config(REPO / "configs" / "tiny-cpu.yaml", overrides)
    with pytest.raises(Exception, match=rf"{re.escape(victim.name)}: row group \d+ is corrupted .*re-run the ingest"):
        train(cfg, str(tmp_path / "shards"), str(tmp_path / "runs"), "damaged")
    assert not list((tmp_path / "runs").glob("damaged/checkpoint_*"))  # nothing was trained on it


def test_evaluation_of_a_shard_cut_short_stops_naming_the_file(tiny_run: Path, shards_v2: Path, tmp_path: Path) -> None:
    from bigearth.evaluation import evaluate

    victim = _damaged_copy(shards_v2, tmp_path / "shards", "test", "cut")
    with pytest.raises(Exception, match=rf"{re.escape(victim.name)}: not a readable shard file"):
        evaluate(str(tiny_run), str(tmp_path / "shards"), "test", str(tmp_path / "eval"))
    assert not (tmp_path / "eval" / "metrics.json").exists()


def _index_job(tiny_run: Path, shards: Path, target: Path) -> subprocess.Popen[bytes]:
    import ray

    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    cmd = [sys.executable, "jobs/index.py", "--checkpoint", str(tiny_run), "--data", str(shards)]
    cmd += ["--index", str(target), "--batch-size", "1", "--upsert-batch", "4"]
    pipe = subprocess.PIPE
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=pipe, stderr=pipe, start_new_session=True)


def _kill_after_first_points(proc: subprocess.Popen[bytes], total: int) -> int | None:
    """SIGKILL the job as soon as its progress bar shows points written; the count it showed (None: it finished)."""
    assert proc.stderr is not None
    buf = b""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        chunk = os.read(proc.stderr.fileno(), 4096)
        if not chunk:
            return None
        buf += chunk
        shown = [int(n) for n in re.findall(rb"index bigearthnet:.*?\| *(\d+)/\d+", buf)]
        if shown and 0 < max(shown) < total:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
            return max(shown)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError(f"no progress within 240 s: {buf[-2000:].decode(errors='replace')}")


def test_an_index_job_killed_half_way_and_re_run_holds_one_point_per_pair(
    tiny_run: Path, shards_v2: Path, tmp_path: Path
) -> None:
    from bigearth.retrieval import open_index

    ids = read_columns(str(shards_v2), ["patch_id"]).column(0).to_pylist()
    target = tmp_path / "index"
    for _attempt in range(3):  # the kill must land half way; a job that outran it is tried again
        shutil.rmtree(target, ignore_errors=True)
        shown = _kill_after_first_points(_index_job(tiny_run, shards_v2, target), len(ids))
        if shown is None:
            continue
        index = open_index(str(target))
        partial = index.count()
        index.close()
        if partial < len(ids):
            break
    else:
        pytest.fail("the indexing job finished before it could be killed, 3 times")
    assert partial >= shown > 0  # the points it reported were written

    again = _index_job(tiny_run, shards_v2, target)
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err[-3000:].decode(errors="replace")
    index = open_index(str(target))
    try:
        assert index.count() == len(ids)
        got = index.retrieve(ids)
        assert sorted(got) == sorted(ids) and all(r.payload["patch_id"] == pid for pid, r in got.items())
    finally:
        index.close()
