"""Context validation (every field, every VR rule) and PS3.3 module mapping."""

import copy

import pytest
from pydicom.dataset import Dataset

from dicom_or_core.model import context as ctx
from dicom_or_core.model.errors import DicomOrError


def valid_session() -> ctx.SessionContext:
    return ctx.SessionContext(
        patient=ctx.Patient(patient_id="PAT-0042", issuer_of_patient_id="LEIPZIG-HOSP",
                            patient_name="Doe^Jane^Q^Dr^PhD", birth_date="19700131", sex="F"),
        study=ctx.Study(study_instance_uid="1.2.826.0.1.3680043.8.498.1",
                        accession_number="ACC0001", study_id="S1", study_date="20261124",
                        study_time="101500.25", study_description="Laparoscopic resection",
                        referring_physician_name="House^Gregory"),
        synchronization_frame_of_reference_uid="1.2.826.0.1.3680043.8.498.2",
        scheduled_procedure_step_id="SPS1", operating_room="OR3")


def valid_video() -> ctx.StreamDescriptor:
    return ctx.StreamDescriptor(
        session=valid_session(), stream_uuid="8c1f4a8e-5d0a-4bb0-9a55-2d2b0d9d7e11",
        kind=ctx.KIND_VIDEO, topic="/or/endoscope/frames",
        message_type="dicom_or_msgs/msg/ImageFrame", qos_profile="video",
        nominal_rate_hz=30.0, series_instance_uid="1.2.826.0.1.3680043.8.498.3",
        series_number=7, modality="ES", series_description="Endoscope",
        series_date="20261124", series_time="101600", body_part_examined="ABDOMEN",
        frame_of_reference_uid="1.2.826.0.1.3680043.8.498.4",
        position_reference_indicator="", tf_frame_id="endoscope",
        equipment=ctx.Equipment(manufacturer="ACME", model_name="Scope 9",
                                device_serial_number="SN1", station_name="OR3-SCOPE",
                                software_versions="1.0", institution_name="Uni Leipzig"),
        rows=1080, columns=1920, pixel_encoding="rgb8")


def valid_waveform() -> ctx.StreamDescriptor:
    stream = valid_video()
    stream.kind = ctx.KIND_WAVEFORM
    stream.modality = "ECG"
    stream.rows = stream.columns = 0
    stream.pixel_encoding = ""
    stream.sampling_frequency_hz = 500.0
    stream.channels = [ctx.WaveformChannel(label="II", source_code_value="2:2",
                                           source_coding_scheme="MDC",
                                           source_code_meaning="Lead II", unit_ucum="uV",
                                           sensitivity=2.5)]
    return stream


def test_valid_contexts_pass():
    valid_session().validate()
    valid_video().validate()
    valid_waveform().validate()


# (path to the field, bad value, words the message must contain)
BAD_FIELDS = [
    ("patient.patient_id", "X" * 65, "LO allows at most 64"),
    ("patient.patient_id", "A\\B", "backslash"),
    ("patient.issuer_of_patient_id", "bad\x07bell", "control"),
    ("patient.patient_name", "A^B^C^D^E^F", "at most 5 components"),
    ("patient.patient_name", "A=B=C=D", "at most 3 component groups"),
    ("patient.patient_name", "X" * 65, "at most 64"),
    ("patient.birth_date", "1970-01-31", "DA must be YYYYMMDD"),
    ("patient.birth_date", "19700231", "not a calendar date"),
    ("patient.sex", "female", "CS"),
    ("patient.sex", "X", "M, F, O or empty"),
    ("study.study_instance_uid", "", "required"),
    ("study.study_instance_uid", "1.2.abc", "UI must be digits"),
    ("study.study_instance_uid", "1.02.3", "no leading zeros"),
    ("study.study_instance_uid", "1." + "2" * 64, "at most 64"),
    ("study.accession_number", "A" * 17, "SH allows at most 16"),
    ("study.study_id", "S" * 17, "SH allows at most 16"),
    ("study.study_date", "2026112", "DA must be YYYYMMDD"),
    ("study.study_time", "251500", "out of range"),
    ("study.study_time", "10:15", "TM must be"),
    ("study.study_description", "D" * 65, "LO allows at most 64"),
    ("study.referring_physician_name", "A\\B", "backslash"),
    ("synchronization_frame_of_reference_uid", "", "required"),
    ("synchronization_frame_of_reference_uid", "1..2", "UI must be digits"),
    ("scheduled_procedure_step_id", "S" * 17, "SH allows at most 16"),
    ("operating_room", "R" * 17, "SH allows at most 16"),
]


def _set(obj, path, value):
    *parents, leaf = path.split(".")
    for name in parents:
        obj = getattr(obj, name)
    setattr(obj, leaf, value)


@pytest.mark.parametrize("path,value,words", BAD_FIELDS)
def test_every_invalid_session_field_is_rejected_by_name(path, value, words):
    session = valid_session()
    _set(session, path, value)
    with pytest.raises(DicomOrError) as info:
        session.validate()
    assert info.value.field == f"session.{path}"
    assert str(info.value).startswith(f"session.{path}: ")
    assert words in str(info.value)


BAD_STREAM_FIELDS = [
    ("stream_uuid", "", "required"),
    ("kind", 9, "KIND_VIDEO"),
    ("topic", "or/relative", "fully qualified"),
    ("topic", "", "required"),
    ("nominal_rate_hz", 0.0, "greater than 0"),
    ("nominal_rate_hz", float("nan"), "finite"),
    ("series_instance_uid", "x", "UI must be digits"),
    ("series_number", 2**31, "32-bit"),
    ("modality", "", "required"),
    ("modality", "es", "CS allows only"),
    ("series_description", "D" * 65, "LO allows"),
    ("series_date", "tomorrow", "DA must be"),
    ("series_time", "999999", "out of range"),
    ("body_part_examined", "Abdomen", "CS allows only"),
    ("frame_of_reference_uid", "", "required"),
    ("position_reference_indicator", "P" * 65, "LO allows"),
    ("equipment.manufacturer", "M" * 65, "LO allows"),
    ("equipment.model_name", "M" * 65, "LO allows"),
    ("equipment.device_serial_number", "M" * 65, "LO allows"),
    ("equipment.station_name", "S" * 17, "SH allows"),
    ("equipment.software_versions", "a\\b", "backslash"),
    ("equipment.institution_name", "I" * 65, "LO allows"),
    ("rows", 0, "1..65535"),
    ("columns", 70000, "1..65535"),
    ("pixel_encoding", "yuv422", "rgb8"),
]


@pytest.mark.parametrize("path,value,words", BAD_STREAM_FIELDS)
def test_every_invalid_stream_field_is_rejected_by_name(path, value, words):
    stream = valid_video()
    _set(stream, path, value)
    with pytest.raises(DicomOrError) as info:
        stream.validate()
    # rows/columns share one rule, reported on rows
    expected = "descriptor.rows" if path in ("rows", "columns") else f"descriptor.{path}"
    assert info.value.field == expected
    assert words in str(info.value)


BAD_CHANNEL_FIELDS = [
    ("label", "L" * 17, "SH allows"),
    ("source_code_value", "", "required"),
    ("source_coding_scheme", "", "required"),
    ("source_code_meaning", "M" * 65, "LO allows"),
    ("unit_ucum", "", "required"),
    ("sensitivity", 0.0, "greater than 0"),
    ("baseline", float("inf"), "finite"),
]


@pytest.mark.parametrize("path,value,words", BAD_CHANNEL_FIELDS)
def test_every_invalid_channel_field_is_rejected_by_name(path, value, words):
    stream = valid_waveform()
    setattr(stream.channels[0], path, value)
    with pytest.raises(DicomOrError) as info:
        stream.validate()
    assert info.value.field == f"descriptor.channels[0].{path}"
    assert words in str(info.value)


def test_waveform_needs_channels_and_frequency_and_pose_needs_tools():
    stream = valid_waveform()
    stream.channels = []
    with pytest.raises(DicomOrError, match="descriptor.channels"):
        stream.validate()
    stream = valid_waveform()
    stream.sampling_frequency_hz = 0
    with pytest.raises(DicomOrError, match="descriptor.sampling_frequency_hz"):
        stream.validate()
    stream = valid_video()
    stream.kind = ctx.KIND_POSE
    with pytest.raises(DicomOrError, match="descriptor.tool_ids"):
        stream.validate()


def test_context_maps_to_ps33_modules_value_for_value():
    stream = valid_video()
    ds = ctx.apply_stream_context(Dataset(), stream)
    session, patient, study, eq = (stream.session, stream.session.patient,
                                   stream.session.study, stream.equipment)
    expected = {
        # C.7.1.1 Patient
        "PatientName": patient.patient_name, "PatientID": patient.patient_id,
        "IssuerOfPatientID": patient.issuer_of_patient_id,
        "PatientBirthDate": patient.birth_date, "PatientSex": patient.sex,
        # C.7.2.1 General Study
        "StudyInstanceUID": study.study_instance_uid, "StudyDate": study.study_date,
        "StudyTime": study.study_time, "ReferringPhysicianName":
            study.referring_physician_name, "StudyID": study.study_id,
        "AccessionNumber": study.accession_number,
        "StudyDescription": study.study_description,
        # C.7.3.1 General Series
        "Modality": stream.modality, "SeriesInstanceUID": stream.series_instance_uid,
        "SeriesNumber": stream.series_number, "SeriesDate": stream.series_date,
        "SeriesTime": stream.series_time, "SeriesDescription": stream.series_description,
        "BodyPartExamined": stream.body_part_examined,
        # C.7.4.1 Frame of Reference
        "FrameOfReferenceUID": stream.frame_of_reference_uid,
        "PositionReferenceIndicator": stream.position_reference_indicator,
        # C.7.4.2 Synchronization
        "SynchronizationFrameOfReferenceUID":
            session.synchronization_frame_of_reference_uid,
        # C.7.5.1 General Equipment
        "Manufacturer": eq.manufacturer, "ManufacturerModelName": eq.model_name,
        "DeviceSerialNumber": eq.device_serial_number, "StationName": eq.station_name,
        "SoftwareVersions": eq.software_versions, "InstitutionName": eq.institution_name,
    }
    for keyword, value in expected.items():
        got = ds[keyword].value
        got = str(got) if keyword in ("PatientName", "ReferringPhysicianName") else got
        assert got == value, keyword
    assert ds.SynchronizationTrigger == "NO TRIGGER"
    assert ds.AcquisitionTimeSynchronized == "Y"


def test_type2_attributes_present_even_when_unknown():
    stream = valid_video()
    stream.session.patient = ctx.Patient()
    stream.session.study = ctx.Study(study_instance_uid="1.2.3")
    stream.equipment = ctx.Equipment()
    ds = ctx.apply_stream_context(Dataset(), stream)
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                    "ReferringPhysicianName", "StudyID", "AccessionNumber", "Manufacturer"):
        assert keyword in ds and ds[keyword].value in ("", None), keyword
    assert "IssuerOfPatientID" not in ds  # type 3: omitted when unknown


def test_from_dict_round_trip_and_unknown_keys():
    stream = valid_waveform()
    again = ctx.from_dict(ctx.StreamDescriptor, ctx.to_dict(stream))
    assert again == stream
    data = ctx.to_dict(stream)
    data["session"]["patient"]["patient_nmae"] = "typo"
    with pytest.raises(DicomOrError, match="session.patient.patient_nmae"):
        ctx.from_dict(ctx.StreamDescriptor, data)


def test_validate_does_not_mutate():
    stream = valid_video()
    before = copy.deepcopy(stream)
    stream.validate()
    assert stream == before
