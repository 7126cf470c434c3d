"""An OR day, not a 30-second demo: the demo run twice in one checkout, a case stopped with
Ctrl-C, a recorder killed with SIGKILL and started again.

What a user sees is asserted (exit codes, what C-FIND lists, which instances are final,
that nothing is left half-written); durations are printed, not asserted, because CI machines
differ. ``DICOM_OR_CASE_S`` sets the recorded case's length (default 90 s).
"""

import os
import signal
import subprocess
import time
from pathlib import Path

import pydicom
from conftest import require
from dicom_or_test_common.peers import dciodvfy, free_tcp_port
from graph_support import SMALL_VIDEO, children_of, find_series, start_graph, stop

CASE_S = float(os.environ.get("DICOM_OR_CASE_S", "90"))
LIVE_MODALITIES = {"ES", "ECG", "HD", "SR"}
SPOOL_JOURNALS = Path(".spool") / "journal"


def timed_find(port: int, workdir: Path) -> tuple[list[pydicom.Dataset], float]:
    started = time.monotonic()
    series = find_series(port, workdir)
    return series, time.monotonic() - started


def run_demo(env, workdir: Path, port: int, duration_s: float,
             want_archived: int) -> tuple[str, list[float], list[pydicom.Dataset]]:
    """``dicom_or_demo`` in ``workdir`` as ``make demo`` runs it; while it runs, C-FIND the
    bridge until the live streams (and ``want_archived`` archived series) are listed."""
    demo = subprocess.Popen(
        ["dicom_or_demo", "--duration", str(duration_s), f"bridge_port:={port}",
         "dicomweb_port:=0", "view_port:=0", *SMALL_VIDEO],
        cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    latencies, series = [], []
    try:
        deadline = time.monotonic() + duration_s
        while time.monotonic() < deadline and demo.poll() is None:
            series, seconds = timed_find(port, workdir)
            if series:
                latencies.append(seconds)
            live = {s.Modality for s in series if str(s.get("RetrieveURL", "")).startswith(
                "ros2:")}
            archived = [s for s in series if not s.get("RetrieveURL")]
            if LIVE_MODALITIES <= live and len(archived) >= want_archived:
                break
            time.sleep(0.5)
        output, _ = demo.communicate(timeout=duration_s + 120)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    assert demo.returncode == 0, output
    return output, latencies, series


def test_make_demo_twice_in_one_checkout(ros_env, tmp_path):
    """The second run starts on the first run's archive: it still answers C-FIND at once,
    lists the live streams beside the first run's recordings, and exits 0."""
    require("findscu", "dciodvfy", "wlmscpfs")
    port = free_tcp_port()
    _, first_latencies, first = run_demo(ros_env, tmp_path, port, 20, want_archived=0)
    archive = tmp_path / "recordings"
    recorded = {p.parent.name for p in archive.rglob("*.dcm")}
    assert len(recorded) >= 4, "the first run recorded fewer than 4 series"
    output, second_latencies, second = run_demo(ros_env, tmp_path, port, 20,
                                                want_archived=len(recorded))
    live = {str(s.SeriesInstanceUID) for s in second
            if str(s.get("RetrieveURL", "")).startswith("ros2:")}
    listed = {str(s.SeriesInstanceUID) for s in second}
    assert LIVE_MODALITIES <= {s.Modality for s in second
                               if str(s.SeriesInstanceUID) in live}, output
    assert recorded <= listed - live, "the first run's recordings are not listed"
    assert first_latencies and second_latencies
    print(f"\nC-FIND (STUDY + SERIES, findscu) while the demo runs: first run max "
          f"{max(first_latencies):.2f} s, second run max {max(second_latencies):.2f} s "
          f"over {len(recorded)} archived series")


def recorder_pid(graph: subprocess.Popen) -> int:
    for pid in children_of(graph.pid):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        # [python, <prefix>/lib/dicom_or_recorder/recorder, --ros-args, ...]
        if any(Path(part.decode()).name == "recorder" for part in cmdline[:2]):
            return pid
    raise AssertionError("no recorder process among the graph's children")


def instances_by_series(archive: Path) -> dict[str, list[pydicom.Dataset]]:
    found: dict[str, list[pydicom.Dataset]] = {}
    for path in sorted(archive.rglob("*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        found.setdefault(str(ds.Modality), []).append(ds)
    return found


def acquisition_s(ds: pydicom.Dataset) -> float:
    import datetime

    return datetime.datetime.strptime(str(ds.AcquisitionDateTime),
                                      "%Y%m%d%H%M%S.%f%z").timestamp()


def wait_for_every_stream(port: int, workdir: Path, graph: subprocess.Popen) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert graph.poll() is None, graph.communicate()[0]
        if LIVE_MODALITIES <= {s.Modality for s in find_series(port, workdir)}:
            return
        time.sleep(0.5)
    raise AssertionError("the graph's streams did not all become live")


def test_case_stopped_with_sigint_is_final_and_a_killed_recorder_loses_nothing(ros_env,
                                                                              tmp_path):
    require("findscu", "dciodvfy")
    archive, port = tmp_path / "recordings", free_tcp_port()
    # 1. A whole case, stopped with Ctrl-C: every stream's last instance is final.
    graph = start_graph(ros_env, archive, port)
    try:
        wait_for_every_stream(port, tmp_path, graph)
        time.sleep(CASE_S)  # the case itself
        pid = recorder_pid(graph)
        graph.send_signal(signal.SIGINT)
        asked = time.monotonic()
        while Path(f"/proc/{pid}").exists() and time.monotonic() - asked < 60:
            time.sleep(0.05)
        recorder_stop_s = time.monotonic() - asked
        log, _ = graph.communicate(timeout=60)
        code = graph.returncode
    finally:
        if graph.poll() is None:
            graph.kill()
    assert code == 0, log
    assert not list((archive / SPOOL_JOURNALS).iterdir()), "segments left unfinalised"
    assert not list(archive.rglob("*.partial"))
    case = instances_by_series(archive)
    assert LIVE_MODALITIES <= set(case), case.keys()
    for path in archive.rglob("*.dcm"):
        assert dciodvfy(path)[0] == 0, path
    print(f"\ncase of {CASE_S:.0f} s: recorder stopped {recorder_stop_s:.2f} s after SIGINT; "
          + ", ".join(f"{m}: {len(v)} instance(s)" for m, v in sorted(case.items())))

    # 2. The recorder killed outright mid-recording: the launcher reports it and stops.
    graph = start_graph(ros_env, archive, port)
    try:
        wait_for_every_stream(port, tmp_path, graph)
        time.sleep(8)
        killed_at = time.time()
        os.kill(recorder_pid(graph), signal.SIGKILL)
        code, log = stop(graph)
    finally:
        if graph.poll() is None:
            graph.kill()
    assert code != 0 and "recorder" in log, log
    leftovers = list((archive / SPOOL_JOURNALS).iterdir())
    assert leftovers, "a killed recorder left no journal: the test did not kill it mid-case"

    # 3. Started again: the leftovers are finalised beside new recording, which starts at
    # once (its first instances begin within seconds of its streams going live).
    graph = start_graph(ros_env, archive, port)
    try:
        wait_for_every_stream(port, tmp_path, graph)
        live_at = time.time()
        time.sleep(10)
        code, log = stop(graph)
    finally:
        if graph.poll() is None:
            graph.kill()
    assert code == 0, log
    assert not list((archive / SPOOL_JOURNALS).iterdir()), "leftover journals not finalised"
    after = instances_by_series(archive)
    for modality in LIVE_MODALITIES:
        times = sorted(acquisition_s(ds) for ds in after[modality])
        # The killed run's segment, recovered: it began before the kill.
        assert any(killed_at - 30 < t < killed_at for t in times), (modality, times)
        # The new run's recording began right away (not after recovery).
        assert any(live_at - 15 < t < live_at + 5 for t in times), (modality, times)
    numbers: dict[str, list[int]] = {}
    for datasets in after.values():
        for ds in datasets:
            numbers.setdefault(str(ds.SeriesInstanceUID), []).append(int(ds.InstanceNumber))
    for series, used in numbers.items():
        assert len(used) == len(set(used)), (series, sorted(used))
    for path in archive.rglob("*.dcm"):
        assert dciodvfy(path)[0] == 0, path
