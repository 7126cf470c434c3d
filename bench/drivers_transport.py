"""Driver -> subscriber transport benchmark (issue 3), with a plain-TCP reference.

    tools/with_env python bench/drivers_transport.py [--quick] [--seconds S]

Each driver runs as its own process (the installed console script, the project's Fast DDS
profile and malloc tuning applied by run_node); this process subscribes, like a recorder
would. Measured per configuration:

* video (``video_driver``, synthetic pattern, ImageFrame on /or/endoscope/frames) at
  640x480, 1920x1080, 3840x2160, 30 and 60 fps, RELIABLE and BEST_EFFORT (set through the
  standard per-topic QoS override parameter): delivered fps, frames lost (from the frame
  number encoded in the pixels), publish -> receive latency (header.stamp to callback)
  mean / p99, capture -> receive p99 (capture time encoded in the pixels), CPU % of the
  driver and of the subscriber process (100 % = one core);
* reference, same run: the same frame bytes (pattern frame, tobytes) sent at the same rate
  by another process over a loopback TCP socket, 16-byte header with send time;
* pose: ``tracker_driver`` 1 tool at 1 kHz; waveform: ``waveform_driver`` group ecg12
  (12 channels x 1 kHz) with 100 ms and 10 ms chunks: latency and loss from sequence numbers.

Numbers only, no pass/fail: the targets of the issue are printed beside them.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------
# Helpers


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_info() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
    return (f"{model}, {os.cpu_count()} cores visible, {int(mem) // 1024} MiB RAM, "
            f"{platform.system()} {platform.release()}, Python {platform.python_version()}")


def executable(name: str) -> str:
    from ament_index_python.packages import get_package_prefix

    return str(Path(get_package_prefix("dicom_or_drivers")) / "lib" / "dicom_or_drivers" / name)


@dataclass
class Result:
    name: str
    received: int = 0
    lost: int = 0
    reordered: int = 0
    seconds: float = 0.0
    latency_ms: list[float] = field(default_factory=list)
    capture_ms: list[float] = field(default_factory=list)
    cpu_driver: float = float("nan")
    cpu_subscriber: float = float("nan")
    note: str = ""

    def row(self) -> str:
        lat = np.array(self.latency_ms) if self.latency_ms else np.array([np.nan])
        cap = np.array(self.capture_ms) if self.capture_ms else np.array([np.nan])
        rate = self.received / self.seconds if self.seconds else 0.0
        return (f"| {self.name} | {rate:.1f} | {self.lost} | {lat.mean():.2f} | "
                f"{np.percentile(lat, 99):.2f} | {np.percentile(cap, 99):.2f} | "
                f"{self.cpu_driver:.0f} | {self.cpu_subscriber:.0f} | {self.note} |")


HEADER = ("| configuration | delivered /s | lost | latency mean ms | latency p99 ms | "
          "capture->recv p99 ms | CPU driver % | CPU subscriber % | note |\n"
          "|---|---|---|---|---|---|---|---|---|")


def count_loss(sequences: list[int]) -> tuple[int, int]:
    """(lost, reordered) from a received sequence of counters."""
    if not sequences:
        return 0, 0
    reordered = sum(1 for a, b in zip(sequences, sequences[1:], strict=False) if b <= a)
    span = max(sequences) - min(sequences) + 1
    return span - len(set(sequences)), reordered


# ------------------------------------------------------------------------------------------
# ROS measurements (this process subscribes; the driver is a child process)


class Subscriber:
    """Collects samples of one topic during a measurement window."""

    def __init__(self, context, msg_type, topic: str, qos, on_sample) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        self.node = rclpy.create_node("bench_subscriber", context=context)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.first = threading.Event()
        self.measuring = False
        self.count_all = 0

        def callback(msg) -> None:
            now = time.time_ns()
            self.count_all += 1
            self.first.set()
            if self.measuring:
                on_sample(msg, now)

        self.subscription = self.node.create_subscription(msg_type, topic, callback, qos)

    def spin_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.executor.spin_once(timeout_sec=0.01)

    def spin_until_first(self, timeout_s: float) -> bool:
        end = time.monotonic() + timeout_s
        while not self.first.is_set() and time.monotonic() < end:
            self.executor.spin_once(timeout_sec=0.05)
        return self.first.is_set()

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()


def run_driver(context, name: str, args: list[str], msg_type, topic: str, qos,
               seconds: float, on_sample, result: Result) -> Result:
    from dicom_or_test_common.ros import isolated_env

    command = [executable(name), "--ros-args", "-r", "__ns:=/or",
               "-p", "require_session_context:=false", "-p", "status_period_s:=1.0"]
    for arg in args:
        command += ["-p", arg]
    child = subprocess.Popen(command, env=isolated_env(context.domain),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    sub = Subscriber(context, msg_type, topic, qos, on_sample)
    try:
        if not sub.spin_until_first(20.0):
            result.note = "no sample received"
            return result
        sub.spin_for(0.7)  # warm-up: discovery settled, caches filled
        sub.measuring = True
        cpu_child, cpu_self, start = cpu_seconds(child.pid), time.process_time(), \
            time.monotonic()
        sub.spin_for(seconds)
        elapsed = time.monotonic() - start
        sub.measuring = False
        result.seconds = elapsed
        result.cpu_driver = 100 * (cpu_seconds(child.pid) - cpu_child) / elapsed
        result.cpu_subscriber = 100 * (time.process_time() - cpu_self) / elapsed
        return result
    finally:
        sub.close()
        child.terminate()
        try:
            child.wait(timeout=15)
        except subprocess.TimeoutExpired:
            child.kill()


def bench_video(context, width: int, height: int, fps: int, reliability: str,
                seconds: float) -> Result:
    from dicom_or_core.sim.video import decode_band
    from dicom_or_msgs.msg import ImageFrame
    from dicom_or_ros.convert import time_to_ns
    from dicom_or_ros.qos import named_qos

    result = Result(f"video {width}x{height} @{fps} {reliability.upper()}")
    sequences: list[int] = []

    def on_sample(msg, now_ns: int) -> None:
        image = msg.image
        pixels = np.frombuffer(image.data, np.uint8).reshape(image.height, image.width, 3)
        decoded = decode_band(pixels)
        if decoded is None:
            return
        sequences.append(decoded[0])
        result.latency_ms.append((now_ns - time_to_ns(msg.context.header.stamp)) / 1e6)
        result.capture_ms.append((now_ns - decoded[1]) / 1e6)

    # Subscriber QoS: what a recorder uses; no deadline requested (always compatible).
    qos = named_qos("video_recording" if reliability == "reliable" else "video")
    args = [f"width:={width}", f"height:={height}", f"fps:={float(fps)}",
            "publish_image_raw:=false",
            f"qos_overrides./or/endoscope/frames.publisher.reliability:={reliability}"]
    run_driver(context, "video_driver", args, ImageFrame, "/or/endoscope/frames", qos,
               seconds, on_sample, result)
    result.received = len(sequences)
    result.lost, result.reordered = count_loss(sequences)
    if result.reordered:
        result.note += f"{result.reordered} reordered "
    return result


def bench_pose(context, rate: float, tools: int, seconds: float) -> Result:
    from dicom_or_msgs.msg import PoseSample
    from dicom_or_ros.convert import time_to_ns
    from dicom_or_ros.qos import named_qos

    result = Result(f"pose {tools} tool(s) @{rate:g} Hz RELIABLE")
    sequences: list[int] = []

    def on_sample(msg, now_ns: int) -> None:
        sequences.append(msg.context.sequence)
        result.latency_ms.append((now_ns - time_to_ns(msg.context.header.stamp)) / 1e6)
        result.capture_ms.append((now_ns - time_to_ns(msg.context.acquisition_time)) / 1e6)

    run_driver(context, "tracker_driver", [f"rate_hz:={rate}", f"tool_count:={tools}",
                                           "marker_rate_hz:=0.0"],
               PoseSample, "/or/tracker/poses", named_qos("pose"), seconds, on_sample, result)
    result.received = len(sequences)
    result.lost, result.reordered = count_loss(sequences)
    return result


def bench_waveform(context, chunk_ms: int, seconds: float) -> Result:
    from dicom_or_msgs.msg import WaveformChunk
    from dicom_or_ros.convert import time_to_ns
    from dicom_or_ros.qos import named_qos

    result = Result(f"waveform 12 ch x 1 kHz, {chunk_ms} ms chunks RELIABLE")
    sequences: list[int] = []
    samples = [0]

    def on_sample(msg, now_ns: int) -> None:
        sequences.append(msg.context.sequence)
        samples[0] += len(msg.samples) // max(msg.channel_count, 1)
        result.latency_ms.append((now_ns - time_to_ns(msg.context.header.stamp)) / 1e6)
        # first sample -> receive: the chunk's duration plus transport.
        result.capture_ms.append((now_ns - time_to_ns(msg.first_sample_time)) / 1e6)

    run_driver(context, "waveform_driver", ["groups:=[ecg12]", f"chunk_ms:={chunk_ms}"],
               WaveformChunk, "/or/patient_monitor/ecg12", named_qos("waveform"), seconds,
               on_sample, result)
    result.received = len(sequences)
    result.lost, result.reordered = count_loss(sequences)
    if result.seconds:
        result.note = f"{samples[0] / result.seconds:.0f} samples/s per channel"
    return result


# ------------------------------------------------------------------------------------------
# Reference: the same bytes over loopback TCP


def tcp_sender(port: int, width: int, height: int, fps: float, seconds: float) -> None:
    """Child process: send pattern frames (16-byte header: send ns, size) at ``fps``."""
    from dicom_or_core.sim.video import PatternSource
    from dicom_or_drivers.pacing import Pacer

    pattern = PatternSource(width, height, "rgb8")
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pacer = Pacer(fps)
        end = time.monotonic() + seconds
        sequence = 0
        while time.monotonic() < end and pacer.wait() is not None:
            payload = pattern.frame(sequence, time.time_ns()).tobytes()
            try:
                sock.sendall(struct.pack("<QQ", time.time_ns(), len(payload)) + payload)
            except (BrokenPipeError, ConnectionResetError):
                return  # the receiver has its window: done
            sequence += 1


def bench_tcp(width: int, height: int, fps: int, seconds: float) -> Result:
    from dicom_or_core.sim.video import decode_band

    result = Result(f"reference: TCP loopback {width}x{height} @{fps}")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    warmup = 0.7
    child = subprocess.Popen([sys.executable, __file__, "--tcp-sender", str(port), str(width),
                              str(height), str(fps), str(seconds + warmup + 0.5)])
    connection, _ = server.accept()
    sequences: list[int] = []

    def read_exact(size: int, buffer: bytearray | None = None) -> memoryview | None:
        view = memoryview(buffer if buffer is not None else bytearray(size))
        got = 0
        while got < size:
            n = connection.recv_into(view[got:], size - got)
            if n == 0:
                return None
            got += n
        return view

    frame_buffer = bytearray(width * height * 3)
    start = time.monotonic()
    measuring_from = start + warmup
    cpu_child = cpu_self = None
    while True:
        header = read_exact(16)
        if header is None:
            break
        sent_ns, size = struct.unpack("<QQ", header)
        payload = read_exact(size, frame_buffer)
        if payload is None:
            break
        now = time.time_ns()
        if time.monotonic() < measuring_from:
            continue
        if cpu_child is None:
            cpu_child, cpu_self, t0 = cpu_seconds(child.pid), time.process_time(), \
                time.monotonic()
        pixels = np.frombuffer(frame_buffer, np.uint8).reshape(height, width, 3)
        decoded = decode_band(pixels)
        sequences.append(decoded[0] if decoded else -1)
        result.latency_ms.append((now - sent_ns) / 1e6)
        if decoded:
            result.capture_ms.append((now - decoded[1]) / 1e6)
        if time.monotonic() - t0 >= seconds:
            result.seconds = time.monotonic() - t0
            result.cpu_driver = 100 * (cpu_seconds(child.pid) - cpu_child) / result.seconds
            result.cpu_subscriber = 100 * (time.process_time() - cpu_self) / result.seconds
            break
    connection.close()
    server.close()
    child.wait(timeout=30)
    result.received = len(sequences)
    result.lost, result.reordered = count_loss([s for s in sequences if s >= 0])
    return result


# ------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1080p30 only, shorter windows")
    parser.add_argument("--seconds", type=float, default=None, help="measurement window")
    parser.add_argument("--tcp-sender", nargs=5, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.tcp_sender:
        port, width, height, fps, seconds = options.tcp_sender
        tcp_sender(int(port), int(width), int(height), float(fps), float(seconds))
        return 0

    from dicom_or_test_common.ros import ros_context

    from dicom_or_ros.runtime import apply_transport_defaults

    apply_transport_defaults()  # the same Fast DDS profile and malloc tuning as the drivers
    seconds = options.seconds or (1.5 if options.quick else 3.0)
    if options.quick:
        sizes, rates = [(1920, 1080)], [30]
    else:
        sizes, rates = [(640, 480), (1920, 1080), (3840, 2160)], [30, 60]
    began = time.monotonic()
    print(f"# drivers_transport {'--quick ' if options.quick else ''}"
          f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})")
    print(f"machine: {machine_info()}")
    print(f"window {seconds:g} s per configuration after 0.7 s warm-up\n")
    print(HEADER, flush=True)
    with ros_context() as context:
        for width, height in sizes:
            for fps in rates:
                for reliability in ("reliable", "best_effort"):
                    print(bench_video(context, width, height, fps, reliability, seconds).row(),
                          flush=True)
                print(bench_tcp(width, height, fps, seconds).row(), flush=True)
        print(bench_pose(context, 1000.0, 1, seconds).row(), flush=True)
        if not options.quick:
            print(bench_pose(context, 1000.0, 4, seconds).row(), flush=True)
        for chunk in ((100,) if options.quick else (100, 10)):
            print(bench_waveform(context, chunk, seconds + (1 if chunk == 100 else 0)).row(),
                  flush=True)
    print(f"\nTargets (issue 3): 1080p30 p99 < 10 ms with 0 lost when RELIABLE; 1080p60 "
          f"sustained; pose 1 kHz p99 < 2 ms.  Total {time.monotonic() - began:.0f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
