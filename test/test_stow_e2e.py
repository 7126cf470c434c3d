"""The recorder storing to a PACS by STOW-RS, as a user runs it: the OR demo graph
(dicom_or_launch or_demo) with ``pacs_protocol:=stowrs`` and Orthanc's DICOMweb plugin as the
PACS; every instance of the run ends in Orthanc exactly once, bit-identical. A bad STOW-RS
configuration stops the recorder with one line naming the parameter."""

import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from ament_index_python.packages import get_package_prefix
from dicom_or_test_common.peers import Orthanc, free_tcp_port
from dicom_or_test_common.ros import isolated_env, reserved_domain_id
from graph_support import start_graph, stop

from dicom_or_core.archive.spool import INDEX_FILE, SPOOL_DIR, STORED, Spool


def recorder_script() -> str:
    path = Path(get_package_prefix("dicom_or_recorder")) / "lib" / "dicom_or_recorder" / \
        "recorder"
    assert path.is_file(), f"{path} missing: run 'make build'"
    return str(path)


@pytest.mark.parametrize("param,args", [
    ("pacs_protocol", ["pacs_protocol:=ftp"]),
    ("pacs_stow_url", ["pacs_protocol:=stowrs", "pacs_stow_url:=ftp://pacs/dicom-web"]),
    ("pacs_tls_ca_file", ["pacs_protocol:=stowrs", "pacs_stow_url:=https://pacs/dicom-web",
                          "pacs_tls_ca_file:=/nonexistent/ca.pem"]),
])
def test_bad_stow_configuration_exits_1_naming_the_parameter(tmp_path, param, args):
    with reserved_domain_id() as domain:
        result = subprocess.run(
            [recorder_script(), "--ros-args", "-p", f"recordings_dir:={tmp_path}",
             *[w for a in args for w in ("-p", a)]],
            env=isolated_env(domain), capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    assert param in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def states(archive: Path) -> dict[str, int]:
    """Instances per spool state, read from the index (read-only, beside the recorder)."""
    db = sqlite3.connect(f"file:{archive / SPOOL_DIR / INDEX_FILE}?mode=ro", uri=True)
    try:
        return dict(db.execute("SELECT state, COUNT(*) FROM instances GROUP BY state"))
    finally:
        db.close()


def test_demo_run_is_stored_in_orthanc_by_stow_rs_exactly_once(ros_env, tmp_path):
    archive = tmp_path / "recordings"
    with Orthanc(tmp_path / "orthanc", dicomweb=True) as orthanc:
        stow = [f"pacs_stow_url:=http://127.0.0.1:{orthanc.http_port}/dicom-web",
                "pacs_protocol:=stowrs"]
        graph = start_graph(ros_env, archive, free_tcp_port(), *stow)
        try:
            deadline = time.monotonic() + 60
            while not list(archive.glob(f"{SPOOL_DIR}/journal/*/data.jnl")):
                assert graph.poll() is None, graph.communicate()[0]
                assert time.monotonic() < deadline, "the recorder recorded nothing"
                time.sleep(0.2)
            time.sleep(6)  # a few seconds of every stream: the case itself
        finally:
            code, log = stop(graph) if graph.poll() is None else (graph.returncode, "")
        assert code == 0, log
        assert "by STOW-RS" in log, log[-3000:]
        files = sorted(archive.rglob("*.dcm"))
        assert len(files) >= 4, files
        at_stop = states(archive)
        # The case's last segments are final at the stop; what the sender had no time for
        # before the recorder exited waits in the durable spool. The recorder started again
        # (no stream running) delivers it.
        with reserved_domain_id() as domain:
            recorder = subprocess.Popen(
                ["dicom_or_launch", "recorder", f"output_dir:={archive}", *stow],
                env=isolated_env(domain), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                text=True)
            try:
                started = []
                while not any("recording into" in line for line in started):
                    started.append(recorder.stdout.readline())  # its start-up log line
                    assert started[-1], "".join(started)
                deadline = time.monotonic() + 60
                while states(archive).get(STORED, 0) < len(files):
                    assert recorder.poll() is None, recorder.communicate()[0]
                    assert time.monotonic() < deadline, states(archive)
                    time.sleep(0.2)
            finally:
                recorder.send_signal(signal.SIGINT)
                output, _ = recorder.communicate(timeout=60)
        assert recorder.returncode == 0, output
        found = orthanc.rest("GET", "/instances?expand")
        held = {i["MainDicomTags"]["SOPInstanceUID"]: i["ID"] for i in found}
        spool = Spool(archive)
        rows = spool.rows()
        assert {r.state for r in rows} == {STORED}
        assert len(rows) == len(files) == len(held)          # exactly once
        assert set(held) == {r.sop_instance_uid for r in rows}
        for row in rows:
            copy = orthanc.rest("GET", f"/instances/{held[row.sop_instance_uid]}/file")
            assert copy == spool.absolute(row).read_bytes(), row.path
        spool.close()
        modalities = {orthanc.rest("GET", f"/instances/{i}/tags?simplify")["Modality"]
                      for i in held.values()}
        assert {"ES", "ECG", "HD", "SR"} <= modalities, modalities
        print(f"\n{len(files)} instances ({sum(r.size for r in rows) / 2**20:.1f} MiB), "
              f"{at_stop.get(STORED, 0)} stored by STOW-RS before the stop, "
              f"{len(files) - at_stop.get(STORED, 0)} after the restart; Orthanc holds "
              f"{len(held)}")
