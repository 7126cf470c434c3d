"""Bytes per second on the wire of each dicom_or stream kind (issue 15 §3).

    tools/with_env python bench/stream_bandwidth.py [--quick] [--seconds S] [--only KIND]

Two network namespaces on one bridge (the topology of bench/discovery_traffic.py): the
installed driver runs in host 0 with the project's UDP-only transport
(``DICOM_OR_DDS_TRANSPORT=udp`` -> config/fastdds_udp_profile.xml, so nothing goes through
the shared memory the namespaces share), a subscriber in host 1 takes the stream raw (CDR
bytes, no deserialisation) with the QoS the recorder uses. Per stream, over a window after
the first sample and a warm-up (9 s, 6 s with --quick: multiples of the 3 s discovery
announcement period, whose bursts are part of the wire bytes):

* *wire*: bytes the driver's host sent on its veth (RTPS + UDP + IP + Ethernet headers,
  fragmentation, heartbeats, discovery announcements), and bytes the subscriber's host sent
  back (ACKNACKs);
* reference, same run: the serialized message bytes the subscriber received (CDR payload),
  so wire / payload is the transport's overhead;
* for the H.264 rows, also the bit rate of the same encoder (``iod.h264.live_encoder``,
  the driver's default ``superfast`` CRF 23) run here on the same synthetic pattern
  (``sim.video.PatternSource``) for 2 s of frames: the encoder's own output, no transport.

Streams: 12-lead ECG (``waveform_driver`` group ecg12, 1 kHz, 100 ms chunks), 4 tools at
1 kHz (``tracker_driver``), H.264 1080p30 and 1080p60 (``video_driver``
``video_transport:=h264``). Raw video is width x height x 3 x fps (ImageFrame rgb8) plus the
overhead ratio measured on the other rows; it is printed as computed, not measured.
With ``--quick`` (6 s) wire/payload of the H.264 rows is noisy (a --quick run read 0.98: a
key frame can fall on either side of the window at the two ends). The synthetic pattern is
far easier to compress than a real endoscope picture: the H.264 figures are a floor, the
level's maximum bit rate (ITU-T H.264 Tables A-1, A-2) the ceiling.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from discovery_traffic import Switch, enter_netns, loadavg  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Stream:
    kind: str
    driver: str
    args: tuple[str, ...]
    topic: str
    msg: str            # dicom_or_msgs.msg type name
    qos: str            # named profile the recorder uses
    nominal: str        # what it carries


STREAMS = [
    Stream("ecg12", "waveform_driver", ("groups:=[ecg12]", "chunk_ms:=100"),
           "/or/patient_monitor/ecg12", "WaveformChunk", "waveform",
           "12 ch x 1000 Hz int16, 10 chunks/s"),
    Stream("pose4", "tracker_driver", ("rate_hz:=1000.0", "tool_count:=4",
                                       "marker_rate_hz:=0.0"),
           "/or/tracker/poses", "PoseSample", "pose", "4 tools x 1000 Hz"),
    Stream("h264_1080p30", "video_driver", ("video_transport:=h264", "width:=1920",
                                            "height:=1080", "fps:=30.0",
                                            "publish_image_raw:=false"),
           "/or/endoscope/frames", "VideoPacket", "video_compressed",
           "1920x1080 @30, superfast CRF 23"),
    Stream("h264_1080p60", "video_driver", ("video_transport:=h264", "width:=1920",
                                            "height:=1080", "fps:=60.0",
                                            "publish_image_raw:=false"),
           "/or/endoscope/frames", "VideoPacket", "video_compressed",
           "1920x1080 @60, superfast CRF 23"),
]


def executable(name: str) -> str:
    found = list((ROOT / "install").glob(f"*/lib/*/{name}"))
    if not found:
        raise RuntimeError(f"{name} is not installed (make build)")
    return str(found[0])


def subscriber_main(ns: str, stream: Stream, domain: int, report_fd: int) -> None:
    """Child in host 1: count raw messages and their serialized bytes; report on SIGUSR1."""
    enter_netns(ns)
    os.environ["ROS_DOMAIN_ID"] = str(domain)
    os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] = str(ROOT / "config" /
                                                      "fastdds_udp_profile.xml")
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    import dicom_or_msgs.msg as msgs
    from dicom_or_ros.qos import named_qos

    counts = [0, 0]
    flags = {"stop": False, "report": False}
    signal.signal(signal.SIGTERM, lambda *_: flags.__setitem__("stop", True))
    signal.signal(signal.SIGUSR1, lambda *_: flags.__setitem__("report", True))
    rclpy.init(signal_handler_options=rclpy.signals.SignalHandlerOptions.NO)
    node = rclpy.create_node("bandwidth_probe")

    def on_raw(data: bytes) -> None:
        counts[0] += 1
        counts[1] += len(data)

    node.create_subscription(getattr(msgs, stream.msg), stream.topic, on_raw,
                             named_qos(stream.qos), raw=True)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    os.write(report_fd, b"ready\n")
    while not flags["stop"]:
        executor.spin_once(timeout_sec=0.05)
        if flags["report"]:
            os.write(report_fd, f"{time.monotonic()} {counts[0]} {counts[1]}\n".encode())
            flags["report"] = False
    node.destroy_node()
    rclpy.try_shutdown()


@dataclass
class Result:
    stream: Stream
    seconds: float = 0.0
    messages_per_s: float = 0.0
    payload_bps: float = 0.0     # CDR bytes/s received (reference)
    wire_bps: float = 0.0        # bytes/s sent by the driver's host
    back_bps: float = 0.0        # bytes/s sent by the subscriber's host
    encoder_bps: float = 0.0     # H.264 rows: the encoder alone, same settings, this run
    load: str = ""
    note: str = ""


class Probe:
    """The subscriber child and its report pipe."""

    def __init__(self, switch: Switch, stream: Stream, domain: int) -> None:
        self.read_fd, write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        # Ignored until the child installs its handler (the default would end it).
        previous = signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        self.pid = os.fork()
        if self.pid == 0:
            code = 0
            try:
                subscriber_main(switch.ns(1), stream, domain, write_fd)
            except BaseException as exc:  # noqa: BLE001 - report and leave the child
                print(f"subscriber: {exc!r}", file=sys.stderr)
                code = 1
            os._exit(code)
        signal.signal(signal.SIGUSR1, previous)
        os.close(write_fd)
        self.buffer = b""
        self._line(30.0)   # "ready": subscribed

    def _line(self, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            if time.monotonic() > deadline:
                raise RuntimeError("subscriber did not answer")
            try:
                self.buffer += os.read(self.read_fd, 4096)
            except BlockingIOError:
                time.sleep(0.02)
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line

    def report(self, timeout: float = 5.0) -> tuple[float, int, int]:
        os.kill(self.pid, signal.SIGUSR1)
        t, n, size = self._line(timeout).split()
        return float(t), int(n), int(size)

    def close(self) -> None:
        try:
            os.kill(self.pid, signal.SIGTERM)
            for _ in range(200):
                if os.waitpid(self.pid, os.WNOHANG)[0]:
                    break
                time.sleep(0.05)
            else:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(self.read_fd)


def measure(switch: Switch, stream: Stream, seconds: float, domain: int) -> Result:
    result = Result(stream)
    command = ["ip", "netns", "exec", switch.ns(0), executable(stream.driver), "--ros-args",
               "-r", "__ns:=/or", "-p", "require_session_context:=false",
               "-p", "status_period_s:=1.0"]
    for arg in stream.args:
        command += ["-p", arg]
    env = {**os.environ, "ROS_DOMAIN_ID": str(domain), "DICOM_OR_DDS_TRANSPORT": "udp"}
    for name in ("FASTDDS_DEFAULT_PROFILES_FILE", "ROS_DISCOVERY_SERVER", "ROS_LOCALHOST_ONLY"):
        env.pop(name, None)
    driver = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    probe = Probe(switch, stream, domain)
    try:
        deadline = time.monotonic() + 30
        while probe.report()[1] == 0:
            if time.monotonic() > deadline or driver.poll() is not None:
                result.note = "no sample received"
                return result
            time.sleep(0.2)
        time.sleep(1.5)   # warm-up: encoder started, discovery settled
        before, (t0, n0, b0) = switch.counters(), probe.report()
        time.sleep(seconds)
        after, (t1, n1, b1) = switch.counters(), probe.report()
        result.load = loadavg()
        elapsed = t1 - t0
        result.seconds = elapsed
        result.messages_per_s = (n1 - n0) / elapsed
        result.payload_bps = (b1 - b0) / elapsed
        result.wire_bps = (after[0][0] - before[0][0]) / elapsed
        result.back_bps = (after[1][0] - before[1][0]) / elapsed
        return result
    finally:
        probe.close()
        driver.terminate()
        try:
            driver.wait(15)
        except subprocess.TimeoutExpired:
            driver.kill()
            driver.wait()


def encoder_rate(width: int, height: int, fps: float, frames: int) -> tuple[float, float]:
    """(bytes/s at ``fps``, CPU ms per frame) of the driver's encoder on the pattern."""
    from dicom_or_core.iod.h264 import live_encoder
    from dicom_or_core.sim.video import PatternSource

    source = PatternSource(width, height)
    encoder = live_encoder(height, width, fps, "rgb8")
    size = 0
    cpu = time.process_time()
    for i in range(frames):
        for packet in encoder.encode(source.frame(i, int(i * 1e9 / fps)), i):
            size += len(packet.data)
    for packet in encoder.flush():
        size += len(packet.data)
    cpu_ms = (time.process_time() - cpu) * 1e3 / frames
    return size / frames * fps, cpu_ms


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="6 s windows")
    parser.add_argument("--seconds", type=float, help="measuring window per stream")
    parser.add_argument("--only", help="only streams whose kind contains this")
    options = parser.parse_args()
    if os.geteuid() != 0:
        print("stream_bandwidth: needs root (ip netns); skipped")
        return 0
    seconds = options.seconds or (6.0 if options.quick else 9.0)
    streams = [s for s in STREAMS if not options.only or options.only in s.kind]
    domain = 100 + (os.getpid() + 50) % 100
    print(f"stream_bandwidth: {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC, "
          f"uptime load {Path('/proc/loadavg').read_text().strip()}")
    import rclpy  # noqa: F401 - imported once, inherited by the forked subscriber

    import dicom_or_msgs.msg  # noqa: F401
    import dicom_or_ros.qos  # noqa: F401
    results = []
    with Switch(2) as switch:
        for stream in streams:
            result = measure(switch, stream, seconds, domain)
            if stream.kind.startswith("h264"):
                fps = 60.0 if stream.kind.endswith("60") else 30.0
                frames = int(2 * fps)
                result.encoder_bps, cpu_ms = encoder_rate(1920, 1080, fps, frames)
                result.note += f"encoder alone {cpu_ms:.1f} ms CPU/frame"
            if result.messages_per_s:
                result.note += (f"; {result.payload_bps / result.messages_per_s / 1e3:.2f} kB "
                                "per message")
            results.append(result)
            print(f"  {stream.kind}: {result.messages_per_s:.1f} msg/s, wire "
                  f"{result.wire_bps / 1e3:.1f} kB/s, payload {result.payload_bps / 1e3:.1f} "
                  f"kB/s (load {result.load}) {result.note}", flush=True)
    overheads = [r.wire_bps / r.payload_bps for r in results if r.payload_bps]
    print()
    print("| stream | carries | messages/s | wire kB/s (sender host) | Mbit/s | back-channel "
          "kB/s | reference: CDR payload kB/s | wire/payload | encoder alone kB/s | load |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        ratio = f"{r.wire_bps / r.payload_bps:.3f}" if r.payload_bps else ""
        enc = f"{r.encoder_bps / 1e3:.1f}" if r.encoder_bps else ""
        print(f"| {r.stream.kind} | {r.stream.nominal} | {r.messages_per_s:.1f} | "
              f"{r.wire_bps / 1e3:.1f} | {r.wire_bps * 8 / 1e6:.2f} | {r.back_bps / 1e3:.1f} | "
              f"{r.payload_bps / 1e3:.1f} | {ratio} | {enc} | {r.load} |")
    video_ratio = next((r.wire_bps / r.payload_bps for r in results
                        if r.stream.kind.startswith("h264") and r.payload_bps), None)
    ratio = video_ratio or (max(overheads) if overheads else 1.0)
    source = "the H.264 row's" if video_ratio else "the largest measured"
    for w, h, fps in ((1920, 1080, 30), (1920, 1080, 60), (3840, 2160, 30)):
        raw = w * h * 3 * fps
        print(f"| raw_{h}p{fps} (computed) | {w}x{h} rgb8 @{fps} | {fps} | "
              f"{raw * ratio / 1e3:.0f} | {raw * ratio * 8 / 1e6:.0f} | | {raw / 1e3:.0f} | "
              f"{ratio:.3f} ({source}) | | |")
    print(f"end load {Path('/proc/loadavg').read_text().strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
