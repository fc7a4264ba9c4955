"""Records are written whole (bigearth.core.records) and one writer owns an output (bigearth.core.outputlock), in
process. Writers killed or starved of disk in a subprocess, and the locks on S3: tests/integration/test_records.py;
the ingest re-run over a cut-short shard report: tests/integration/test_ingest.py."""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import fsspec
import pytest

from bigearth.archive import staging
from bigearth.core.outputlock import LOCK_FILE, OutputLock, OutputLocked
from bigearth.core.records import RecordError, read_json, write_json_atomic
from bigearth.core.storage import open_fs
from bigearth.ingest.job import IngestError, _read_plan
from bigearth.ingest.shard import read_report
from bigearth.models import checkpoints
from bigearth.shards.format import Manifest, ShardFormatError

RECORD = {"path": "train/part-00000.parquet", "rows": 30, "quarantined": [{"patch_id": "p", "reason": "x" * 50}]}


def _local(path: Path) -> Any:
    return open_fs(str(path))[0]


# --- written whole ------------------------------------------------------------------------------------------------


def test_records_on_an_object_store_are_one_put() -> None:
    fs = fsspec.filesystem("memory")
    puts: list[str] = []
    real = fs.pipe_file

    def pipe_file(path: str, value: bytes, **kw: Any) -> None:
        puts.append(path)
        real(path, value, **kw)

    fs.pipe_file = pipe_file  # type: ignore[method-assign]
    write_json_atomic(fs, "/records/report.json", RECORD)
    Manifest(pairs=3).save(fs, "/records")
    assert puts == ["/records/report.json", "/records/manifest.json"]
    assert read_json(fs, "/records/report.json", "shard report") == RECORD
    assert Manifest.load(fs, "/records").pairs == 3
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls("/records", detail=False)) == ["manifest.json", "report.json"]


# --- unreadable records are named ---------------------------------------------------------------------------------


def test_every_cut_of_a_record_is_named(tmp_path: Path) -> None:
    """Whatever the point a record was cut at (an older writer killed mid-write), reading it names the file and
    what it is; never a bare JSONDecodeError."""
    text = json.dumps(RECORD, indent=1).encode()
    path = tmp_path / "part-00000.json"
    for n in range(len(text)):
        path.write_bytes(text[:n])
        with pytest.raises(RecordError, match=rf"{path}: the shard report is unreadable \(") as e:
            read_json(None, str(path), "shard report")
        assert e.value.path == str(path)
    path.write_bytes(b"\xff\xfe{")
    with pytest.raises(RecordError, match="not UTF-8"):
        read_json(_local(tmp_path), str(path), "shard report")
    path.write_bytes(b"[1, 2]")
    with pytest.raises(RecordError, match="a JSON list, expected an object"):
        read_json(None, str(path), "shard report")
    with pytest.raises(FileNotFoundError):
        read_json(_local(tmp_path), str(tmp_path / "absent.json"), "shard report")


def test_a_cut_manifest_is_named_with_the_way_out(tmp_path: Path) -> None:
    Manifest(pairs=5).save(_local(tmp_path), str(tmp_path))
    (tmp_path / "manifest.json").write_text('{"pairs": 5, "spl')
    with pytest.raises(ShardFormatError, match=r"manifest\.json: the shard set's manifest is unreadable.*re-run"):
        Manifest.load(*open_fs(str(tmp_path)))


def test_a_cut_checkpoint_meta_is_named_and_skipped_when_choosing_the_best(tmp_path: Path, caplog: Any) -> None:
    for name, ap in (("checkpoint_000000", 0.5), ("checkpoint_000001", 0.9)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "meta.json").write_text(json.dumps({"metrics": {"val_macro_ap": ap}}))
    (tmp_path / "checkpoint_000001" / "meta.json").write_text('{"metrics": {"val_mac')
    with pytest.raises(checkpoints.CheckpointError, match=r"checkpoint_000001/meta\.json: the checkpoint's meta is"):
        checkpoints.read_meta(tmp_path / "checkpoint_000001")
    with caplog.at_level(logging.WARNING):
        assert checkpoints.find_best(tmp_path).endswith("checkpoint_000000")
    assert "checkpoint_000001/meta.json" in caplog.text


def test_a_cut_shard_report_means_the_shard_is_written_again(tmp_path: Path) -> None:
    fs = _local(tmp_path)
    path = tmp_path / "part-00001.json"
    write_json_atomic(fs, str(path), RECORD)
    assert read_report(fs, str(path)) == RECORD
    path.write_text(json.dumps(RECORD)[:20])
    assert read_report(fs, str(path)) is None and not path.exists()  # redone (the re-run with Ray: test_ingest)


def test_a_cut_plan_is_written_again_only_when_no_shard_followed_it(tmp_path: Path) -> None:
    fs = _local(tmp_path)
    plan = tmp_path / "_ingest" / "plan.json"
    plan.parent.mkdir()
    plan.write_text('{"fingerprint": "ab')
    assert _read_plan(fs, str(tmp_path), str(plan)) is None  # the ingest writes it again
    (tmp_path / "_ingest" / "reports").mkdir()
    with pytest.raises(IngestError, match=r"plan\.json: the ingest plan is unreadable.*--overwrite"):
        _read_plan(fs, str(tmp_path), str(plan))


def test_a_cut_spill_marker_means_the_spill_is_written_again(tmp_path: Path) -> None:
    fs = _local(tmp_path)
    (tmp_path / "dl").mkdir()
    buffer = staging.SpillBuffer(1 << 10)
    buffer.add(3, "top/p/p_B02.tif", b"pixels")
    (tmp_path / "dl" / "spill-00000.json").write_text('{"path": "dl/spill-0')
    entry = staging._spill(fs, str(tmp_path), "dl", 0, buffer)
    assert entry == read_json(fs, str(tmp_path / "dl" / "spill-00000.json"), "spill marker")
    assert entry["members"] == 1 and (tmp_path / "dl" / "spill-00000.bin").stat().st_size == entry["groups"]["3"][1]


# --- one writer per output ----------------------------------------------------------------------------------------


def _holder(out: Path, **extra: Any) -> dict[str, Any]:
    now = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
    record = {"job": "ingest", "host": "other-host", "pid": 4242, "started": now, "heartbeat": now, "token": "t1"}
    record.update(extra)
    out.mkdir(parents=True, exist_ok=True)
    (out / LOCK_FILE).write_text(json.dumps(record))
    return record


def test_a_lock_without_heartbeat_for_too_long_is_taken_over_and_break_lock_takes_any(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _holder(out)  # another host, a fresh heartbeat: held
    with pytest.raises(OutputLocked, match=r"ingest on other-host \(pid 4242\), started .*last heartbeat \d+ s ago"):
        OutputLock(str(out), "import-reben").acquire()
    with OutputLock(str(out), "import-reben", break_lock=True):  # --break-lock
        assert json.loads((out / LOCK_FILE).read_text())["job"] == "import-reben"

    _holder(out, heartbeat="2020-01-01T00:00:00+00:00")
    with OutputLock(str(out), "ingest", stale_after_s=600):
        assert json.loads((out / LOCK_FILE).read_text())["host"] == socket.gethostname()

    _holder(out, owner="rayjob/bigearth-ingest")  # a re-submitted job's previous attempt (on another host)
    with pytest.raises(OutputLocked):
        OutputLock(str(out), "ingest").acquire()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BIGEARTH_LOCK_OWNER", "rayjob/bigearth-ingest")
        with OutputLock(str(out), "ingest") as lock:
            assert lock._record["owner"] == "rayjob/bigearth-ingest"

    (out / LOCK_FILE).write_text('{"job": "ing')  # unreadable and fresh: refused, named
    with pytest.raises(OutputLocked, match="an unknown writer"):
        OutputLock(str(out), "ingest").acquire()


def test_the_holder_beats_releases_on_error_and_notices_a_takeover(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(ZeroDivisionError), OutputLock(str(out), "index", heartbeat_s=0.05):
        first = json.loads((out / LOCK_FILE).read_text())["heartbeat"]
        deadline = time.time() + 5
        while json.loads((out / LOCK_FILE).read_text())["heartbeat"] == first and time.time() < deadline:
            time.sleep(0.05)
        assert json.loads((out / LOCK_FILE).read_text())["heartbeat"] != first  # refreshed
        raise ZeroDivisionError  # the job fails
    assert not (out / LOCK_FILE).exists()  # released on error

    lock = OutputLock(str(out), "ingest", heartbeat_s=0.05)
    lock.acquire()
    breaker = OutputLock(str(out), "ingest", break_lock=True)
    breaker.acquire()  # somebody breaks it (and keeps it)
    deadline = time.time() + 5
    while lock.lost is None and time.time() < deadline:
        time.sleep(0.05)
    with pytest.raises(OutputLocked, match=r"taken over by ingest on .* stops without committing"):
        lock.check()
    lock.release()
    assert json.loads((out / LOCK_FILE).read_text())["token"] == breaker.token  # the other's lock is left alone
    breaker.release()
    assert not (out / LOCK_FILE).exists()
    beating = [t for t in threading.enumerate() if t.name == f"lock-heartbeat {out}" and t.is_alive()]
    assert not beating  # no heartbeat thread of this test outlives it


def test_two_writers_racing_for_a_stale_lock_exactly_one_wins(tmp_path: Path) -> None:
    """B judges the lock stale and is about to remove it; A takes it over meanwhile; then B's removal goes ahead.
    B must not remove A's fresh lock (before, B deleted it and both held the output)."""
    out = tmp_path / "out"
    _holder(out, heartbeat="2000-01-01T00:00:00+00:00")  # a dead writer's lock
    lock_path = str(out / LOCK_FILE)
    b_about_to_act, a_holds = threading.Event(), threading.Event()

    def after_a(fn: Any) -> Any:
        def delayed(path: Any, *args: Any, **kwargs: Any) -> Any:  # B's destructive step on the lock waits for A
            if threading.current_thread().name == "B" and str(path).endswith(lock_path) and not a_holds.is_set():
                b_about_to_act.set()
                a_holds.wait(10)
            return fn(path, *args, **kwargs)

        return delayed

    a, b = (OutputLock(str(out), "ingest", heartbeat_s=3600) for _ in range(2))
    won: list[OutputLock] = []

    def take(lock: OutputLock) -> None:
        try:
            lock.acquire()
            won.append(lock)
        except OutputLocked:
            pass
        finally:
            if lock is a:
                a_holds.set()

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "rename", after_a(os.rename))
        mp.setattr(b.fs, "rm_file", after_a(b.fs.rm_file))  # (one cached file system object for both locks)
        tb = threading.Thread(target=take, args=(b,), name="B")
        tb.start()
        assert b_about_to_act.wait(10)
        ta = threading.Thread(target=take, args=(a,), name="A")
        ta.start()
        ta.join(30)
        tb.join(30)
    try:
        assert won == [a], [w.token for w in won]  # exactly one holds it: B was refused
        assert json.loads((out / LOCK_FILE).read_text())["token"] == a.token
        a.refresh()  # A still holds it
    finally:
        a.release()
        b.release()


def test_object_store_locks_are_created_exclusively() -> None:
    out = "memory://bucket/shards"
    with OutputLock(out, "ingest"):
        with pytest.raises(OutputLocked, match=r"memory://bucket/shards is being written by ingest on"):
            OutputLock(out, "ingest").acquire()
        assert fsspec.filesystem("memory").exists("/bucket/shards/" + LOCK_FILE)
    assert not fsspec.filesystem("memory").exists("/bucket/shards/" + LOCK_FILE)


def test_cli_commands_refuse_a_held_output_and_break_lock_takes_it(tmp_path: Path, capsys: Any) -> None:
    from bigearth.cli import main

    out = tmp_path / "ckpt"
    _holder(out, job="import-reben")
    src = tmp_path / "no-such-reben"
    assert main(["import-reben", str(src), str(out)]) == 2
    assert "is being written by import-reben on other-host (pid 4242)" in capsys.readouterr().err
    assert json.loads((out / LOCK_FILE).read_text())["token"] == "t1"  # refused: left as it was
    assert main(["import-reben", str(src), str(out), "--break-lock"]) == 2
    assert "no config.json" in capsys.readouterr().err  # past the lock: the source is missing
    assert not (out / LOCK_FILE).exists()  # taken over, then released when the import failed

    index = tmp_path / "index"
    _holder(index, job="index")
    (index / LOCK_FILE).rename(index / ".bigearth-lock-bigearthnet.json")  # the collection's lock
    assert main(["index", "--checkpoint", "x", "--data", "y", "--index", str(index)]) == 2  # before any work
    assert "is being written by index on other-host" in capsys.readouterr().err


def test_a_cut_staging_record_or_spill_marker_is_staged_again(synth_v2: Path, tmp_path: Path, caplog: Any) -> None:
    """A download whose record is cut short is decompressed again; only the spill whose marker is cut is written
    again (the others keep theirs)."""
    import dataclasses

    import pyarrow as pa
    import pyarrow.parquet as pq

    from bigearth.archive.layouts import layout_for
    from bigearth.core.storage import StorageOptions
    from bigearth.synth.packed import pack_archive

    packed = tmp_path / "packed"
    pack_archive(str(synth_v2), str(packed), "v2")
    ids = pq.read_table(packed / "metadata.parquet", columns=["patch_id"])["patch_id"]
    route = pa.table({"name": ids, "shard": pa.array([i % 4 for i in range(len(ids))], pa.int32())})
    d = dataclasses.asdict(layout_for("v2-downloads", str(packed)).downloads[0])
    where = tmp_path / "stage"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(staging, "SPILL_BYTES", 1 << 20)  # several spills
        first = staging.stage_download(d, str(packed), str(where), StorageOptions(), route, ids, progress=False)
        record = where / "BigEarthNet-S2.tar.zst.json"
        marker = where / "BigEarthNet-S2.tar.zst" / "spill-00001.json"
        assert len(first["spills"]) > 2
        record.write_bytes(record.read_bytes()[:30])
        marker.write_bytes(marker.read_bytes()[:10])
        stamps = {p: p.stat().st_mtime_ns for p in where.rglob("spill-*")}
        with caplog.at_level(logging.WARNING):
            again = staging.stage_download(d, str(packed), str(where), StorageOptions(), route, ids, progress=False)
    assert f"{record}: the staging record is unreadable" in caplog.text
    assert f"{marker}: the spill marker is unreadable" in caplog.text
    assert again == {**first, "seconds": again["seconds"]} == read_json(None, str(record), "staging record")
    rewritten = {p for p in where.rglob("spill-*") if p.stat().st_mtime_ns != stamps[p]}
    assert rewritten == {marker, marker.with_suffix(".bin")}


def test_a_cut_index_metadata_or_metrics_file_is_named(tmp_path: Path) -> None:
    from bigearth.evaluation.reproduce import collect
    from bigearth.retrieval.backends import COLLECTION_META, VectorIndexError
    from bigearth.retrieval.edge import EdgeIndex

    (tmp_path / "index" / "bigearthnet").mkdir(parents=True)
    (tmp_path / "index" / "bigearthnet" / COLLECTION_META).write_text('{"model": {"na')
    with pytest.raises(VectorIndexError, match=rf"{COLLECTION_META}: the index collection's metadata is unreadable"):
        EdgeIndex(str(tmp_path / "index")).metadata()
    (tmp_path / "eval" / "late").mkdir(parents=True)
    (tmp_path / "eval" / "late" / "metrics.json").write_text('{"macro_ap": 0.')
    with pytest.raises(RecordError, match=r"late/metrics\.json: the evaluation metrics file is unreadable"):
        collect(str(tmp_path / "eval"))


def test_a_writer_whose_lock_was_taken_over_stops_before_it_commits(tmp_path: Path) -> None:
    """import-reben checks its lock right before meta.json (what makes the folder a checkpoint), reading it again:
    a takeover since its last heartbeat is not missed. (build_index does the same right before its switch.)"""
    from safetensors.torch import save_file

    from bigearth.models.fusion import create_timm
    from bigearth.models.reben import CONFIG_FILE, PREFIX, WEIGHTS_FILE, import_checkpoint

    src = tmp_path / "reben"
    src.mkdir()
    model = create_timm("resnet18", num_classes=19, in_chans=2, img_size=120)
    save_file({PREFIX + k: v.contiguous() for k, v in model.state_dict().items()}, str(src / WEIGHTS_FILE))
    config = {"timm_model_name": "resnet18", "channels": 2, "classes": 19, "network_type": 0}
    (src / CONFIG_FILE).write_text(json.dumps(config))
    out = tmp_path / "ckpt"
    lock = OutputLock(str(out), "import-reben", heartbeat_s=3600)  # no heartbeat before the commit
    with lock:
        breaker = OutputLock(str(out), "import-reben", break_lock=True)
        breaker.acquire()
        try:
            with pytest.raises(OutputLocked, match=r"taken over by import-reben on .* stops without committing"):
                import_checkpoint(str(src), str(out), before_commit=lock.verify)
            assert not (out / checkpoints.META_FILE).exists()  # not a checkpoint: nothing committed
        finally:
            breaker.release()
    with OutputLock(str(out), "import-reben") as again:  # a run that keeps its lock commits
        import_checkpoint(str(src), str(out), before_commit=again.verify)
    assert checkpoints.load(str(out)).spec.name == "s1"
