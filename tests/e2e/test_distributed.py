"""Distributed behaviour on real Ray clusters: `ray job submit` to a 2-node cluster (workers on different nodes),
a killed training worker, a killed job driver resubmitted under the same name. The kill tests train 2 epochs of a
shard set of about 40 pairs and kill only processes of their own cluster (the module's `LocalCluster`, or the
session's Ray started by this process), never another's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO, metrics_history, shards_in_process, wait_for
from raycluster import RAY, LocalCluster, alive, matching, procs

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_local")]

TINY = "configs/tiny-cpu.yaml"


def _checkpointed(run: Path) -> bool:
    """Ray Train has registered a checkpoint of the run (what a resubmitted job resumes from)."""
    snapshot = run / "checkpoint_manager_snapshot.json"
    try:
        return bool(json.loads(snapshot.read_text()).get("latest_checkpoint_result"))
    except (OSError, ValueError):
        return False


@pytest.fixture(scope="module")
def small_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 40 pairs (64 synthesized, some excluded by policy) in shards of 8, ingested in this process."""
    from bigearth.synth.archive import synthesize

    work = tmp_path_factory.mktemp("kill")
    synthesize(str(work / "archive"), layout="v2", pairs=64, seed=11, progress=False)
    return shards_in_process(work / "archive", work / "shards", shard_size=8)


def _kill(pids: list[int]) -> None:
    """SIGKILL `pids` and wait (polling) until every one is gone."""
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not any(alive(p) for p in pids), 60, f"the killed processes {pids} to end")


@pytest.fixture(scope="module")
def cluster():  # type: ignore[no-untyped-def]
    with LocalCluster(nodes=2, cpus_per_node=2) as c:
        yield c


def test_job_submit_trains_on_two_nodes_then_evaluates(cluster, shards_v2: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    storage = tmp_path / "runs"
    r = cluster.job(
        "python",
        "jobs/train.py",
        "--config",
        TINY,
        "--data",
        str(shards_v2),
        "--storage",
        str(storage),
        "--name",
        "two-nodes",
        "--set",
        "optim.epochs=2",
        "--set",
        "scaling.num_workers=2",
        "--set",
        "scaling.placement_strategy=STRICT_SPREAD",
        "--set",
        "data.batch_size=16",
    )
    assert r.returncode == 0, (r.stdout[-4000:], r.stderr[-2000:])
    history = metrics_history(storage / "two-nodes")
    assert [h["epoch"] for h in history] == [1, 2]
    assert all(h["workers"] == 2 and h["nodes"] == 2 for h in history)  # one worker per node
    out = tmp_path / "eval"
    r = cluster.job(
        "python",
        "jobs/evaluate.py",
        "--checkpoint",
        str(storage / "two-nodes"),
        "--data",
        str(shards_v2),
        "--split",
        "test",
        "--out",
        str(out),
    )
    assert r.returncode == 0, (r.stdout[-4000:], r.stderr[-2000:])
    assert json.loads((out / "metrics.json").read_text())["samples"] > 0


def test_killed_driver_resubmitted_resumes(cluster, small_shards: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    storage, name = tmp_path / "runs", "driver-killed"
    args = [
        "python",
        "jobs/train.py",
        "--config",
        TINY,
        "--data",
        str(small_shards),
        "--storage",
        str(storage),
        "--name",
        name,
        "--set",
        "optim.epochs=2",
        "--set",
        "data.batch_size=8",
    ]
    cmd = [
        str(Path(sys.executable).with_name("ray")),
        "job",
        "submit",
        "--no-wait",
        "--submission-id",
        f"{name}-{os.getpid()}",
        "--address",
        cluster.dashboard,
        "--working-dir",
        str(REPO),
        "--",
        *args,
    ]
    subprocess.run(cmd, env=cluster.env, check=True, capture_output=True, timeout=120, cwd=REPO)
    try:
        wait_for(lambda: _checkpointed(storage / name), 90, "the first checkpoint")
    except AssertionError:  # say what the job did
        logs = [RAY, "job", "logs", "--address", cluster.dashboard, f"{name}-{os.getpid()}"]
        out = subprocess.run(logs, env=cluster.env, capture_output=True, text=True, timeout=60)
        raise AssertionError(f"no checkpoint; the job's log:\n{out.stdout[-4000:]}{out.stderr[-2000:]}") from None
    drivers = cluster.processes("jobs/train.py", name)  # the job's driver: a process of this test's cluster
    assert drivers, "the job's driver process was not found"
    _kill(drivers)
    snapshot = json.loads((storage / name / "checkpoint_manager_snapshot.json").read_text())
    registered = snapshot["latest_checkpoint_result"]["checkpoint_dir_name"]
    saved = json.loads((storage / name / registered / "meta.json").read_text())["metrics"]
    assert saved["epoch"] < 2
    r = cluster.job(*args)
    assert r.returncode == 0, (r.stdout[-4000:], r.stderr[-2000:])
    history = metrics_history(storage / name)
    assert [h["epoch"] for h in history] == [1, 2]
    # resumed from the registered checkpoint: its epoch is in the history exactly as it was saved (a run started
    # over would have recomputed it with another data order)
    assert history[saved["epoch"] - 1] == saved


def test_killed_worker_is_replaced_and_the_run_completes(small_shards: Path, tmp_path: Path) -> None:
    import ray

    storage, name = tmp_path / "runs", "worker-killed"
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    proc = subprocess.Popen(
        [
            sys.executable,
            "jobs/train.py",
            "--config",
            TINY,
            "--data",
            str(small_shards),
            "--storage",
            str(storage),
            "--name",
            name,
            "--set",
            "optim.epochs=3",
            "--set",
            "data.batch_size=8",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for(lambda: _checkpointed(storage / name), 90, "the first checkpoint")
        # the session's Ray (tests/conftest.py `ray_local`) was started by this process: its workers are ours
        workers = matching(procs.descendants([os.getpid()]), "RayTrainWorker")
        assert workers, "no Ray Train worker process found"
        _kill(workers)
        # the kill landed before the run's end: the checkpoint registered when the workers died is not the last epoch's
        snapshot = json.loads((storage / name / "checkpoint_manager_snapshot.json").read_text())
        registered = snapshot["latest_checkpoint_result"]["checkpoint_dir_name"]
        assert json.loads((storage / name / registered / "meta.json").read_text())["metrics"]["epoch"] < 3
        output, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output[-4000:]
    assert [h["epoch"] for h in metrics_history(storage / name)] == [1, 2, 3]
