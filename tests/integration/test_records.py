"""Records are written whole and one writer owns an output, against real processes and a real object store: a writer
starved of disk or killed midway (a subprocess), a second writer while the first is alive and after it is killed,
locks on S3. The in-process cases are in tests/unit/test_records.py."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from bigearth.core.outputlock import LOCK_FILE, OutputLock, OutputLocked
from bigearth.core.records import is_temp_name, read_json
from helpers import REPO


def _python(code: str, **kw: Any) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "platform")}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, text=True, stdout=subprocess.PIPE, **kw
    )


# --- written whole --------------------------------------------------------------------------------------------------


#: (file, code that rewrites it bigger than the limit, the limit on a file's size in bytes)
REWRITES = {
    "manifest": ("manifest.json", "Manifest(pairs=2, quarantined=[{'patch_id': 'p' * 40}] * 100).save(fs, OUT)", 600),
    "shard report": ("report.json", "write_json_atomic(fs, OUT + '/report.json', {'q': ['p' * 40] * 100})", 600),
    # model.pt (3.1 MB for `tiny`) is written first and fits; meta.json does not
    "checkpoint meta": ("meta.json", "checkpoints.save(OUT, create_model('tiny'), {'big': 'p' * 5_000_000})", 4 << 20),
}


@pytest.mark.parametrize("writer", list(REWRITES))
def test_a_write_that_fails_midway_leaves_the_old_record(tmp_path: Path, writer: str) -> None:
    """The disk fills up (RLIMIT_FSIZE: a write past the limit fails) while a record is rewritten: the old record
    is still there, whole. (Written in place, it was cut at the limit and the next run died in json.loads.)"""
    name, code, limit = REWRITES[writer]
    target = tmp_path / name
    old = {"pairs": 1, "note": "the old record"}
    target.write_text(json.dumps(old))
    proc = _python(
        f"""
        import resource, signal
        from bigearth.models import checkpoints
        from bigearth.models.registry import create_model
        from bigearth.core.records import write_json_atomic
        from bigearth.shards.format import Manifest
        from bigearth.core.storage import open_fs
        OUT = {str(tmp_path)!r}
        fs, _ = open_fs(OUT)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        try:
            {code}
        except OSError as e:
            print("failed:", e.errno)
        """
    )
    out, _ = proc.communicate(timeout=120)
    assert "failed: 27" in out  # EFBIG: the write did fail midway
    assert json.loads(target.read_text()) == old
    assert not [p for p in tmp_path.iterdir() if is_temp_name(p.name)]  # the temporary file is cleaned up


def test_a_writer_killed_between_write_and_rename_leaves_the_old_record(tmp_path: Path) -> None:
    target = tmp_path / "plan.json"
    target.write_text(json.dumps({"fingerprint": "old"}))
    proc = _python(
        f"""
        import os, sys, time
        from bigearth.core import records
        def stall(src, dst):
            print("written", flush=True)
            time.sleep(120)
        os.replace = stall
        records.write_json_atomic(None, {str(target)!r}, {{"fingerprint": "new" * 1000}})
        """
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "written"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert read_json(None, str(target), "ingest plan") == {"fingerprint": "old"}
    left = [p.name for p in tmp_path.iterdir() if p != target]
    assert len(left) == 1 and is_temp_name(left[0])  # the killed writer's temporary name, never the record's


# --- one writer per output ----------------------------------------------------------------------------------------


def test_a_second_writer_is_refused_naming_the_first_and_a_dead_ones_lock_is_taken_over(
    tmp_path: Path, capsys: Any
) -> None:
    out = tmp_path / "shards"
    first = _python(
        f"""
        import time
        from bigearth.core.outputlock import OutputLock
        with OutputLock({str(out)!r}, "ingest"):
            print("held", flush=True)
            time.sleep(120)
        """
    )
    assert first.stdout is not None and first.stdout.readline().strip() == "held"
    held = json.loads((out / LOCK_FILE).read_text())
    with pytest.raises(OutputLocked) as e:
        OutputLock(str(out), "ingest").acquire()
    message = str(e.value)
    assert str(out) in message and f"ingest on {socket.gethostname()} (pid {first.pid})" in message
    assert f"started {held['started']}" in message and "--break-lock" in message

    first.send_signal(signal.SIGKILL)  # killed: its lock stays behind, its process is gone
    first.wait()
    with OutputLock(str(out), "ingest") as lock:
        assert json.loads((out / LOCK_FILE).read_text())["token"] == lock.token
    said = capsys.readouterr().out
    assert f"from ingest on {socket.gethostname()} (pid {first.pid})" in said
    assert f"process {first.pid} is no longer running on this host" in said
    assert not (out / LOCK_FILE).exists()  # released


def test_locks_on_s3(s3) -> None:  # type: ignore[no-untyped-def]
    """On a real S3 server (SeaweedFS): the lock is created with a conditional PUT (or, where the server ignores
    the condition, checked by reading it back); a second writer is refused; the record goes at the end."""
    bucket = s3.make_bucket("bigearth-locks")
    storage = s3.storage_options()
    out = f"s3://{bucket}/shards"
    with OutputLock(out, "ingest", storage) as lock:
        with pytest.raises(OutputLocked, match=rf"{out} is being written by ingest on {socket.gethostname()}"):
            OutputLock(out, "ingest", storage).acquire()
        lock.refresh()
        assert read_json(s3.fs(), f"{bucket}/shards/{LOCK_FILE}", "output lock")["token"] == lock.token
    assert not s3.fs().exists(f"{bucket}/shards/{LOCK_FILE}")
