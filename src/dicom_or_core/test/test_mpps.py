"""MPPS SCU (dicom_or_core.scu.mpps): the N-CREATE / N-SET datasets against PS3.4 Table
F.7.2-1 in memory; the Request Attributes / Referenced PPS written on instances; sending to
the test MPPS SCP (pynetdicom, test support) on a free port, its state rules, and the
durable outbox across an SCP outage and a restart."""

from __future__ import annotations

import datetime as _dt
import json

import pytest
from dicom_or_test_common.examples import example_descriptor, example_session
from dicom_or_test_common.mpps_scp import MppsScp
from dicom_or_test_common.peers import free_tcp_port
from pydicom.dataset import Dataset
from pynetdicom.sop_class import ModalityPerformedProcedureStep

from dicom_or_core.model import context as ctx
from dicom_or_core.model.errors import DicomOrError
from dicom_or_core.model.uid import new_uid
from dicom_or_core.scu import mpps

VIDEO_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.1.1"  # Video Endoscopic Image Storage
ECG_CLASS = "1.2.840.10008.5.1.4.1.1.9.1.2"       # General ECG Waveform Storage
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"        # Comprehensive 3D SR Storage


def worklist_session() -> ctx.SessionContext:
    session = example_session()
    session.requests = [ctx.RequestAttributes(
        study_instance_uid=session.study.study_instance_uid, accession_number="A1",
        requested_procedure_id="RP-1", requested_procedure_description="Lap chole",
        requested_procedure_code_value="45595009", requested_procedure_code_scheme="SCT",
        requested_procedure_code_meaning="Laparoscopic cholecystectomy",
        scheduled_procedure_step_id="SPS-1", scheduled_procedure_step_description="Lap",
        scheduled_protocol_code_value="P1", scheduled_protocol_code_scheme="99LOCAL",
        scheduled_protocol_code_meaning="Standard lap")]
    return session.validate()


def step(session: ctx.SessionContext | None = None) -> mpps.PerformedStep:
    return mpps.PerformedStep(
        sop_instance_uid=new_uid(), performed_procedure_step_id="PPS261125080000",
        session=session or worklist_session(), modality="ES", station_ae_title="DICOM_OR",
        station_name="OR1", start_date="20261125", start_time="080000", description="Lap")


def series() -> list[mpps.PerformedSeries]:
    return [mpps.PerformedSeries(new_uid(), "ES", "Endoscope", "DICOM_OR",
                                 [(VIDEO_CLASS, new_uid()), (VIDEO_CLASS, new_uid())]),
            mpps.PerformedSeries(new_uid(), "ECG", "", "DICOM_OR", [(ECG_CLASS, new_uid())]),
            mpps.PerformedSeries(new_uid(), "SR", "Tracker", "", [(SR_CLASS, new_uid())])]


# -- datasets (PS3.4 Table F.7.2-1) ---------------------------------------------------------

# N-CREATE SCU type 1 and type 2 attributes (top level).
CREATE_TYPE_1 = ("ScheduledStepAttributesSequence", "PerformedStationAETitle",
                 "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime",
                 "PerformedProcedureStepStatus", "PerformedProcedureStepID", "Modality")
CREATE_TYPE_2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                 "ReferencedPatientSequence", "PerformedStationName", "PerformedLocation",
                 "PerformedProcedureStepEndDate", "PerformedProcedureStepEndTime",
                 "PerformedProcedureStepDescription", "PerformedProcedureTypeDescription",
                 "ProcedureCodeSequence", "StudyID", "PerformedProtocolCodeSequence",
                 "PerformedSeriesSequence")
SCHEDULED_STEP_TYPE_2 = ("ReferencedStudySequence", "AccessionNumber", "RequestedProcedureID",
                         "RequestedProcedureDescription", "ScheduledProcedureStepID",
                         "ScheduledProcedureStepDescription", "ScheduledProtocolCodeSequence")


def test_n_create_has_every_required_attribute():
    s = step()
    ds = mpps.n_create_dataset(s)
    for keyword in CREATE_TYPE_1:
        assert ds.get(keyword), keyword
    for keyword in CREATE_TYPE_2:
        assert keyword in ds, keyword
    assert ds.PerformedProcedureStepStatus == "IN PROGRESS"
    assert ds.PerformedSeriesSequence == [] and ds.PerformedProcedureStepEndDate == ""
    item = ds.ScheduledStepAttributesSequence[0]
    assert item.StudyInstanceUID == s.session.study.study_instance_uid
    for keyword in SCHEDULED_STEP_TYPE_2:
        assert keyword in item, keyword
    assert item.ScheduledProcedureStepID == "SPS-1"
    assert item.ScheduledProtocolCodeSequence[0].CodeValue == "P1"
    assert ds.ProcedureCodeSequence[0].CodeValue == "45595009"
    assert ds.PatientID == "OR-0001" and ds.PerformedLocation == "OR1"
    # Survives encoding (the outbox stores it as DICOM JSON).
    assert Dataset.from_json(ds.to_json_dict()) == ds


def test_n_create_needs_a_worklist_item():
    with pytest.raises(DicomOrError, match="session.requests"):
        mpps.n_create_dataset(step(example_session()))


def test_n_set_completed_lists_the_series_split_into_images_and_non_images():
    performed = series()
    ds = mpps.n_set_dataset(mpps.COMPLETED, performed, _dt.datetime(2026, 11, 25, 9, 30))
    assert ds.PerformedProcedureStepStatus == "COMPLETED"
    assert (ds.PerformedProcedureStepEndDate, ds.PerformedProcedureStepEndTime) == \
        ("20261125", "093000")
    # Only what N-SET may set (the step's identity and schedule are create-only).
    for keyword in ("ScheduledStepAttributesSequence", "PatientID", "Modality",
                    "PerformedProcedureStepID", "PerformedProcedureStepStartDate"):
        assert keyword not in ds
    assert "PerformedProcedureStepDiscontinuationReasonCodeSequence" not in ds
    video, ecg, sr = ds.PerformedSeriesSequence
    for item, source in zip(ds.PerformedSeriesSequence, performed, strict=True):
        assert item.SeriesInstanceUID == source.series_instance_uid
        assert item.ProtocolName  # type 1
        for keyword in ("PerformingPhysicianName", "OperatorsName", "SeriesDescription",
                        "RetrieveAETitle", "ReferencedImageSequence",
                        "ReferencedNonImageCompositeSOPInstanceSequence"):
            assert keyword in item, keyword
    assert [r.ReferencedSOPInstanceUID for r in video.ReferencedImageSequence] == \
        [uid for _, uid in performed[0].instances]
    assert video.ReferencedNonImageCompositeSOPInstanceSequence == []
    assert ecg.ReferencedImageSequence == [] and sr.ReferencedImageSequence == []
    assert ecg.ReferencedNonImageCompositeSOPInstanceSequence[0].ReferencedSOPClassUID == \
        ECG_CLASS
    assert sr.ReferencedNonImageCompositeSOPInstanceSequence[0].ReferencedSOPClassUID == \
        SR_CLASS
    assert ecg.ProtocolName == "dicom_or ECG"


def test_n_set_discontinued_gives_a_reason_and_completed_needs_series():
    ds = mpps.n_set_dataset(mpps.DISCONTINUED, [])
    assert ds.PerformedProcedureStepDiscontinuationReasonCodeSequence[0].CodeValue == "110513"
    with pytest.raises(DicomOrError, match="at least one Series"):
        mpps.n_set_dataset(mpps.COMPLETED, [])
    with pytest.raises(DicomOrError, match="COMPLETED or DISCONTINUED"):
        mpps.n_set_dataset(mpps.IN_PROGRESS, series())


def test_step_modality_prefers_the_image_modality():
    assert mpps.step_modality(["SR", "ECG", "ES", "HD"]) == "ES"
    assert mpps.step_modality(["SR", "ECG"]) == "ECG"
    assert len(mpps.new_step_id(_dt.datetime(2026, 11, 25, 8, 0, 0))) <= 16


@pytest.mark.parametrize("kwargs, name", [
    ({"ae_title": "RIS", "port": 104}, "mpps_host"),
    ({"ae_title": "RIS", "host": "h", "port": 70000}, "mpps_port"),
    ({"ae_title": "A" * 17, "host": "h", "port": 104}, "mpps_ae_title"),
])
def test_peer_validation_names_the_parameter(kwargs, name):
    with pytest.raises(DicomOrError) as info:
        mpps.MppsPeer(**kwargs).validate()
    assert info.value.field == name
    assert not mpps.MppsPeer().validate().enabled


# -- the instances' workflow attributes -----------------------------------------------------

def test_workflow_context_on_an_image_and_on_an_sr():
    session = worklist_session()
    session.performed_procedure_step_sop_instance_uid = uid = new_uid()
    session.performed_procedure_step_id = "PPS1"
    session.performed_procedure_step_start_date = "20261125"
    session.performed_procedure_step_start_time = "080000"
    session.validate()
    image = Dataset()
    image.SOPClassUID = VIDEO_CLASS
    ctx.apply_workflow_context(image, session)
    request = image.RequestAttributesSequence[0]
    assert request.RequestedProcedureID == "RP-1" and request.AccessionNumber == "A1"
    assert request.ScheduledProcedureStepID == "SPS-1"
    assert request.StudyInstanceUID == session.study.study_instance_uid
    assert request.RequestedProcedureCodeSequence[0].CodingSchemeDesignator == "SCT"
    assert request.ScheduledProtocolCodeSequence[0].CodeValue == "P1"
    ref = image.ReferencedPerformedProcedureStepSequence[0]
    assert (ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID) == \
        (ModalityPerformedProcedureStep, uid)
    assert image.PerformedProcedureStepID == "PPS1"
    assert image.PerformedProcedureStepStartTime == "080000"
    sr = Dataset()
    sr.SOPClassUID = SR_CLASS
    ctx.apply_workflow_context(sr, session)
    assert "RequestAttributesSequence" not in sr and "PerformedProcedureStepID" not in sr
    assert sr.ReferencedRequestSequence[0].RequestedProcedureID == "RP-1"
    assert sr.ReferencedRequestSequence[0].PlacerOrderNumberImagingServiceRequest == ""
    assert sr.ReferencedPerformedProcedureStepSequence[0].ReferencedSOPInstanceUID == uid
    # 1C attributes are absent, not empty, when the RIS sent none.
    session.requests[0].scheduled_procedure_step_id = ""
    session.requests[0].requested_procedure_id = ""
    bare = Dataset()
    ctx.apply_workflow_context(bare, session)
    assert "ScheduledProcedureStepID" not in bare.RequestAttributesSequence[0]
    assert "RequestedProcedureID" not in bare.RequestAttributesSequence[0]
    # A case from no worklist: nothing.
    plain = Dataset()
    ctx.apply_workflow_context(plain, example_session())
    assert len(plain) == 0


def test_session_with_requests_round_trips_as_dict_and_is_validated():
    session = worklist_session()
    back = ctx.from_dict(ctx.SessionContext, ctx.to_dict(session))
    assert back == session
    session.requests[0].scheduled_procedure_step_id = "X" * 17
    with pytest.raises(DicomOrError) as info:
        session.validate()
    assert info.value.field == "session.requests[0].scheduled_procedure_step_id"
    descriptor = example_descriptor("ecg", worklist_session())
    assert ctx.from_dict(ctx.StreamDescriptor, ctx.to_dict(descriptor)) == descriptor


# -- sending ------------------------------------------------------------------------------

def peer(port: int, **kw) -> mpps.MppsPeer:
    return mpps.MppsPeer("MPPS_SCP", "127.0.0.1", port, "DICOM_OR", kw.get("timeout_s", 5.0))


def test_create_then_complete_against_the_scp_and_its_state_rules():
    port = free_tcp_port()
    s = step()
    with MppsScp(port) as scp:
        assert mpps.send(peer(port), "create", s.sop_instance_uid,
                         mpps.n_create_dataset(s)) == 0
        final = mpps.n_set_dataset(mpps.COMPLETED, series())
        assert mpps.send(peer(port), "set", s.sop_instance_uid, final) == 0
        stored = scp.instances[s.sop_instance_uid]
        assert stored.PerformedProcedureStepStatus == "COMPLETED"
        assert len(stored.PerformedSeriesSequence) == 3
        # After COMPLETED: 0x0110, the step may no longer be updated.
        with pytest.raises(mpps.MppsFailed) as info:
            mpps.send(peer(port), "set", s.sop_instance_uid, final)
        assert info.value.status == 0x0110 and "no longer be updated" in str(info.value)
        # Unknown instance: 0x0112.
        with pytest.raises(mpps.MppsFailed) as info:
            mpps.send(peer(port), "set", new_uid(), final)
        assert info.value.status == 0x0112
        # A create-only attribute in an N-SET: 0x0106.
        s2 = step()
        mpps.send(peer(port), "create", s2.sop_instance_uid, mpps.n_create_dataset(s2))
        bad = mpps.n_set_dataset(mpps.DISCONTINUED, [])
        bad.PatientID = "changed"
        with pytest.raises(mpps.MppsFailed) as info:
            mpps.send(peer(port), "set", s2.sop_instance_uid, bad)
        assert info.value.status == 0x0106
    assert [op for op, _ in scp.answers] == ["create", "set", "set", "set", "create", "set"]


def test_unreachable_scp_is_a_clear_retryable_error():
    port = free_tcp_port()
    s = step()
    with pytest.raises(mpps.MppsFailed) as info:
        mpps.send(peer(port, timeout_s=1.0), "create", s.sop_instance_uid,
                  mpps.n_create_dataset(s))
    assert info.value.status is None
    assert f"MPPS_SCP@127.0.0.1:{port}" in str(info.value)


def test_outbox_keeps_messages_across_an_outage_and_a_restart(tmp_path):
    port = free_tcp_port()
    path = tmp_path / "mpps_outbox.json"
    s = step()
    outbox = mpps.MppsOutbox(path, initial_backoff_s=0.01)
    outbox.put("create", s.sop_instance_uid, mpps.n_create_dataset(s))
    outbox.put("set", s.sop_instance_uid, mpps.n_set_dataset(mpps.COMPLETED, series()))
    assert outbox.flush(peer(port, timeout_s=1.0)) == 0  # nobody listens
    assert outbox.stats.reachable is False and outbox.stats.retries == 1
    assert "MPPS_SCP@127.0.0.1" in outbox.stats.last_error
    assert [m["operation"] for m in json.loads(path.read_text())] == ["create", "set"]
    again = mpps.MppsOutbox(path)  # the recorder restarted
    assert again.pending() == [("create", s.sop_instance_uid), ("set", s.sop_instance_uid)]
    with MppsScp(port) as scp:
        assert again.flush(peer(port)) == 2
    assert [(op, uid) for op, uid, _ in scp.received] == [
        ("create", s.sop_instance_uid), ("set", s.sop_instance_uid)]
    assert scp.instances[s.sop_instance_uid].PerformedProcedureStepStatus == "COMPLETED"
    assert json.loads(path.read_text()) == [] and again.stats.sent == 2


def test_outbox_drops_a_refused_create_with_its_sets(tmp_path):
    port = free_tcp_port()
    s = step()
    outbox = mpps.MppsOutbox(tmp_path / "outbox.json")
    create = mpps.n_create_dataset(s)
    create.PerformedProcedureStepStatus = "COMPLETED"  # the SCP refuses: 0x0106
    outbox.put("create", s.sop_instance_uid, create)
    outbox.put("set", s.sop_instance_uid, mpps.n_set_dataset(mpps.DISCONTINUED, []))
    with MppsScp(port) as scp:
        assert outbox.flush(peer(port)) == 0
    assert outbox.pending() == [] and outbox.stats.refused == 2
    assert "0x0106" in outbox.refusals[0] and len(scp.received) == 1


def test_a_damaged_outbox_is_set_aside(tmp_path):
    path = tmp_path / "outbox.json"
    path.write_text("{not json")
    outbox = mpps.MppsOutbox(path)
    assert outbox.pending() == []
    assert list(tmp_path.glob("outbox.json.damaged-*"))
