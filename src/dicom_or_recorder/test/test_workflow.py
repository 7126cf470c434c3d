"""The recorder's MPPS bookkeeping (dicom_or_recorder.workflow) without ROS: a real spool in
a temporary folder, waveform instances built by the real IOD builder, the test MPPS SCP on a
free port. One step per recording of a case, its instances only, DISCONTINUED on shutdown and
after a crash, a new step after a completed one, nothing for a case without a worklist."""

from __future__ import annotations

import subprocess

import pytest
from dicom_or_test_common.examples import (
    example_descriptor,
    example_session,
    now_ns,
    synthetic_waveform,
)
from dicom_or_test_common.mpps_scp import MppsScp
from dicom_or_test_common.peers import free_tcp_port
from dicom_or_test_common.ros import isolated_env, reserved_domain_id
from recorder_fixtures import console_script

from dicom_or_core.archive.spool import Spool
from dicom_or_core.iod.waveform import build_waveform
from dicom_or_core.model import context as ctx
from dicom_or_core.model.uid import new_uid
from dicom_or_core.scu.mpps import MppsPeer
from dicom_or_recorder.workflow import Workflow, detach


def worklist_session(study_uid: str | None = None) -> ctx.SessionContext:
    session = example_session()
    if study_uid:
        session.study.study_instance_uid = study_uid
    session.requests = [ctx.RequestAttributes(
        study_instance_uid=session.study.study_instance_uid, accession_number="A1",
        requested_procedure_id="RP-1", scheduled_procedure_step_id="SPS-1",
        scheduled_procedure_step_description="Lap chole")]
    return session


def record(spool: Spool, descriptor: ctx.StreamDescriptor) -> str:
    """One waveform instance of ``descriptor`` into the spool; its SOP Instance UID."""
    uid = new_uid()
    spool.write_instance(build_waveform(descriptor, synthetic_waveform(50, 3), now_ns(), uid))
    return uid


@pytest.fixture
def scp():
    port = free_tcp_port()
    with MppsScp(port) as server:
        yield server


def workflow(spool: Spool, port: int) -> Workflow:
    return Workflow(MppsPeer("MPPS_SCP", "127.0.0.1", port, "DICOM_OR_REC", 2.0), spool,
                    "DICOM_OR", "PACS")


def test_one_step_per_recording_lists_only_its_own_instances(tmp_path, scp):
    spool = Spool(tmp_path)
    flow = workflow(spool, scp.port)
    ecg = example_descriptor("ecg", worklist_session())
    before = record(spool, ecg)  # recorded before the step: not the step's
    stamped = flow.begin(ecg)
    flow.started()
    step_uid = stamped.session.performed_procedure_step_sop_instance_uid
    assert step_uid and stamped.session.performed_procedure_step_id.startswith("PPS")
    assert stamped.session.performed_procedure_step_description == "Lap chole"
    assert flow.begin(ecg).session.performed_procedure_step_sop_instance_uid == step_uid
    mine = [record(spool, stamped) for _ in range(2)]
    flow.streams_stopped({ecg.series_instance_uid}, [])  # still recording: step stays open
    assert flow.step is not None
    flow.streams_stopped(set(), mine[-1:])
    assert scp.wait_for(lambda s: len(s.received) == 2, 20), flow.status()
    (_, uid, create), (_, _, final) = scp.received
    assert uid == step_uid and create.Modality == "ECG"
    assert final.PerformedProcedureStepStatus == "COMPLETED"
    (series,) = final.PerformedSeriesSequence
    refs = [r.ReferencedSOPInstanceUID for r in
            series.ReferencedNonImageCompositeSOPInstanceSequence]
    assert sorted(refs) == sorted(mine) and before not in refs
    assert series.RetrieveAETitle == "PACS" and series.ReferencedImageSequence == []
    # A START after COMPLETED: a new step (a completed one cannot be extended).
    again = flow.begin(detach(stamped))
    flow.started()
    assert again.session.performed_procedure_step_sop_instance_uid not in ("", step_uid)
    assert detach(stamped).session.performed_procedure_step_sop_instance_uid == ""
    flow.close()
    assert scp.wait_for(lambda s: len(s.received) == 4, 20)
    assert scp.received[3][2].PerformedProcedureStepStatus == "DISCONTINUED"  # nothing
    spool.close()


def test_streams_joining_one_by_one_choose_the_image_modality(tmp_path, scp):
    """record_on_start: the streams join as their descriptors arrive, the pose stream may
    come first; the N-CREATE waits for the others and says ES (Modality is N-CREATE only)."""
    spool = Spool(tmp_path)
    flow = workflow(spool, scp.port)
    session = worklist_session()
    for kind in ("pose", "ecg", "video"):
        flow.begin(example_descriptor(kind, session))
        flow.started()
    assert scp.wait_for(lambda s: len(s.received) == 1, 20), flow.status()
    assert scp.received[0][2].Modality == "ES"
    flow.close()
    spool.close()


def test_another_case_completes_the_open_step_and_a_crash_is_discontinued(tmp_path, scp):
    spool = Spool(tmp_path)
    flow = workflow(spool, scp.port)
    first = flow.begin(example_descriptor("ecg", worklist_session()))
    flow.started()
    record(spool, first)
    second = flow.begin(example_descriptor("ecg", worklist_session()))  # next case
    flow.started()
    ids = [d.session.performed_procedure_step_sop_instance_uid for d in (first, second)]
    assert ids[0] != ids[1]
    assert scp.wait_for(lambda s: len(s.received) == 3, 20)
    assert [op for op, uid, _ in scp.received if uid == ids[0]] == ["create", "set"]
    assert scp.instances[ids[0]].PerformedProcedureStepStatus == "COMPLETED"
    assert scp.instances[ids[1]].PerformedProcedureStepStatus == "IN PROGRESS"
    # A crash: the worker stops without ending the open step ...
    flow._stop.set()
    flow._thread.join()
    record(spool, second)
    # ... the next start ends it DISCONTINUED, listing what references it.
    restarted = workflow(spool, scp.port)
    assert scp.wait_for(lambda s: len(s.received) == 4, 20), restarted.status()
    op, uid, final = scp.received[3]
    assert (op, uid) == ("set", ids[1])
    assert final.PerformedProcedureStepStatus == "DISCONTINUED"
    assert len(final.PerformedSeriesSequence) == 1
    restarted.close()
    spool.close()


def test_no_worklist_or_no_destination_means_no_step(tmp_path):
    spool = Spool(tmp_path)
    off = Workflow(MppsPeer(), spool, "DICOM_OR")
    descriptor = example_descriptor("ecg", worklist_session())
    assert off.begin(descriptor) == descriptor and not off.enabled
    assert off.problems() == [] and off.status()["enabled"] is False
    on = workflow(spool, free_tcp_port())
    plain = example_descriptor("ecg")
    assert on.begin(plain) == plain and on.step is None
    on.close(timeout_s=1.0)
    spool.close()


@pytest.mark.parametrize("args, name", [
    (["-p", "mpps_ae_title:=RIS"], "mpps_host"),
    (["-p", "mpps_ae_title:=RIS", "-p", "mpps_host:=ris", "-p", "mpps_port:=70000"],
     "mpps_port"),
    (["-p", "mpps_timeout_s:=0.0"], "mpps_timeout_s"),
])
def test_bad_mpps_parameter_exits_1_naming_it(tmp_path, args, name):
    with reserved_domain_id() as domain:
        result = subprocess.run(
            [console_script("recorder"), "--ros-args", *args, "-p",
             f"recordings_dir:={tmp_path}"],
            env=isolated_env(domain), capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    assert name in result.stderr and "Traceback" not in result.stderr


def test_mpps_status_round_trips_through_the_typed_message(tmp_path):
    from dicom_or_recorder.status import status_dict, status_message
    base = {"recordings_dir": str(tmp_path), "disk": {"free_mib": 1, "total_mib": 2,
                                                      "low": False},
            "streams": [], "recovery": {"pending": 0, "finalised": 0, "discarded": 0,
                                        "quarantined": 0},
            "instances": {"writing": 0, "final": 0, "stored": 0, "committed": 0, "failed": 0},
            "pacs": {"enabled": False, "queue": 0, "reachable": None, "stored": 0,
                     "committed": 0, "failed": 0, "retries": 0, "bytes_sent": 0,
                     "last_error": ""}}
    spool = Spool(tmp_path)
    flow = workflow(spool, free_tcp_port())
    flow.begin(example_descriptor("ecg", worklist_session()))
    status = dict(base, mpps=flow.status())
    status["mpps"].update(reachable=False, retries=3, last_error="MPPS N-CREATE: down",
                          last_step={"uid": "1.2.3", "status": "COMPLETED"})
    msg = status_message(status)
    assert msg.mpps.enabled and msg.mpps.contacted and not msg.mpps.reachable
    assert msg.mpps.open_step == flow.step.uid and msg.mpps.last_step_status == "COMPLETED"
    assert status_dict(msg) == status
    assert not status_message(base).mpps.enabled and "mpps" not in status_dict(
        status_message(base))
    flow.close(timeout_s=1.0)
    spool.close()
