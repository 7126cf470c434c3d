"""IHE Scheduled Workflow end to end, in one process on a DDS domain of its own:

dcmtk ``wlmscpfs`` serves a worklist item (with Requested Procedure and Scheduled Protocol
codes) -> ``session_context`` publishes the case -> the simulated endoscope, patient monitor
and tracker stream it -> the ``recorder`` START / STOP with the test MPPS SCP
(dicom_or_test_common.mpps_scp, pynetdicom: no packaged MPPS SCP runs here).

Asserted: N-CREATE IN PROGRESS for the scheduled step, then N-SET COMPLETED listing every
recorded Series with exactly the instances on disk; each recorded instance (video,
waveforms, pose SR) carries the worklist item's Request Attributes (Referenced Request
Sequence in the SR) and references the MPPS SOP Instance, and passes dciodvfy (the SR also
dsrdump). With the MPPS SCP down the recording is unaffected, the failure is reported in the
status and /diagnostics, and the kept messages reach the SCP once it is up.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pydicom
import pytest
from conftest import require
from dicom_or_test_common.mpps_scp import MppsScp
from dicom_or_test_common.peers import dciodvfy, free_tcp_port, run_tool
from dicom_or_test_common.ros import ros_context, spin_until
from pynetdicom.sop_class import ModalityPerformedProcedureStep
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter

from dicom_or_bridge.session_context_node import SessionContextNode
from dicom_or_drivers.tracker_node import TrackerDriver
from dicom_or_drivers.video_node import VideoDriver
from dicom_or_drivers.waveform_node import WaveformDriver
from dicom_or_msgs.srv import RecordControl
from dicom_or_recorder.recorder_node import RecorderNode

STUDY_UID = "1.2.826.0.1.3680043.8.498.90000000000000000777"
WORKLIST_ITEM = f"""\
(0008,0005) CS [ISO_IR 192]
(0008,0050) SH [ACC-SWF-01]
(0008,0090) PN [House^Gregory]
(0010,0010) PN [Doe^Jane]
(0010,0020) LO [P-000777]
(0010,0021) LO [HOSPITAL_A]
(0010,0030) DA [19700101]
(0010,0040) CS [F]
(0020,000d) UI [{STUDY_UID}]
(0032,1060) LO [Laparoscopic cholecystectomy]
(0032,1064) SQ (Sequence with undefined length #=1)
  (fffe,e000) na (Item with undefined length #=3)
    (0008,0100) SH [45595009]
    (0008,0102) SH [SCT]
    (0008,0104) LO [Laparoscopic cholecystectomy]
  (fffe,e00d) na (ItemDelimitationItem)
(fffe,e0dd) na (SequenceDelimitationItem)
(0040,0100) SQ (Sequence with undefined length #=1)
  (fffe,e000) na (Item with undefined length #=9)
    (0008,0060) CS [ES]
    (0040,0001) AE [DICOM_OR]
    (0040,0002) DA [20261125]
    (0040,0003) TM [080000]
    (0040,0007) LO [Lap chole, standard]
    (0040,0008) SQ (Sequence with undefined length #=1)
      (fffe,e000) na (Item with undefined length #=3)
        (0008,0100) SH [LAP-STD]
        (0008,0102) SH [99HOSP]
        (0008,0104) LO [Standard laparoscopy]
      (fffe,e00d) na (ItemDelimitationItem)
    (fffe,e0dd) na (SequenceDelimitationItem)
    (0040,0009) SH [SPS-0777]
    (0040,0011) SH [OR1]
  (fffe,e00d) na (ItemDelimitationItem)
(fffe,e0dd) na (SequenceDelimitationItem)
(0040,1001) SH [RP-0777]
"""


@pytest.fixture
def worklist(tmp_path):
    """dcmtk's wlmscpfs serving WORKLIST_ITEM on a free port; yields the port."""
    require("wlmscpfs", "dump2dcm", "dciodvfy", "dsrdump")
    folder = tmp_path / "wl" / "WORKLIST"
    folder.mkdir(parents=True)
    (folder / "lockfile").touch()
    dump = tmp_path / "item.dump"
    dump.write_text(WORKLIST_ITEM)
    subprocess.run(["dump2dcm", "--write-dataset", str(dump), str(folder / "item.wl")],
                   check=True, capture_output=True, timeout=30)
    port = free_tcp_port()
    wlm = subprocess.Popen(["wlmscpfs", "--single-process", "-dfp", str(folder.parent),
                            str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    yield port
    wlm.terminate()
    wlm.wait(timeout=10)


class OrGraph:
    """session_context + the three simulated drivers + the recorder, in one executor."""

    def __init__(self, rctx, recordings: Path, worklist_port: int, mpps_port: int) -> None:
        def params(**values):
            return [Parameter(k, value=v) for k, v in values.items()]
        self.context_node = SessionContextNode(context=rctx, parameter_overrides=params(
            source="worklist", worklist_port=worklist_port, worklist_ae_title="WORKLIST",
            station_ae_title="DICOM_OR", date="", retry_period_s=0.2, timeout_s=5.0))
        self.drivers = [
            VideoDriver(context=rctx, namespace="/or", parameter_overrides=params(
                width=160, height=120, fps=10.0)),
            WaveformDriver(context=rctx, namespace="/or"),
            TrackerDriver(context=rctx, namespace="/or"),
        ]
        self.recorder = RecorderNode(context=rctx, parameter_overrides=params(
            recordings_dir=str(recordings), discovery_period_s=0.2, status_period_s=0.5,
            max_segment_s=2.0, mpps_ae_title="MPPS_SCP", mpps_host="127.0.0.1",
            mpps_port=mpps_port, mpps_station_ae_title="DICOM_OR", mpps_timeout_s=2.0))
        self.executor = SingleThreadedExecutor(context=rctx)
        for node in (self.context_node, *self.drivers, self.recorder):
            self.executor.add_node(node)
        self.client = self.recorder.create_client(RecordControl, "/recorder/control")

    def spin_until(self, condition, timeout_s: float) -> bool:
        return spin_until(self.executor, condition, timeout_s)

    def streams(self) -> list[dict]:
        return self.recorder.status()["streams"]

    def ready(self) -> bool:
        """Every stream of the four followed with its worklist case's descriptor."""
        streams = self.streams()
        return len(streams) >= 4 and all(
            s.get("series_instance_uid") for s in streams) and all(
            f.recorder is not None and f.recorder.descriptor.session.requests
            for f in self.recorder._followed.values())

    def call(self, command: int, discontinued: bool = False) -> RecordControl.Response:
        assert self.client.wait_for_service(timeout_sec=10)
        future = self.client.call_async(RecordControl.Request(command=command,
                                                              discontinued=discontinued))
        assert self.spin_until(future.done, 30)
        return future.result()

    def record(self, seconds_of_samples: int = 2) -> None:
        """START, wait until every stream has recorded samples, STOP."""
        assert self.call(RecordControl.Request.START).success
        assert self.spin_until(lambda: all(s.get("samples", 0) >= 10 * seconds_of_samples
                                           for s in self.streams()), 60), self.streams()
        stop = self.call(RecordControl.Request.STOP)
        assert stop.success, stop.message

    def close(self) -> None:
        self.recorder.close()
        for driver in self.drivers:
            driver.close()
        self.executor.shutdown()
        for node in (self.recorder, *self.drivers, self.context_node):
            node.destroy_node()


def recorded(recordings: Path) -> dict[str, pydicom.Dataset]:
    return {str(ds.SOPInstanceUID): ds for ds in
            (pydicom.dcmread(p, stop_before_pixels=True) for p in recordings.rglob("*.dcm"))}


def check_instance(ds: pydicom.Dataset, mpps_uid: str) -> None:
    """The worklist item's Request Attributes and the MPPS reference on one instance."""
    ref = ds.ReferencedPerformedProcedureStepSequence[0]
    assert ref.ReferencedSOPClassUID == ModalityPerformedProcedureStep
    assert ref.ReferencedSOPInstanceUID == mpps_uid
    assert ds.StudyInstanceUID == STUDY_UID and ds.AccessionNumber == "ACC-SWF-01"
    if ds.Modality == "SR":
        request = ds.ReferencedRequestSequence[0]
        assert "RequestAttributesSequence" not in ds
    else:
        request = ds.RequestAttributesSequence[0]
        assert request.ScheduledProcedureStepID == "SPS-0777"
        assert request.ScheduledProcedureStepDescription == "Lap chole, standard"
        assert request.ScheduledProtocolCodeSequence[0].CodeValue == "LAP-STD"
        assert ds.PerformedProcedureStepID.startswith("PPS")
        assert ds.PerformedProcedureStepStartDate
    assert request.StudyInstanceUID == STUDY_UID
    assert request.AccessionNumber == "ACC-SWF-01"
    assert request.RequestedProcedureID == "RP-0777"
    assert request.RequestedProcedureDescription == "Laparoscopic cholecystectomy"
    assert request.RequestedProcedureCodeSequence[0].CodeValue == "45595009"


def test_worklist_case_opens_and_completes_an_mpps_and_instances_reference_it(
        tmp_path, worklist):
    mpps_port = free_tcp_port()
    recordings = tmp_path / "recordings"
    with MppsScp(mpps_port) as scp, ros_context() as rctx:
        graph = OrGraph(rctx, recordings, worklist, mpps_port)
        try:
            assert graph.spin_until(graph.ready, 60), graph.streams()
            graph.record()
            # Both messages accepted (the SCU has its answers, not only the SCP the requests).
            assert graph.spin_until(lambda: graph.recorder.status()["mpps"]["sent"] >= 2,
                                    60), graph.recorder.status()["mpps"]
            status = graph.recorder.status()["mpps"]
            health = graph.recorder._node_health()
        finally:
            graph.close()
    (op1, uid, create), (op2, uid2, final) = scp.received
    assert (op1, op2) == ("create", "set") and uid2 == uid
    assert [code for _, code in scp.answers] == [0, 0]
    # N-CREATE: IN PROGRESS, for the scheduled step, this station.
    assert create.PerformedProcedureStepStatus == "IN PROGRESS"
    step = create.ScheduledStepAttributesSequence[0]
    assert (step.StudyInstanceUID, step.AccessionNumber, step.RequestedProcedureID,
            step.ScheduledProcedureStepID) == (STUDY_UID, "ACC-SWF-01", "RP-0777", "SPS-0777")
    assert step.ScheduledProtocolCodeSequence[0].CodeValue == "LAP-STD"
    assert create.PatientID == "P-000777" and create.PatientName == "Doe^Jane"
    assert create.PerformedStationAETitle == "DICOM_OR" and create.Modality == "ES"
    assert create.ProcedureCodeSequence[0].CodeValue == "45595009"
    assert create.PerformedSeriesSequence == []
    # N-SET: COMPLETED with every recorded Series and exactly the instances on disk.
    assert final.PerformedProcedureStepStatus == "COMPLETED"
    assert final.PerformedProcedureStepEndDate and final.PerformedProcedureStepEndTime
    files = recorded(recordings)
    listed = {}
    for item in final.PerformedSeriesSequence:
        for ref in [*item.ReferencedImageSequence,
                    *item.ReferencedNonImageCompositeSOPInstanceSequence]:
            listed[str(ref.ReferencedSOPInstanceUID)] = str(item.SeriesInstanceUID)
    assert listed == {uid_: str(ds.SeriesInstanceUID) for uid_, ds in files.items()}
    assert {ds.Modality for ds in files.values()} == {"ES", "ECG", "HD", "SR"}
    assert status["sent"] == 2 and status["pending"] == 0 and status["last_step"] == {
        "uid": uid, "status": "COMPLETED"}
    assert health.values["mpps_sent"] == 2 and "MPPS" not in health.message
    # Every instance: Request Attributes + Referenced PPS; one of each kind is IOD-valid.
    checked = set()
    for path in sorted(recordings.rglob("*.dcm")):
        ds = files[pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID]
        check_instance(ds, uid)
        if ds.Modality not in checked:
            checked.add(ds.Modality)
            errors, lines = dciodvfy(path)
            assert errors == 0, (ds.Modality, lines)
            if ds.Modality == "SR":
                result = run_tool(["dsrdump", str(path)], timeout_s=60)
                assert result.returncode == 0, result.stderr
                assert "Referenced Request" not in result.stderr
    assert checked == {"ES", "ECG", "HD", "SR"}


def test_mpps_scp_down_recording_unaffected_failure_reported_then_delivered(
        tmp_path, worklist):
    mpps_port = free_tcp_port()  # nobody listens yet
    recordings = tmp_path / "recordings"
    with ros_context() as rctx:
        graph = OrGraph(rctx, recordings, worklist, mpps_port)
        try:
            assert graph.spin_until(graph.ready, 60), graph.streams()
            graph.record()
            # Every stopped segment still becomes a final instance.
            assert graph.spin_until(lambda: all(s.get("finalising") == 0 and s.get(
                "instances", 0) >= 1 for s in graph.streams()), 60), graph.streams()
            assert graph.spin_until(
                lambda: graph.recorder.status()["mpps"]["pending"] == 2, 60)
            status = graph.recorder.status()["mpps"]
            assert status["reachable"] is False and status["retries"] >= 1
            assert f"MPPS_SCP@127.0.0.1:{mpps_port}" in status["last_error"]
            health = graph.recorder._node_health()
            assert "MPPS" in health.message and "unreachable" in health.message
            assert health.values["mpps_pending"] == 2
            uid = status["last_step"]["uid"]
            # The RIS comes back: the kept N-CREATE and N-SET arrive, in order.
            with MppsScp(mpps_port) as scp:
                assert graph.spin_until(lambda: len(scp.received) >= 2, 90), \
                    graph.recorder.status()["mpps"]
            assert [(op, u) for op, u, _ in scp.received] == [("create", uid), ("set", uid)]
            assert scp.instances[uid].PerformedProcedureStepStatus == "COMPLETED"
        finally:
            graph.close()
    files = recorded(recordings)
    assert {ds.Modality for ds in files.values()} == {"ES", "ECG", "HD", "SR"}
    for ds in files.values():
        check_instance(ds, uid)


def test_stop_discontinued_and_a_shutdown_mid_case_end_their_steps_discontinued(
        tmp_path, worklist):
    mpps_port = free_tcp_port()
    with MppsScp(mpps_port) as scp, ros_context() as rctx:
        graph = OrGraph(rctx, tmp_path / "recordings", worklist, mpps_port)
        try:
            assert graph.spin_until(graph.ready, 60), graph.streams()
            assert graph.call(RecordControl.Request.START).success
            assert graph.spin_until(lambda: all(s.get("samples", 0) >= 10
                                                for s in graph.streams()), 60)
            assert graph.call(RecordControl.Request.STOP, discontinued=True).success
            assert graph.spin_until(lambda: len(scp.received) >= 2, 60)
            # A new START opens a new step; the recorder then shuts down mid-case.
            assert graph.call(RecordControl.Request.START).success
            assert graph.spin_until(lambda: len(scp.received) >= 3, 60)
            assert graph.spin_until(lambda: all(s.get("samples", 0) >= 20
                                                for s in graph.streams()), 60)
        finally:
            graph.close()  # N-SET of the open step delivered during close
    ops = [(op, uid) for op, uid, _ in scp.received]
    first, second = ops[0][1], ops[2][1]
    assert ops == [("create", first), ("set", first), ("create", second), ("set", second)]
    assert first != second
    for uid in (first, second):
        final = scp.instances[uid]
        assert final.PerformedProcedureStepStatus == "DISCONTINUED"
        assert final.PerformedProcedureStepDiscontinuationReasonCodeSequence[0].CodeValue \
            == "110513"
        # What was acquired before the discontinuation is still listed.
        assert {str(i.SeriesInstanceUID) for i in final.PerformedSeriesSequence}
