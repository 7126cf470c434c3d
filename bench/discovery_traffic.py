"""DDS discovery traffic per participant against the number of participants (issue 15 §3).

    tools/with_env python bench/discovery_traffic.py [--quick] [--counts 4,8,16,24]

Every participant is one rclpy process (forked from this one after rclpy is imported, so
no import cost per process) in a network namespace of its own; the namespaces hang off one
Linux bridge in a "switch" namespace (multicast snooping off, so multicast floods like on
an unmanaged OR switch). Bytes are read from the bridge ports' veth counters: what a
participant sent (port rx) and what was delivered to it (port tx). Fast DDS is forced to
UDPv4 only (a profile written by this script through FASTDDS_DEFAULT_PROFILES_FILE): the
namespaces share /dev/shm, so the default shared-memory transport would otherwise carry the
traffic past the counters. Addresses are 10.77.0.0/24 inside the bench's own namespaces;
nothing leaves them.

Each participant carries the endpoints of a dicom_or driver node: a stream's sample
publisher (WaveformChunk) and its latched descriptor, /or/device_status published and
subscribed, /or/session_context subscribed (latched), plus what rclpy adds to every node
(parameter and type-description services, /rosout, /parameter_events).

Three discovery layouts, same run:

* ``multicast``: the ROS 2 default, SPDP by multicast (239.255.0.1) and SEDP unicast
  between every pair of participants (RTPS 2.5 §8.5);
* ``server``: one Fast DDS Discovery Server (the ``fast-discovery-server`` of the
  ros-fastdds wheel) in a namespace of its own, the participants its clients through
  ``ROS_DISCOVERY_SERVER`` (Fast DDS documentation, "Discovery Server"); a client learns
  only the endpoints that match its own (the "topics seen" column);
* ``super``: the same with every participant a super client (``ROS_SUPER_CLIENT=TRUE``):
  it learns every endpoint, as a node that lists the graph (the bridge's stream
  discovery) needs.

Per layout and participant count: the startup burst (from start until every participant
sees every node, plus ``--settle`` 6 s) and the steady state (a 9 s window after that; 6 s
with ``--quick``), per participant and in total, and the server's own port. The window is a
multiple of the 3 s SPDP announcement period: traffic arrives in bursts once a period, and
a 5 s window counts one or two of them (a --quick run with 5 s read 5.6 kB/s at n=16 where
3 s slots all read 9.0 kB/s). ``--slots`` prints the window per 3 s slot.
Reference, same run: the bridge with no participant for the same window (the counters'
noise floor). The growth is fitted as
bytes/s per participant = a + b·n (b > 0: total traffic grows with n²).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(os.environ.get("VIRTUAL_ENV", ROOT / ".venv"))
SUBNET = "10.77.0"
SERVER_PORT = 11811
CLONE_NEWNET = 0x40000000

UDP_ONLY_PROFILE = """<?xml version="1.0" encoding="UTF-8"?>
<dds xmlns="http://www.eprosima.com">
  <profiles>
    <transport_descriptors>
      <transport_descriptor>
        <transport_id>bench_udp</transport_id>
        <type>UDPv4</type>
      </transport_descriptor>
    </transport_descriptors>
    <participant profile_name="bench_udp_only" is_default_profile="true">
      <rtps>
        <userTransports><transport_id>bench_udp</transport_id></userTransports>
        <useBuiltinTransports>false</useBuiltinTransports>
      </rtps>
    </participant>
  </profiles>
</dds>
"""


# ------------------------------------------------------------------------------------------
# Topology: one bridge, one namespace per host, veth counters.


def ip(*args: str, check: bool = True) -> str:
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


class Switch:
    """A bridge in namespace ``<prefix>sw`` and ``hosts`` namespaces ``<prefix>h<i>``.

    Host ``i`` has address 10.77.0.(10 + i) on its ``eth0``; its bridge port is ``p<i>``.
    """

    def __init__(self, hosts: int, prefix: str | None = None) -> None:
        self.prefix = prefix or f"dorb{os.getpid() % 100000}"
        self.hosts = hosts
        self.sw = f"{self.prefix}sw"

    def ns(self, i: int) -> str:
        return f"{self.prefix}h{i}"

    @staticmethod
    def address(i: int) -> str:
        return f"{SUBNET}.{10 + i}"

    def __enter__(self) -> Switch:
        try:
            self._create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _create(self) -> None:
        lines = [f"netns add {self.sw}",
                 f"-n {self.sw} link add br0 type bridge mcast_snooping 0",
                 f"-n {self.sw} link set br0 addrgenmode none",
                 f"-n {self.sw} link set br0 up"]
        for i in range(self.hosts):
            ns = self.ns(i)
            lines += [f"netns add {ns}",
                      f"-n {self.sw} link add p{i} type veth peer name eth0 netns {ns}",
                      f"-n {self.sw} link set p{i} addrgenmode none",
                      f"-n {ns} link set eth0 addrgenmode none",
                      f"-n {self.sw} link set p{i} master br0",
                      f"-n {self.sw} link set p{i} up",
                      f"-n {ns} addr add {self.address(i)}/24 dev eth0",
                      f"-n {ns} link set eth0 up",
                      f"-n {ns} link set lo up",
                      # Multicast (SPDP) leaves through the bridge, not lo.
                      f"-n {ns} route add 224.0.0.0/4 dev eth0"]
        for line in lines:   # `ip -batch` does not take -n
            ip(*line.split())

    def close(self) -> None:
        names = set(ip("netns", "list", check=False).split())
        for name in [self.sw] + [self.ns(i) for i in range(self.hosts)]:
            if name in names:
                ip("netns", "del", name, check=False)

    def counters(self) -> dict[int, tuple[int, int]]:
        """Per host: (bytes the host sent, bytes delivered to it), from its bridge port."""
        out: dict[int, tuple[int, int]] = {}
        for link in json.loads(ip("-n", self.sw, "-j", "-s", "link", "show")):
            name = link["ifname"]
            if name.startswith("p") and name[1:].isdigit():
                stats = link["stats64"]
                out[int(name[1:])] = (stats["rx"]["bytes"], stats["tx"]["bytes"])
        return out


def enter_netns(name: str) -> None:
    """Move this (single-threaded, just forked) process into network namespace ``name``."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {name}")
    finally:
        os.close(fd)


def write_udp_profile(folder: Path) -> Path:
    path = folder / "udp_only.xml"
    path.write_text(UDP_ONLY_PROFILE)
    return path


def discovery_server_command() -> tuple[list[str], dict[str, str]]:
    """The wheel's server binary and the library path it needs (the wheel's RPATH lacks it)."""
    binary = next(iter(sorted((VENV / "bin").glob("fast-discovery-server-*"))), None)
    if binary is None:
        raise RuntimeError(f"no fast-discovery-server in {VENV / 'bin'}")
    site = next((VENV / "lib").glob("python3*/site-packages"))
    libs = [str(VENV / "lib")] + [str(p) for p in site.glob("ros_fastdds*.libs")]
    # "42" is the tool's SERVER sub-command (tools/fastdds/discovery/parser.py).
    return [str(binary), "42"], {"LD_LIBRARY_PATH": ":".join(libs)}


# ------------------------------------------------------------------------------------------
# Participants


def participant_main(index: int, ns: str, env: dict[str, str], ready_fd: int,
                     expected_nodes: int) -> None:
    """Child: one rclpy participant with a driver node's endpoints, until SIGTERM."""
    enter_netns(ns)
    os.environ.update(env)
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    from dicom_or_msgs.msg import DeviceStatus, SessionContext, StreamDescriptor, WaveformChunk

    stop = False
    count_topics = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    def on_usr1(*_: object) -> None:
        nonlocal count_topics
        count_topics = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGUSR1, on_usr1)
    rclpy.init(signal_handler_options=rclpy.signals.SignalHandlerOptions.NO)
    node = rclpy.create_node(f"device_{index}", namespace="/or")
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
    reliable = QoSProfile(depth=30, reliability=ReliabilityPolicy.RELIABLE)
    node.create_publisher(WaveformChunk, f"/or/device_{index}/samples", reliable)
    node.create_publisher(StreamDescriptor, f"/or/device_{index}/samples/descriptor", latched)
    node.create_publisher(DeviceStatus, "/or/device_status", reliable)
    node.create_subscription(DeviceStatus, "/or/device_status", lambda _m: None, reliable)
    node.create_subscription(SessionContext, "/or/session_context", lambda _m: None, latched)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    start = time.monotonic()
    reported = False
    while not stop:
        executor.spin_once(timeout_sec=0.1)
        if not reported and len(node.get_node_names()) >= expected_nodes:
            os.write(ready_fd, f"{index} {time.monotonic() - start:.3f}\n".encode())
            reported = True
        if count_topics:
            # What a graph-wide node (the bridge's discover_streams) sees of all topics.
            count = len(node.get_topic_names_and_types())
            os.write(ready_fd, f"T {index} {count}\n".encode())
            count_topics = False
    node.destroy_node()
    rclpy.try_shutdown()


def start_participants(switch: Switch, hosts: list[int], env: dict[str, str],
                       ready_fd: int) -> list[int]:
    pids = []
    for i in hosts:
        pid = os.fork()
        if pid == 0:  # child
            code = 0
            try:
                participant_main(i, switch.ns(i), env, ready_fd, len(hosts))
            except BaseException as exc:  # noqa: BLE001 - report and leave the child
                print(f"participant {i}: {exc!r}", file=sys.stderr)
                code = 1
            os._exit(code)
        pids.append(pid)
    return pids


def stop_processes(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    for pid in pids:
        while time.monotonic() < deadline:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.05)
        else:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass


# ------------------------------------------------------------------------------------------
# Measurement


@dataclass
class Row:
    layout: str
    n: int
    discovered_s: float          # until the last participant saw every node
    startup_per_part: float      # bytes per participant (sent + received), startup window
    steady_per_part: float       # bytes/s per participant (sent + received)
    steady_sent_per_part: float  # bytes/s per participant, sent only
    steady_total: float          # bytes/s into the bridge (sum of what every host sent)
    server_steady: float         # bytes/s at the server's port (sent + received)
    server_startup: float        # bytes at the server's port in the startup window
    load: str
    topics_seen: str = ""        # min-max topics a participant saw of the 2n + 4 there are


def delta(after: dict[int, tuple[int, int]], before: dict[int, tuple[int, int]],
          hosts: list[int]) -> tuple[int, int]:
    sent = sum(after[i][0] - before[i][0] for i in hosts)
    received = sum(after[i][1] - before[i][1] for i in hosts)
    return sent, received


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


def measure(switch: Switch, layout: str, n: int, window: float, profile: Path,
            domain: int, settle: float = 6.0, verbose: bool = False) -> Row:
    hosts = list(range(1, n + 1))   # host 0 is the discovery server's
    env = {"ROS_DOMAIN_ID": str(domain), "FASTDDS_DEFAULT_PROFILES_FILE": str(profile),
           "ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET", "RMW_IMPLEMENTATION": "rmw_fastrtps_cpp"}
    env_off = ["ROS_DISCOVERY_SERVER", "ROS_SUPER_CLIENT", "ROS_STATIC_PEERS",
               "ROS_LOCALHOST_ONLY", "FASTRTPS_DEFAULT_PROFILES_FILE"]
    for name in env_off:
        os.environ.pop(name, None)
    server: subprocess.Popen[bytes] | None = None
    before = switch.counters()
    if layout in ("server", "super"):
        if layout == "super":
            # Every participant a super client: it learns every endpoint, like a graph-wide
            # node (bridge, recorder, OR view: discover_streams) must.
            env["ROS_SUPER_CLIENT"] = "TRUE"
        env["ROS_DISCOVERY_SERVER"] = f"{switch.address(0)}:{SERVER_PORT}"
        command, server_env = discovery_server_command()
        server = subprocess.Popen(
            ["ip", "netns", "exec", switch.ns(0), *command, "-l", switch.address(0),
             "-p", str(SERVER_PORT)],
            env={**os.environ, **server_env, "FASTDDS_DEFAULT_PROFILES_FILE": str(profile)},
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(0.5)   # the server's socket before the first client announces itself
        if server.poll() is not None:
            raise RuntimeError(f"discovery server exited: {server.stderr.read()!r}"
                               if server.stderr else "discovery server exited")
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    started = time.monotonic()
    pids = start_participants(switch, hosts, env, write_fd)
    ready: dict[int, float] = {}
    buffer = b""
    try:
        deadline = started + 60
        while len(ready) < n and time.monotonic() < deadline:
            time.sleep(0.05)
            try:
                buffer += os.read(read_fd, 4096)
            except BlockingIOError:
                continue
            *lines, rest = buffer.split(b"\n")
            buffer = rest
            for line in lines:
                index, seconds = line.split()[:2]
                ready[int(index)] = float(seconds)
        discovered = time.monotonic() - started if len(ready) == n else float("nan")
        time.sleep(settle)   # the SEDP tail after the last node is seen
        mid = switch.counters()
        # The window in ~3 s slots (the SPDP announcement period): a slot well above the
        # others means discovery had not settled yet.
        count = max(1, round(window / 3.0))
        length = window / count
        slots = []
        previous, slot_end = mid, time.monotonic()
        for _ in range(count):
            slot_end += length
            time.sleep(max(0.0, slot_end - time.monotonic()))
            now = switch.counters()
            slots.append(sum(delta(now, previous, hosts)) / length / n)
            previous = now
        after = previous
        if verbose:
            print(f"    {layout} n={n} per-participant B/s in 3 s slots: "
                  + " ".join(f"{v:.0f}" for v in slots), flush=True)
        load = loadavg()
        for pid in pids:
            os.kill(pid, signal.SIGUSR1)
        wait_until = time.monotonic() + 5
        while buffer.count(b"T ") < n and time.monotonic() < wait_until:
            time.sleep(0.05)
            try:
                buffer += os.read(read_fd, 65536)
            except BlockingIOError:
                pass
    finally:
        stop_processes(pids)
        topics = [int(line.split()[2]) for line in buffer.split(b"\n")
                  if line.startswith(b"T ")]
        os.close(read_fd)
        os.close(write_fd)
        if server is not None:
            server.terminate()
            try:
                server.wait(5)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    s_sent, s_recv = delta(mid, before, hosts)
    w_sent, w_recv = delta(after, mid, hosts)
    srv_start = sum(delta(mid, before, [0])) if server else 0
    srv_sent, srv_recv = delta(after, mid, [0]) if server else (0, 0)
    return Row(layout, n, discovered, (s_sent + s_recv) / n, (w_sent + w_recv) / window / n,
               w_sent / window / n, (w_sent + srv_sent) / window,
               (srv_sent + srv_recv) / window, srv_start, load,
               f"{min(topics)}-{max(topics)} of {2 * n + 4}" if topics else "?")


def fit_linear(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least squares y = a + b·x."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0
    return my - b * mx, b


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="4, 8, 16 participants, multicast and server, 6 s windows")
    parser.add_argument("--counts", help="participant counts, comma-separated")
    parser.add_argument("--window", type=float, help="steady-state window in seconds")
    parser.add_argument("--settle", type=float, default=6.0,
                        help="seconds after every node is seen before the steady window")
    parser.add_argument("--slots", action="store_true",
                        help="print the steady window's per-participant rate per ~3 s slot")
    parser.add_argument("--layouts", help="multicast,server,super (the default)")
    options = parser.parse_args()
    if os.geteuid() != 0:
        print("discovery_traffic: needs root (ip netns); skipped")
        return 0
    counts = ([int(c) for c in options.counts.split(",")] if options.counts
              else [4, 8, 16] if options.quick else [4, 8, 16, 24])
    window = options.window or (6.0 if options.quick else 9.0)
    layouts = (options.layouts or ("multicast,server" if options.quick
                                   else "multicast,server,super")).split(",")
    domain = 100 + os.getpid() % 100
    print(f"discovery_traffic: {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC, "
          f"uptime load {Path('/proc/loadavg').read_text().strip()}")
    import rclpy  # noqa: F401 - imported once here, inherited by every forked participant

    import dicom_or_msgs.msg  # noqa: F401
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp, Switch(max(counts) + 1) as switch:
        profile = write_udp_profile(Path(tmp))
        before = switch.counters()
        time.sleep(window)
        noise = sum(delta(switch.counters(), before, list(range(switch.hosts)))) / window
        print(f"reference: bridge with no participant, {switch.hosts} ports: "
              f"{noise:.0f} bytes/s in total")
        for layout in layouts:
            for n in counts:
                row = measure(switch, layout, n, window, profile, domain, options.settle,
                              options.slots)
                rows.append(row)
                print(f"  {layout} n={n}: discovered {row.discovered_s:.1f} s, startup "
                      f"{row.startup_per_part / 1e3:.0f} kB/participant, steady "
                      f"{row.steady_per_part:.0f} B/s/participant (load {row.load})",
                      flush=True)
    print()
    print("| layout | participants | all discovered s | startup kB per participant | "
          "steady B/s per participant (sent+recv) | of which sent | steady total B/s "
          "(sum sent) | server port B/s | topics seen | load |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        server = f"{r.server_steady:.0f}" if r.layout != "multicast" else ""
        print(f"| {r.layout} | {r.n} | {r.discovered_s:.1f} | {r.startup_per_part / 1e3:.1f} | "
              f"{r.steady_per_part:.0f} | {r.steady_sent_per_part:.0f} | "
              f"{r.steady_total:.0f} | {server} | {r.topics_seen} | {r.load} |")
    print()
    for layout in layouts:
        sel = [r for r in rows if r.layout == layout]
        if len(sel) < 2:
            continue
        a, b = fit_linear([r.n for r in sel], [r.steady_per_part for r in sel])
        sa, sb = fit_linear([r.n for r in sel], [r.startup_per_part for r in sel])
        print(f"fit {layout}: steady per participant = {a:.0f} + {b:.1f}*n B/s; "
              f"startup per participant = {sa / 1e3:.1f} + {sb / 1e3:.2f}*n kB")
    print(f"end load {Path('/proc/loadavg').read_text().strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
