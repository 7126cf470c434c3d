"""Several hosts on one machine: Linux network namespaces joined through a switch.

:class:`Network` builds, for one test or benchmark, a namespace per host (``a``, ``b``,
``c`` ...) and a fourth one holding the switch, a Linux bridge. Each host is joined to the
switch by a veth pair created directly inside the two namespaces, so nothing of the test
network exists in the root namespace (the machine's own interfaces, routes and firewall are
never touched) and traffic between hosts can only cross the veths::

      ns <run>-a          ns <run>-sw                     ns <run>-b
    eth0 10.77.x.1 ==== a (bridge port) -- br0 -- b ==== eth0 10.77.x.2   ...

* Addresses: one /24 per run, ``.1`` for the first host, ``.2`` for the second ...; a
  default route and the multicast range on ``eth0``, and the bridge's IGMP snooping off
  (no querier here), so DDS SPDP multicast reaches every host.
* Bandwidth: ``tc qdisc ... tbf`` on both ends of every link (the host's ``eth0`` egress
  and the switch port's egress toward the host), so each direction is limited.
* :meth:`Network.cut` / :meth:`Network.restore`: the switch port of a host down / up (the
  cable pulled out of the switch; the host keeps its address and sockets).
* :meth:`Network.counters`: a host's ``eth0`` byte / packet counters (what crossed the
  wire, as opposed to shared memory or loopback).
* Packet loss: the kernel here has neither netem nor tc's gact action; :meth:`Network.loss`
  drops a share of the frames a host sends into the switch with nftables in the switch
  namespace (``numgen random mod 100 < N drop``) when the ``nft`` command exists, and raises
  :class:`NetnsUnavailable` otherwise.
* Commands run in a host through ``ip netns exec <ns> ...`` (:meth:`Host.command`,
  :meth:`Host.popen`, :meth:`Host.run`); :meth:`Host.call` runs a Python callable in a
  thread moved into the namespace with ``setns``: sockets it opens and child processes it
  starts (``subprocess`` forks from the calling thread) live in that host.
* Names are unique per run (``dor<pid hex><random>``); :meth:`Network.close` (also on an
  exception or KeyboardInterrupt in the ``with`` block, and from an ``atexit`` hook if the
  interpreter ends first) stops every process started through the hosts, then deletes the
  namespaces, which deletes their veths and the bridge with them.

Needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN) and ``ip`` from iproute2. :func:`network` raises
:class:`NetnsUnavailable` when the kernel refuses to create a namespace; tests turn that
into a skip with :func:`skip_unless_available`.
"""

from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import json
import os
import secrets
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

_CLONE_NEWNET = 0x40000000
DEFAULT_RATE = "100mbit"
# tbf needs a bucket of at least rate / HZ (1 ms at HZ=1000 -> 12.5 kB at 100 Mbit/s); a
# larger one lets a whole 64 KB UDP datagram (44 Ethernet frames) pass at line rate.
DEFAULT_BURST = "256kb"
# The queue tbf holds before it drops: 100 ms at 100 Mbit/s = 1.25 MB. A sender's UDP socket
# is held back by its send buffer before that (packets queued in a qdisc count against the
# socket's wmem), so this is reached only by forwarded traffic bursts.
DEFAULT_LATENCY = "100ms"


class NetnsUnavailable(RuntimeError):
    """The kernel (or the missing privileges) refuses what the test network needs."""


def _ip(*args: str, check: bool = True, timeout_s: float = 15.0) -> subprocess.CompletedProcess:
    ip = shutil.which("ip") or "/usr/sbin/ip"
    result = subprocess.run([ip, *args], capture_output=True, text=True, timeout=timeout_s)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def _tc(ns: str, *args: str) -> None:
    tc = shutil.which("tc") or "/usr/sbin/tc"
    result = subprocess.run([tc, "-n", ns, *args], capture_output=True, text=True,
                            timeout=15)
    if result.returncode != 0:
        raise RuntimeError(f"tc -n {ns} {' '.join(args)}: {result.stderr.strip()}")


@dataclass
class Host:
    """One simulated machine: a network namespace with ``eth0`` on the switch."""

    name: str
    ns: str
    address: str
    network: Network
    port: str  # the switch-side end of this host's link (in the switch namespace)
    processes: list[subprocess.Popen] = field(default_factory=list)

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside this host (``ip netns exec`` also gives the command the
        namespace's own /sys)."""
        return [shutil.which("ip") or "/usr/sbin/ip", "netns", "exec", self.ns, *argv]

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen:
        """Start ``argv`` in this host, in its own session so teardown can stop its whole
        process group; the network stops it when it closes."""
        kwargs.setdefault("start_new_session", True)
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen(self.command(argv), **kwargs)
        self.processes.append(proc)
        return proc

    def run(self, argv: Sequence[str], timeout_s: float = 60.0,
            **kwargs: Any) -> subprocess.CompletedProcess:
        """Run ``argv`` in this host to completion (output captured as text)."""
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        return subprocess.run(self.command(argv), timeout=timeout_s, **kwargs)

    def call(self, function: Callable[[], T]) -> T:
        """``function()`` in a thread that has entered this host's namespace.

        ``setns(CLONE_NEWNET)`` changes the calling thread only, so the test's own threads
        stay in the root namespace. Sockets created by ``function`` keep this namespace for
        their life; so do processes it starts (they inherit the forking thread's)."""
        result: list[Any] = []
        errors: list[BaseException] = []

        def target() -> None:
            try:
                _enter_namespace(self.ns)
                result.append(function())
            except BaseException as exc:  # re-raised in the caller's thread
                errors.append(exc)

        thread = threading.Thread(target=target, name=f"netns-{self.ns}", daemon=True)
        thread.start()
        thread.join()
        if errors:
            raise errors[0]
        return result[0]

    def counters(self) -> dict[str, int]:
        """``eth0``'s counters: rx_bytes, tx_bytes, rx_packets, tx_packets, rx_dropped ..."""
        return self.network.counters(self.name)


def _enter_namespace(ns: str) -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {ns}: {os.strerror(err)}")
    finally:
        os.close(fd)


@dataclass
class Network:
    """Hosts on one switch; see the module docstring. Use as a context manager."""

    host_names: Sequence[str] = ("a", "b", "c")
    rate: str = DEFAULT_RATE
    burst: str = DEFAULT_BURST
    latency: str = DEFAULT_LATENCY
    run_id: str = ""
    hosts: dict[str, Host] = field(default_factory=dict)
    _namespaces: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Namespace and interface names per run: two tests (or a test and a bench) at once
        # never share one. Interface names stay below IFNAMSIZ (15).
        self.run_id = self.run_id or f"dor{os.getpid() & 0xffff:04x}{secrets.token_hex(2)}"
        # One /24 per run from 10.77.0.0/16 (only inside the namespaces; the root namespace
        # has no route to it, so it cannot clash with the machine's networks).
        self.subnet = f"10.77.{int(self.run_id[-4:], 16) % 250 + 1}"
        self.switch = f"{self.run_id}-sw"

    # -- building -------------------------------------------------------------------------

    def start(self) -> Network:
        atexit.register(self.close)
        try:
            self._add_namespace(self.switch)
        except RuntimeError as exc:
            self.close()
            raise NetnsUnavailable(f"cannot create a network namespace: {exc}") from None
        try:
            _ip("-n", self.switch, "link", "add", "br0", "type", "bridge",
                "mcast_snooping", "0")
            _ip("-n", self.switch, "link", "set", "br0", "up")
            for index, name in enumerate(self.host_names, start=1):
                self._add_host(name, f"{self.subnet}.{index}")
        except BaseException:
            self.close()
            raise
        return self

    def _add_namespace(self, ns: str) -> None:
        _ip("netns", "add", ns)
        self._namespaces.append(ns)
        _ip("-n", ns, "link", "set", "lo", "up")

    def _add_host(self, name: str, address: str) -> None:
        ns = f"{self.run_id}-{name}"
        self._add_namespace(ns)
        port = f"p{name}"
        # Both ends created from the switch namespace, the host's end moved straight into the
        # host's namespace: the pair never appears in the root namespace.
        _ip("-n", self.switch, "link", "add", port, "type", "veth", "peer", "name", "eth0",
            "netns", ns)
        _ip("-n", self.switch, "link", "set", port, "master", "br0")
        _ip("-n", self.switch, "link", "set", port, "up")
        _ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        # A default route, so a peer's address is always reachable through eth0, and the
        # multicast range explicitly on eth0 (SPDP's 239.255.0.1).
        _ip("-n", ns, "route", "add", "default", "dev", "eth0")
        _ip("-n", ns, "route", "add", "224.0.0.0/4", "dev", "eth0")
        for tc_ns, dev in ((ns, "eth0"), (self.switch, port)):
            _tc(tc_ns, "qdisc", "add", "dev", dev, "root", "tbf", "rate", self.rate,
                "burst", self.burst, "latency", self.latency)
        self.hosts[name] = Host(name, ns, address, self, port)

    def __enter__(self) -> Network:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    # -- operating ------------------------------------------------------------------------

    def cut(self, name: str) -> None:
        """Pull host ``name``'s cable out of the switch (its switch port down)."""
        _ip("-n", self.switch, "link", "set", self.hosts[name].port, "down")

    def restore(self, name: str) -> None:
        """Plug it back in."""
        _ip("-n", self.switch, "link", "set", self.hosts[name].port, "up")

    def counters(self, name: str) -> dict[str, int]:
        """Host ``name``'s ``eth0`` statistics (``ip -s -j link``): rx_bytes, tx_bytes,
        rx_packets, tx_packets, rx_dropped, tx_dropped."""
        out = _ip("-n", self.hosts[name].ns, "-s", "-j", "link", "show", "dev", "eth0").stdout
        stats = json.loads(out)[0]["stats64"]
        return {f"{direction}_{key}": int(stats[direction][key])
                for direction in ("rx", "tx") for key in ("bytes", "packets", "dropped")}

    def loss(self, name: str, percent: float) -> None:
        """Drop ``percent`` % (0.1 % steps) of the frames host ``name`` sends into the switch
        (0 removes the rule): nftables' ``numgen random mod 1000 < N drop`` on the bridge's
        forward hook in the switch namespace, so frames are lost on the wire, as on a bad
        cable: the sender's socket never knows (an output-hook drop in the host would fail
        its send with EPERM instead). One lost Ethernet frame loses its whole IP datagram."""
        if not 0 <= percent <= 100:
            raise ValueError(f"loss percent must be 0..100, not {percent}")
        nft = shutil.which("nft")
        if nft is None:
            raise NetnsUnavailable("packet loss needs nftables (nft); the kernel has no netem "
                                   "and no tc gact action")
        table = f"dicom_or_loss_{name}"
        switch = self.switch
        subprocess.run([nft, "delete", "table", "bridge", table], capture_output=True,
                       preexec_fn=lambda: _enter_namespace(switch))
        if percent <= 0:
            return
        # Per mille, so 0.1 % can be asked for; numgen's value is 0..999 ("< 1000" is
        # refused: 100 % is a plain drop).
        share = "" if percent >= 100 else f"numgen random mod 1000 < {round(percent * 10)} "
        rules = (f"table bridge {table} {{ chain forward {{ type filter hook forward "
                 f"priority 0; iifname \"{self.hosts[name].port}\" {share}drop; }}; }}")
        result = subprocess.run([nft, "-f", "-"], input=rules, capture_output=True, text=True,
                                preexec_fn=lambda: _enter_namespace(switch))
        if result.returncode != 0:
            raise NetnsUnavailable(f"nft refused the loss rule: {result.stderr.strip()}")

    # -- teardown -------------------------------------------------------------------------

    def close(self) -> None:
        """Stop every process started through a host (SIGTERM to its group, SIGKILL after
        5 s), then delete the namespaces. Safe to call more than once."""
        for host in self.hosts.values():
            for proc in host.processes:
                _signal_group(proc, signal.SIGTERM)
            for proc in host.processes:
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    _signal_group(proc, signal.SIGKILL)
                    proc.wait(timeout=5)
            host.processes.clear()
        for ns in reversed(self._namespaces):
            _kill_namespace_processes(ns)
            _ip("netns", "del", ns, check=False)
        self._namespaces.clear()
        atexit.unregister(self.close)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            pass


def _kill_namespace_processes(ns: str) -> None:
    """Anything still in the namespace (started by ``Host.call`` or outside our Popen
    bookkeeping) is killed: a namespace with processes left would outlive ``ip netns del``."""
    result = _ip("netns", "pids", ns, check=False)
    for pid in result.stdout.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


@contextmanager
def network(host_names: Sequence[str] = ("a", "b", "c"), rate: str = DEFAULT_RATE,
            **kwargs: Any) -> Iterator[Network]:
    """A :class:`Network` for the ``with`` block, torn down whatever happens in it."""
    net = Network(host_names=host_names, rate=rate, **kwargs)
    net.start()
    try:
        yield net
    finally:
        net.close()


def skip_unless_available() -> None:
    """pytest-skip (with the kernel's reason) where network namespaces cannot be created;
    anywhere they can, the test runs (and a later failure is a failure)."""
    import pytest

    probe = Network(host_names=())
    try:
        probe.start()
    except NetnsUnavailable as exc:
        pytest.skip(f"network namespaces unavailable here: {exc}")
    finally:
        probe.close()
