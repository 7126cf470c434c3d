"""What the system tests share: the OR graph as a user starts it, its processes, and the
hierarchical C-FIND a PACS workstation sends (real dcmtk findscu)."""

import signal
import subprocess
from pathlib import Path

import pydicom
from dicom_or_test_common.peers import run_tool

# Small frames keep the 2-core CI quick; the path through every node is the demo's.
SMALL_VIDEO = ["video_width:=640", "video_height:=480", "video_fps:=15.0"]


def start_graph(env, output: Path, port: int, *arguments: str) -> subprocess.Popen:
    return subprocess.Popen(
        ["dicom_or_launch", "or_demo", f"output_dir:={output}", f"bridge_port:={port}",
         "dicomweb_port:=0", "view_port:=0", *SMALL_VIDEO, *arguments],
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
    """The hierarchical search a strict PACS workstation does: the studies, then each
    study's series (the one-step series query is tested in test_dcmtk_interop.py)."""
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
