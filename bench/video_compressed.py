#!/usr/bin/env python3
"""Compressed video transport (issue 15): recorder CPU and capture -> journal latency, raw
frames (the recorder encodes) against H.264 packets (the driver encodes, the recorder
stores them unchanged).

    tools/with_env python bench/video_compressed.py [--quick] [--seconds S]

Per configuration (1920x1080 synthetic pattern at 30 and 60 fps; ``video_transport`` raw or
h264), two processes on a DDS domain of their own: the installed ``video_driver`` and a
recorder (:class:`~dicom_or_recorder.recorder_node.RecorderNode` run by the same
``run_node`` as the ``recorder`` console script) with
:attr:`~dicom_or_recorder.segments.StreamRecorder.journal_hook` set, which notes for each
journaled frame or packet the time from its acquisition stamp (the driver's capture time,
same host clock) to the journal write. Measured over ``--seconds`` after a 2 s warm-up:

* recorder CPU: process CPU seconds per wall second (/proc/<pid>/stat, 1.0 = one core),
  which for raw video includes receiving 6 MB frames and encoding them with libx264;
* driver CPU the same way (for h264, the encoding moved there);
* capture -> journal latency p50 / p99 (ms), frames journaled per second, and the
  recorder's CPU milliseconds per journaled frame (what holds when the machine is loaded
  and a stream cannot keep its rate).

The raw rows are the reference measured in the same run. Times are wall clock on a shared
machine: compare rows of one run, and note the load average printed with them.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def executable(package: str, name: str) -> str:
    return str(ROOT / "install" / package / "lib" / package / name)


def recorder_role(out: Path, recordings: Path) -> int:
    """The recorder process: RecorderNode with the journal hook writing latencies."""
    from dicom_or_recorder.recorder_node import RecorderNode
    from dicom_or_recorder.segments import StreamRecorder
    from dicom_or_ros.runtime import run_node

    samples: list[tuple[int, int]] = []
    ready = out.with_suffix(".ready")

    def hook(stamp_ns: int) -> None:
        now = time.time_ns()
        if not samples:
            ready.touch()
        samples.append((now, now - stamp_ns))

    StreamRecorder.journal_hook = hook
    code = run_node(RecorderNode, ["recorder", "--ros-args", "-r", "__ns:=/or",
                                   "-p", f"recordings_dir:={recordings}",
                                   "-p", "pacs_port:=0"])
    out.write_text(json.dumps(samples))
    return code


def run_case(transport: str, fps: float, seconds: float, domain: int,
             work: Path) -> dict[str, float]:
    from dicom_or_test_common.ros import isolated_env

    env = isolated_env(domain)
    case = work / f"{transport}_{fps:g}"
    case.mkdir()
    latencies = case / "latency.json"
    recorder = subprocess.Popen([sys.executable, __file__, "--recorder", str(latencies),
                                 str(case / "recordings")], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    driver = subprocess.Popen(
        [executable("dicom_or_drivers", "video_driver"), "--ros-args", "-r", "__ns:=/or",
         "-p", "require_session_context:=false", "-p", "width:=1920", "-p", "height:=1080",
         "-p", f"fps:={fps}", "-p", "publish_image_raw:=false",
         "-p", f"video_transport:={transport}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    result: dict[str, float] = {}
    try:
        deadline = time.monotonic() + 60
        while not latencies.with_suffix(".ready").exists():
            if time.monotonic() > deadline or recorder.poll() is not None or \
                    driver.poll() is not None:
                raise RuntimeError(f"{transport} {fps:g} fps: nothing journaled")
            time.sleep(0.1)
        time.sleep(2.0)  # warm-up: encoders started, discovery settled
        start_ns = time.time_ns()
        rec0, drv0, t0 = cpu_seconds(recorder.pid), cpu_seconds(driver.pid), time.monotonic()
        time.sleep(seconds)
        elapsed = time.monotonic() - t0
        result["recorder_cpu"] = (cpu_seconds(recorder.pid) - rec0) / elapsed
        result["driver_cpu"] = (cpu_seconds(driver.pid) - drv0) / elapsed
        end_ns = time.time_ns()
    finally:
        driver.send_signal(signal.SIGINT)
        driver.wait(timeout=30)
        recorder.send_signal(signal.SIGINT)
        recorder.wait(timeout=60)
    samples = [lat for at, lat in json.loads(latencies.read_text())
               if start_ns <= at <= end_ns]
    samples.sort()
    if samples:
        result["p50_ms"] = samples[len(samples) // 2] / 1e6
        result["p99_ms"] = samples[min(len(samples) - 1, int(len(samples) * 0.99))] / 1e6
    result["journaled_fps"] = len(samples) / ((end_ns - start_ns) / 1e9)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="5 s per configuration")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--recorder", nargs=2, metavar=("OUT", "DIR"), help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.recorder:
        return recorder_role(Path(options.recorder[0]), Path(options.recorder[1]))
    from dicom_or_test_common.ros import reserved_domain_id

    seconds = 5.0 if options.quick else options.seconds
    print(f"load average before: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} "
          f"{os.getloadavg()[2]:.2f} ({os.cpu_count()} cores); {seconds:g} s per row")
    print(f"{'1920x1080':>10} {'transport':>10} {'rec CPU':>8} {'drv CPU':>8} "
          f"{'journaled/s':>11} {'rec ms/fr':>9} {'p50 ms':>8} {'p99 ms':>8}")
    with tempfile.TemporaryDirectory() as tmp, reserved_domain_id() as domain:
        for fps in (30.0, 60.0):
            for transport in ("raw", "h264"):
                try:
                    r = run_case(transport, fps, seconds, domain, Path(tmp))
                except (RuntimeError, subprocess.TimeoutExpired) as exc:
                    print(f"{fps:>8g}fps {transport:>10} failed: {exc}")
                    continue
                print(f"{fps:>7g}fps {transport:>10} {r['recorder_cpu']:>8.2f} "
                      f"{r['driver_cpu']:>8.2f} {r['journaled_fps']:>11.1f} "
                      f"{1000 * r['recorder_cpu'] / max(r['journaled_fps'], 1e-9):>9.1f} "
                      f"{r.get('p50_ms', float('nan')):>8.1f} "
                      f"{r.get('p99_ms', float('nan')):>8.1f}", flush=True)
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}; CPU in "
          "cores (1.00 = one core busy); raw: the recorder encodes (libx264), h264: the "
          "driver encodes, the recorder stores the packets unchanged")
    return 0


if __name__ == "__main__":
    sys.exit(main())
