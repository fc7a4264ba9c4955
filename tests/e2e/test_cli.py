"""The `bigearth` command and the job entrypoint, as users run them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REAL_V1, REPO, cli_options, cli_subparser

# the commands that run work attach to the session's Ray (RAY_ADDRESS); --help and argument errors start none
uses_ray = pytest.mark.usefixtures("ray_local")


def _run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    import ray

    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    return subprocess.run(
        [sys.executable, "-m", "bigearth.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@uses_ray
def test_synth_ingest_stats_bench(tmp_path: Path) -> None:
    archive, shards = tmp_path / "a", tmp_path / "s"
    r = _run("synth", "--layout", "v2", "--pairs", "60", "--out", str(archive), "--seed", "2")
    assert r.returncode == 0, r.stderr
    assert f"synth: wrote 60 v2 pairs to {archive}" in r.stdout
    r = _run("ingest", "--archive", str(archive), "--out", str(shards), "--shard-size", "20")
    assert r.returncode == 0, r.stderr
    manifest = json.loads((shards / "manifest.json").read_text())
    assert f"ingest: wrote {manifest['pairs']} pairs" in r.stdout
    assert set(manifest) >= {"pairs", "splits", "shards", "excluded", "format_version", "source"}
    assert manifest["source"]["quarantine"] == {"pairs": 0, "kinds": {}, "file": "quarantine.parquet"}
    assert (shards / "quarantine.parquet").exists()
    r = _run("stats", "--shards", str(shards), "--out", str(tmp_path / "stats.json"))
    assert r.returncode == 0, r.stderr
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert (
        set(stats) == {"B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12", "VV", "VH"}
        and stats["VV"]["mean"] < 0 < stats["B08"]["mean"]
    )
    r = _run("bench", "input", "--shards", str(shards), "--epochs", "1", "--batch-size", "16")
    assert r.returncode == 0, r.stderr
    line = json.loads(r.stdout.strip().splitlines()[-1])
    assert line["pairs"] == manifest["splits"]["train"] and line["pairs_per_s"] > 0 and line["cpus"] == 2
    assert line["path"] == "rowgroups" and line["steady_pairs_per_s_per_cpu"] > 0
    assert line["first_batch_s"] > 0 and line["epoch_start_s"] > 0
    r = _run("bench", "input", "--shards", str(shards), "--epochs", "2", "--batch-size", "16", "--path", "rows")
    assert r.returncode == 0, r.stderr
    line = json.loads(r.stdout.strip().splitlines()[-1])
    assert line["path"] == "rows" and line["pairs"] == manifest["splits"]["train"] and line["epochs"] == 2


@uses_ray
@pytest.mark.real
def test_v1_without_lists_is_a_clear_error_not_a_traceback(tmp_path: Path) -> None:
    r = _run("ingest", "--archive", str(REAL_V1), "--out", str(tmp_path / "x"))
    assert r.returncode == 2
    assert "a v1.0 archive needs --lists" in r.stderr and "s1_s2_mapping.csv" in r.stderr
    assert "Traceback" not in r.stderr


@uses_ray
def test_not_an_archive(tmp_path: Path) -> None:
    r = _run("ingest", "--archive", str(tmp_path), "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "not a BigEarthNet archive root" in r.stderr


def test_job_entrypoint_help() -> None:
    r = subprocess.run([sys.executable, "jobs/ingest.py", "--help"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0 and "--include-snow-cloud" in r.stdout and "--s3-endpoint" in r.stdout


@pytest.mark.parametrize("job", sorted(p.stem for p in (REPO / "jobs").glob("*.py")))
def test_every_job_is_a_shim_over_its_command(job: str) -> None:
    """`python jobs/X.py` (what the RayJobs run) takes exactly the options of `bigearth X`."""
    r = subprocess.run([sys.executable, f"jobs/{job}.py", "--help"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    command = job.replace("_", "-")
    assert r.stdout.startswith(f"usage: bigearth {command} ")
    shown = {w.strip("[],") for w in r.stdout.split() if w.startswith(("--", "[--"))}
    assert shown >= cli_options(cli_subparser(command)) - {"-h"}


def test_version() -> None:
    from importlib.metadata import version

    r = subprocess.run([sys.executable, "-m", "bigearth.cli", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith(f"bigearth {version('bigearth')} (Ray {version('ray')}, ")


def test_a_job_fails_with_one_line_and_with_its_traceback_under_verbose() -> None:
    argv = [sys.executable, "jobs/train.py", "--data", "x", "--storage", "y", "--config", "/nonexistent.yaml"]
    r = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("bigearth train: error:") and "/nonexistent.yaml" in r.stderr
    assert "Traceback" not in r.stderr
    for extra, env in ((["-v"], {}), ([], {"BIGEARTH_VERBOSE": "1"})):  # -v anywhere in a job's line, or the env
        r = subprocess.run([*argv, *extra], cwd=REPO, capture_output=True, text=True, env={**os.environ, **env})
        assert r.returncode == 1 and "Traceback" in r.stderr and "FileNotFoundError" in r.stderr
