#!/usr/bin/env python3
"""The OR graph across hosts: compressed video from host A recorded on host B over a
100 Mbit/s link, next to the same streams on one host over shared memory.

    tools/with_env python bench/multi_host.py [--quick]

Hosts are network namespaces on one switch (test support ``netns.Network``; root needed):
A runs the endoscope (``video_transport:=h264``, synthetic pattern), B the session
context, bridge and recorder (``dds_transport:=udp``, both ends of each link limited to
100 Mbit/s by tbf). The reference row runs both roles in one host with the project's
shared-memory profile. Per row, after recording has started and a warm-up:

* recorded /s, frames lost: the recorder's ``samples`` and sequence gaps (``lost_messages``
  less the packets before its first key frame, ``dropped_until_key_frame``) over the window;
* link Mbit/s: bytes A's ``eth0`` sent over the window (the reference: ~0, no network);
* capture->B p50 / p99 ms: a second subscriber on B (after the window, so it does not
  double the link traffic of the first part) takes ``time.time_ns()`` minus the packet's
  acquisition time (the namespaces share one clock).

The driver's encoder needs CPU for the picture it gets: on 2 shared cores a noisy 1080p picture
is encoded at 5-15 fps, which would measure the encoder, not the link. So the "link" rows
publish real-bitrate access units instead (a 4 s noisy clip encoded once by ffmpeg with the
driver's settings: High Profile, CRF 23, an IDR per second, the level's 62.5 Mbit/s cap:
the worst case of a 1080p camera), looped at the nominal rate from
A as VideoPackets with the driver's QoS, to a subscriber on B: packets /s, lost (sequence
gaps), link Mbit/s, capture->B latency; at 1080p30 also with 0.1 % and 1 % of A's Ethernet
frames dropped in the switch (``Network.loss``).

Discovery traffic: bytes in and out of host C, which runs one idle participant and takes no
data, over the first seconds of the whole graph (A: endoscope, tracker, monitor; B: bridge,
recorder) with multicast discovery and with a Fast DDS Discovery Server on B.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve()
VIDEO_TOPIC = "/or/endoscope/frames"
DS_PORT = 11811


def latency_probe(seconds: float) -> int:
    """(Run on host B.) Capture -> receive latency of the video packets for ``seconds``."""
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    from dicom_or_msgs.msg import VideoPacket
    from dicom_or_ros.runtime import apply_transport_defaults

    apply_transport_defaults()
    rclpy.init()
    node = rclpy.create_node("latency_probe")
    latencies: list[float] = []
    sequences: list[int] = []
    payload = [0]

    def on_packet(msg: VideoPacket) -> None:
        t = msg.context.acquisition_time
        latencies.append((time.time_ns() - (t.sec * 10**9 + t.nanosec)) / 1e6)
        sequences.append(msg.context.sequence)
        payload[0] += len(msg.data)

    node.create_subscription(VideoPacket, VIDEO_TOPIC, on_packet,
                             QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
    deadline = time.monotonic() + 30
    while not latencies and time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.1)
    latencies.clear()  # the first ones may be history delivered late
    sequences.clear()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        rclpy.spin_once(node, timeout_sec=0.1)
    node.destroy_node()
    rclpy.try_shutdown()
    ordered = sorted(latencies)
    result: dict[str, float] = {"count": len(ordered), "payload_bytes": payload[0],
                                "lost": (sequences[-1] - sequences[0] + 1 - len(sequences)
                                         if sequences else 0)}
    if ordered:
        result |= {"p50": statistics.median(ordered),
                   "p99": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]}
    print(json.dumps(result), flush=True)
    return 0


def publish_packets(clip: str, fps: float, seconds: float) -> int:
    """(Run on host A.) The access units of ``clip`` as VideoPackets at ``fps``, looped, with
    the driver's QoS: the link's load of a real picture without the encoder's CPU."""
    import av
    import rclpy

    from dicom_or_msgs.msg import VideoPacket
    from dicom_or_ros.qos import named_qos
    from dicom_or_ros.runtime import apply_transport_defaults

    with av.open(clip) as container:
        units = [(bytes(p), bool(p.is_keyframe)) for p in container.demux(video=0) if p.size]
    apply_transport_defaults()
    rclpy.init()
    node = rclpy.create_node("packet_publisher")
    publisher = node.create_publisher(VideoPacket, VIDEO_TOPIC, named_qos("video_compressed"))
    period_ns, start = int(1e9 / fps), time.monotonic_ns()
    sequence = 0
    stop = threading.Event()  # the network's teardown ends us with SIGTERM
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    while time.monotonic_ns() - start < seconds * 1e9 and not stop.is_set():
        data, key = units[sequence % len(units)]
        msg = VideoPacket()
        now = time.time_ns()
        msg.context.sequence = sequence
        msg.context.acquisition_time.sec, msg.context.acquisition_time.nanosec = divmod(
            now, 10**9)
        msg.format, msg.key_frame, msg.pts, msg.data = "h264", key, sequence, data
        publisher.publish(msg)
        sequence += 1
        rclpy.spin_once(node, timeout_sec=0)
        delay = start + sequence * period_ns - time.monotonic_ns()
        if delay > 0:
            time.sleep(delay / 1e9)
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


def qdisc_drops(ns: str, dev: str) -> int:
    """Packets the link's tbf dropped (its queue full), from ``tc -s qdisc``."""
    out = subprocess.run(["tc", "-s", "-n", ns, "qdisc", "show", "dev", dev],
                         capture_output=True, text=True).stdout
    return sum(int(part.split()[1].rstrip(",")) for part in out.split("(")[1:]
               if part.startswith("dropped"))


def link_case(clip: Path, fps: float, across_hosts: bool, window_s: float,
              loss_percent: float = 0.0) -> dict:
    """Real-bitrate packets from A to a subscriber on B (or both on one host over SHM)."""
    from dicom_or_test_common.netns import Network
    from dicom_or_test_common.ros import reserved_domain_id

    with reserved_domain_id() as domain, \
            Network(host_names=("a", "b") if across_hosts else ("a",)) as net:
        a = net["a"]
        b = net["b"] if across_hosts else a
        env = dict(base_env(domain), DICOM_OR_DDS_TRANSPORT="udp" if across_hosts else "shm")
        warm_s = 4.0
        if loss_percent:
            net.loss("a", loss_percent)  # frames from A lost in the switch
        a.popen([sys.executable, str(HERE), "--publish-packets", str(clip), str(fps),
                 str(window_s + warm_s + 40)], env=env)
        probe = b.popen([sys.executable, str(HERE), "--latency-probe", str(window_s + warm_s)],
                        env=env, stdout=subprocess.PIPE, text=True)
        time.sleep(warm_s + 2)  # discovery, then the probe's first packet
        c0, t0 = net.counters("a"), time.monotonic()
        time.sleep(window_s - 2)
        c1, t1 = net.counters("a"), time.monotonic()
        drops = qdisc_drops(a.ns, "eth0") + (qdisc_drops(net.switch, b.port)
                                             if across_hosts else 0)
        out, _ = probe.communicate(timeout=120)
        result = json.loads(out.strip().splitlines()[-1])
        result["qdisc_drops"] = drops
        result["link_mbit_s"] = (c1["tx_bytes"] - c0["tx_bytes"]) * 8 / (t1 - t0) / 1e6
        result["per_s"] = result["count"] / (window_s + warm_s)
        return result


def idle_participant() -> int:
    """(Run on host C.) One participant that subscribes to nothing, until SIGTERM."""
    import rclpy

    from dicom_or_ros.runtime import apply_transport_defaults

    apply_transport_defaults()
    rclpy.init()
    node = rclpy.create_node("idle_participant")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.is_set():
        rclpy.spin_once(node, timeout_sec=0.2)
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


class Status:
    """The recorder's ~/status from test support's recorder_probe, newest kept."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc, self.last = proc, {}
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                item = json.loads(line)
            except ValueError:
                continue
            if "status" in item:
                self.last = {s["topic"]: s for s in item["status"]["streams"]}

    def video(self) -> dict:
        return self.last.get(VIDEO_TOPIC, {})

    def wait_recording(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            v = self.video()
            if v.get("recording") and v.get("samples", 0) > 0:
                return
            time.sleep(0.2)
        raise RuntimeError(f"the recorder did not record the video in {timeout_s:g} s")


def gaps(stream: dict) -> int:
    counters = {c["name"]: c["value"] for c in stream.get("counters", [])}
    return stream["lost_messages"] - counters.get("dropped_until_key_frame", 0)


def launch(host, env: dict[str, str], log: Path, *args: str) -> subprocess.Popen:
    return host.popen(["dicom_or_launch", "or_demo", *args], env=env,
                      stdout=open(log, "w"), stderr=subprocess.STDOUT)


def stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    for proc in procs:
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def base_env(domain: int) -> dict[str, str]:
    from dicom_or_test_common.ros import isolated_env

    env = isolated_env(domain)
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "SUBNET"
    return env


def noisy_clip(path: Path, fps: float) -> Path:
    """A 4 s 1080p clip with moving content and film-grain-like noise (ffmpeg's testsrc2 +
    noise): H.264 of it costs megabits per second like a real endoscope's picture, where
    the synthetic pattern (flat colours, a counter) compresses to ~1 Mbit/s."""
    # As the driver encodes (docs/drivers.md): x264 High Profile, CRF 23, an IDR per second,
    # an access unit delimiter per unit; Annex B, so each demuxed packet is one unit.
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i",
                    f"testsrc2=size=1920x1080:rate={fps:g},noise=alls=8:allf=t", "-t", "4",
                    "-c:v", "libx264", "-preset", "superfast", "-crf", "23", "-profile:v",
                    "high", "-pix_fmt", "yuv420p", "-g", f"{fps:g}",
                    # the driver's cap: Level 4.1/4.2's maximum bit rate, 62.5 Mbit/s (VBV)
                    "-x264-params", "vbv-maxrate=62500:vbv-bufsize=62500", "-bsf:v",
                    "h264_metadata=aud=insert", "-f", "h264", str(path)],
                   check=True, timeout=300)
    return path


DEVICES_BESIDE = ["tracker_rate:=1000.0", "tracker_tools:=4", "monitor_groups:=[ecg12]"]


def video_case(fps: float, across_hosts: bool, window_s: float, workdir: Path,
               source: str = "pattern", beside: bool = False) -> dict:
    """One row: A's compressed video recorded on B (or both on one host over SHM);
    ``beside``: with A's tracker (4 tools at 1 kHz) and 12-lead ECG recorded too."""
    from dicom_or_test_common.netns import Network
    from dicom_or_test_common.ros import reserved_domain_id

    with reserved_domain_id() as domain, \
            Network(host_names=("a", "b") if across_hosts else ("a",)) as net:
        a = net["a"]
        b = net["b"] if across_hosts else a
        env = base_env(domain)
        transport = "udp" if across_hosts else "shm"
        probe_env = dict(env, DICOM_OR_DDS_TRANSPORT=transport)
        common = [f"dds_transport:={transport}", "use_view:=false"]
        archive = launch(b, env, workdir / "b.log", *common, "use_endoscope:=false",
                         "use_tracker:=false", "use_monitor:=false", "dicomweb_port:=-1",
                         f"output_dir:={workdir / 'recordings'}", f"bridge_host:={b.address}")
        devices = launch(a, env, workdir / "a.log", *common, "use_bridge:=false",
                         "use_recorder:=false",
                         *(DEVICES_BESIDE if beside else
                           ["use_tracker:=false", "use_monitor:=false"]),
                         "video_transport:=h264", "video_width:=1920", "video_height:=1080",
                         f"video_fps:={fps}", f"video_source:={source}")
        status = Status(b.popen([sys.executable, "-m", "dicom_or_test_common.recorder_probe"],
                                env=probe_env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True))
        try:
            status.wait_recording(120)
            time.sleep(3.0)  # warm-up: the first key frame, the encoder's pace
            v0, c0, t0 = status.video(), net.counters("a"), time.monotonic()
            others0 = dict(status.last)
            time.sleep(window_s)
            v1, c1, t1 = status.video(), net.counters("a"), time.monotonic()
            probe = b.popen([sys.executable, str(HERE), "--latency-probe",
                             str(window_s / 2)], env=probe_env, stdout=subprocess.PIPE,
                            text=True)
            out, _ = probe.communicate(timeout=120)
            latency = json.loads(out.strip().splitlines()[-1])
            v2 = status.video()
            others2, t2 = dict(status.last), time.monotonic()
        finally:
            stop([devices, archive])
        seconds = t1 - t0
        others = {topic: {"lost": gaps(s) - gaps(others0.get(topic, s)),
                          "samples_per_s": (s["samples"] - others0.get(topic, s)["samples"])
                          / (t2 - t0)}
                  for topic, s in others2.items() if topic != VIDEO_TOPIC}
        return {"recorded_per_s": (v1["samples"] - v0["samples"]) / seconds,
                "lost": gaps(v2) - gaps(v0),
                "link_mbit_s": (c1["tx_bytes"] - c0["tx_bytes"]) * 8 / seconds / 1e6,
                "bytes_per_s": (c1["tx_bytes"] - c0["tx_bytes"]) / seconds,
                "latency": latency, "others": others}


def discovery_case(server: bool, seconds: float, workdir: Path) -> dict:
    """Bytes through host C's link (one idle participant, no data) while the graph on A
    and B starts and runs for ``seconds``."""
    from dicom_or_test_common.netns import Network
    from dicom_or_test_common.ros import reserved_domain_id

    with reserved_domain_id() as domain, Network() as net:
        a, b, c = net["a"], net["b"], net["c"]
        env = base_env(domain)
        common = ["dds_transport:=udp", "use_view:=false"]
        if server:
            b.popen(["dicom_or_discovery_server", "--address", b.address, "--port",
                     str(DS_PORT)], env=env, stdout=subprocess.DEVNULL)
            common.append(f"discovery_server:={b.address}:{DS_PORT}")
            env_c = dict(env, ROS_DISCOVERY_SERVER=f"{b.address}:{DS_PORT}")
        else:
            env_c = env
        start = {h: net.counters(h) for h in "abc"}
        idle = c.popen([sys.executable, str(HERE), "--idle-participant"],
                       env=dict(env_c, DICOM_OR_DDS_TRANSPORT="udp"))
        procs = [
            launch(b, env, workdir / "b.log", *common, "use_endoscope:=false",
                   "use_tracker:=false", "use_monitor:=false", "dicomweb_port:=-1",
                   f"output_dir:={workdir / 'recordings'}", f"bridge_host:={b.address}"),
            launch(a, env, workdir / "a.log", *common, "use_bridge:=false",
                   "use_recorder:=false", "video_width:=640", "video_height:=480",
                   "video_fps:=15.0")]
        time.sleep(seconds)
        end = {h: net.counters(h) for h in "abc"}
        stop([*procs, idle])
        c_bytes = sum(end["c"][k] - start["c"][k] for k in ("rx_bytes", "tx_bytes"))
        return {"c_bytes": c_bytes, "c_kib_s": c_bytes / seconds / 1024}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter windows, 1080p30 only")
    parser.add_argument("--beside-only", action="store_true",
                        help="only the rows with 4 tools at 1 kHz and ECG12 beside the video")
    parser.add_argument("--latency-probe", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--idle-participant", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--publish-packets", nargs=3, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.latency_probe is not None:
        return latency_probe(options.latency_probe)
    if options.idle_participant:
        return idle_participant()
    if options.publish_packets:
        clip, fps, seconds = options.publish_packets
        return publish_packets(clip, float(fps), float(seconds))
    if os.geteuid() != 0:
        print("multi_host: skipped (network namespaces need root)")
        return 0
    window = 8.0 if options.quick else 15.0
    rates = [30.0] if options.quick else [30.0, 60.0]
    print(f"load before: {os.getloadavg()[0]:.2f} (1 min)")
    print("| configuration | recorded /s | frames lost | link Mbit/s | capture->B p50 ms "
          "| p99 ms | load (1 min) |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="bench_multi_host_") as tmp:
        for fps in rates:
            work = Path(tmp) / f"{fps:g}-beside"
            work.mkdir()
            row = video_case(fps, True, window, work, beside=True)
            lat, others = row["latency"], row["others"]
            beside = ", ".join(f"{t.rsplit('/', 1)[-1]} {o['samples_per_s']:.0f}/s "
                               f"lost {o['lost']}" for t, o in sorted(others.items()))
            print(f"| recorder: driver h264 1080p{fps:g} (pattern) + 4 tools at 1 kHz + "
                  f"ECG12 beside it ({beside}), A -> B, UDP, 100 Mbit/s | "
                  f"{row['recorded_per_s']:.1f} | {row['lost']} | {row['link_mbit_s']:.2f} | "
                  f"{lat.get('p50', float('nan')):.1f} | {lat.get('p99', float('nan')):.1f} | "
                  f"{os.getloadavg()[0]:.2f} |", flush=True)
        if options.beside_only:
            return 0
        for fps in rates:
            for across in (True, False):
                work = Path(tmp) / f"{fps:g}-{across}"
                work.mkdir()
                row = video_case(fps, across, window, work)
                name = (f"recorder: driver h264 1080p{fps:g} (pattern), A -> B, UDP, 100 Mbit/s"
                        if across else "reference: the same, one host, shared memory")
                lat = row["latency"]
                print(f"| {name} | {row['recorded_per_s']:.1f} | {row['lost']} | "
                      f"{row['link_mbit_s']:.2f} | {lat.get('p50', float('nan')):.1f} | "
                      f"{lat.get('p99', float('nan')):.1f} | {os.getloadavg()[0]:.2f} |",
                      flush=True)
        for fps in rates:
            clip = noisy_clip(Path(tmp) / f"clip{fps:g}.h264", fps)
            for across, loss in ((True, 0.0), (False, 0.0), (True, 0.1), (True, 1.0)):
                if loss and fps != rates[0]:
                    continue
                row = link_case(clip, fps, across, window, loss)
                name = (f"link: h264 1080p{fps:g} noisy picture, A -> B, UDP, 100 Mbit/s"
                        if across else "reference: the same, one host, shared memory")
                if loss:
                    name = f"link: the same 1080p{fps:g}, {loss:g} % of A's frames lost"
                print(f"| {name} | {row['per_s']:.1f} | {row['lost']} | "
                      f"{row['link_mbit_s']:.2f} | {row.get('p50', float('nan')):.1f} | "
                      f"{row.get('p99', float('nan')):.1f} | {os.getloadavg()[0]:.2f} |",
                      flush=True)
        seconds = 20.0 if options.quick else 30.0
        print()
        print(f"discovery traffic through host C (idle participant), first {seconds:g} s "
              "of the graph (A: endoscope 640x480, tracker, monitor; B: bridge, recorder):")
        print("| discovery | bytes through C | KiB/s | load (1 min) |")
        print("|---|---|---|---|")
        for server in (False, True):
            work = Path(tmp) / f"discovery-{server}"
            work.mkdir()
            row = discovery_case(server, seconds, work)
            name = "Fast DDS Discovery Server on B" if server else "multicast (SPDP)"
            print(f"| {name} | {row['c_bytes']} | {row['c_kib_s']:.1f} | "
                  f"{os.getloadavg()[0]:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
