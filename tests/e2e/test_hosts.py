"""The separate-hosts harness itself (tests/hosts.py): nodes with their own addresses that run work, and a cut link
that the head notices, on a real Ray cluster of network namespaces."""

from __future__ import annotations

import pytest

from hosts import MARK, HostCluster, results, skip_reason

pytestmark = pytest.mark.skipif(skip_reason() is not None, reason=str(skip_reason()))

SPREAD = """
import ray, socket
ray.init(address='{address}', log_to_driver=False)
@ray.remote(num_cpus=1, scheduling_strategy='SPREAD')
def where():
    import time; time.sleep(1)
    return ray.util.get_node_ip_address(), socket.gethostbyname(socket.gethostname())
print({mark!r} + ray.util.get_node_ip_address())  # the node this driver attached through
print({mark!r} + repr(sorted(set(ray.get([where.remote() for _ in range(4)])))))
"""


def test_nodes_are_hosts_with_their_own_addresses_and_a_cut_link_is_a_dead_node() -> None:
    with HostCluster(nodes=2, cpus=1) as c:
        head, worker = (h.address for h in c.hosts)
        assert head != worker and not head.startswith("127.")
        r = c.python(1, SPREAD.format(address=c.address, mark=MARK))
        assert r.returncode == 0, r.stderr[-2000:]
        # the driver attached through its own host's node (each host has its own process table), not the head's
        assert results(r.stdout)[0] == worker
        # each task ran on its own host, whose hostname resolves to loopback (the case collectives must survive)
        assert results(r.stdout)[1] == repr(sorted([(head, "127.0.0.1"), (worker, "127.0.0.1")]))
        c.cut(1)
        c.wait_nodes([head], timeout=60)  # the head counts the silent host dead
        c.heal(1)
        c.kill(1)  # its raylet was told it is dead: the machine is restarted and joins again
        assert c.pids(1) == []
        c.join(1)
        c.wait_nodes([head, worker], timeout=60)
