"""The OR graph end to end, as a user runs it: dicom_or_launch or_demo, then real dcmtk
findscu against the bridge, then the recordings through dciodvfy.

Frames are 640x480 at 15 fps here (not the demo's 1080p30) so CI on 2 cores stays quick;
the path through every node is the same.
"""

import os
import signal
import time

import pydicom
import pytest
from conftest import require
from dicom_or_test_common.peers import dciodvfy, free_tcp_port
from graph_support import alive, children_of, find_series, start_graph, stop

VIDEO_ENDOSCOPIC = "1.2.840.10008.5.1.4.1.1.77.1.1.1"
GENERAL_ECG = "1.2.840.10008.5.1.4.1.1.9.1.2"
HEMODYNAMIC = "1.2.840.10008.5.1.4.1.1.9.2.1"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
EXPECTED_MODALITIES = {"ES", "ECG", "HD", "SR"}


def test_or_graph_discovered_by_findscu_and_recorded_valid(ros_env, tmp_path):
    require("findscu", "dciodvfy")
    output, port = tmp_path / "recordings", free_tcp_port()
    graph = start_graph(ros_env, output, port)
    try:
        deadline, series = time.monotonic() + 60, []
        while time.monotonic() < deadline:
            series = find_series(port, tmp_path)
            if EXPECTED_MODALITIES <= {s.Modality for s in series}:
                break
            assert graph.poll() is None, graph.communicate()[0]
            time.sleep(0.5)
        assert EXPECTED_MODALITIES <= {s.Modality for s in series}, \
            [(s.get("Modality"), s.get("SeriesDescription")) for s in series]
        assert len({s.StudyInstanceUID for s in series}) == 1
        for answer in series:
            assert str(answer.RetrieveURL).startswith("ros2:")
        # Let the recorder record a few seconds of every stream.
        time.sleep(6)
        nodes = children_of(graph.pid)
        assert len(nodes) == 7   # 6 + the OR view
    finally:
        code, log = stop(graph) if graph.poll() is None else (graph.returncode, "")
    assert code == 0, log
    assert not [pid for pid in nodes if alive(pid)], "orphan node processes"
    assert not list(output.rglob("*.partial")), "unfinished files left behind"
    files = sorted(output.rglob("*.dcm"))
    classes = {pydicom.dcmread(p, stop_before_pixels=True).SOPClassUID: p for p in files}
    for sop_class in (VIDEO_ENDOSCOPIC, GENERAL_ECG, HEMODYNAMIC, COMPREHENSIVE_3D_SR):
        assert sop_class in classes, f"no {sop_class} among {len(files)} files"
    for path in files:
        errors, lines = dciodvfy(path)
        assert errors == 0, (path.name, lines)


@pytest.mark.parametrize("after_s", [0.3, 1.5, 4.0])  # importing, starting, recording
def test_sigint_at_any_moment_leaves_no_orphan_and_no_corrupt_file(ros_env, tmp_path,
                                                                     after_s):
    output = tmp_path / "recordings"
    graph = start_graph(ros_env, output, free_tcp_port())
    deadline = time.monotonic() + after_s
    nodes: set[int] = set()
    while time.monotonic() < deadline:  # collect children as they start
        nodes |= children_of(graph.pid)
        time.sleep(0.1)
    code, log = stop(graph)
    assert code == 0, log
    time.sleep(0.2)
    assert not [pid for pid in nodes if alive(pid)], "orphan node processes"
    assert not list(output.rglob("*.partial"))
    for path in output.rglob("*.dcm"):
        pydicom.dcmread(path)  # every file that exists is complete
    assert os.path.isdir(tmp_path)


def test_a_second_ctrl_c_while_stopping_is_still_an_orderly_stop(ros_env, tmp_path):
    """An impatient operator presses Ctrl-C twice: the launcher keeps stopping the nodes in
    order (the recorder finalises), exits 0 and prints no KeyboardInterrupt."""
    output = tmp_path / "recordings"
    graph = start_graph(ros_env, output, free_tcp_port())
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not list(output.glob(".spool/journal/*")):
        time.sleep(0.2)  # until the recorder has a segment open
    graph.send_signal(signal.SIGINT)
    time.sleep(0.3)
    graph.send_signal(signal.SIGINT)
    log, _ = graph.communicate(timeout=90)
    assert graph.returncode == 0, log
    assert "KeyboardInterrupt" not in log and "Traceback" not in log
    assert list(output.rglob("*.dcm")) and not list(output.glob(".spool/journal/*"))
