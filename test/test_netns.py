"""Test support netns.Network, the hosts test_multi_host.py and bench/multi_host.py run on:
links, multicast, cable cut, counters, bandwidth limits, packet loss and teardown, checked
with real sockets inside the namespaces (Host.call)."""

from __future__ import annotations

import socket
import struct
import subprocess

import pytest
from conftest import require
from dicom_or_test_common.netns import NetnsUnavailable, Network, skip_unless_available

PORT = 47001
GROUP = "239.255.0.1"  # DDS SPDP's multicast group


def receiver(host, address: str = "", group: str = "") -> socket.socket:
    """A UDP socket in ``host`` (bound to ``address`` or, for ``group``, joined to it)."""
    def make() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((group or address, PORT))
        if group:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                            struct.pack("4s4s", socket.inet_aton(group),
                                        socket.inet_aton(host.address)))
        sock.settimeout(2.0)
        return sock
    return host.call(make)


def send(host, to: str, payload: bytes = b"x", count: int = 1) -> None:
    def go() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for _ in range(count):
                sock.sendto(payload, (to, PORT))
    host.call(go)


def received(sock: socket.socket) -> bool:
    try:
        sock.recv(65536)
        return True
    except TimeoutError:
        return False


def namespaces() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def test_hosts_talk_through_the_switch_only_while_plugged_in():
    require("ip", "tc")
    skip_unless_available()
    with Network() as net:
        a, b, c = net["a"], net["b"], net["c"]
        assert len({a.address, b.address, c.address}) == 3
        assert net.run_id in namespaces()
        # unicast A -> B, counted on both interfaces
        sock = receiver(b, b.address)
        before_a, before_b = a.counters(), b.counters()
        send(a, b.address, b"y" * 1000)
        assert received(sock)
        assert a.counters()["tx_bytes"] - before_a["tx_bytes"] >= 1000
        assert b.counters()["rx_bytes"] - before_b["rx_bytes"] >= 1000
        # multicast A -> C (what DDS discovery needs)
        group = receiver(c, group=GROUP)
        send(a, GROUP)
        assert received(group)
        # cable out: nothing arrives; back in: it does again
        net.cut("a")
        send(a, b.address)
        assert not received(sock)
        net.restore("a")
        for _ in range(50):  # the port may take a moment to forward again
            send(a, b.address)
            if received(sock):
                break
        else:
            pytest.fail("no datagram after the link was restored")
        sock.close()
        group.close()
        # both ends of every link limited to the rate
        for ns, dev in ((a.ns, "eth0"), (net.switch, a.port)):
            shown = subprocess.run(["tc", "-n", ns, "qdisc", "show", "dev", dev],
                                   capture_output=True, text=True).stdout
            assert "tbf" in shown and "100Mbit" in shown, shown
        # a process started in a host is stopped by the teardown
        sleeper = a.popen(["sleep", "600"])
    assert sleeper.poll() is not None
    assert net.run_id not in namespaces()


def test_teardown_on_an_exception_leaves_nothing():
    skip_unless_available()
    with pytest.raises(KeyboardInterrupt):
        with Network(host_names=("a",)) as net:
            run_id = net.run_id
            raise KeyboardInterrupt
    assert run_id not in namespaces()


def test_packet_loss_on_the_switch(monkeypatch):
    require("nft")
    skip_unless_available()
    with Network(host_names=("a", "b")) as net:
        a, b = net["a"], net["b"]
        with pytest.raises(ValueError, match="0..100"):
            net.loss("a", 101)
        sock = receiver(b, b.address)
        net.loss("a", 100)
        send(a, b.address)
        assert not received(sock)
        net.loss("a", 0)
        send(a, b.address)
        assert received(sock)
        # a share: of 400 datagrams about half arrive (wide bounds: random)
        net.loss("a", 50)
        send(a, b.address, count=400)
        sock.settimeout(0.5)
        got = 0
        while received(sock):
            got += 1
        assert 100 < got < 300, got
        sock.close()
        # where nftables is not installed: one clear error
        monkeypatch.setenv("PATH", "/nonexistent")
        with pytest.raises(NetnsUnavailable, match="nftables"):
            net.loss("a", 10)
