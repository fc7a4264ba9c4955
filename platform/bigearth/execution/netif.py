"""The network interface the collective backends of a training worker (torch's Gloo on CPUs, NCCL on GPUs) use to
reach the other workers: the one holding the address Ray uses for the worker's node, unless the user names one.

Left alone, Gloo binds and advertises the address the host's name resolves to: on many machines (Debian's
/etc/hosts, some images) that is 127.0.0.1, so the workers on other hosts dial their own loopback and the process
group never forms (`Gloo connectFullMesh failed ... Connection refused, remote=[127.0.0.1]:...`). NCCL picks the
first interface that is not loopback or docker, which need not be the one the other nodes reach. Ray's own address
for the node is the one its peers already reach, so that interface is named to both:
`GLOO_SOCKET_IFNAME` and `NCCL_SOCKET_IFNAME` (exact match, `=name`).

`BIGEARTH_COLLECTIVE_IFNAME` names the interface instead (e.g. a faster fabric than Ray's); a backend variable the
user set already (`GLOO_SOCKET_IFNAME`, `NCCL_SOCKET_IFNAME`) is never changed.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

#: Names the interface the collectives use on every node (it must exist on each).
OVERRIDE = "BIGEARTH_COLLECTIVE_IFNAME"
GLOO = "GLOO_SOCKET_IFNAME"
NCCL = "NCCL_SOCKET_IFNAME"


class InterfaceError(ValueError):
    """The interface named for the collectives is not on this node."""


@dataclass
class Choice:
    """What to set (`env`, variable -> value) and why (`reason`, one line for the worker's log); `env` is empty
    when nothing is set (the user set both backend variables, or no interface holds the node's address)."""

    env: dict[str, str] = field(default_factory=dict)
    reason: str = ""


def holding(address: str, interfaces: Mapping[str, Iterable[str]]) -> str | None:
    """The interface whose addresses include `address` (the first by name when several do), or None."""
    for name in sorted(interfaces):
        if address in interfaces[name]:
            return name
    return None


def choose(address: str, interfaces: Mapping[str, Iterable[str]], env: Mapping[str, str]) -> Choice:
    """The backend variables for a worker whose node Ray knows as `address`, given the host's `interfaces` (name ->
    its addresses) and the worker's environment `env`."""
    wanted = [v for v in (GLOO, NCCL) if not env.get(v)]
    if not wanted:
        return Choice(reason=f"{GLOO} and {NCCL} set by the user")
    named = env.get(OVERRIDE, "").strip()
    if named:
        if named not in interfaces:
            have = ", ".join(sorted(interfaces))
            raise InterfaceError(f"{OVERRIDE}={named}: no such interface on the node at {address} (it has {have})")
        name, why = named, f"named by {OVERRIDE}"
    else:
        found = holding(address, interfaces)
        if found is None:
            return Choice(
                reason=f"no interface holds {address}, the address Ray uses for this node (interfaces: "
                f"{', '.join(sorted(interfaces))}): the collectives keep their own choice (Gloo: the address the "
                f"hostname resolves to); set {OVERRIDE} to the interface the other nodes reach"
            )
        name, why = found, f"the interface holding {address}, the address Ray uses for this node"
    values = {GLOO: name, NCCL: f"={name}"}  # NCCL matches prefixes unless the name starts with "="
    return Choice({v: values[v] for v in wanted}, f"collectives on {name} ({why})")


def interfaces() -> dict[str, list[str]]:
    """This host's interfaces and their IPv4 and IPv6 addresses (psutil: Ray's own dependency, on every node)."""
    import importlib

    import ray  # noqa: F401  (puts Ray's bundled psutil on the path)

    psutil = importlib.import_module("psutil")
    return {
        name: [a.address.split("%")[0] for a in addrs if a.family in (socket.AF_INET, socket.AF_INET6)]
        for name, addrs in psutil.net_if_addrs().items()
    }
