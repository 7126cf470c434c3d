#!/usr/bin/env python3
"""What one OR sends to the PACS per recorded hour, per stream kind (issue 15 §3).

    tools/with_env python bench/or_hour_output.py [--quick] [--seconds S]
        [--video-transport h264|raw] [--only endoscope|tracker|monitor] [--keep]

Runs ``dicom_or_launch or_demo`` on a DDS domain of its own (endoscope 1080p30 with the
given video transport, 4 tools at 1 kHz, 12-lead ECG at 1 kHz plus hemodynamic ART + PLETH
at 250 Hz, bridge, recorder local-only, OR view off) for S seconds of recording after every
stream is live, stops it with SIGINT (the recorder finalises its open segments), then sizes
the instances written per SOP class and scales them to one hour. Per node, the CPU used
during the recording window (from /proc, 1.00 = one core) and the load average.

Reference, same run: the samples' own bytes per second (int16 ECG, float64 x 7 per pose,
the encoded video's bytes as delivered), from the recorder's status counters, so
"DICOM / payload" is what the IODs add. Instances per hour follow from the recorder's
segment length (``max_segment_s``, default 300 s: 12 per stream per hour), not from this
short run, which writes one instance per stream.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dicom_or_test_common.peers import free_tcp_port  # noqa: E402
from dicom_or_test_common.ros import isolated_env, reserved_domain_id  # noqa: E402
from soak import StatusListener, node_processes, wait_for_series  # noqa: E402

SEGMENT_S = 300.0   # config/recorder.yaml max_segment_s
# or_demo's device switches and the streams each one brings.
DEVICES = {"endoscope": 1, "tracker": 1, "monitor": 2}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="20 s of recording")
    parser.add_argument("--seconds", type=float)
    parser.add_argument("--video-transport", default="h264", choices=("h264", "raw"))
    parser.add_argument("--keep", action="store_true", help="keep the recorded instances")
    parser.add_argument("--only", choices=tuple(DEVICES),
                        help="start only this device (the recorder's CPU for its streams)")
    options = parser.parse_args()
    seconds = options.seconds or (20.0 if options.quick else 45.0)
    print(f"or_hour_output: {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC, "
          f"video_transport {options.video_transport}, devices {options.only or 'all'}, "
          "uptime load "
          f"{Path('/proc/loadavg').read_text().strip()}")
    work = Path(tempfile.mkdtemp(prefix="dicom_or_or_hour_"))
    output = work / "recordings"
    port = free_tcp_port()
    arguments = [f"output_dir:={output}", f"bridge_port:={port}", "dicomweb_port:=0",
                 "use_view:=false", "video_width:=1920", "video_height:=1080",
                 "video_fps:=30.0", f"video_transport:={options.video_transport}",
                 "tracker_rate:=1000.0", "tracker_tools:=4",
                 "monitor_groups:=[ecg12, hemodynamic]"]
    streams = sum(DEVICES.values())
    if options.only:
        arguments += [f"use_{d}:=false" for d in DEVICES if d != options.only]
        streams = DEVICES[options.only]
    with reserved_domain_id() as domain:
        env = isolated_env(domain)
        os.environ.update({k: v for k, v in env.items() if k.startswith("ROS_")})
        log = open(work / "launch.log", "w")
        graph = subprocess.Popen(["dicom_or_launch", "or_demo", *arguments], env=env,
                                 stdout=log, stderr=subprocess.STDOUT)
        status = StatusListener()
        try:
            if not wait_for_series(port, streams, 120):
                print(f"or_hour_output: streams did not become live; see {work}/launch.log")
                return 1
            time.sleep(2.0)
            nodes = node_processes(graph.pid)
            cpu0 = {n: cpu_seconds(p) for n, p in nodes.items()}
            first = status.latest
            t0 = time.monotonic()
            time.sleep(seconds)
            elapsed = time.monotonic() - t0
            cpu = {n: (cpu_seconds(p) - cpu0[n]) / elapsed for n, p in nodes.items()
                   if Path(f"/proc/{p}").exists()}
            last = status.latest
            load = Path("/proc/loadavg").read_text().split()[0]
            graph.send_signal(signal.SIGINT)
            graph.wait(timeout=120)
        finally:
            status.close()
            if graph.poll() is None:
                graph.kill()
                graph.wait()
            log.close()
    import pydicom

    recorded_s = {s["topic"]: s for s in last.get("streams", [])}
    started_s = {s["topic"]: s for s in first.get("streams", [])}
    rates = {}
    for topic, s in recorded_s.items():
        before = started_s.get(topic, {}).get("samples", 0)
        rates[topic] = (s.get("samples", 0) - before) / elapsed
    # Per SOP class: bytes, and the samples the instances hold (frames, samples per channel,
    # poses), so bytes per recorded hour = bytes per sample x the nominal rate, whatever the
    # loaded machine delivered during the window.
    per_class: dict[str, list[int]] = {}
    units: dict[str, int] = {}
    nominal: dict[str, tuple[float, str, float]] = {}   # per hour, unit, payload B/unit
    for path in sorted(output.rglob("*.dcm")):
        ds = pydicom.dcmread(path)
        key = f"{ds.Modality} {ds.SOPClassUID.name}"
        per_class.setdefault(key, []).append(path.stat().st_size)
        if "NumberOfFrames" in ds:
            count = int(ds.NumberOfFrames)
            nominal[key] = (30.0 * 3600, "frames", 0.0)
        elif "WaveformSequence" in ds:
            group = ds.WaveformSequence[0]
            count = int(group.NumberOfWaveformSamples)
            channels = sum(int(g.NumberOfWaveformChannels) for g in ds.WaveformSequence)
            nominal[key] = (float(group.SamplingFrequency) * 3600, "samples/channel",
                            2.0 * channels)   # int16 per channel (WaveformChunk.samples)
        else:   # pose SR: the points of every "Path Vertex" SCOORD3D (3 values each)
            count = 0
            stack = list(ds.get("ContentSequence", []))
            while stack:
                item = stack.pop()
                stack.extend(item.get("ContentSequence", []))
                name = item.ConceptNameCodeSequence[0].CodeMeaning \
                    if "ConceptNameCodeSequence" in item else ""
                if item.ValueType == "SCOORD3D" and name == "Path Vertex":
                    count += len(item.GraphicData) // 3
            # PoseSample: position (3) + orientation quaternion (4) float64
            nominal[key] = (1000.0 * 4 * 3600, "poses", 56.0)
        units[key] = units.get(key, 0) + count
    print(f"recording window {elapsed:.1f} s, load {load}")
    print()
    print("| node | CPU (cores) |")
    print("|---|---|")
    for name, value in sorted(cpu.items()):
        print(f"| {name} | {value:.2f} |")
    print()
    print("| stream | samples/s during the window |")
    print("|---|---|")
    for topic, rate in sorted(rates.items()):
        print(f"| {topic} | {rate:.1f} |")
    print()
    print("| instances (Modality, SOP Class) | files | MB written | samples held | bytes per "
          "sample | reference: payload bytes per sample | MB per recorded hour at the "
          "nominal rate | instances per hour (300 s segments) |")
    print("|---|---|---|---|---|---|---|---|")
    total_h = 0.0
    for key, sizes in sorted(per_class.items()):
        per_hour_units, unit, payload = nominal[key]
        size = sum(sizes)
        per_unit = size / units[key] if units[key] else 0.0
        per_hour = per_unit * per_hour_units / 1e6
        total_h += per_hour
        ref = f"{payload:.0f}" if payload else "(H.264: bench/stream_bandwidth.py)"
        print(f"| {key} | {len(sizes)} | {size / 1e6:.2f} | {units[key]} {unit} | "
              f"{per_unit:.1f} | {ref} | {per_hour:.0f} | {3600 / SEGMENT_S * len(sizes):.0f} |")
    print(f"| **total** | | | | | | **{total_h:.0f}** | |")
    if options.keep:
        print(f"output kept in {output}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    print(f"end load {Path('/proc/loadavg').read_text().strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
