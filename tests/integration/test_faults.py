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

from bigearth.core.storage import open_fs
from bigearth.input.raydata import read_columns
from bigearth.shards.format import Manifest
from helpers import REPO, deploy_app, free_ports

pytestmark = pytest.mark.usefixtures("ray_local")


def _damaged_copy(shards: Path, where: Path, split: str, how: str) -> Path:
    """A copy of the shard set with one shard of `split` damaged: bytes flipped in the middle, or cut short."""
    shutil.copytree(shards, where)
    m = Manifest.load(*open_fs(str(where)))
    victim = where / next(s.path for s in m.shards if s.split == split)
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
    from bigearth.evaluation.classification import evaluate

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
    from bigearth.retrieval.backends import VectorIndexError

    ids = read_columns(str(shards_v2), ["patch_id"]).column(0).to_pylist()
    target = tmp_path / "index"
    for _attempt in range(3):  # the kill must land half way; a job that outran it is tried again
        shutil.rmtree(target, ignore_errors=True)
        shown = _kill_after_first_points(_index_job(tiny_run, shards_v2, target), len(ids))
        if shown is None:
            continue
        index = open_index(str(target))
        try:
            index.count()
        except VectorIndexError as e:  # killed before its switch: nothing half-built is served
            assert "no such collection" in str(e)
            break
        finally:
            index.close()
    else:
        pytest.fail("the indexing job finished before it could be killed, 3 times")
    assert shown > 0  # it was killed with points written, into a version never switched to

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


# ------------------------------------------------------------------------------------------------ Serve
def _classify_count(metrics: str) -> float:
    lines = [x for x in metrics.splitlines() if x.startswith('bigearth_requests_total{route="/v1/classify"')]
    return sum(float(x.rsplit(" ", 1)[1]) for x in lines)


def test_a_classifier_replica_killed_under_load(tiny_run: Path, index_v2: Path, shards_v2: Path) -> None:
    """32 clients classify while one of two Classifier replicas is killed: every SDK call succeeds (its retries);
    raw HTTP failures are 503s with a JSON body, only around the kill; the service is whole again after. Two
    ingress replicas answer; /metrics counts the requests of both, whichever answers."""
    import asyncio
    from collections import Counter

    import httpx
    import ray
    from ray import serve

    from bigearth.client import AsyncClient
    from bigearth.serving.app import AppArgs, build

    args = AppArgs(
        checkpoint=str(tiny_run),
        index=str(index_v2),
        data=str(shards_v2),
        classifier_replicas=2,
        ingress_replicas=2,
        replica_cpus=0.25,
    )
    url = deploy_app(build(args), "faults")
    ids = read_columns(str(shards_v2), ["patch_id"]).column(0).to_pylist()

    def classifier_replicas() -> list[str]:
        return [
            a["name"]
            for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith("SERVE_REPLICA::faults#Classifier#")
        ]

    kill_at, stop_at = 3.0, 14.0
    sdk_ok, sdk_failed, raw = [0], [], Counter()  # type: ignore[var-annotated]
    raw_failures: list[tuple[float, int, object, str | None]] = []

    async def sdk_worker(i: int, t0: float) -> None:
        async with AsyncClient(url, timeout=60) as c:
            while time.monotonic() - t0 < stop_at:
                try:
                    await c.classify(patch_id=ids[i % len(ids)])
                    sdk_ok[0] += 1
                except Exception as e:
                    sdk_failed.append(repr(e))
                i += 32

    async def raw_worker(i: int, t0: float) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=60) as h:
            while time.monotonic() - t0 < stop_at:
                r = await h.post("/v1/classify", json={"patch_id": ids[i % len(ids)]})
                raw[r.status_code] += 1
                if r.status_code != 200:
                    raw_failures.append((time.monotonic() - t0, r.status_code, r.json(), r.headers.get("retry-after")))
                i += 32

    async def killer(t0: float) -> str:
        await asyncio.sleep(kill_at)
        victim = classifier_replicas()[0]
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
        return victim

    async def main() -> str:
        t0 = time.monotonic()
        tasks = [sdk_worker(i, t0) for i in range(24)] + [raw_worker(24 + i, t0) for i in range(8)]
        victim, *_ = await asyncio.gather(killer(t0), *tasks)
        return str(victim)

    try:
        victim = asyncio.run(main())
        print(f"killed {victim}; SDK calls ok {sdk_ok[0]}, failed {len(sdk_failed)}; raw statuses {dict(raw)}")
        assert not sdk_failed, sdk_failed[:3]
        assert sdk_ok[0] > 100 and raw[200] > 20
        assert set(raw) <= {200, 503}, raw_failures[:3]
        for t, status, body, retry_after in raw_failures:
            assert status == 503 and isinstance(body, dict) and body["error"] == "unavailable", body
            assert retry_after == "1", retry_after
            assert kill_at - 0.5 <= t <= kill_at + 10, (t, body)  # only around the kill
        deadline = time.time() + 120
        while len(classifier_replicas()) < 2 or victim in classifier_replicas():
            assert time.time() < deadline, classifier_replicas()
            time.sleep(0.5)
        assert httpx.get(f"{url}/readyz").status_code == 200
        assert httpx.post(f"{url}/v1/classify", json={"patch_id": ids[0]}, timeout=60).status_code == 200

        time.sleep(2.5)  # every replica's last tally sent (each flushes every second)
        reads = [httpx.get(f"{url}/metrics").text for _ in range(6)]
        counts = {_classify_count(m) for m in reads}
        assert len(counts) == 1, counts  # the same whole-application figure from whichever replica answered
        assert counts.pop() >= sdk_ok[0] + sum(raw.values()) + 1  # SDK retries count too
        assert all("bigearth_ingress_replicas_reporting 2.0" in m for m in reads), reads[0][-800:]
    finally:
        serve.delete("faults")
        serve.shutdown()


# ------------------------------------------------------------------------------------------------ Ray cluster
def _bigearth(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    pipe = subprocess.PIPE
    return subprocess.Popen(
        [sys.executable, "-m", "bigearth.cli", *args], cwd=REPO, env=env, stdout=pipe, stderr=pipe, text=True
    )


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return {**env, "RAY_AUTH_MODE": "disabled", **extra}


def test_an_unreachable_cluster_is_an_error_naming_it_and_a_stale_record_runs_locally(
    synth_v2: Path, tmp_path: Path
) -> None:
    (dead,) = free_ports(1)
    t = time.monotonic()
    env = _env(RAY_ADDRESS=f"127.0.0.1:{dead}")
    proc = _bigearth(["ingest", "--archive", str(synth_v2), "--out", str(tmp_path / "a")], env)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and time.monotonic() - t < 60, err[-2000:]
    assert f"the Ray cluster at 127.0.0.1:{dead} (RAY_ADDRESS) does not answer" in err and "unset RAY_ADDRESS" in err

    import tempfile

    short = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # Ray's socket paths must stay under 108 bytes
    (short / "ray").mkdir()
    (short / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{dead}")  # a head killed without `ray stop`
    env = _env(RAY_TMPDIR=str(short), BIGEARTH_RAY_PROBE_S="3")
    proc = _bigearth(["ingest", "--archive", str(synth_v2), "--out", str(tmp_path / "b"), "--shard-size", "60"], env)
    try:
        out, err = proc.communicate(timeout=300)
    finally:
        shutil.rmtree(short, ignore_errors=True)
    assert proc.returncode == 0, err[-3000:]
    assert "does not answer: starting a local Ray instead" in err and "ingest: wrote 104 pairs" in out


def test_a_command_whose_cluster_dies_stops_naming_it(synth_v2: Path, tmp_path: Path) -> None:
    from raycluster import LocalCluster

    # `ray start` nodes, not ray.cluster_utils.Cluster: a subprocess attaches by address and the cluster is SIGKILLed
    with LocalCluster(nodes=1, cpus_per_node=1) as cluster:
        env = _env(RAY_ADDRESS=cluster.address, BIGEARTH_RAY_LOST_AFTER_S="8")
        proc = _bigearth(["ingest", "--archive", str(synth_v2), "--out", str(tmp_path / "s"), "--shard-size", "4"], env)
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("ingest: 104 pairs"), first + (proc.stderr.read() if proc.stderr else "")
        time.sleep(2)
        cluster.stop()  # SIGKILL every process of the cluster, as a node loss would
        killed = time.monotonic()
        try:
            _, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert time.monotonic() - killed < 60, err[-2000:]
    assert proc.returncode == 75, (proc.returncode, err[-3000:])
    assert re.search(rf"the Ray cluster at [\d.]+:{cluster.gcs_port} stopped answering", err), err[-3000:]
    assert "re-run the command" in err


def test_the_watchdog_targets_the_address_ray_would_and_spares_library_callers(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Which address `ensure_ray` probes (as `ray.init` picks it), IPv6 brackets, and that an unarmed process (a
    notebook, a service embedding the library) is never interrupted: the watchdog only logs."""
    import socket
    import threading

    from bigearth.execution import raycluster

    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert raycluster._target({}) == ("10.0.0.1:6379", "RAY_ADDRESS")
    assert raycluster._target({"address": "auto"}) == ("10.0.0.1:6379", "RAY_ADDRESS")  # ray.init: the variable wins
    assert raycluster._target({"address": "10.0.0.2:6379"}) == ("10.0.0.2:6379", "the address given")
    assert raycluster._target({"address": "local"}) == (None, "local")
    monkeypatch.delenv("RAY_ADDRESS")
    (tmp_path / "ray_current_cluster").write_text("10.0.0.3:6379")
    assert raycluster._target({"_temp_dir": str(tmp_path)}) == ("10.0.0.3:6379", "record")

    with socket.socket(socket.AF_INET6) as s6:
        s6.bind(("::1", 0))
        s6.listen()
        assert raycluster._answers(f"[::1]:{s6.getsockname()[1]}")
    with socket.socket() as s4:
        s4.bind(("127.0.0.1", 0))
        port = s4.getsockname()[1]
    assert not raycluster._answers(f"127.0.0.1:{port}")

    # an unarmed watchdog whose cluster goes silent logs, and neither interrupts nor exits this (pytest) process
    monkeypatch.setattr(raycluster, "_ARMED", False)
    monkeypatch.setattr(raycluster, "LOST_AFTER_S", 0.2)
    monkeypatch.setattr(raycluster, "_watched", f"127.0.0.1:{port}")
    monkeypatch.setattr("ray.is_initialized", lambda: True)
    monkeypatch.setattr("ray.get_runtime_context", lambda: type("Ctx", (), {"gcs_address": f"127.0.0.1:{port}"})())
    t = threading.Thread(target=raycluster._watch, args=(f"127.0.0.1:{port}", 0.05))
    t.start()
    t.join(10)
    assert not t.is_alive() and raycluster.LOST and f"127.0.0.1:{port} stopped answering" in raycluster.LOST
    monkeypatch.setattr(raycluster, "LOST", None)
