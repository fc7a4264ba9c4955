"""bench/gpu_check.py run as a GPU machine runs it, with `--device cpu` (the tiny config, a small archive, a short
serve load): every step runs in order and is measured; a step that fails stops the check, exits non-zero and names
the step, and the JSON is still written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import pytest

from helpers import REPO, bench_module

CHECK = bench_module("gpu_check")


def run_check(
    out: Path, *extra: str, watchdog_s: str = "280"
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """The check run as the recipe runs it (`out` relative to the repository or absolute): its process, its JSON."""
    ray_tmp = tempfile.mkdtemp(prefix="gc", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = {**os.environ, "PYTHONPATH": str(REPO / "platform"), "RAY_AUTH_MODE": "disabled", "RAY_TMPDIR": ray_tmp}
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "bench/gpu_check.py", "--device", "cpu", "--budget-s", "60", "--out", str(out)]
    cmd += ["--watchdog-s", watchdog_s, "--label", "e2e", *extra]
    try:
        done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    log = done.stdout[-3000:] + done.stderr[-3000:]
    found = REPO / out / "gpu_check.json"  # an absolute `out` stays itself
    assert found.exists(), log
    return done, json.loads(found.read_text())


def test_every_step_runs_and_is_measured(tmp_path: Path) -> None:
    done, doc = run_check(tmp_path / "out")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert doc["failed"] is None and doc["device"] == "cpu" and doc["config"] == "configs/tiny-cpu.yaml"
    assert doc["label"] == "e2e"
    assert [r["step"] for r in doc["steps"]] == list(CHECK.STEPS)
    assert all(r["seconds"] > 0 and "error" not in r for r in doc["steps"])
    f = {r["step"]: r["figures"] for r in doc["steps"]}

    assert f["probe"]["cores"] > 0 and f["probe"]["ray_init_s"] > 0 and f["probe"]["cuda_available"] is False
    sizing = f["data"]["sizing"]  # the arithmetic the data step sized itself with
    assert sizing["per_pair_s"] > 0 and len(sizing["calibration"]) == 2
    caps = (sizing["max_pairs"], sizing["pairs_by_disk"])
    assert sizing["pairs"] == min(max(sizing["pairs_by_budget"], sizing["floor_pairs"]), *caps)
    assert sizing["bytes_per_pair"] > 0 and sizing["free_bytes"] > 0 and sizing["warnings"] == []
    assert f["data"]["pairs_per_s"] > 0 and 0 < f["data"]["kept_pairs"] <= f["data"]["pairs"]
    train = f["train"]
    batches = train["train_pairs"] / train["bf16"]["batch_size"]
    assert batches >= CHECK.PROFILES["cpu"]["warmup_steps"] + CHECK.PROFILES["cpu"]["steps"] + 1  # the floor held
    for precision in CHECK.PRECISIONS:
        t = train[precision]
        assert t["batch_size"] == 32
        for mode in ("loader", "held"):  # each window sized from its warm-up rate, at least the profile's steps
            assert t[f"{mode}_steps"] >= CHECK.PROFILES["cpu"]["steps"] and t[f"{mode}_s"] > 0
            assert t[f"{mode}_pairs_per_s"] > 0
            assert t[f"gpu_util_{mode}_pct"] is None and t[f"gpu_util_{mode}_error"] is None  # no GPU here
        assert t["input_bound_fraction"] == 1 - t["loader_pairs_per_s"] / t["held_pairs_per_s"]
        assert t["peak_gpu_mem_gib"] is None and t["peak_gpu_reserved_gib"] is None
    assert train["device"] == "cpu" and train["cpus_per_worker"] == len(os.sched_getaffinity(0))
    assert "SyncBatchNorm" in train["collectives"]
    partial = [json.loads(x) for x in (tmp_path / "out" / "train_partial.jsonl").read_text().splitlines()]
    assert [list(x) for x in partial] == [["device"], ["bf16"], ["fp32"]]  # appended as measured
    for step in ("evaluate", "index"):
        assert f[step]["pairs"] > 0 and f[step]["wall_pairs_per_s"] > 0
    index_s = next(r["seconds"] for r in doc["steps"] if r["step"] == "index")
    assert 0 < f["index"]["embed_and_upsert_s"] <= index_s + 0.05  # a part of the step (rounded to 0.1 s)
    assert f["index"]["embed_pairs_per_s"] == pytest.approx(f["index"]["pairs"] / f["index"]["embed_and_upsert_s"])
    s = f["serve"]
    assert s["clients"] == 32 and s["batched_rps"] > 0 and s["batch1_rps"] > 0
    assert 0 < s["batched_p50_ms"] <= s["batched_p99_ms"] and 0 < s["batch1_p50_ms"] <= s["batch1_p99_ms"]
    assert s["batched_mean_batch"] > 1  # dynamic batching batched
    assert s["batched_gpu_util_pct"] is None and s["batch1_gpu_util_error"] is None  # sampled per mode: no GPU

    table = (tmp_path / "out" / "gpu_check.md").read_text()
    for step in (*CHECK.STEPS, "train bf16", "train fp32"):
        assert f"| {step} |" in table
    assert table in done.stdout  # printed too
    assert not (tmp_path / "out" / "work").exists()  # the default work folder is deleted
    assert not (tmp_path / "out" / "ray_logs.tar.gz").exists()  # only a failure tars Ray's logs


def test_a_failing_step_stops_the_check_and_is_named(tmp_path: Path) -> None:
    # 43 classes need shards ingested from v1: a v2 archive's shards have no such label column, so the train step
    # fails (the data step before it does not read the config's nomenclature)
    done, doc = run_check(tmp_path / "out", "--set", "data.nomenclature=43")
    assert done.returncode != 0
    assert doc["failed"]["step"] == "train" and "43" in doc["failed"]["error"], doc["failed"]
    assert f"gpu_check: step train failed: {doc['failed']['error']}" in done.stdout
    assert [r["step"] for r in doc["steps"]] == ["probe", "data", "train"]  # stopped at the first failure
    assert "error" not in doc["steps"][1] and doc["steps"][2]["error"] == doc["failed"]["error"]
    assert "| train |" in (tmp_path / "out" / "gpu_check.md").read_text()
    logs = tmp_path / "out" / "ray_logs.tar.gz"  # Ray's logs, one capped file
    assert 0 < logs.stat().st_size <= CHECK.LOGS_CAP
    with tarfile.open(logs) as tar:
        assert any(n.startswith("logs/") for n in tar.getnames())


def test_a_relative_out_and_the_watchdog(tmp_path: Path) -> None:
    # a relative --out (resolved: Ray Train's storage_path must be absolute); the watchdog ends a check past its
    # time as a failure of the step it was in, the JSON written
    out = Path(os.path.relpath(tmp_path / "out", REPO))
    done, doc = run_check(out, watchdog_s="6")
    assert done.returncode == 1
    assert doc["failed"]["step"] in ("probe", "data") and doc["failed"]["error"] == "timeout after 6 s", doc
    assert f"gpu_check: step {doc['failed']['step']} failed: timeout after 6 s" in done.stdout
