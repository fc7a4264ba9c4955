"""The embedded engine rebuilt by another process that is killed mid-way (the in-process contract of both engines:
tests/unit/test_retrieval.py)."""

from __future__ import annotations

from pathlib import Path

from bigearth.retrieval import open_index
from unit.test_retrieval import DIM, N, _corpus

KILL = """
import os, signal, sys
import numpy as np
sys.path.insert(0, {tests!r})
from unit.test_retrieval import _corpus
from bigearth.retrieval import open_index
ids, vectors, payloads = _corpus(seed=5)
b = open_index({target!r}, "test").rebuild({{"fused": 32, "s1": 4}}, {{"model": "killed"}})
b.upsert(ids[:40], {{k: v[:40] for k, v in vectors.items()}}, payloads[:40])
b.finish()
print(b.version, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_rebuild_killed_mid_way_leaves_the_old_version_answering(tmp_path: Path) -> None:
    """The embedded engine is a folder: another process rebuilds it while this one reads, and is killed."""
    import os
    import subprocess
    import sys

    target = str(tmp_path / "index")
    idx = open_index(target, "test")
    ids, vectors, payloads = _corpus()
    idx.create({"fused": DIM, "s1": 4}, {"model": "unit"})
    idx.upsert(ids, vectors, payloads)
    idx.finish()
    live = idx.live_version()
    code = KILL.format(tests=str(Path(__file__).parents[1]), target=target)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == -9, run.stderr[-2000:]
    partial = run.stdout.strip()
    assert (tmp_path / "index" / "test" / partial).is_dir() and idx.live_version() == live
    assert idx.count() == N and idx.search(vectors["fused"][9], "fused", k=1)[0].patch_id == ids[9]
    idx.close()  # the embedded engine opens a folder once at a time
    fresh = open_index(target, "test")
    assert fresh.count() == N and fresh.metadata()["model"] == "unit"
    nxt = fresh.rebuild({"fused": DIM, "s1": 4}, {"model": "next"}, exclusive=True)
    assert not (tmp_path / "index" / "test" / partial).exists()  # cleaned up by the next (locked) job
    nxt.close()
    fresh.close()
