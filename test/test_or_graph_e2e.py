"""The OR graph end to end, as a user runs it: dicom_or_launch or_demo, then real dcmtk
findscu against the bridge, then the recordings through dciodvfy.

Frames are 640x480 at 15 fps here (not the demo's 1080p30) so CI on 2 cores stays quick;
the path through every node is the same.
"""

import os
import signal
import subprocess
import time
from pathlib import Path

import pydicom
import pytest
from conftest import require

from dicom_or_core.peers import dciodvfy, free_tcp_port, run_tool

VIDEO_ENDOSCOPIC = "1.2.840.10008.5.1.4.1.1.77.1.1.1"
GENERAL_ECG = "1.2.840.10008.5.1.4.1.1.9.1.2"
HEMODYNAMIC = "1.2.840.10008.5.1.4.1.1.9.2.1"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
EXPECTED_MODALITIES = {"ES", "ECG", "HD", "SR"}


def start_graph(env, output: Path, port: int) -> subprocess.Popen:
    return subprocess.Popen(
        ["dicom_or_launch", "or_demo", f"output_dir:={output}", f"bridge_port:={port}",
         "video_width:=640", "video_height:=480", "video_fps:=15.0"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def children_of(pid: int) -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def findscu(port: int, workdir: Path, keys: list[str]) -> list[pydicom.Dataset]:
    """dcmtk findscu, Study Root; the responses extracted to files and read back."""
    out = workdir / "find"
    out.mkdir(exist_ok=True)
    for old in out.glob("*"):
        old.unlink()
    args = [word for key in keys for word in ("-k", key)]
    run_tool(["findscu", "-S", "-aec", "DICOM_OR", "-aet", "E2E_TEST", "-X", "-od", str(out),
              *args, "127.0.0.1", str(port)], timeout_s=30)
    return [pydicom.dcmread(p) for p in sorted(out.glob("*.dcm"))]


def find_series(port: int, workdir: Path) -> list[pydicom.Dataset]:
    """The hierarchical search a PACS workstation does: the studies, then each study's
    series (the bridge, like PS3.4 C.4.1.3.1.1 allows, does not do relational queries)."""
    series = []
    for study in findscu(port, workdir, ["QueryRetrieveLevel=STUDY", "StudyInstanceUID",
                                         "PatientID"]):
        series += findscu(port, workdir, [
            "QueryRetrieveLevel=SERIES", f"StudyInstanceUID={study.StudyInstanceUID}",
            "SeriesInstanceUID", "Modality", "SeriesDescription", "RetrieveURL"])
    return series


def stop(graph: subprocess.Popen) -> tuple[int, str]:
    graph.send_signal(signal.SIGINT)
    output, _ = graph.communicate(timeout=90)
    return graph.returncode, output


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
        assert len(nodes) == 6
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
