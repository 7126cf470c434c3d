#!/usr/bin/env python3
"""OpenIGTLink server: TRANSFORM rate and latency from the tracker to an OpenIGTLink client.

Rows, each measured by the same client here (one TCP connection, every message read with
its receive time; latency = receive time - the message's OpenIGTLink timestamp, which is
the pose's acquisition time, both on the host clock):

* *graph*: ``tracker_driver`` (simulated) -> DDS -> ``dicom_or_igtl_server`` (installed
  console scripts, own DDS domain) -> client: what Slicer would see.
* *IgtlServer alone*: the same simulated tracker (same tools, same pacing) in one process
  publishing straight into the ROS-free :class:`~dicom_or_bridge.igtl_server.IgtlServer`.
* *reference*: the same poses encoded with pyigtl and written with ``sendall`` on a raw
  socket by a minimal sender, one message per pose: the floor of Python + TCP loopback.

    tools/with_env python bench/igtl_server.py [--quick] [--seconds S]
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np
from pyigtl.messages import MessageBase

HEADER = MessageBase.IGTL_HEADER_SIZE


def _recv(sock: socket.socket, size: int) -> bytes:
    chunks, remaining = [], size
    while remaining:
        chunk = sock.recv(remaining)
        if not chunk:
            raise ConnectionError("closed")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def measure(port: int, warmup_s: float, seconds: float) -> dict[str, list[float]]:
    """Connect (retrying while the server starts), skip ``warmup_s``, then collect
    (acquisition time, latency) per device for ``seconds``."""
    deadline = time.monotonic() + 30.0
    while True:
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=10.0)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    per_device: dict[str, list[tuple[float, float]]] = {}
    with sock:
        start = time.time()
        while True:
            header = MessageBase.parse_header(_recv(sock, HEADER))
            _recv(sock, header["body_size"])
            now = time.time()
            if now - start > warmup_s + seconds:
                break
            if header["message_type"] == "TRANSFORM" and now - start > warmup_s:
                per_device.setdefault(header["device_name"], []).append(
                    (header["timestamp"], now - header["timestamp"]))
    return {device: [v for pair in values for v in pair] for device, values in
            per_device.items()}


def row(name: str, data: dict[str, list[float]], rate_hz: float) -> str:
    rates, latencies = [], []
    for values in data.values():
        stamps = values[0::2]
        latencies += values[1::2]
        if len(stamps) > 1:
            rates.append((len(stamps) - 1) / (stamps[-1] - stamps[0]))
    ms = np.asarray(latencies) * 1000
    rate = float(np.median(rates)) if rates else 0.0  # an occluded tool is sent less
    return (f"| {name} | {len(data)} | {rate_hz:g} | {rate:.1f} | "
            f"{len(ms)} | {np.percentile(ms, 50):.2f} | {np.percentile(ms, 99):.2f} | "
            f"{ms.max():.2f} |")


def sender(mode: str, port: int, rate_hz: float, tools: int, seconds: float) -> None:
    """The in-process rows: the simulated tracker into IgtlServer or onto a raw socket."""
    from pyigtl.messages import TransformMessage

    from dicom_or_bridge.igtl_server import IgtlServer, pose_matrix_mm
    from dicom_or_core.sim.tracker import default_tools
    from dicom_or_drivers.tracker_sources import SimulatedTracker

    stop = threading.Event()
    source = SimulatedTracker(default_tools(tools), rate_hz)
    if mode == "server":
        server = IgtlServer("127.0.0.1", port)
        server.start()
        while not server.stats().clients:
            time.sleep(0.01)

        def deliver(poses: list, acquisition_ns: int) -> None:
            for pose in poses:
                if pose.visible:
                    server.publish_transform(pose.tool_id, pose_matrix_mm(
                        pose.position, pose.orientation), acquisition_ns / 1e9)
    else:
        listener = socket.create_server(("127.0.0.1", port))
        conn, _ = listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def deliver(poses: list, acquisition_ns: int) -> None:
            for pose in poses:
                if pose.visible:
                    conn.sendall(TransformMessage(
                        pose_matrix_mm(pose.position, pose.orientation),
                        timestamp=acquisition_ns / 1e9, device_name=pose.tool_id).pack())
    threading.Timer(seconds, stop.set).start()
    try:
        source.run(deliver, stop)
    except OSError:
        pass  # the client left


def _executable(package: str, name: str) -> str:
    from ament_index_python.packages import get_package_prefix

    return str(Path(get_package_prefix(package)) / "lib" / package / name)


def graph_row(rate_hz: float, tools: int, warmup_s: float, seconds: float) -> str:
    from dicom_or_test_common.peers import free_tcp_port
    from dicom_or_test_common.ros import isolated_env, reserved_domain_id

    with reserved_domain_id() as domain, ExitStack() as stack:
        env = isolated_env(domain)
        port = free_tcp_port()
        for package, name, params in (
                ("dicom_or_drivers", "tracker_driver", [f"rate_hz:={rate_hz}",
                                                        f"tool_count:={tools}",
                                                        "marker_rate_hz:=0.0",
                                                        "require_session_context:=false"]),
                ("dicom_or_bridge", "dicom_or_igtl_server", [f"port:={port}",
                                                             "discovery_period_s:=0.5"])):
            words = [w for p in params for w in ("-p", p)]
            child = subprocess.Popen([_executable(package, name), "--ros-args", "-r",
                                      "__ns:=/or", *words], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            stack.callback(child.wait, 20)
            stack.callback(child.terminate)
        # The node finds the stream within a discovery period; the warm-up covers it.
        return row("graph: tracker_driver -> DDS -> dicom_or_igtl_server", measure(
            port, warmup_s + 2.0, seconds), rate_hz)


def process_row(mode: str, name: str, rate_hz: float, tools: int, warmup_s: float,
                seconds: float) -> str:
    from dicom_or_test_common.peers import free_tcp_port

    port = free_tcp_port()
    child = subprocess.Popen([sys.executable, __file__, "--sender", mode, "--port", str(port),
                              "--rate", str(rate_hz), "--tools", str(tools), "--seconds",
                              str(warmup_s + seconds + 2.0)])
    try:
        return row(name, measure(port, warmup_s, seconds), rate_hz)
    finally:
        child.terminate()
        child.wait(20)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one configuration, 3 s")
    parser.add_argument("--seconds", type=float, default=0.0, help="measured window")
    parser.add_argument("--sender", choices=["server", "raw"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, default=100.0, help=argparse.SUPPRESS)
    parser.add_argument("--tools", type=int, default=2, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.sender:
        sender(options.sender, options.port, options.rate, options.tools, options.seconds)
        return 0
    seconds = options.seconds or (3.0 if options.quick else 10.0)
    configurations = [(100.0, 2)] if options.quick else [(100.0, 2), (1000.0, 4)]
    print("| path | tools | tracker Hz | TRANSFORMs/s per tool (median) | messages | "
          "latency p50 ms | p99 ms | max ms |")
    print("|---|---|---|---|---|---|---|---|")
    for rate_hz, tools in configurations:
        print(graph_row(rate_hz, tools, 1.0, seconds), flush=True)
        print(process_row("server", "IgtlServer alone (same poses, one process)", rate_hz,
                          tools, 1.0, seconds), flush=True)
        print(process_row("raw", "reference: pyigtl pack + sendall, raw socket", rate_hz,
                          tools, 1.0, seconds), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
