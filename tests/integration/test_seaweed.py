"""The SeaweedFS S3 fixture itself: a real server that s3fs, botocore and bigearth.core.storage can talk to."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

try:
    from seaweed import SeaweedS3, find_weed
except ImportError:  # tests/ imported as a package
    from tests.seaweed import SeaweedS3, find_weed

s3fs = pytest.importorskip("s3fs")

pytestmark = pytest.mark.s3

try:
    find_weed()
except FileNotFoundError as e:  # pragma: no cover - dev extra not installed
    pytest.skip(str(e), allow_module_level=True)


def _pid_alive(pid: int) -> bool:
    try:
        import psutil  # type: ignore[import-untyped]
    except ImportError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        # A zombie still answers kill(0); it is dead for our purposes.
        try:
            return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
        except OSError:
            return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _processes_mentioning(text: str) -> list[int]:
    """PIDs whose command line contains `text` (e.g. a server's data dir)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        if text in cmdline and _pid_alive(int(proc.name)):
            found.append(int(proc.name))
    return found


def _wait_until(cond, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.1)
    return cond()


@pytest.fixture(scope="module")
def s3():
    with SeaweedS3() as server:
        yield server


@pytest.fixture(scope="module")
def bucket(s3):
    return s3.make_bucket("bigearth-test")


def test_server_is_up_on_loopback(s3):
    assert s3.running
    assert s3.endpoint.startswith("http://127.0.0.1:")
    ports = set(s3.ports.values())
    assert len(ports) == len(s3.ports) == 8
    assert not ports & {6379, 8265, 10001}
    assert s3.startup_seconds is not None and s3.startup_seconds < 60


def test_make_bucket(s3):
    name = s3.make_bucket("made-bucket")
    assert name == "made-bucket"
    assert s3.make_bucket("made-bucket") == "made-bucket"  # exist_ok
    fs = s3.fs()
    assert "made-bucket" in fs.ls("")
    assert fs.exists("made-bucket")


def test_s3fs_mkdir_creates_bucket(s3):
    fs = s3.fs()
    fs.mkdir("mkdir-bucket")
    assert "mkdir-bucket" in fs.ls("")


def test_pipe_cat_roundtrip(s3, bucket):
    fs = s3.fs()
    small = b"hello seaweed"
    big = os.urandom(9 * 1024 * 1024 + 17)  # > filer.maxMB (4): stored as several chunks
    fs.pipe(f"{bucket}/rt/small.bin", small)
    fs.pipe(f"{bucket}/rt/big.bin", big)
    fs.pipe(f"{bucket}/rt/empty.bin", b"")
    assert fs.cat(f"{bucket}/rt/small.bin") == small
    assert fs.cat(f"{bucket}/rt/big.bin") == big
    assert fs.cat(f"{bucket}/rt/empty.bin") == b""
    assert fs.cat_file(f"{bucket}/rt/big.bin", start=5, end=25) == big[5:25]
    assert fs.size(f"{bucket}/rt/big.bin") == len(big)
    # A fresh filesystem (no listing cache) sees the same bytes.
    assert s3.fs().cat(f"{bucket}/rt/small.bin") == small


def test_multipart_upload(s3, bucket):
    fs = s3.fs()
    data = os.urandom(12 * 1024 * 1024)
    with fs.open(f"{bucket}/mp/data.bin", "wb", block_size=5 * 1024 * 1024) as f:  # 3 parts
        for i in range(0, len(data), 1024 * 1024):
            f.write(data[i : i + 1024 * 1024])
    assert fs.cat(f"{bucket}/mp/data.bin") == data


def test_ls_lists_objects(s3, bucket):
    fs = s3.fs()
    keys = {f"{bucket}/ls/a.bin": b"a", f"{bucket}/ls/b.bin": b"bb", f"{bucket}/ls/sub/c.bin": b"ccc"}
    fs.pipe(keys)
    fresh = s3.fs()
    assert sorted(fresh.ls(f"{bucket}/ls")) == [f"{bucket}/ls/a.bin", f"{bucket}/ls/b.bin", f"{bucket}/ls/sub"]
    detail = {e["name"]: e for e in fresh.ls(f"{bucket}/ls", detail=True)}
    assert detail[f"{bucket}/ls/b.bin"]["size"] == 2
    assert detail[f"{bucket}/ls/b.bin"]["type"] == "file"
    assert detail[f"{bucket}/ls/sub"]["type"] == "directory"
    assert sorted(fresh.find(f"{bucket}/ls")) == sorted(keys)
    assert sorted(fresh.glob(f"{bucket}/ls/*.bin")) == [f"{bucket}/ls/a.bin", f"{bucket}/ls/b.bin"]


def test_cat_many_returns_file_not_found_for_missing_key(s3, bucket):
    fs = s3.fs()
    fs.pipe(f"{bucket}/many/present.bin", b"here")
    out = fs.cat([f"{bucket}/many/present.bin", f"{bucket}/many/missing.bin"], on_error="return")
    assert out[f"{bucket}/many/present.bin"] == b"here"
    assert isinstance(out[f"{bucket}/many/missing.bin"], FileNotFoundError)
    with pytest.raises(FileNotFoundError):
        fs.cat(f"{bucket}/many/missing.bin")
    assert not fs.exists(f"{bucket}/many/missing.bin")


def test_rm(s3, bucket):
    fs = s3.fs()
    fs.pipe(f"{bucket}/rm/x.bin", b"x")
    fs.rm(f"{bucket}/rm/x.bin")
    assert not s3.fs().exists(f"{bucket}/rm/x.bin")


def test_credentials_are_checked(s3, bucket):
    s3.fs().pipe(f"{bucket}/auth/x.bin", b"x")
    with pytest.raises(PermissionError):
        s3.fs(secret="wrong-secret").cat(f"{bucket}/auth/x.bin")
    with pytest.raises(PermissionError):
        s3.fs(key="unknown", secret="unknown").cat(f"{bucket}/auth/x.bin")
    with pytest.raises(PermissionError):
        s3.fs(anon=True, key=None, secret=None).cat(f"{bucket}/auth/x.bin")


def test_bigearth_open_fs(s3, bucket, monkeypatch):
    from bigearth.core import storage

    for var in ("AWS_DEFAULT_REGION", "AWS_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "BIGEARTH_S3_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    opts = storage.StorageOptions(endpoint_url=s3.endpoint, key=s3.access_key, secret=s3.secret_key)
    fs, root = storage.open_fs(f"s3://{bucket}/x", opts)
    assert root == f"{bucket}/x"
    fs.pipe(storage.join(root, "part-0.bin"), b"shard bytes")
    assert fs.cat(storage.join(root, "part-0.bin")) == b"shard bytes"
    assert s3.fs().ls(f"{bucket}/x") == [f"{bucket}/x/part-0.bin"]
    assert storage.to_url(fs, root) == f"s3://{bucket}/x"
    # The helper builds the same options.
    fs2, root2 = storage.open_fs(f"s3://{bucket}/x/", s3.storage_options())
    assert root2 == f"{bucket}/x"
    assert fs2.cat(storage.join(root2, "part-0.bin")) == b"shard bytes"


def test_env_reaches_server_from_subprocess(s3, bucket):
    s3.fs().pipe(f"{bucket}/env/x.bin", b"from parent")
    code = textwrap.dedent(
        f"""
        import json, s3fs
        from bigearth.core import storage
        bare = s3fs.S3FileSystem()  # botocore picks up AWS_ENDPOINT_URL + AWS_* credentials
        fs, root = storage.open_fs("s3://{bucket}/env", storage.StorageOptions.from_env())
        fs.pipe(storage.join(root, "y.bin"), b"from child")
        print(json.dumps({{"bare": bare.cat("{bucket}/env/x.bin").decode(), "ls": sorted(fs.ls(root))}}))
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "BIGEARTH_S3_"))}
    env.update(s3.env())
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"bare": "from parent", "ls": [f"{bucket}/env/x.bin", f"{bucket}/env/y.bin"]}
    assert s3.fs().cat(f"{bucket}/env/y.bin") == b"from child"


def test_env_contents(s3):
    env = s3.env()
    assert env["AWS_ENDPOINT_URL"] == env["BIGEARTH_S3_ENDPOINT"] == s3.endpoint
    assert env["AWS_ACCESS_KEY_ID"] == "bigearth"
    assert env["AWS_SECRET_ACCESS_KEY"] == "bigearth-secret"
    assert env["AWS_DEFAULT_REGION"]


def test_exit_leaves_nothing_behind():
    with SeaweedS3() as server:
        pid = server.pid
        data_dir = server.data_dir
        sockets = list(server._sockets)
        assert pid is not None and _pid_alive(pid)
        assert data_dir is not None and data_dir.is_dir()
        server.make_bucket("short-lived")
        server.fs().pipe("short-lived/x", b"x")
    assert not _pid_alive(pid)
    assert not server.running
    assert not data_dir.exists()
    assert not _processes_mentioning(str(data_dir))  # neither weed nor its watchdog
    assert not [p for p in sockets if os.path.exists(p)]
    server.stop()  # idempotent


def test_exit_after_failing_test_body_leaves_nothing_behind():
    with pytest.raises(ZeroDivisionError), SeaweedS3() as server:
        pid, data_dir = server.pid, server.data_dir
        1 / 0  # noqa: B018
    assert pid is not None and not _pid_alive(pid)
    assert data_dir is not None and not data_dir.exists()


def test_watchdog_cleans_up_when_owner_is_killed(tmp_path):
    """The owning process dies without running __exit__/atexit: the watchdog still kills weed."""
    code = textwrap.dedent(
        f"""
        import json, os, sys
        sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})  # tests/, where seaweed.py is
        from seaweed import SeaweedS3
        s = SeaweedS3().start()
        print(json.dumps({{"pid": s.pid, "dir": str(s.data_dir)}}), flush=True)
        os._exit(0)  # no atexit, no __exit__
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert _wait_until(lambda: not _pid_alive(info["pid"]), timeout=15), "weed survived its owner"
    assert _wait_until(lambda: not os.path.exists(info["dir"]), timeout=15)
    assert _wait_until(lambda: not _processes_mentioning(info["dir"]), timeout=15)


def test_startup_failure_is_reported_and_cleaned_up(tmp_path):
    server = SeaweedS3(extra_args=("-no-such-flag",), startup_timeout=20, base_dir=tmp_path)
    with pytest.raises(RuntimeError, match="SeaweedFS exited"):
        server.start()
    assert not server.running
    assert list(tmp_path.iterdir()) == []
    assert not _processes_mentioning(str(tmp_path))


def test_port_clash_is_retried_with_new_ports(monkeypatch):
    """A port taken between probing and weed's bind makes weed exit; start() retries on fresh ports."""
    import socket

    seaweed_module = sys.modules[SeaweedS3.__module__]
    real_reserve = seaweed_module._reserve_ports
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()

    class _Taken:  # looks like a held probe socket, but the port stays bound by `busy`
        def getsockname(self):
            return busy.getsockname()

        def close(self):
            pass

    calls = []

    def reserve(n):
        calls.append(n)
        held = real_reserve(n)
        if len(calls) == 1:
            held[1].close()  # the volume server port: weed exits at once with "address already in use"
            held[1] = _Taken()
        return held

    monkeypatch.setattr(seaweed_module, "_reserve_ports", reserve)
    try:
        with SeaweedS3() as server:
            assert len(calls) == 2
            assert busy.getsockname()[1] not in server.ports.values()
            server.make_bucket("after-clash")
            server.fs().pipe("after-clash/x", b"x")
            assert server.fs().cat("after-clash/x") == b"x"
            data_dir = server.data_dir
    finally:
        busy.close()
    assert data_dir is not None and not data_dir.exists()
    assert not _processes_mentioning(str(data_dir))
