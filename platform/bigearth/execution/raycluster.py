"""Connecting to Ray: the cluster a job was submitted to, or a local one started on demand, and never a hang.

`ray.init` retries an unreachable GCS for ever (measured: still waiting after 200 s for a closed port), and a
driver whose cluster is torn down under it can wait on tasks that no node will run. So, before attaching, the
GCS address (`RAY_ADDRESS`, or the record of the last `ray start` in `$RAY_TMPDIR/ray_current_cluster`) is probed:
an explicit address that does not answer within `PROBE_S` is an error naming it; a stale record is reported and a
local Ray is started instead. Once attached, a watchdog thread probes the GCS every few seconds (every second once
it is silent); when it has not answered for `LOST_AFTER_S` since its last answer, it logs what happened and what to
do. In a command (`bigearth ...`, `jobs/*.py`: they call `arm()`) it also interrupts the main thread (a
`KeyboardInterrupt`, which `bigearth` turns into that message), and exits with status 75 if the cluster is still
silent `EXIT_AFTER_S` (10 s) later; a library caller (a notebook, a service embedding bigearth) only gets the log.
Ray Client (`ray://`) connections are not watched.
`BIGEARTH_RAY_PROBE_S` and `BIGEARTH_RAY_LOST_AFTER_S` change the two waits.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
from typing import Any

log = logging.getLogger(__name__)

PROBE_S = float(os.environ.get("BIGEARTH_RAY_PROBE_S", 15))  # how long an address may take to answer
LOST_AFTER_S = float(os.environ.get("BIGEARTH_RAY_LOST_AFTER_S", 30))  # silence before the command stops
EXIT_CODE = 75  # EX_TEMPFAIL: try again once the cluster is back
EXIT_AFTER_S = 10.0  # after the interrupt: the process exits if a wait in Ray's native code still holds it
SILENT_EVERY_S = 1.0  # probe interval once the GCS has stopped answering

#: Set by the watchdog when the cluster went away: why, and what to do.
LOST: str | None = None
_ARMED = False  # set by the commands: interrupt and exit on a lost cluster (library callers only get the log)


def arm() -> None:
    """Let the watchdog stop this process when its cluster is lost (for command-line entry points only)."""
    global _ARMED
    _ARMED = True


_watchdog: threading.Thread | None = None
_watched: str | None = None
_main_thread_caller = True


class ClusterUnreachable(RuntimeError):
    """The Ray cluster to attach to does not answer."""


def _answers(address: str, timeout: float = 2.0) -> bool:
    host, _, port = address.rpartition(":")
    host = host.strip("[]")  # Ray writes IPv6 addresses as [::1]:6379
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def _probe(address: str, within: float) -> bool:
    deadline = time.monotonic() + within
    while True:
        if _answers(address):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.5)


def _target(kwargs: dict[str, Any]) -> tuple[str | None, str]:
    """The GCS address a bare `ray.init` would attach to, and where it comes from."""
    from ray._private.utils import read_ray_address

    given = kwargs.get("address")
    if given in (None, "auto") and os.environ.get("RAY_ADDRESS"):  # as ray.init: the variable wins over these
        given, source = os.environ["RAY_ADDRESS"], "RAY_ADDRESS"
    else:
        source = "the address given"
    if given == "local":
        return None, "local"
    if given and given != "auto":
        return given, source
    recorded = read_ray_address(kwargs.get("_temp_dir"))
    if recorded:
        return recorded, "record"
    return None, "local"


def ensure_ray(num_cpus: int | None = None, **kwargs: Any) -> None:
    """Use the running Ray (job submission sets RAY_ADDRESS) or start a local one.

    A local start disables token auth (`RAY_AUTH_MODE=disabled`) unless the caller chose otherwise, so that more
    nodes can join a laptop cluster with `ray start --address`.
    """
    import ray

    if ray.is_initialized():
        return
    address, source = _target(kwargs)
    client = address is not None and "://" in address  # ray://, or another client builder: Ray checks those
    if address is not None and not client and not _probe(address, 1.0 if source == "record" else PROBE_S):
        if source == "record":
            from ray._private.utils import get_ray_address_file

            log.warning(
                "the last `ray start` cluster (%s, recorded in %s) does not answer: starting a local Ray instead",
                address,
                get_ray_address_file(None),
            )
            kwargs["address"], address = "local", None
        elif kwargs.get("address") == "auto":
            raise ClusterUnreachable(f"address='auto': the recorded Ray cluster at {address} does not answer")
        else:
            raise ClusterUnreachable(
                f"the Ray cluster at {address} ({source}) does not answer after {PROBE_S:g} s: start it "
                "(`ray start --head`), fix the address, or unset RAY_ADDRESS to run on a local Ray"
            )
    if address is None:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        kwargs.setdefault("num_cpus", num_cpus)
        kwargs.setdefault("include_dashboard", False)
    kwargs.setdefault("log_to_driver", True)
    ray.init(**{k: v for k, v in kwargs.items() if v is not None})
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = True
    log.info("Ray resources: %s", ray.cluster_resources())
    if not client:
        watch_cluster(ray.get_runtime_context().gcs_address)


def watch_cluster(gcs_address: str, every: float = 3.0) -> None:
    """Start (once) the watchdog of the attached cluster's GCS (see the module docstring)."""
    global _watchdog, _watched, _main_thread_caller, LOST
    if _watchdog is not None and _watchdog.is_alive() and _watched == gcs_address:
        return
    _watched, LOST = gcs_address, None
    _main_thread_caller = threading.current_thread() is threading.main_thread()
    _watchdog = threading.Thread(target=_watch, args=(gcs_address, every), name="bigearth-ray-watchdog", daemon=True)
    _watchdog.start()


def _interactive() -> bool:
    return bool(hasattr(sys, "ps1") or sys.flags.interactive or "ipykernel" in sys.modules)


def _watch(gcs_address: str, every: float) -> None:
    import _thread

    global LOST
    import ray

    def attached() -> bool:  # a shutdown, or a connection to another cluster, ends this watch
        try:
            return ray.is_initialized() and _watched == ray.get_runtime_context().gcs_address == gcs_address
        except Exception:
            return False

    last_answer = time.monotonic()  # the silence is counted from the last answer, not from the first failed probe
    failed = 0  # probes failed in a row: one alone (a process paused past the window) never stops a command
    while attached():
        if _answers(gcs_address):
            last_answer, failed = time.monotonic(), 0
            time.sleep(every)
            continue
        failed += 1
        silent = time.monotonic() - last_answer
        if silent >= LOST_AFTER_S and failed >= 2:
            LOST = (
                f"the Ray cluster at {gcs_address} stopped answering {silent:.0f} s ago (its head was "
                "stopped or the network is down): start it again and re-run the command (ingest and training "
                "resume where they stopped), or unset RAY_ADDRESS to run on a local Ray"
            )
            log.error(LOST)
            if not _ARMED:
                return
            print(f"error: {LOST}", file=sys.stderr, flush=True)
            if _main_thread_caller:
                _thread.interrupt_main()
            time.sleep(EXIT_AFTER_S)
            if attached() and not _answers(gcs_address) and not _interactive():
                os._exit(EXIT_CODE)  # the interrupt did not end it: a wait in native code
            return
        time.sleep(min(every, SILENT_EVERY_S))  # silent: ask again sooner, so a cut is counted to the second
