#!/usr/bin/env python3
"""OR view: capture-to-browser latency of the endoscope stream, measured in the browser.

(a) The demo graph as users start it (dicom_or_launch or_demo: endoscope at 1080p30,
tracker, patient monitor, bridge, recorder RECORDING every stream, OR view), the view page
open in headless Chromium (Debian /usr/bin/chromium through playwright). For every frame
the page draws, the latency is ``Date.now()`` minus the frame's capture time (same host
clock), taken two ways: the capture time sent with the frame, and the capture time read
back from the drawn pixels (the synthetic pattern's code band, dicom_or_core.sim.video).
Also the waveform display lag (now minus the newest sample's time, at each drawn frame) and
the view node's CPU.

(b) Reference, in the same run, with the graph still recording: the same 1080p30 pattern,
scaled and JPEG-encoded with the same settings, pushed as MJPEG
(multipart/x-mixed-replace) by a minimal server in this process, shown in an <img> and read
back from its pixels in a requestAnimationFrame loop (so it includes up to one display
frame, ~16 ms, of sampling delay).

The machine's load during each window is printed with the numbers (other work on a shared
machine changes them).

    tools/with_env python bench/or_view_latency.py [--quick] [--seconds S]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import requests
from dicom_or_test_common.peers import free_tcp_port
from dicom_or_test_common.ros import isolated_env, reserved_domain_id

from dicom_or_core.sim.video import PatternSource
from dicom_or_view.live import encode_jpeg
from dicom_or_view.server import WEB_DIR

CHROMIUM = "/usr/bin/chromium"
TICK = os.sysconf("SC_CLK_TCK")
WIDTH, HEIGHT, FPS = 1920, 1080, 30.0
MAX_WIDTH, QUALITY = 960, 80   # config/or_view.yaml's video_max_width / jpeg_quality


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all cores from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def find_child(root: int, word: str) -> int | None:
    """A descendant process of ``root`` whose command line contains ``word``."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = cmdline.with_name("stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if word in text and int(stat[1]) == root:
            return int(cmdline.parent.name)
    return None


def percentiles(values: list[float]) -> str:
    if not values:
        return f"{'-':>7} {'-':>7} {'-':>7}"
    p50, p99 = np.percentile(values, [50, 99])
    return f"{p50:7.1f} {p99:7.1f} {max(values):7.1f}"


class Window:
    """CPU of some processes and of the machine over a measurement window."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.start = {name: cpu_seconds(pid) for name, pid in pids.items()}
        self.busy = machine_busy()
        self.load = os.getloadavg()[0]
        self.t0 = time.monotonic()

    def close(self) -> dict[str, float]:
        wall = time.monotonic() - self.t0
        cpu = {name: 100 * (cpu_seconds(pid) - self.start[name]) / wall
               for name, pid in self.pids.items()}
        busy, total = machine_busy()
        cpu["machine busy %"] = 100 * (busy - self.busy[0]) / max(1, total - self.busy[1]) \
            * os.cpu_count()
        cpu["load avg 1 min"] = os.getloadavg()[0]
        return cpu


# --- the reference: the same frames as MJPEG from a minimal server -------------------------

REFERENCE_PAGE = b"""<!DOCTYPE html><html><body style="margin:0;background:#000">
<img id="mjpeg" style="display:block">
<canvas id="c"></canvas>
<script src="/band.js"></script>
<script>
window.ref = { latency: [], frames: 0 };
const img = document.getElementById("mjpeg"), canvas = document.getElementById("c");
let last = -1, attempt = 0;
function open() { img.src = "/mjpeg?" + (attempt += 1); }
open();
// Chromium now and then never shows the first part of a multipart stream under load: open
// it again (counted) rather than measure nothing.
setInterval(() => { if (!img.naturalWidth) { ref.reopened = attempt; open(); } }, 3000);
function poll() {
  if (img.naturalWidth) {
    if (canvas.width !== img.naturalWidth) {
      canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
    }
    const g = canvas.getContext("2d", { willReadFrequently: true });
    g.drawImage(img, 0, 0);
    const band = orBand.decode(g, canvas.width, WIDTH, HEIGHT);
    if (band && band.seq !== last) {
      last = band.seq; ref.frames += 1; ref.latency.push(Date.now() - band.ms);
    }
  }
  requestAnimationFrame(poll);
}
requestAnimationFrame(poll);
</script></body></html>"""


class MjpegReference:
    """A minimal MJPEG server: the pattern at 1080p30, scaled and encoded as the view does,
    pushed to every client as multipart/x-mixed-replace."""

    def __init__(self) -> None:
        self.frame: tuple[int, bytes] = (0, b"")
        self.cond = threading.Condition()
        self.stop = threading.Event()
        page = REFERENCE_PAGE.replace(b"WIDTH", str(WIDTH).encode()).replace(
            b"HEIGHT", str(HEIGHT).encode())
        band = (WEB_DIR / "band.js").read_bytes()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if not self.path.startswith("/mjpeg"):
                    script = self.path == "/band.js"
                    body = band if script else page
                    self.send_response(200)
                    self.send_header("Content-Type", "text/javascript" if script
                                     else "text/html")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                seen = 0
                try:
                    while not owner.stop.is_set():
                        with owner.cond:
                            owner.cond.wait_for(lambda s=seen: owner.frame[0] != s, 1.0)
                            seen, jpeg = owner.frame
                        self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\n"
                                         b"Content-Length: %d\r\n\r\n" % len(jpeg))
                        self.wfile.write(jpeg + b"\r\n")
                        self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.threads = [threading.Thread(target=self.server.serve_forever, daemon=True),
                        threading.Thread(target=self._produce, daemon=True)]
        for thread in self.threads:
            thread.start()

    def _produce(self) -> None:
        source = PatternSource(WIDTH, HEIGHT, "rgb8")
        period, sequence, due = 1.0 / FPS, 0, time.monotonic()
        while not self.stop.is_set():
            due += period
            pixels = source.frame(sequence, time.time_ns())
            jpeg = encode_jpeg(pixels, "rgb8", MAX_WIDTH, QUALITY)
            with self.cond:
                self.frame = (sequence + 1, jpeg)
                self.cond.notify_all()
            sequence += 1
            time.sleep(max(0.0, due - time.monotonic()))

    def close(self) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


# --- the run -----------------------------------------------------------------------------

def wait_page(url: str, graph: subprocess.Popen, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if graph.poll() is not None:
            raise SystemExit(f"the graph ended: {graph.communicate()[0][-3000:]}")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{url} did not answer")


def measure_view(page, url: str, seconds: float, pids: dict[str, int]) -> dict:
    page.goto(url + "?measure=1")
    page.wait_for_function("orView.bandLatency.length > 10 && orView.waveLag.length > 10 && "
                           "orView.recorder && orView.recorder.streams.length > 0 && "
                           "orView.recorder.streams.every(s => s.recording)", timeout=90000)
    page.wait_for_timeout(2000)   # settle: past the first frames
    page.evaluate("orView.latency = []; orView.bandLatency = []; orView.waveLag = [];"
                  "orView.frames0 = Math.max(...Object.values(orView.frames));")
    window = Window(pids)
    page.wait_for_timeout(seconds * 1000)
    cpu = window.close()
    result = page.evaluate("({latency: orView.latency, band: orView.bandLatency, "
                           "wave: orView.waveLag, frames: Math.max(...Object.values("
                           "orView.frames)) - orView.frames0, "
                           "recorder: orView.recorder.streams.map(s => [s.topic, "
                           "s.recording, s.lost_messages])})")
    result["cpu"] = cpu
    return result


def measure_reference(page, port: int, seconds: float, pids: dict[str, int]) -> dict:
    page.goto(f"http://127.0.0.1:{port}/", wait_until="domcontentloaded")
    page.wait_for_function("ref.latency.length > 10", timeout=60000)
    page.wait_for_timeout(2000)
    page.evaluate("ref.latency = []; ref.frames = 0;")
    window = Window(pids)
    page.wait_for_timeout(seconds * 1000)
    cpu = window.close()
    result = page.evaluate("({latency: ref.latency, frames: ref.frames, "
                           "reopened: ref.reopened || 0})")
    result["cpu"] = cpu
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter windows")
    parser.add_argument("--seconds", type=float, help="measurement window per path")
    options = parser.parse_args()
    seconds = options.seconds or (8.0 if options.quick else 20.0)
    if not Path(CHROMIUM).exists():
        print(f"or_view_latency: skipped, {CHROMIUM} missing (Debian package chromium)")
        return 0
    from playwright.sync_api import sync_playwright

    view_port = free_tcp_port()
    url = f"http://127.0.0.1:{view_port}/"
    with reserved_domain_id() as domain, tempfile.TemporaryDirectory() as tmp:
        graph = subprocess.Popen(
            ["dicom_or_launch", "or_demo", f"output_dir:={tmp}/recordings",
             f"bridge_port:={free_tcp_port()}", "dicomweb_port:=0", f"view_port:={view_port}",
             f"video_width:={WIDTH}", f"video_height:={HEIGHT}", f"video_fps:={FPS}"],
            env=isolated_env(domain), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True)
        reference = None
        try:
            wait_page(url, graph)
            view_pid = find_child(graph.pid, "dicom_or_view")
            recorder_pid = find_child(graph.pid, "recorder")
            assert view_pid and recorder_pid, "view or recorder process not found"
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                pids = {"view node %CPU": view_pid, "recorder %CPU": recorder_pid}
                view = measure_view(page, url, seconds, pids)
                page.close()   # the view's WebSocket closes: no more JPEG encoding there
                reference = MjpegReference()
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                ref = measure_reference(page, reference.port, seconds,
                                        {"bench (reference server) %CPU": os.getpid(),
                                         "recorder %CPU": recorder_pid})
                browser.close()
        finally:
            if reference is not None:
                reference.close()
            graph.send_signal(signal.SIGINT)
            try:
                graph.communicate(timeout=90)
            except subprocess.TimeoutExpired:
                graph.kill()
    report(view, ref, seconds)
    return 0


def report(view: dict, ref: dict, seconds: float) -> None:
    print(f"or_view_latency: endoscope {WIDTH}x{HEIGHT} at {FPS:g} fps (synthetic pattern), "
          f"frames scaled to {MAX_WIDTH} px wide, JPEG q{QUALITY}; {seconds:g} s windows; "
          "headless Chromium (Debian); latency = browser Date.now() at draw - capture time "
          "(same host clock), ms")
    print(f"{'path':<58} {'fps':>5} {'p50':>7} {'p99':>7} {'max':>7}")
    print(f"{'OR view, capture time read from the drawn pixels':<58} "
          f"{view['frames'] / seconds:5.1f} {percentiles(view['band'])}")
    print(f"{'OR view, capture time sent with the frame':<58} "
          f"{view['frames'] / seconds:5.1f} {percentiles(view['latency'])}")
    print(f"{'reference: minimal MJPEG server, read from <img> pixels':<58} "
          f"{ref['frames'] / seconds:5.1f} {percentiles(ref['latency'])}"
          + (f"  (stream reopened {ref['reopened']}x)" if ref["reopened"] else ""))
    print(f"{'waveform display lag (newest sample -> drawn)':<58} {'':>5} "
          f"{percentiles(view['wave'])}")
    recording = all(recording for _, recording, _ in view["recorder"])
    lost = sum(lost for _, _, lost in view["recorder"])
    print(f"recorder during (a): every stream recording: {recording}, lost messages {lost}")
    for name, values in (("(a) OR view", view["cpu"]), ("(b) reference", ref["cpu"])):
        print(f"{name}: " + ", ".join(f"{k} {v:.0f}" if "load" not in k else f"{k} {v:.2f}"
                                      for k, v in values.items()) +
              f" (machine: {os.cpu_count()} cores, shared)")


if __name__ == "__main__":
    raise SystemExit(main())
