"""bench/scale.py run as the lead runs it, at a tiny size: every stage's command succeeds and is measured."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from helpers import REPO, bench_module

STAGES = bench_module("scale").STAGES


def test_scale_benchmark_runs_every_stage(tmp_path: Path) -> None:
    out = tmp_path / "results" / "scale.json"
    env = {**os.environ, "PYTHONPATH": str(REPO / "platform"), "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "bench/scale.py", "--sizes", "40,60", "--executor", "local"]
    cmd += ["--work", str(tmp_path / "work"), "--out", str(out)]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    doc = json.loads(out.read_text())
    stages = {(r["stage"], r["pairs"]) for r in doc["results"] if r["ok"]}
    wanted = [s for s in STAGES if s != "serve_startup"]  # Serve needs Ray: --executor local skips it
    assert stages == {(s, n) for s in wanted for n in (40, 60)}
    for r in doc["results"]:
        assert r["seconds"] > 0 and r["driver_peak_mb"] > 50, r  # the command's process was sampled
        assert r["sum_peak_mb"] >= r["driver_peak_mb"]
    assert set(doc["summary"]) == set(wanted) and all("cost_ratio" in s for s in doc["summary"].values())
    for p in doc["projection_full_archive"].values():  # at 40 and 60 pairs the per-pair part may fit as nothing
        assert p["16_cores_h"] >= p["64_cores_h"] >= 0 and p["fixed_s"] >= 0
    table = out.with_suffix(".md").read_text()
    assert table.count("| train | ") == 3  # two sizes, one summary row
    assert out.with_suffix(".png").stat().st_size > 1000
    assert "train: per-pair cost x" in done.stdout
    assert not (tmp_path / "work" / "n60").exists()  # deleted without --keep
