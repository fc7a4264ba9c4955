"""Object storage for real: synthesise to, ingest from and to, and train-read from a SeaweedFS S3 server."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from bigearth.core.storage import open_fs
from bigearth.ingest.job import ingest
from bigearth.input.raydata import iter_torch, open_split
from bigearth.shards.format import Manifest
from bigearth.synth.archive import synthesize

pytestmark = [pytest.mark.s3, pytest.mark.usefixtures("ray_local")]


@pytest.fixture(scope="module")
def bucket(s3) -> str:  # type: ignore[no-untyped-def]
    return s3.make_bucket("bigearth-test")


def test_ingest_s3_to_s3_matches_a_local_ingest(s3, bucket: str, synth_v2: Path, shards_v2: Path) -> None:  # type: ignore[no-untyped-def]
    storage = s3.storage_options()
    fs = s3.fs()
    fs.put(str(synth_v2), f"{bucket}/archive", recursive=True)
    m = ingest(f"s3://{bucket}/archive", f"s3://{bucket}/shards", shard_size=30, storage=storage)
    local = Manifest.load(*open_fs(str(shards_v2)))
    assert (m.pairs, m.splits, m.excluded, m.quarantined_pairs) == (local.pairs, local.splits, local.excluded, 0)
    assert [s.path for s in m.shards] == [s.path for s in local.shards]
    for s in m.shards:
        with fs.open(f"{bucket}/shards/{s.path}", "rb") as f:
            remote = pq.read_table(f)
        assert remote.equals(pq.read_table(shards_v2 / s.path))  # byte-for-byte the same rows
    batches = list(iter_torch(open_split(f"s3://{bucket}/shards", "test", storage=storage), 32))
    assert sum(len(b["patch_id"]) for b in batches) == m.splits["test"]


def test_synth_and_job_entrypoint_over_s3(s3, bucket: str) -> None:  # type: ignore[no-untyped-def]
    """`python jobs/ingest.py` as `ray job submit` runs it: S3 settings from the environment only."""
    import ray

    storage = s3.storage_options()
    synthesize(f"s3://{bucket}/v1archive", layout="v1", pairs=30, seed=11, storage=storage, progress=False)
    env = {**os.environ, **s3.env(), "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [
            sys.executable,
            "jobs/ingest.py",
            "--archive",
            f"s3://{bucket}/v1archive",
            "--out",
            f"s3://{bucket}/v1shards",
            "--lists",
            f"s3://{bucket}/v1archive/lists",
            "--shard-size",
            "10",
        ],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ingest: wrote" in done.stdout
    m = Manifest.load(*open_fs(f"s3://{bucket}/v1shards", storage))
    assert m.pairs > 0 and m.pairs + sum(m.excluded.values()) == 30 and m.quarantined_pairs == 0
    batch = next(iter(iter_torch(open_split(f"s3://{bucket}/v1shards", "train", storage=storage), 4)))
    assert batch["labels"].shape[1] == 19 and np.isfinite(batch["s1"].numpy()).all()


def test_wrong_credentials_fail_with_a_clear_error(s3, bucket: str) -> None:  # type: ignore[no-untyped-def]
    from bigearth.core.storage import StorageOptions

    bad = StorageOptions(endpoint_url=s3.endpoint, key="nobody", secret="wrong")
    with pytest.raises((PermissionError, OSError)):
        ingest(f"s3://{bucket}/archive", f"s3://{bucket}/nope", storage=bad)


def test_training_checkpoints_and_evaluation_on_s3(s3, bucket: str, shards_v2: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from bigearth.evaluation.classification import evaluate
    from bigearth.models.checkpoints import find_best, load
    from bigearth.training.config import load_config
    from bigearth.training.trainer import train
    from helpers import REPO

    storage = s3.storage_options()
    cfg = load_config(REPO / "configs" / "tiny-cpu.yaml", ["optim.epochs=1", "data.batch_size=16"])
    train(cfg, str(shards_v2), f"s3://{bucket}/runs", "on-s3", storage)
    fs = s3.fs()
    assert fs.cat(f"{bucket}/runs/on-s3/metrics.jsonl").count(b"\n") == 1
    best = find_best(f"s3://{bucket}/runs/on-s3", storage=storage)
    assert best.startswith(f"s3://{bucket}/runs/on-s3/checkpoint_")
    meta = load(best, storage=storage).meta
    assert meta["model"]["name"] == "tiny"
    m = evaluate(f"s3://{bucket}/runs/on-s3", str(shards_v2), "test", str(tmp_path / "eval"), storage)
    assert m["checkpoint"] == best and m["samples"] > 0


def test_no_key_means_the_aws_credential_chain_in_both_stacks(  # type: ignore[no-untyped-def]
    s3, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no key anywhere, s3fs and pyarrow each resolve the standard chain (here: the shared credentials file and
    AWS_PROFILE); a wrong profile fails in both."""
    import dataclasses

    from bigearth.core.storage import BlobReader, StorageAccessDenied, StorageOptions

    s3.fs().pipe(f"{bucket}/chain/x.bin", b"through the chain")
    creds = tmp_path / "credentials"
    creds.write_text(
        f"[default]\naws_access_key_id = {s3.access_key}\naws_secret_access_key = {s3.secret_key}\n"
        f"[stale]\naws_access_key_id = {s3.access_key}\naws_secret_access_key = not-the-secret\n"
    )
    (tmp_path / "config").write_text("")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")

    def read_both() -> tuple[bytes, bytes | BaseException]:
        opts = StorageOptions.from_env(endpoint_url=s3.endpoint, region=s3.region)
        assert opts.key is None and opts.token is None
        fs, root = open_fs(f"s3://{bucket}/chain", dataclasses.replace(opts, extra={"skip_instance_cache": True}))
        got = BlobReader(f"s3://{bucket}/chain", opts).read_many([f"{root}/x.bin"])[f"{root}/x.bin"]
        return fs.cat(f"{root}/x.bin"), got

    assert read_both() == (b"through the chain", b"through the chain")
    monkeypatch.setenv("AWS_PROFILE", "stale")
    with pytest.raises(PermissionError):
        read_both()
    opts = StorageOptions.from_env(endpoint_url=s3.endpoint, region=s3.region)
    got = BlobReader(f"s3://{bucket}/chain", opts).read_many([f"{bucket}/chain/x.bin"])[f"{bucket}/chain/x.bin"]
    assert isinstance(got, StorageAccessDenied), got  # refused at once (not retried), not "missing"


def test_temporary_credentials_with_a_session_token_in_both_stacks(  # type: ignore[no-untyped-def]
    s3, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real STS credentials from the server: AWS_SESSION_TOKEN reaches s3fs and pyarrow through StorageOptions; the
    same temporary key without its token, or with another token, is refused by both."""
    import dataclasses

    from bigearth.core.storage import BlobReader, StorageAccessDenied, StorageOptions

    creds = s3.assume_role()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", creds["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", creds["SecretAccessKey"])
    monkeypatch.setenv("AWS_SESSION_TOKEN", creds["SessionToken"])
    opts = StorageOptions.from_env(endpoint_url=s3.endpoint, region=s3.region)
    assert opts.token == creds["SessionToken"]
    fs, root = open_fs(f"s3://{bucket}/temporary", dataclasses.replace(opts, extra={"skip_instance_cache": True}))
    fs.pipe(f"{root}/x.bin", b"written with a session token")
    got = BlobReader(f"s3://{bucket}/temporary", opts).read_many([f"{root}/x.bin"])
    assert got[f"{root}/x.bin"] == b"written with a session token"

    other = s3.assume_role()["SessionToken"]
    for token in (None, other):
        bad = dataclasses.replace(opts, token=token, extra={"skip_instance_cache": True})
        fs, root = open_fs(f"s3://{bucket}/temporary", bad)
        with pytest.raises(PermissionError):
            fs.cat(f"{root}/x.bin")
        refused = BlobReader(f"s3://{bucket}/temporary", bad).read_many([f"{root}/x.bin"])[f"{root}/x.bin"]
        assert isinstance(refused, StorageAccessDenied), refused  # at once: refused credentials are not retried


def _crash_after(  # type: ignore[no-untyped-def]
    server, reports: Path, shards: int, then_restart_after: float | None, crashed: list[float]
) -> threading.Thread:
    """A thread that SIGKILLs the S3 server once `shards` shard reports exist (noting when in `crashed`), and
    restarts it after a pause."""

    def run() -> None:
        deadline = time.monotonic() + 300
        while len(list(reports.glob("**/*.json"))) < shards and time.monotonic() < deadline:
            time.sleep(0.05)
        server.crash()
        crashed.append(time.monotonic())
        if then_restart_after is not None:
            time.sleep(then_restart_after)
            server.restart()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _ids_once(out: Path, expected: list[str]) -> None:
    m = Manifest.load(*open_fs(str(out)))
    ids = [i for s in m.shards for i in pq.read_table(out / s.path, columns=["patch_id"]).column(0).to_pylist()]
    assert sorted(ids) == sorted(expected) and m.quarantined_pairs == 0  # every pair exactly once, none quarantined


def test_an_ingest_survives_the_s3_server_restarting_and_resumes_after_a_long_outage(
    synth_v2: Path, shards_v2: Path, tmp_path: Path
) -> None:
    """The server is SIGKILLed in the middle of an ingest reading from it. Back within seconds: the reads retry
    and the ingest completes. Down for longer than `retry_s`: the ingest stops with an error that says to re-run,
    and the re-run, once the server is back, ends with every pair exactly once."""
    import dataclasses

    from bigearth.core.storage import StorageUnavailable
    from seaweed import SeaweedS3

    expected = read_columns_ids(shards_v2)
    with SeaweedS3() as server:
        bucket = server.make_bucket("restarts")
        server.fs().put(str(synth_v2), f"{bucket}/archive", recursive=True)
        archive = f"s3://{bucket}/archive"
        storage = dataclasses.replace(server.storage_options(), retry_s=60.0)

        out, crashed = tmp_path / "survived", []
        crash = _crash_after(server, out / "_ingest" / "reports", 2, then_restart_after=3.0, crashed=crashed)
        ingest(archive, str(out), shard_size=10, storage=storage, concurrency=1, progress=False)
        ended = time.monotonic()
        crash.join(60)
        assert crashed and crashed[0] < ended  # the server really went down while the ingest ran
        assert len(list((out / "_ingest" / "reports").glob("**/*.json"))) == 12
        _ids_once(out, expected)

        out = tmp_path / "resumed"
        crash = _crash_after(server, out / "_ingest" / "reports", 2, then_restart_after=None, crashed=[])
        impatient = dataclasses.replace(storage, retry_s=1.0)
        with pytest.raises(StorageUnavailable, match="re-run the same command to resume"):
            ingest(archive, str(out), shard_size=10, storage=impatient, concurrency=1, progress=False)
        crash.join(60)
        done_before = len(list((out / "_ingest" / "reports").glob("**/*.json")))
        assert 2 <= done_before < 12
        server.restart()
        ingest(archive, str(out), shard_size=10, storage=storage, concurrency=1, progress=False)
        _ids_once(out, expected)


def read_columns_ids(shards: Path) -> list[str]:
    from bigearth.input.raydata import read_columns

    return list(read_columns(str(shards), ["patch_id"]).column(0).to_pylist())


def test_s3_secrets_never_travel_in_ray_task_arguments(s3, bucket: str) -> None:  # type: ignore[no-untyped-def]
    """Ray keeps a task's and an actor's arguments (serialised by its own serialiser, small ones inlined in the task
    spec the raylets and the GCS hold): the secret, the session token and a tracking URI's password are not in them,
    only references to the object store, and the task still reads and writes the store with them (fresh STS
    credentials, in no process's environment)."""
    import ray

    from bigearth.core.secrets import Sealed
    from bigearth.core.storage import BlobReader, StorageOptions, portable_arrow_filesystem

    creds = s3.assume_role()
    opts = StorageOptions(
        endpoint_url=s3.endpoint,
        region=s3.region,
        key=creds["AccessKeyId"],
        secret=creds["SecretAccessKey"],
        token=creds["SessionToken"],
    )
    url = f"s3://{bucket}/sealed"
    fs, root = open_fs(url, opts)
    fs.pipe(f"{root}/x.bin", b"read through sealed credentials")
    afs, _ = portable_arrow_filesystem(url, opts)  # what Ray Train's RunConfig carries to its actors
    tracking = {"uri": Sealed("https://alice:tracking-Pw0@mlflow.example"), "run_id": "r"}
    secrets = [creds["SecretAccessKey"].encode(), creds["SessionToken"].encode(), b"tracking-Pw0"]

    context = ray._private.worker.global_worker.get_serialization_context()
    args = context.serialize({"storage": opts, "filesystem": afs, "tracking": tracking}).to_bytes()
    assert not [s for s in secrets if s in args]
    assert creds["AccessKeyId"].encode() in args  # the key id is no secret (it names the credentials)

    @ray.remote(num_cpus=0)
    def use(storage: StorageOptions, filesystem: object, target: dict[str, object]) -> tuple[object, ...]:
        assert os.environ.get("AWS_SECRET_ACCESS_KEY") != storage.secret_text()  # not from the environment
        got = BlobReader(url, storage).read_many([f"{root}/x.bin"])[f"{root}/x.bin"]
        with filesystem.open_output_stream(f"{root}/y.bin") as f:  # type: ignore[attr-defined]
            f.write(b"written by a task")
        return got, isinstance(storage.secret, Sealed), target["uri"].reveal()  # type: ignore[attr-defined]

    @ray.remote(num_cpus=0)
    class Reader:  # an actor's constructor arguments (Ray Data's fn_constructor_kwargs) live as long as it does
        def __init__(self, storage: StorageOptions) -> None:
            self.storage = storage

        def read(self) -> object:
            return BlobReader(url, self.storage).read_many([f"{root}/y.bin"])[f"{root}/y.bin"]

    got, sealed, uri = ray.get(use.remote(opts, afs, tracking))
    assert got == b"read through sealed credentials" and sealed and uri == "https://alice:tracking-Pw0@mlflow.example"
    assert ray.get(Reader.remote(opts).read.remote()) == b"written by a task"
