"""The processes of this machine, for the benchmarks and the test harness (bench/scale.py, tests/raycluster.py,
tests/hosts.py): the process table from /proc, a process tree, SIGKILL until a set of processes is gone, the
environment `ray start` runs in and its flags for a node's ports. Plain functions over /proc and signals: importing
this starts nothing."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path


def process_table() -> dict[int, tuple[int, bytes]]:
    """pid -> (parent pid, command line) of every process on the machine but this one."""
    table: dict[int, tuple[int, bytes]] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes()
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        table[int(proc.name)] = (ppid, cmd)
    return table


def descendants(roots: Iterable[int], table: dict[int, tuple[int, bytes]] | None = None) -> list[int]:
    """`roots` and every process below them (in `table`, default: the process table now), sorted."""
    table = process_table() if table is None else table
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    todo = list(roots)
    found = set(todo)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return sorted(found)


def kill_until_gone(pids: Callable[[], Iterable[int]], timeout: float = 10.0, interval: float = 0.5) -> bool:
    """SIGKILL every process `pids()` names, every `interval` s, until it names none (True) or `timeout` s of tries
    have passed (False: some are still there)."""
    for _ in range(round(timeout / interval)):
        left = list(pids())
        if not left:
            return True
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(interval)
    return False


def ray_port_flags(ports: Sequence[int]) -> list[str]:
    """`ray start` flags for the six ports a node listens on besides the GCS's and the client server's (node manager,
    object manager, dashboard agent HTTP and gRPC, metrics export, runtime-env agent), in that order."""
    nm, om, agent, agent_grpc, metrics, runtime_env = ports
    return [
        f"--node-manager-port={nm}",
        f"--object-manager-port={om}",
        f"--dashboard-agent-listen-port={agent}",
        f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--metrics-export-port={metrics}",
        f"--runtime-env-agent-port={runtime_env}",
    ]


def ray_start_env(**extra: str) -> dict[str, str]:
    """The environment a `ray start` of our own runs in: this one, with this interpreter's folder first on PATH
    (nodes run this environment's python, as a cluster's nodes run their image's), no auth token, no usage stats,
    `extra` added, and no RAY_ADDRESS (the new cluster is not attached to another)."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "PATH": path, **extra}
    env.pop("RAY_ADDRESS", None)
    return env


def free_ports(n: int) -> list[int]:
    """`n` distinct TCP ports free on 127.0.0.1 now (bound together, then released)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()
