#!/usr/bin/env python3
"""Soak: the OR demo graph recording for an hour, as an OR day would.

Runs ``dicom_or_launch or_demo`` (endoscope 1080p30, 4 tools at 1 kHz, 12-lead ECG at
1 kHz, hemodynamic ART + PLETH at 250 Hz, bridge, recorder in local-only mode) on a DDS
domain of its own, and prints:

* RSS of every node every 30 s, and each node's growth per hour (least-squares slope after
  the first 2 minutes of warm-up);
* per stream, from the recorder's status just before the stop: samples recorded, lost
  messages (sequence gaps), frames dropped by the encoder's back-pressure or at shutdown;
* the instances written (number and size per SOP class) and dciodvfy's verdict on each;
* C-FIND SERIES latency (pynetdicom, 20 queries) at the start and at the end, the start
  being the reference: the archive grows during the run and must not slow the answer;
* how long the recorder took to exit after SIGINT, with its last segments final.

``--json FILE`` also writes the figures as JSON (the 5-minute system test asserts on it).

    tools/with_env python bench/soak.py [--minutes 60] [--quick] [--width 1920 ...]
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

from dicom_or_test_common.peers import dciodvfy, free_tcp_port, have
from dicom_or_test_common.ros import isolated_env, reserved_domain_id
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

RSS_PERIOD_S = 30.0
WARMUP_S = 120.0


def node_processes(launcher_pid: int) -> dict[str, int]:
    """Node name -> pid of the launcher's children (from their ``__node:=`` remap)."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) != launcher_pid:
                continue
            args = (stat.parent / "cmdline").read_bytes().decode().split("\0")
        except (OSError, ValueError, IndexError):
            continue
        for arg in args:
            if arg.startswith("__node:="):
                found[arg.split(":=", 1)[1]] = int(stat.parent.name)
    return found


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def slope_per_hour(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MiB) in MiB per hour."""
    if len(samples) < 3:
        return float("nan")
    ts, ys = zip(*samples, strict=True)
    mt, my = statistics.fmean(ts), statistics.fmean(ys)
    var = sum((t - mt) ** 2 for t in ts)
    return 3600 * sum((t - mt) * (y - my) for t, y in zip(ts, ys, strict=True)) / var \
        if var else float("nan")


def cfind_series(port: int, count: int) -> tuple[list[float], int]:
    """``count`` Study Root SERIES queries (all series), latency of each; series found."""
    ae = AE(ae_title="SOAK")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    latencies, found = [], 0
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOM_OR")
    if not assoc.is_established:
        return [], 0
    try:
        studies = Dataset()
        studies.QueryRetrieveLevel = "STUDY"
        studies.StudyInstanceUID = ""
        uids = [str(a.StudyInstanceUID) for s, a in assoc.send_c_find(
            studies, StudyRootQueryRetrieveInformationModelFind) if s and s.Status == 0xFF00]
        for _ in range(count):
            started = time.monotonic()
            found = 0
            for uid in uids:
                query = Dataset()
                query.QueryRetrieveLevel = "SERIES"
                query.StudyInstanceUID = uid
                query.SeriesInstanceUID = ""
                query.Modality = ""
                query.RetrieveURL = ""
                found += sum(1 for s, _ in assoc.send_c_find(
                    query, StudyRootQueryRetrieveInformationModelFind)
                    if s and s.Status == 0xFF00)
            latencies.append(time.monotonic() - started)
    finally:
        assoc.release()
    return latencies, found


def wait_for_series(port: int, want: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        _, found = cfind_series(port, 1)
        if found >= want:
            return True
        time.sleep(1.0)
    return False


class StatusListener:
    """The recorder's latest status (RecorderStatus on /or/recorder/status, as a dict),
    kept by a thread."""

    def __init__(self) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        from dicom_or_msgs.msg import RecorderStatus
        from dicom_or_ros.qos import named_qos

        self.latest: dict = {}
        self._context = rclpy.Context()
        rclpy.init(context=self._context)
        self._node = rclpy.create_node("soak_status", context=self._context)
        self._node.create_subscription(RecorderStatus, "/or/recorder/status", self._on_status,
                                       named_qos("status"))
        self._executor = SingleThreadedExecutor(context=self._context)
        self._executor.add_node(self._node)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _on_status(self, msg) -> None:
        from dicom_or_recorder.status import status_dict

        self.latest = status_dict(msg)

    def _spin(self) -> None:
        while not self._stop.is_set():
            self._executor.spin_once(timeout_sec=0.2)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._executor.shutdown()
        self._node.destroy_node()
        self._context.try_shutdown()


def run(options: argparse.Namespace) -> dict:
    output = Path(options.output or tempfile.mkdtemp(prefix="dicom_or_soak_")) / "recordings"
    port = free_tcp_port()
    arguments = [f"output_dir:={output}", f"bridge_port:={port}", "dicomweb_port:=0",
                 f"video_width:={options.width}", f"video_height:={options.height}",
                 f"video_fps:={options.fps}", f"tracker_rate:={options.tracker_rate}",
                 f"tracker_tools:={options.tools}", f"monitor_groups:={options.groups}"]
    results: dict = {"minutes": options.minutes, "arguments": arguments, "rss": {}}
    with reserved_domain_id() as domain:
        env = isolated_env(domain)
        os.environ.update({k: v for k, v in env.items() if k.startswith("ROS_")})
        log = open(output.parent / "launch.log", "w")
        graph = subprocess.Popen(["dicom_or_launch", "or_demo", *arguments], env=env,
                                 stdout=log, stderr=subprocess.STDOUT)
        status = StatusListener()
        try:
            if not wait_for_series(port, 4, 120):
                raise SystemExit("soak: the graph's streams did not become live")
            start_latencies, _ = cfind_series(port, 20)
            started = time.monotonic()
            rss: dict[str, list[tuple[float, float]]] = {}
            loads: list[float] = []
            end = started + options.minutes * 60
            while time.monotonic() < end:
                if graph.poll() is not None:
                    raise SystemExit(f"soak: the graph exited with {graph.returncode}")
                now = time.monotonic() - started
                for name, pid in node_processes(graph.pid).items():
                    value = rss_mib(pid)
                    if value is not None:
                        rss.setdefault(name, []).append((now, value))
                loads.append(os.getloadavg()[0])
                print(f"  t={now / 60:5.1f} min  load {loads[-1]:.1f}  " + "  ".join(
                    f"{n} {v[-1][1]:.0f}" for n, v in sorted(rss.items())) + " MiB",
                    flush=True)
                time.sleep(min(RSS_PERIOD_S, max(0.0, end - time.monotonic())))
            end_latencies, series_found = cfind_series(port, 20)
            last_status = status.latest
            recorder = node_processes(graph.pid).get("recorder")
            asked = time.monotonic()
            graph.send_signal(signal.SIGINT)
            while recorder and Path(f"/proc/{recorder}").exists() and \
                    time.monotonic() - asked < 60:
                time.sleep(0.05)
            recorder_stop_s = time.monotonic() - asked
            graph.wait(timeout=120)
        finally:
            status.close()
            if graph.poll() is None:
                graph.kill()
                graph.wait()
            log.close()
    for name, samples in rss.items():
        steady = [s for s in samples if s[0] >= min(WARMUP_S, options.minutes * 30)]
        results["rss"][name] = {"first_mib": samples[0][1], "last_mib": samples[-1][1],
                                "max_mib": max(v for _, v in samples),
                                "growth_mib_per_hour": slope_per_hour(steady)}
    results["load_average"] = {"mean": statistics.fmean(loads) if loads else None,
                               "max": max(loads, default=None)}
    results["launcher_exit"] = graph.returncode
    results["recorder_stop_s"] = recorder_stop_s
    results["cfind_start_ms"] = [1000 * x for x in start_latencies]
    results["cfind_end_ms"] = [1000 * x for x in end_latencies]
    results["series_at_end"] = series_found
    results["streams"] = [
        {k: s.get(k) for k in ("topic", "kind", "samples", "acknowledged", "lost_messages",
                               "out_of_order", "dropped_backpressure",
                               "dropped_at_shutdown", "instances", "errors")}
        for s in last_status.get("streams", [])]
    files = sorted(output.rglob("*.dcm"))
    import pydicom

    per_class: dict[str, list[int]] = {}
    errors = {}
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        per_class.setdefault(f"{ds.Modality} {ds.SOPClassUID.name}", []).append(
            path.stat().st_size)
        if have("dciodvfy"):
            count, lines = dciodvfy(path)
            if count:
                errors[path.name] = lines[:5]
    results["instances"] = {k: {"count": len(v), "total_mb": sum(v) / 1e6,
                                "largest_mb": max(v) / 1e6} for k, v in per_class.items()}
    results["dciodvfy_errors"] = errors
    results["journals_left"] = len(list((output / ".spool" / "journal").glob("*")))
    results["output"] = str(output)
    return results


def report(r: dict) -> None:
    def pct(values: list[float], q: float) -> float:
        values = sorted(values)
        return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")

    print(f"\nsoak of {r['minutes']} min: {' '.join(r['arguments'][2:])}")
    print(f"1-minute load average during the run: mean {r['load_average']['mean']:.1f}, max "
          f"{r['load_average']['max']:.1f} (2 cores)")
    print(f"{'node':<18}{'first MiB':>10}{'last MiB':>10}{'max MiB':>10}{'MiB/hour':>10}")
    for name, v in sorted(r["rss"].items()):
        print(f"{name:<18}{v['first_mib']:>10.0f}{v['last_mib']:>10.0f}{v['max_mib']:>10.0f}"
              f"{v['growth_mib_per_hour']:>10.1f}")
    print(f"\n{'stream':<34}{'samples':>10}{'lost':>6}{'dropped':>9}{'at stop':>8}"
          f"{'inst.':>6}")
    for s in r["streams"]:
        print(f"{s['topic']:<34}{s['samples'] or 0:>10}{s['lost_messages'] or 0:>6}"
              f"{s.get('dropped_backpressure') or 0:>9}{s.get('dropped_at_shutdown') or 0:>8}"
              f"{s['instances'] or 0:>6}")
    print("\ninstances:")
    for name, v in sorted(r["instances"].items()):
        print(f"  {name:<52}{v['count']:>4}  {v['total_mb']:>9.1f} MB  "
              f"(largest {v['largest_mb']:.1f} MB)")
    print(f"dciodvfy: {len(r['dciodvfy_errors'])} instance(s) with errors; journals left: "
          f"{r['journals_left']}")
    print(f"C-FIND SERIES (all studies), 20 queries: start p50 {pct(r['cfind_start_ms'], .5):.1f}"
          f" / p99 {pct(r['cfind_start_ms'], .99):.1f} ms (reference), end p50 "
          f"{pct(r['cfind_end_ms'], .5):.1f} / p99 {pct(r['cfind_end_ms'], .99):.1f} ms, "
          f"{r['series_at_end']} series")
    print(f"recorder exit after SIGINT: {r['recorder_stop_s']:.2f} s (launcher exit "
          f"{r['launcher_exit']})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--quick", action="store_true", help="2 minutes")
    parser.add_argument("--width", type=int, default=1920)
    parser.add_argument("--height", type=int, default=1080)
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--tools", type=int, default=4)
    parser.add_argument("--tracker-rate", type=float, default=1000.0)
    parser.add_argument("--groups", default="[ecg12, hemodynamic]")
    parser.add_argument("--output", help="folder for the recordings (default: a temp dir)")
    parser.add_argument("--json", help="also write the figures to this file")
    options = parser.parse_args()
    if options.quick:
        options.minutes = 2.0
    results = run(options)
    report(results)
    if options.json:
        Path(options.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
