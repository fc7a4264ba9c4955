"""The collectives' network interface (`bigearth.execution.netif`): the one holding the node's Ray address, the
user's override, the user's own backend variables, and an address no interface holds."""

from __future__ import annotations

import pytest

from bigearth.execution import netif

HOST = {"lo": ["127.0.0.1", "::1"], "eth0": ["10.0.0.5", "fe80::1"], "eth1": ["192.168.7.5"]}


def test_the_interface_holding_the_nodes_address_goes_to_gloo_and_nccl() -> None:
    choice = netif.choose("192.168.7.5", HOST, {})
    assert choice.env == {"GLOO_SOCKET_IFNAME": "eth1", "NCCL_SOCKET_IFNAME": "=eth1"}  # NCCL: exact, not a prefix
    assert "192.168.7.5" in choice.reason and "eth1" in choice.reason
    assert netif.choose("fe80::1", HOST, {}).env["GLOO_SOCKET_IFNAME"] == "eth0"


def test_a_node_on_loopback_binds_loopback() -> None:
    """All nodes on 127.0.0.1 (one machine): the collectives stay on lo, as before."""
    assert netif.choose("127.0.0.1", HOST, {}).env == {"GLOO_SOCKET_IFNAME": "lo", "NCCL_SOCKET_IFNAME": "=lo"}


def test_the_users_interface_wins_and_must_exist() -> None:
    assert netif.choose("10.0.0.5", HOST, {netif.OVERRIDE: "eth1"}).env == {
        "GLOO_SOCKET_IFNAME": "eth1",
        "NCCL_SOCKET_IFNAME": "=eth1",
    }
    with pytest.raises(netif.InterfaceError, match=r"BIGEARTH_COLLECTIVE_IFNAME=ib0: no such interface .*10\.0\.0\.5"):
        netif.choose("10.0.0.5", HOST, {netif.OVERRIDE: "ib0"})


def test_backend_variables_the_user_set_are_kept() -> None:
    assert netif.choose("10.0.0.5", HOST, {"NCCL_SOCKET_IFNAME": "ib"}).env == {"GLOO_SOCKET_IFNAME": "eth0"}
    both = netif.choose("10.0.0.5", HOST, {"NCCL_SOCKET_IFNAME": "ib", "GLOO_SOCKET_IFNAME": "eth1"})
    assert both.env == {} and "set by the user" in both.reason


def test_an_address_no_interface_holds_sets_nothing_and_says_which() -> None:
    choice = netif.choose("203.0.113.9", HOST, {})
    assert choice.env == {}
    assert "203.0.113.9" in choice.reason and netif.OVERRIDE in choice.reason


def test_the_first_interface_by_name_when_several_hold_the_address() -> None:
    assert netif.holding("10.1.1.1", {"veth1": ["10.1.1.1"], "br0": ["10.1.1.1"]}) == "br0"
    assert netif.holding("10.1.1.2", {"br0": ["10.1.1.1"]}) is None


def test_this_hosts_loopback_is_found() -> None:
    assert netif.holding("127.0.0.1", netif.interfaces()) is not None
