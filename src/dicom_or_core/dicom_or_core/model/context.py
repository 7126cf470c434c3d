"""DICOM context of OR streams: patient, study, series, frame of reference, equipment.

These dataclasses mirror the ``dicom_or_msgs`` messages field for field (same names), so the
ROS layer converts between them generically. Validation applies the PS3.5 VR rules and the
type 1 requirements of the PS3.3 modules the context fills; mapping functions write the
module attributes onto a pydicom Dataset by keyword.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom.sop_class import ModalityPerformedProcedureStep

from dicom_or_core.model import vr
from dicom_or_core.model.errors import DicomOrError
from dicom_or_core.model.pixels import PIXEL_ENCODINGS  # noqa: F401 (part of the model)
from dicom_or_core.model.stream import StreamKind

VIDEO_CODECS = ("", "h264")  # StreamDescriptor.video_codec: raw frames, H.264 packets

# Short names for the kinds (model/stream.py defines them).
KIND_VIDEO = StreamKind.VIDEO
KIND_POSE = StreamKind.POSE
KIND_WAVEFORM = StreamKind.WAVEFORM
KIND_NAMES = {kind: kind.label for kind in StreamKind}
SEXES = ("", "M", "F", "O")
# Every SR Storage SOP Class (PS3.4 B.5, Structured Reporting) has a UID under this root.
SR_STORAGE_PREFIX = "1.2.840.10008.5.1.4.1.1.88."


@dataclass
class Patient:
    """PS3.3 C.7.1.1 Patient Module."""

    patient_id: str = ""
    issuer_of_patient_id: str = ""
    patient_name: str = ""
    birth_date: str = ""
    sex: str = ""

    def validate(self, prefix: str = "patient") -> Patient:
        """Self, or DicomOrError naming ``prefix.<field>`` whose VR (or sex code) fails."""
        vr.check_lo(f"{prefix}.patient_id", self.patient_id)
        vr.check_lo(f"{prefix}.issuer_of_patient_id", self.issuer_of_patient_id)
        vr.check_pn(f"{prefix}.patient_name", self.patient_name)
        vr.check_da(f"{prefix}.birth_date", self.birth_date)
        vr.check_cs(f"{prefix}.sex", self.sex)
        if self.sex not in SEXES:
            raise DicomOrError(f"{prefix}.sex", "PatientSex must be M, F, O or empty",
                               self.sex)
        return self


@dataclass
class Study:
    """PS3.3 C.7.2.1 General Study Module."""

    study_instance_uid: str = ""
    accession_number: str = ""
    study_id: str = ""
    study_date: str = ""
    study_time: str = ""
    study_description: str = ""
    referring_physician_name: str = ""

    def validate(self, prefix: str = "study") -> Study:
        """Self, or DicomOrError naming ``prefix.<field>`` whose VR fails (UID required)."""
        vr.require(f"{prefix}.study_instance_uid", self.study_instance_uid)
        vr.check_ui(f"{prefix}.study_instance_uid", self.study_instance_uid)
        vr.check_sh(f"{prefix}.accession_number", self.accession_number)
        vr.check_sh(f"{prefix}.study_id", self.study_id)
        vr.check_da(f"{prefix}.study_date", self.study_date)
        vr.check_tm(f"{prefix}.study_time", self.study_time)
        vr.check_lo(f"{prefix}.study_description", self.study_description)
        vr.check_pn(f"{prefix}.referring_physician_name", self.referring_physician_name)
        return self


@dataclass
class Equipment:
    """PS3.3 C.7.5.1 General Equipment Module."""

    manufacturer: str = ""
    model_name: str = ""
    device_serial_number: str = ""
    station_name: str = ""
    software_versions: str = ""
    institution_name: str = ""

    def validate(self, prefix: str = "equipment") -> Equipment:
        """Self, or DicomOrError naming ``prefix.<field>`` whose VR fails."""
        vr.check_lo(f"{prefix}.manufacturer", self.manufacturer)
        vr.check_lo(f"{prefix}.model_name", self.model_name)
        vr.check_lo(f"{prefix}.device_serial_number", self.device_serial_number)
        vr.check_sh(f"{prefix}.station_name", self.station_name)
        vr.check_lo(f"{prefix}.software_versions", self.software_versions)
        vr.check_lo(f"{prefix}.institution_name", self.institution_name)
        return self


@dataclass
class RequestAttributes:
    """One Requested Procedure / Scheduled Procedure Step of the worklist that the case
    performs: an item of the Request Attributes Sequence (0040,0275) (PS3.3 Table 10-9
    Request Attributes Macro) and of the MPPS Scheduled Step Attributes Sequence (0040,0270)
    (PS3.4 Table F.7.2-1). Codes are one Code Sequence Macro item each (empty: none)."""

    study_instance_uid: str = ""
    accession_number: str = ""
    requested_procedure_id: str = ""
    requested_procedure_description: str = ""
    requested_procedure_code_value: str = ""
    requested_procedure_code_scheme: str = ""
    requested_procedure_code_meaning: str = ""
    scheduled_procedure_step_id: str = ""
    scheduled_procedure_step_description: str = ""
    scheduled_protocol_code_value: str = ""
    scheduled_protocol_code_scheme: str = ""
    scheduled_protocol_code_meaning: str = ""

    def validate(self, prefix: str = "request") -> RequestAttributes:
        """Self, or DicomOrError naming ``prefix.<field>`` whose VR fails (the Study
        Instance UID of the request is required)."""
        vr.require(f"{prefix}.study_instance_uid", self.study_instance_uid)
        vr.check_ui(f"{prefix}.study_instance_uid", self.study_instance_uid)
        for name in ("accession_number", "requested_procedure_id",
                     "requested_procedure_code_value", "requested_procedure_code_scheme",
                     "scheduled_procedure_step_id", "scheduled_protocol_code_value",
                     "scheduled_protocol_code_scheme"):
            vr.check_sh(f"{prefix}.{name}", getattr(self, name))
        for name in ("requested_procedure_description", "requested_procedure_code_meaning",
                     "scheduled_procedure_step_description",
                     "scheduled_protocol_code_meaning"):
            vr.check_lo(f"{prefix}.{name}", getattr(self, name))
        return self


@dataclass
class SessionContext:
    """The running OR case: patient, study and the session's synchronization frame.

    A case taken from a Modality Worklist lists the worklist's ``requests``; the
    ``performed_procedure_step_*`` fields name the Modality Performed Procedure Step (PS3.4
    F.7) the recorder opened for it (empty: none), so every instance references it."""

    patient: Patient = field(default_factory=Patient)
    study: Study = field(default_factory=Study)
    synchronization_frame_of_reference_uid: str = ""
    scheduled_procedure_step_id: str = ""
    operating_room: str = ""
    requests: list[RequestAttributes] = field(default_factory=list)
    performed_procedure_step_sop_instance_uid: str = ""
    performed_procedure_step_id: str = ""
    performed_procedure_step_start_date: str = ""
    performed_procedure_step_start_time: str = ""
    performed_procedure_step_description: str = ""

    def validate(self, prefix: str = "session") -> SessionContext:
        """Self, or DicomOrError naming the first invalid patient/study/workflow attribute."""
        self.patient.validate(f"{prefix}.patient")
        self.study.validate(f"{prefix}.study")
        name = f"{prefix}.synchronization_frame_of_reference_uid"
        vr.require(name, self.synchronization_frame_of_reference_uid)
        vr.check_ui(name, self.synchronization_frame_of_reference_uid)
        vr.check_sh(f"{prefix}.scheduled_procedure_step_id", self.scheduled_procedure_step_id)
        vr.check_sh(f"{prefix}.operating_room", self.operating_room)
        for index, request in enumerate(self.requests):
            request.validate(f"{prefix}.requests[{index}]")
        vr.check_ui(f"{prefix}.performed_procedure_step_sop_instance_uid",
                    self.performed_procedure_step_sop_instance_uid)
        vr.check_sh(f"{prefix}.performed_procedure_step_id", self.performed_procedure_step_id)
        vr.check_da(f"{prefix}.performed_procedure_step_start_date",
                    self.performed_procedure_step_start_date)
        vr.check_tm(f"{prefix}.performed_procedure_step_start_time",
                    self.performed_procedure_step_start_time)
        vr.check_lo(f"{prefix}.performed_procedure_step_description",
                    self.performed_procedure_step_description)
        return self


@dataclass
class WaveformChannel:
    """One Channel Definition Sequence item, PS3.3 C.10.9.1."""

    label: str = ""
    source_code_value: str = ""
    source_coding_scheme: str = ""
    source_code_meaning: str = ""
    unit_ucum: str = ""
    sensitivity: float = 1.0
    sensitivity_correction: float = 1.0
    baseline: float = 0.0
    filter_low_hz: float = 0.0
    filter_high_hz: float = 0.0

    def validate(self, prefix: str = "channel") -> WaveformChannel:
        """Self, or DicomOrError naming the label, code or unit field that fails its VR."""
        vr.check_sh(f"{prefix}.label", self.label)
        vr.require(f"{prefix}.source_code_value", self.source_code_value)
        vr.check_sh(f"{prefix}.source_code_value", self.source_code_value)
        vr.require(f"{prefix}.source_coding_scheme", self.source_coding_scheme)
        vr.check_sh(f"{prefix}.source_coding_scheme", self.source_coding_scheme)
        vr.check_lo(f"{prefix}.source_code_meaning", self.source_code_meaning)
        vr.require(f"{prefix}.unit_ucum", self.unit_ucum)
        vr.check_sh(f"{prefix}.unit_ucum", self.unit_ucum)
        for name in ("sensitivity", "sensitivity_correction", "baseline", "filter_low_hz",
                     "filter_high_hz"):
            vr.check_ds(f"{prefix}.{name}", getattr(self, name))
        if self.sensitivity <= 0 or self.sensitivity_correction <= 0:
            raise DicomOrError(f"{prefix}.sensitivity", "must be greater than 0",
                               self.sensitivity)
        return self


@dataclass
class StreamDescriptor:
    """Everything static about one stream; one stream is one DICOM Series."""

    session: SessionContext = field(default_factory=SessionContext)
    stream_uuid: str = ""
    kind: int = KIND_VIDEO
    topic: str = ""
    message_type: str = ""
    qos_profile: str = ""
    nominal_rate_hz: float = 0.0
    series_instance_uid: str = ""
    series_number: int = 1
    modality: str = ""
    series_description: str = ""
    series_date: str = ""
    series_time: str = ""
    body_part_examined: str = ""
    frame_of_reference_uid: str = ""
    position_reference_indicator: str = ""
    tf_frame_id: str = ""
    equipment: Equipment = field(default_factory=Equipment)
    rows: int = 0
    columns: int = 0
    pixel_encoding: str = ""
    # "" raw frames (ImageFrame); "h264" H.264 access units (VideoPacket), encoded where the
    # camera is; pixel_encoding is then the encoder's input.
    video_codec: str = ""
    sampling_frequency_hz: float = 0.0
    channels: list[WaveformChannel] = field(default_factory=list)
    tool_ids: list[str] = field(default_factory=list)

    def validate(self, prefix: str = "descriptor") -> StreamDescriptor:
        """Self, or DicomOrError naming the first invalid session, equipment or stream field."""
        self.session.validate(f"{prefix}.session")
        vr.require(f"{prefix}.stream_uuid", self.stream_uuid)
        if self.kind not in KIND_NAMES:
            raise DicomOrError(f"{prefix}.kind", "must be KIND_VIDEO, KIND_POSE or "
                               "KIND_WAVEFORM", self.kind)
        vr.require(f"{prefix}.topic", self.topic)
        if not self.topic.startswith("/"):
            raise DicomOrError(f"{prefix}.topic", "must be a fully qualified topic name",
                               self.topic)
        vr.check_ds(f"{prefix}.nominal_rate_hz", self.nominal_rate_hz)
        if self.nominal_rate_hz <= 0:
            raise DicomOrError(f"{prefix}.nominal_rate_hz", "must be greater than 0",
                               self.nominal_rate_hz)
        vr.require(f"{prefix}.series_instance_uid", self.series_instance_uid)
        vr.check_ui(f"{prefix}.series_instance_uid", self.series_instance_uid)
        vr.check_is(f"{prefix}.series_number", self.series_number)
        vr.require(f"{prefix}.modality", self.modality)
        vr.check_cs(f"{prefix}.modality", self.modality)
        vr.check_lo(f"{prefix}.series_description", self.series_description)
        vr.check_da(f"{prefix}.series_date", self.series_date)
        vr.check_tm(f"{prefix}.series_time", self.series_time)
        vr.check_cs(f"{prefix}.body_part_examined", self.body_part_examined)
        vr.require(f"{prefix}.frame_of_reference_uid", self.frame_of_reference_uid)
        vr.check_ui(f"{prefix}.frame_of_reference_uid", self.frame_of_reference_uid)
        vr.check_lo(f"{prefix}.position_reference_indicator",
                    self.position_reference_indicator)
        self.equipment.validate(f"{prefix}.equipment")
        if self.kind == KIND_VIDEO:
            self._validate_video(prefix)
        if self.kind == KIND_WAVEFORM:
            if self.sampling_frequency_hz <= 0:
                raise DicomOrError(f"{prefix}.sampling_frequency_hz", "must be greater than 0",
                                   self.sampling_frequency_hz)
            if not self.channels:
                raise DicomOrError(f"{prefix}.channels", "a waveform needs at least 1 channel")
            for index, channel in enumerate(self.channels):
                channel.validate(f"{prefix}.channels[{index}]")
        if self.kind == KIND_POSE and not self.tool_ids:
            raise DicomOrError(f"{prefix}.tool_ids", "a pose stream needs at least 1 tool")
        return self

    def _validate_video(self, prefix: str) -> None:
        """A video stream's geometry, pixel encoding and wire codec."""
        if self.rows <= 0 or self.columns <= 0 or self.rows > 65535 or self.columns > 65535:
            raise DicomOrError(f"{prefix}.rows", "video needs 1..65535 rows and columns",
                               (self.rows, self.columns))
        if self.pixel_encoding not in PIXEL_ENCODINGS:
            raise DicomOrError(f"{prefix}.pixel_encoding",
                               f"must be one of {', '.join(PIXEL_ENCODINGS)}",
                               self.pixel_encoding)
        if self.video_codec not in VIDEO_CODECS:
            raise DicomOrError(f"{prefix}.video_codec", 'must be "" (raw frames) or "h264"',
                               self.video_codec)


# ---------------------------------------------------------------------------------------
# Generic conversion (dicts, YAML, ROS messages share the field names).


def from_dict(cls: type, data: dict[str, Any] | None, prefix: str = "") -> Any:
    """Build a context dataclass from a nested dict, rejecting unknown keys by name."""
    data = dict(data or {})
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise DicomOrError(f"{prefix}{unknown[0]}", f"is not a field of {cls.__name__}")
    kwargs = {}
    for name, value in data.items():
        nested = NESTED_FIELDS.get((cls, name))
        if nested is not None and isinstance(value, dict):
            value = from_dict(nested, value, f"{prefix}{name}.")
        elif nested is not None and isinstance(value, list):
            value = [from_dict(nested, v, f"{prefix}{name}[{i}].") for i, v in enumerate(value)]
        kwargs[name] = value
    return cls(**kwargs)


def to_dict(obj: Any) -> dict[str, Any]:
    """A context dataclass as a plain nested dict (YAML / JSON friendly)."""
    return dataclasses.asdict(obj)


NESTED_FIELDS: dict[tuple[type, str], type] = {
    (SessionContext, "patient"): Patient,
    (SessionContext, "study"): Study,
    (SessionContext, "requests"): RequestAttributes,
    (StreamDescriptor, "session"): SessionContext,
    (StreamDescriptor, "equipment"): Equipment,
    (StreamDescriptor, "channels"): WaveformChannel,
}


# ---------------------------------------------------------------------------------------
# PS3.3 module mapping. Each function writes one module's attributes by keyword.


def apply_patient_module(ds: Dataset, patient: Patient) -> Dataset:
    """PS3.3 C.7.1.1 Patient Module (type 2 attributes written even when empty)."""
    ds.PatientName = patient.patient_name
    ds.PatientID = patient.patient_id
    if patient.issuer_of_patient_id:
        ds.IssuerOfPatientID = patient.issuer_of_patient_id
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = patient.sex
    return ds


def apply_general_study_module(ds: Dataset, study: Study) -> Dataset:
    """PS3.3 C.7.2.1 General Study Module."""
    ds.StudyInstanceUID = study.study_instance_uid
    ds.StudyDate = study.study_date
    ds.StudyTime = study.study_time
    ds.ReferringPhysicianName = study.referring_physician_name
    ds.StudyID = study.study_id
    ds.AccessionNumber = study.accession_number
    if study.study_description:
        ds.StudyDescription = study.study_description
    return ds


def apply_general_series_module(ds: Dataset, stream: StreamDescriptor) -> Dataset:
    """PS3.3 C.7.3.1 General Series Module."""
    ds.Modality = stream.modality
    ds.SeriesInstanceUID = stream.series_instance_uid
    ds.SeriesNumber = stream.series_number
    if stream.series_date:
        ds.SeriesDate = stream.series_date
    if stream.series_time:
        ds.SeriesTime = stream.series_time
    if stream.series_description:
        ds.SeriesDescription = stream.series_description
    if stream.body_part_examined:
        ds.BodyPartExamined = stream.body_part_examined
    # Laterality is type 2C (paired body parts); OR streams do not record it.
    return ds


def apply_frame_of_reference_module(ds: Dataset, stream: StreamDescriptor) -> Dataset:
    """PS3.3 C.7.4.1 Frame of Reference Module."""
    ds.FrameOfReferenceUID = stream.frame_of_reference_uid
    ds.PositionReferenceIndicator = stream.position_reference_indicator
    return ds


def apply_synchronization_module(ds: Dataset, session: SessionContext) -> Dataset:
    """PS3.3 C.7.4.2 Synchronization Module: every recording of a session shares one
    Synchronization Frame of Reference and the host's NTP-disciplined clock as time source,
    so instances can be aligned by their Acquisition DateTime."""
    ds.SynchronizationFrameOfReferenceUID = session.synchronization_frame_of_reference_uid
    ds.SynchronizationTrigger = "NO TRIGGER"
    ds.AcquisitionTimeSynchronized = "Y"
    ds.TimeSource = "HOST CLOCK"
    # Time Distribution Protocol (0018,1802, type 3): how the host clock is disciplined.
    ds.TimeDistributionProtocol = "NTP"
    return ds


def apply_general_equipment_module(ds: Dataset, equipment: Equipment) -> Dataset:
    """PS3.3 C.7.5.1 General Equipment Module (Manufacturer is type 2)."""
    ds.Manufacturer = equipment.manufacturer
    for keyword, value in (("InstitutionName", equipment.institution_name),
                           ("StationName", equipment.station_name),
                           ("ManufacturerModelName", equipment.model_name),
                           ("DeviceSerialNumber", equipment.device_serial_number),
                           ("SoftwareVersions", equipment.software_versions)):
        if value:
            setattr(ds, keyword, value)
    return ds


def code_sequence(value: str, scheme: str, meaning: str) -> list[Dataset]:
    """A Code Sequence of one Code Sequence Macro item (PS3.3 Table 8.8-1), or none."""
    if not (value and scheme):
        return []
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return [item]


def request_item(request: RequestAttributes, *, sr: bool = False) -> Dataset:
    """One Request Attributes Sequence item (PS3.3 Table 10-9), or with ``sr`` one
    Referenced Request Sequence (0040,A370) item of the SR Document General Module (PS3.3
    C.17.2, whose type 2 attributes are written even when empty)."""
    item = Dataset()
    item.StudyInstanceUID = request.study_instance_uid
    if sr:
        item.ReferencedStudySequence = []
        item.PlacerOrderNumberImagingServiceRequest = ""
        item.FillerOrderNumberImagingServiceRequest = ""
    item.AccessionNumber = request.accession_number
    item.RequestedProcedureID = request.requested_procedure_id
    item.RequestedProcedureDescription = request.requested_procedure_description
    item.RequestedProcedureCodeSequence = code_sequence(request.requested_procedure_code_value,
                                                        request.requested_procedure_code_scheme,
                                                        request.requested_procedure_code_meaning)
    if sr:
        return item
    if not item.RequestedProcedureCodeSequence:
        del item.RequestedProcedureCodeSequence
    # Requested Procedure ID and Scheduled Procedure Step ID are 1C (required when the
    # procedure was scheduled): never written empty, absent when the RIS sent none.
    if not request.requested_procedure_id:
        del item.RequestedProcedureID
    if request.scheduled_procedure_step_id:
        item.ScheduledProcedureStepID = request.scheduled_procedure_step_id
    if request.scheduled_procedure_step_description:
        item.ScheduledProcedureStepDescription = request.scheduled_procedure_step_description
    protocol = code_sequence(request.scheduled_protocol_code_value,
                             request.scheduled_protocol_code_scheme,
                             request.scheduled_protocol_code_meaning)
    if protocol:
        item.ScheduledProtocolCodeSequence = protocol
    return item


def apply_workflow_context(ds: Dataset, session: SessionContext) -> Dataset:
    """What lets a RIS reconcile an instance with its order (IHE RAD TF-2 RAD-8, PS3.17
    "Modality Worklist to images"): the worklist's Requested Procedures and Scheduled Steps,
    and the Modality Performed Procedure Step that acquired it.

    Image and waveform IODs (General Series Module, PS3.3 C.7.3.1): Request Attributes
    Sequence (0040,0275), Referenced Performed Procedure Step Sequence (0008,1111) and the
    Performed Procedure Step ID / Start Date / Start Time / Description (0040,0253 /
    0040,0244 / 0040,0245 / 0040,0254). SR IODs (SOP Class 1.2.840.10008.5.1.4.1.1.88.x)
    have no General Series Module: the requests go into the SR Document General Module's
    Referenced Request Sequence (0040,A370) and the MPPS into the SR Document Series
    Module's Referenced Performed Procedure Step Sequence (type 2, PS3.3 C.17.1). Nothing
    is written for a case that came from no worklist and opened no MPPS."""
    sr = str(ds.get("SOPClassUID", "")).startswith(SR_STORAGE_PREFIX)
    if session.requests:
        items = [request_item(r, sr=sr) for r in session.requests]
        if sr:
            ds.ReferencedRequestSequence = items
        else:
            ds.RequestAttributesSequence = items
    if session.performed_procedure_step_sop_instance_uid:
        ref = Dataset()
        ref.ReferencedSOPClassUID = ModalityPerformedProcedureStep
        ref.ReferencedSOPInstanceUID = session.performed_procedure_step_sop_instance_uid
        ds.ReferencedPerformedProcedureStepSequence = [ref]
    if sr:
        return ds
    for keyword, value in (
            ("PerformedProcedureStepID", session.performed_procedure_step_id),
            ("PerformedProcedureStepStartDate", session.performed_procedure_step_start_date),
            ("PerformedProcedureStepStartTime", session.performed_procedure_step_start_time),
            ("PerformedProcedureStepDescription",
             session.performed_procedure_step_description)):
        if value:
            setattr(ds, keyword, value)
    return ds


def apply_stream_context(ds: Dataset, stream: StreamDescriptor) -> Dataset:
    """All context modules of a stream's instance: Patient, General Study, General Series
    (with the workflow references of :func:`apply_workflow_context`), Frame of Reference,
    Synchronization and General Equipment."""
    apply_patient_module(ds, stream.session.patient)
    apply_general_study_module(ds, stream.session.study)
    apply_general_series_module(ds, stream)
    apply_workflow_context(ds, stream.session)
    apply_frame_of_reference_module(ds, stream)
    apply_synchronization_module(ds, stream.session)
    apply_general_equipment_module(ds, stream.equipment)
    return ds


def now_da_tm(moment: _dt.datetime | None = None) -> tuple[str, str]:
    """DA and TM (whole seconds) of ``moment`` (default: now, local time)."""
    moment = moment or _dt.datetime.now()
    return vr.format_da(moment), moment.strftime("%H%M%S")
