"""The OR view in a real browser: headless Debian Chromium, driven by playwright, against
the demo graph as a user starts it (dicom_or_launch or_demo, small frames).

What a user sees must work: the page lists the 4 live series (QIDO-RS through the view),
the live video advances, the ECG trace moves, STOP pressed in the page leaves final
instances in the recorder panel, and a recorded Video Endoscopic instance plays (WADO-RS
rendered video/mp4). Any JavaScript error, console error, failed request or HTTP error
answer fails the test. Set OR_VIEW_SCREENSHOTS=<folder> to keep screenshots (live.png
while recording, recorded.png after STOP with the player).
"""

import os
import time
from pathlib import Path

import pytest
import requests
from dicom_or_test_common.peers import free_tcp_port
from graph_support import start_graph, stop

CHROMIUM = Path("/usr/bin/chromium")
LIVE_MODALITIES = ["ECG", "ES", "HD", "SR"]

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason="/usr/bin/chromium missing (Debian package chromium)")


def wait_http(url: str, graph, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert graph.poll() is None, graph.communicate()[0][-4000:]
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{url} did not answer in {timeout_s} s")


def canvas_digest(page, selector: str) -> int:
    return page.evaluate("""(selector) => {
        const c = document.querySelector(selector);
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let h = 0;
        for (let i = 0; i < d.length; i += 7) h = (h * 31 + d[i]) | 0;
        return h;
    }""", selector)


def test_or_view_in_chromium(ros_env, tmp_path):
    from playwright.sync_api import sync_playwright

    output, view_port = tmp_path / "recordings", free_tcp_port()
    graph = start_graph(ros_env, output, free_tcp_port(), f"view_port:={view_port}")
    url = f"http://127.0.0.1:{view_port}/"
    problems: list[str] = []
    try:
        wait_http(url, graph)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True)
            page = browser.new_page(viewport={"width": 1280, "height": 1400})
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
                    if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(f"JavaScript error: {e}"))
            page.on("requestfailed", lambda r: None if _aborted_media(r) else problems.append(
                f"request failed: {r.method} {r.url} {r.failure}"))
            page.on("response", lambda r: problems.append(f"HTTP {r.status}: {r.url}")
                    if r.status >= 400 else None)
            # ?measure=1: the page also reads each drawn frame's capture time back from its
            # pixels (the pattern's code band), a check on the time sent with the frame.
            page.goto(url + "?measure=1")

            # The 4 live series, from QIDO-RS of the bridge.
            page.wait_for_function(
                "document.querySelectorAll('#series tbody tr').length >= 4", timeout=60000)
            modalities = sorted(page.eval_on_selector_all(
                "#series tbody tr", "rows => rows.map(r => r.cells[0].textContent)"))
            assert modalities == LIVE_MODALITIES, modalities
            states = page.eval_on_selector_all(
                "#series tbody tr", "rows => rows.map(r => r.cells[3].textContent)")
            assert set(states) == {"LIVE"}, states

            # Live video: frames drawn, and more of them later.
            page.wait_for_function("Object.values(orView.frames).some(n => n > 3)",
                                   timeout=30000)
            before = page.evaluate("Math.max(...Object.values(orView.frames))")
            page.wait_for_function(
                f"Math.max(...Object.values(orView.frames)) >= {before + 10}", timeout=20000)
            ages = page.evaluate("orView.latency.slice(-10)")
            assert all(0 <= a < 5000 for a in ages), ages
            sent, seen = page.evaluate("[orView.latency.length, orView.bandLatency.length]")
            assert seen >= sent - 2, "the drawn frames' code band did not decode"
            pairs = page.evaluate("orView.latency.slice(-10).map("
                                  "(a, i) => [a, orView.bandLatency.slice(-10)[i]])")
            assert all(abs(a - b) < 20 for a, b in pairs), pairs

            # The ECG trace moves.
            ecg = "#waves canvas[data-channel]"
            page.wait_for_function("Object.values(orView.waveLag).length > 10", timeout=20000)
            first = canvas_digest(page, ecg)
            page.wait_for_timeout(500)
            assert canvas_digest(page, ecg) != first, "the ECG trace did not move"

            # Recorder: recording; STOP pressed in the page; instances final.
            page.wait_for_function(
                "orView.recorder && orView.recorder.streams.length >= 4 && "
                "orView.recorder.streams.every(s => s.recording && s.samples > 0)",
                timeout=30000)
            page.wait_for_timeout(3000)   # a few seconds of every stream
            shots = os.environ.get("OR_VIEW_SCREENSHOTS")
            if shots:
                page.screenshot(path=str(Path(shots) / "live.png"))
            page.click("#btn-stop")
            page.wait_for_function(
                "document.getElementById('control-result').textContent.startsWith('STOP: ')",
                timeout=20000)
            assert "stopped" in page.text_content("#control-result")
            page.wait_for_function(
                "orView.recorder.instances_final >= 4 && "
                "orView.recorder.streams.every(s => !s.recording && s.finalising === 0)",
                timeout=60000)
            assert int(page.get_attribute("#recorder-summary", "data-final")) >= 4

            # A recorded video instance plays (WADO-RS rendered video/mp4).
            page.wait_for_selector("#instances button.play-video", timeout=30000)
            page.click("#instances button.play-video")
            page.wait_for_function(
                "(() => { const v = document.getElementById('player-video');"
                " return v.readyState >= 2 && v.currentTime > 0.3; })()", timeout=30000)
            assert page.evaluate("document.getElementById('player-video').error") is None

            # A recorded waveform instance draws as traces.
            page.click("#instances button.show-wave")
            page.wait_for_function(
                "Number(document.getElementById('player-wave').dataset.drawn) > 0",
                timeout=30000)
            # The PACS and MPPS lines of the recorder panel (the demo has neither
            # destination): the page's own drawing of a status that has them.
            text = page.evaluate("""() => {
                const r = JSON.parse(JSON.stringify(orView.recorder));
                Object.assign(r.pacs, {enabled: true, contacted: true, reachable: true,
                                       queue: 1, stored: 3, committed: 2});
                Object.assign(r.mpps, {enabled: true, destination: 'MPPS@pacs:104',
                                       open_step: '1.2.3', open_step_id: 'PPS1', sent: 1});
                orView.recorder = r; showRecorder();
                return document.getElementById('pacs').textContent; }""")
            assert "reachable" in text and "storage commitment 2" in text, text
            assert "MPPS MPPS@pacs:104" in text and "IN PROGRESS PPS1" in text, text
            if shots:
                page.locator("#player-video").evaluate("v => { v.pause(); v.currentTime = 1; }")
                page.screenshot(path=str(Path(shots) / "recorded.png"), full_page=True)
            # A browser without OffscreenCanvas draws the video on the page's thread.
            old = browser.new_page()
            old.on("pageerror", lambda e: problems.append(f"JavaScript error (no "
                                                          f"OffscreenCanvas): {e}"))
            old.add_init_script(
                "delete HTMLCanvasElement.prototype.transferControlToOffscreen")
            old.goto(url)
            old.wait_for_function("Object.values(orView.frames).some(n => n > 5)",
                                  timeout=30000)
            browser.close()
    finally:
        code, log = stop(graph) if graph.poll() is None else (graph.returncode, "")
    assert not problems, problems
    assert code == 0, log[-4000:]


def _aborted_media(request) -> bool:
    """A media element cancels its own range requests as it buffers (net::ERR_ABORTED):
    that is the player working, not a failure."""
    return request.resource_type == "media" and "ERR_ABORTED" in (request.failure or "")
