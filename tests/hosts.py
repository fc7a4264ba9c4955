"""A Ray cluster whose nodes are separate hosts on this machine: each node in its own Linux network namespace with its
own address, joined by veth pairs to a bridge (a switch) in the root namespace, as a rack of machines would be.

    with HostCluster(nodes=3) as c:          # the head on c.hosts[0], workers on the others
        c.run(0, ["python", "-c", "..."])      # a command on host 0 (attached to the cluster through its raylet)
        c.cut(2); c.heal(2)                    # host 2's link down (its cable pulled), then up again
        c.kill(1)                              # SIGKILL every process of host 1

Only addresses of the namespaces made here are used (a private /24 no interface of this machine holds); nothing else on
any network is contacted. Files are shared (one filesystem, as a cluster's shared volume). The hostname of every host
resolves to a loopback address (/etc/hosts), as on many Debian machines: what a multi-host run must cope with. Each
host has its own process table too (a PID namespace with its own /proc, with an init that reaps): Ray finds
the local raylet by scanning the processes, so a driver on a host attaches through that host's node, as on a
real machine, not through the head's.

Needs root and iproute2 (`ip netns`); `skip_reason()` says why the harness cannot run where it cannot.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from helpers import bench_module

procs = bench_module("procs")  # SIGKILL until gone and `ray start`'s environment, as bench/scale.py's
REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))
GCS_PORT = 6379  # every host is its own network namespace: default ports never collide
DASHBOARD_PORT = 8265
MARK = "@result "  # what a script on a host prints before its result: Ray's own warnings share the driver's stdout


def results(stdout: str) -> list[str]:
    """The lines a script printed as `print(MARK + ...)`, in order, without the mark; Ray's messages (a lagging raylet's
    heartbeats, a dead node) are printed to the same stdout, so the last line is not the script's."""
    return [line[len(MARK) :] for line in stdout.splitlines() if line.startswith(MARK)]


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def skip_reason() -> str | None:
    """Why separate hosts cannot be made here (not root, no iproute2, namespaces refused), or None."""
    if os.geteuid() != 0:
        return "separate hosts need root (ip netns)"
    if shutil.which("ip") is None:
        return "separate hosts need iproute2 (`ip`)"
    for tool in ("unshare", "nsenter"):
        if shutil.which(tool) is None:
            return f"separate hosts need util-linux's `{tool}` (a process table per host)"
    name = f"bprobe{os.getpid() % 100000}"
    made = _ip("netns", "add", name, check=False)
    if made.returncode != 0:
        return f"network namespaces cannot be made here: {made.stderr.strip()}"
    _ip("netns", "del", name, check=False)
    return None


def _free_subnet() -> str:
    """`10.213.k` for a k no address of this machine is in."""
    used = _ip("-4", "-o", "addr").stdout
    for k in random.sample(range(1, 255), 254):
        if f" 10.213.{k}." not in used:
            return f"10.213.{k}"
    raise RuntimeError("no free 10.213.x.0/24 subnet")


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


#: The first process of a host's PID namespace: it reaps what dies there (an orphan is its child), as an init does, so
#: an exited process never lingers as a zombie.
INIT = """
import os, time
while True:
    try:
        os.wait()
    except ChildProcessError:
        time.sleep(0.2)
"""


def _start_init(netns: str) -> int:
    """An init (`INIT`) as the first process of a new PID namespace (with its own /proc) in `netns`; its pid here."""
    isolated = ["unshare", "--pid", "--fork", "--mount", "--mount-proc"]
    unshare = subprocess.Popen(
        ["ip", "netns", "exec", netns, *isolated, sys.executable, "-c", INIT],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 10
    while time.time() < deadline:
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit() and _parent(int(proc.name)) == unshare.pid:
                return int(proc.name)
        time.sleep(0.05)
    unshare.kill()
    raise RuntimeError(f"the init of host {netns} did not start")


@dataclass
class Host:
    index: int
    netns: str
    address: str
    link: str  # the veth end on the switch (root namespace): cutting it is pulling the host's cable
    init: int = 0  # pid (here) of the host's init: the first process of its PID namespace


class HostCluster:
    """`nodes` hosts (one Ray node each, `cpus` CPUs): the head on host 0. `spare` more hosts are made but join no
    cluster until `join(i)` (a replacement machine)."""

    def __init__(
        self, nodes: int = 3, cpus: int = 2, spare: int = 0, object_store_mb: int = 200, death_after_s: int = 10
    ) -> None:
        """`death_after_s`: how long the head waits on a silent node before it counts it dead (Ray's health check,
        one probe a second; Ray's own default is about a minute, which only makes the tests wait)."""
        self.nodes, self.cpus, self.object_store = nodes, cpus, object_store_mb * 1024 * 1024
        self.tag = f"b{os.getpid() % 10000}{random.randrange(100):02d}"  # short: interface names are <= 15 chars
        self.bridge = f"{self.tag}br"
        self.subnet = _free_subnet()
        self.hosts = [
            Host(i, f"{self.tag}h{i}", f"{self.subnet}.{i + 2}", f"{self.tag}v{i}") for i in range(nodes + spare)
        ]
        self.tmp = tempfile.mkdtemp(prefix="hc", dir="/tmp")  # short: Ray's socket paths have a length limit
        pythonpath = os.pathsep.join(p for p in (str(REPO / "platform"), os.environ.get("PYTHONPATH")) if p)
        self.env = procs.ray_start_env(
            PYTHONPATH=pythonpath,
            RAY_health_check_period_ms="1000",
            RAY_health_check_timeout_ms="1000",
            RAY_health_check_failure_threshold=str(death_after_s),
        )
        self._made: list[str] = []

    # -- addresses
    @property
    def head(self) -> Host:
        return self.hosts[0]

    @property
    def address(self) -> str:
        return f"{self.head.address}:{GCS_PORT}"

    @property
    def dashboard(self) -> str:
        return f"http://{self.head.address}:{DASHBOARD_PORT}"

    # -- the network
    def _make_network(self) -> None:
        _ip("link", "add", self.bridge, "type", "bridge")
        self._made.append(self.bridge)
        _ip("addr", "add", f"{self.subnet}.1/24", "dev", self.bridge)  # the test process's own address on the switch
        _ip("link", "set", self.bridge, "up")
        for h in self.hosts:
            _ip("netns", "add", h.netns)
            self._made.append(h.netns)
            inner = f"{self.tag}i{h.index}"
            _ip("link", "add", h.link, "type", "veth", "peer", "name", inner)
            _ip("link", "set", inner, "netns", h.netns)
            _ip("link", "set", h.link, "master", self.bridge)
            _ip("link", "set", h.link, "up")
            _ip("-n", h.netns, "addr", "add", f"{h.address}/24", "dev", inner)
            _ip("-n", h.netns, "link", "set", inner, "up")
            _ip("-n", h.netns, "link", "set", "lo", "up")
            h.init = _start_init(h.netns)

    def cut(self, i: int) -> None:
        """Host i's link down: its packets go nowhere, its connections hang (no reset), as a pulled cable or a dead
        switch port."""
        _ip("link", "set", self.hosts[i].link, "down")

    def heal(self, i: int) -> None:
        _ip("link", "set", self.hosts[i].link, "up")

    def pids(self, i: int) -> list[int]:
        """Processes running on host i (in its namespace), but its init."""
        out = _ip("netns", "pids", self.hosts[i].netns, check=False).stdout
        unshare = _parent(self.hosts[i].init)
        return [int(p) for p in out.split() if int(p) not in (self.hosts[i].init, unshare)]

    def kill(self, i: int) -> None:
        """SIGKILL every process of host i (a machine that died), until none is left."""
        if not procs.kill_until_gone(lambda: self.pids(i), timeout=20):
            raise RuntimeError(f"host {self.hosts[i].address} still runs {self.pids(i)} after 20 s of SIGKILL")

    # -- commands on a host
    def command(self, i: int, args: Sequence[str]) -> list[str]:
        """`args` as run on host i: in its network, PID and mount (its /proc) namespaces."""
        return ["nsenter", f"--target={self.hosts[i].init}", "--net", "--pid", "--mount", f"--wd={REPO}", *args]

    def run(self, i: int, args: Sequence[str], timeout: float = 600, **kw: object) -> subprocess.CompletedProcess[str]:
        """A command on host i, waited for; output captured."""
        return subprocess.run(
            self.command(i, args), env=self.env, capture_output=True, text=True, timeout=timeout, cwd=REPO, **kw
        )  # type: ignore[call-overload]

    def popen(self, i: int, args: Sequence[str], log: Path, **kw: object) -> subprocess.Popen[bytes]:
        """A command on host i, started and left running, its output in `log`."""
        out = open(log, "wb")  # noqa: SIM115 (the child owns it)
        return subprocess.Popen(
            self.command(i, args), env=self.env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, **kw
        )  # type: ignore[call-overload]

    def python(self, i: int, code: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return self.run(i, [sys.executable, "-c", code], timeout=timeout)

    # -- Ray
    def _ray_start(self, i: int, args: list[str]) -> None:
        h = self.hosts[i]
        common = [
            f"--node-ip-address={h.address}",
            f"--num-cpus={self.cpus}",
            f"--object-store-memory={self.object_store}",
            f"--temp-dir={self.tmp}/n{i}",
            "--disable-usage-stats",
        ]
        done = self.run(i, [RAY, "start", *args, *common], timeout=180)
        if done.returncode != 0:
            raise RuntimeError(f"ray start on {h.address} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")

    def join(self, i: int) -> None:
        """Host i joins the cluster as a worker node."""
        self._ray_start(i, [f"--address={self.address}"])

    def alive_nodes(self) -> list[str]:
        """Addresses of the nodes the head counts alive (asked from the head's host)."""
        code = (
            f"import ray; ray.init(address='{self.address}', log_to_driver=False); "
            f"print({MARK!r} + ' '.join(sorted(n['NodeManagerAddress'] for n in ray.nodes() if n['Alive'])))"
        )
        out = self.python(0, code)
        if out.returncode != 0:
            raise RuntimeError(f"asking {self.address} for its nodes failed:\n{out.stderr[-2000:]}")
        said = results(out.stdout)
        if not said:
            raise RuntimeError(f"asking {self.address} for its nodes printed no result:\n{out.stdout[-2000:]}")
        return said[-1].split()

    def wait_nodes(self, addresses: Sequence[str], timeout: float = 90) -> None:
        """Until exactly `addresses` are alive."""
        deadline, seen = time.time() + timeout, None
        while time.time() < deadline:
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                seen = self.alive_nodes()
                if sorted(seen) == sorted(addresses):
                    return
            time.sleep(1)
        raise RuntimeError(f"the cluster at {self.address} has nodes {seen}, not {sorted(addresses)}")

    def __enter__(self) -> HostCluster:
        try:
            self._make_network()
            self._ray_start(
                0,
                [
                    "--head",
                    f"--port={GCS_PORT}",
                    "--include-dashboard=true",
                    "--dashboard-host=0.0.0.0",
                    f"--dashboard-port={DASHBOARD_PORT}",
                ],
            )
            for i in range(1, self.nodes):
                self.join(i)
            self.wait_nodes([h.address for h in self.hosts[: self.nodes]])
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for i, h in enumerate(self.hosts):
            if h.netns in self._made:
                with contextlib.suppress(RuntimeError):  # its init's death below takes the rest along
                    self.kill(i)
                if h.init:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(h.init, signal.SIGKILL)  # its PID namespace goes with it
        for name in reversed(self._made):
            if name == self.bridge:
                _ip("link", "del", name, check=False)
            else:
                _ip("netns", "del", name, check=False)  # its veth pair goes with it
        self._made.clear()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def job(self, *entrypoint: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
        """`ray job submit --working-dir <repo> -- <entrypoint>` from the head's host, waiting for the end."""
        cmd = [RAY, "job", "submit", "--address", self.dashboard, "--working-dir", str(REPO), "--", *entrypoint]
        return self.run(0, cmd, timeout=timeout)
