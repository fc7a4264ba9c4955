"""A real multi-node Ray cluster on this machine: a head (with the dashboard, for `ray job submit`) and worker
nodes started with `ray start` on distinct free ports and their own temp dir, stopped without touching any other
Ray on the machine (only processes that mention our temp dir are killed)."""

from __future__ import annotations

import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from helpers import bench_module, free_ports

procs = bench_module("procs")  # the process table, trees, kills and `ray start`'s environment bench/scale.py uses too
RAY = str(Path(sys.executable).with_name("ray"))


_TAKEN: set[int] = set()


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _window() -> tuple[int, int]:
    """Where this process's worker port ranges come from: 20000-32000, or its own slice of it under pytest-xdist
    (worker n of N: the n-th of N slices), so two xdist workers' clusters never share a port range."""
    n, count = os.environ.get("PYTEST_XDIST_WORKER"), os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if not (n and count):
        return 20000, 32000
    width = 12000 // int(count)
    lo = 20000 + int(n.removeprefix("gw")) * width
    return lo, lo + width


def worker_port_range(size: int = 400) -> tuple[int, int]:
    """A range of free ports below the ephemeral range (where `free_ports` picks), clear of Ray's default worker
    ports (10002-19999, used by the test session's own Ray), of ranges given out before and of other xdist workers'."""
    rng = random.Random()
    start, end = _window()
    for _ in range(200):
        lo = rng.randrange(start, end - size)
        ports = range(lo, lo + size)
        if not _TAKEN.intersection(ports) and all(_bindable(p) for p in ports):
            _TAKEN.update(ports)
            return lo, lo + size - 1
    raise RuntimeError("no free range of worker ports found")


def _node_args() -> list[str]:
    ports = free_ports(6)
    lo, hi = worker_port_range()
    return [
        *procs.ray_port_flags(ports),
        f"--min-worker-port={lo}",
        f"--max-worker-port={hi}",
    ]


def matching(pids: list[int], *needles: str) -> list[int]:
    """Those of `pids` still running whose command line holds every one of `needles`."""
    out = []
    for pid in pids:
        try:
            cmd = (Path("/proc") / str(pid) / "cmdline").read_bytes()
        except OSError:
            continue
        if all(n.encode() in cmd for n in needles):
            out.append(pid)
    return out


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


# Not ray.cluster_utils.Cluster: its users submit jobs / run subprocesses that attach by address and SIGKILL the
# cluster, and Cluster (same process as the session's `ray_local` driver) rewrites the address record and resets
# this process's internal KV on shutdown.
class LocalCluster:
    def __init__(self, nodes: int = 2, cpus_per_node: int = 2) -> None:
        self.nodes, self.cpus = nodes, cpus_per_node
        self.tmp = tempfile.mkdtemp(prefix="rc", dir="/tmp")  # short: Ray's socket paths have a length limit
        self.env = procs.ray_start_env()  # job entrypoints say `python`: this environment's, first on PATH
        self.gcs_port, self.dashboard_port, self.client_port = free_ports(3)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _run(self, args: list[str]) -> None:
        done = subprocess.run([RAY, "start", *args], env=self.env, capture_output=True, text=True, timeout=180)
        if done.returncode != 0:
            raise RuntimeError(f"ray start {' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")

    def __enter__(self) -> LocalCluster:
        try:
            self._run(
                [
                    "--head",
                    f"--port={self.gcs_port}",
                    "--node-ip-address=127.0.0.1",
                    f"--temp-dir={self.tmp}",
                    f"--num-cpus={self.cpus}",
                    "--include-dashboard=true",
                    "--dashboard-host=127.0.0.1",
                    f"--dashboard-port={self.dashboard_port}",
                    f"--ray-client-server-port={self.client_port}",
                    "--disable-usage-stats",
                    *_node_args(),
                ]
            )
            for _ in range(self.nodes - 1):
                self._run(
                    [
                        f"--address={self.address}",
                        "--node-ip-address=127.0.0.1",
                        f"--num-cpus={self.cpus}",
                        "--disable-usage-stats",
                        *_node_args(),
                    ]
                )
            self._wait_for_nodes()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_for_nodes(self, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        code = (
            f"import ray; ray.init(address='{self.address}', log_to_driver=False); "
            "print(len([n for n in ray.nodes() if n['Alive']]))"
        )
        while time.time() < deadline:
            out = subprocess.run([sys.executable, "-c", code], env=self.env, capture_output=True, text=True)
            if out.returncode == 0 and out.stdout.strip().splitlines()[-1:] == [str(self.nodes)]:
                return
            time.sleep(1)
        raise RuntimeError(f"the cluster at {self.address} did not reach {self.nodes} nodes")

    def pids(self) -> list[int]:
        """Processes of this cluster: those naming its temp dir or its GCS port, and all their descendants (the
        agents rename themselves `ray::DashboardAgent`, so only their parentage gives them away)."""
        port = re.compile(rb":%d(?!\d)" % self.gcs_port)  # this port, not one it is a prefix of (another cluster's)
        table = procs.process_table()
        mine = [pid for pid, (_, cmd) in table.items() if self.tmp.encode() in cmd or port.search(cmd)]
        return procs.descendants(mine, table)

    def processes(self, *needles: str) -> list[int]:
        """The processes of this cluster whose command line holds every one of `needles`."""
        return matching(self.pids(), *needles)

    def stop(self) -> None:
        procs.kill_until_gone(self.pids)  # until every process of the cluster is gone (at most ~10 s)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def job(self, *entrypoint: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
        """`ray job submit --working-dir <repo> -- <entrypoint>`, waiting for the end."""
        repo = Path(__file__).resolve().parents[1]
        cmd = [RAY, "job", "submit", "--address", self.dashboard, "--working-dir", str(repo), "--", *entrypoint]
        return subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout, cwd=repo)
