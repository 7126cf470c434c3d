"""Modality Worklist item selection and mapping to the session context (no network)."""

import datetime as dt

import pytest
from pydicom.dataset import Dataset

from dicom_or_core.model.errors import DicomOrError
from dicom_or_core.scu import worklist as wl


def item(step: str, date: str = "20241124", time: str = "080000", **kw) -> Dataset:
    ds = Dataset()
    ds.PatientName, ds.PatientID, ds.PatientSex = "Doe^Jane", "P1", "F"
    ds.AccessionNumber, ds.RequestedProcedureID = "ACC-" + step, "RP-" + step
    ds.RequestedProcedureDescription = "Lap chole"
    for key, value in kw.items():
        setattr(ds, key, value)
    sps = Dataset()
    sps.ScheduledProcedureStepID = step
    sps.ScheduledProcedureStepStartDate, sps.ScheduledProcedureStepStartTime = date, time
    sps.ScheduledProcedureStepLocation = "OR1"
    ds.ScheduledProcedureStepSequence = [sps]
    return ds


def test_identifier_selects_by_station_location_and_date():
    ds = wl.worklist_identifier(wl.WorklistSelection("DICOM_OR", "OR1", "20241124"))
    sps = ds.ScheduledProcedureStepSequence[0]
    assert (sps.ScheduledStationAETitle, sps.ScheduledProcedureStepLocation,
            sps.ScheduledProcedureStepStartDate) == ("DICOM_OR", "OR1", "20241124")
    assert "StudyInstanceUID" in ds and ds.SpecificCharacterSet == "ISO_IR 192"


def test_selection_validation():
    with pytest.raises(DicomOrError, match="date"):
        wl.WorklistSelection("X", "", "2024-11-24").validate()
    assert wl.WorklistSelection("X", "", "20241101-20241130").validate()


def test_items_in_scheduled_order_and_next_case():
    items = [item("B", time="1100"), item("C", date="20241125", time="0700"),
             item("A", time="080000")]
    assert [wl.step_id(i) for i in wl.sort_items(items)] == ["A", "B", "C"]
    assert wl.step_id(wl.next_item(items, None)) == "A"
    assert wl.step_id(wl.next_item(items, "A")) == "B"
    assert wl.step_id(wl.next_item(items, "B")) == "C"
    assert wl.next_item(items, "C") is None
    assert wl.step_id(wl.next_item(items, "gone")) == "A"
    assert wl.next_item([], None) is None


def test_session_from_item_uses_the_items_study_uid():
    now = dt.datetime(2024, 11, 24, 8, 5, 0)
    session = wl.session_from_item(item("A", StudyInstanceUID="1.2.3.4"), now=now)
    assert session.study.study_instance_uid == "1.2.3.4"
    assert session.study.accession_number == "ACC-A" and session.study.study_id == "RP-A"
    assert (session.study.study_date, session.study.study_time) == ("20241124", "080500")
    assert session.scheduled_procedure_step_id == "A" and session.operating_room == "OR1"
    assert session.patient.patient_name == "Doe^Jane"


def test_missing_study_uid_is_derived_stably():
    first = wl.session_from_item(item("A"))
    again = wl.session_from_item(item("A"))
    other = wl.session_from_item(item("B"))
    assert first.study.study_instance_uid == again.study.study_instance_uid
    assert first.study.study_instance_uid != other.study.study_instance_uid
    assert first.synchronization_frame_of_reference_uid != \
        again.synchronization_frame_of_reference_uid


def test_unusable_items_raise_naming_the_field():
    bad = item("A", PatientSex="X")
    with pytest.raises(DicomOrError, match="sex"):
        wl.session_from_item(bad)
    anonymous = item("A")
    del anonymous.AccessionNumber
    del anonymous.RequestedProcedureID
    with pytest.raises(DicomOrError, match="worklist.item"):
        wl.session_from_item(anonymous)


def test_unreachable_worklist_raises_worklist_unavailable():
    from dicom_or_test_common.peers import free_tcp_port

    peer = wl.WorklistPeer("127.0.0.1", free_tcp_port(), "WORKLIST", timeout_s=2)
    with pytest.raises(wl.WorklistUnavailable, match="no association"):
        wl.query_worklist(peer, wl.WorklistSelection("DICOM_OR"))
