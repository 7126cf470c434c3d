"""Recorded instances -> the stream they were recorded from: its descriptor and timed samples.

A recording is the folder the recorder writes, ``<Study>/<Series>/<SOP>.dcm`` (any layout is
accepted: every ``*.dcm`` below the folder is read). One Series is one stream; the recorder
cuts long streams into consecutive instances of the same Series, which are read back in time
order as one stream.

What an instance gives back (the iod builders wrote it, :mod:`dicom_or_core.iod`):

* the session: Patient (C.7.1.1), General Study (C.7.2.1), the Synchronization Frame of
  Reference UID (C.7.4.2), the worklist's Request Attributes (or an SR's Referenced Request
  Sequence) and the Modality Performed Procedure Step references;
* the descriptor: General Series (C.7.3.1), General Equipment (C.7.5.1), rows / columns and
  frame rate of a video (Cine Module C.7.6.5), the waveform's sampling frequency and Channel
  Definition Sequence (C.10.9.1), the pose SR's tool ids and Frame of Reference;
* the samples at their recorded acquisition times: video frames at Acquisition DateTime +
  their Frame Time / Frame Time Vector offsets (decoded lazily, one frame at a time, with
  PyAV from the encapsulated Transport Stream, or read frame by frame from native Pixel
  Data); waveform samples exactly as stored, cut into chunks; poses at Acquisition DateTime
  + Referenced Time Offsets (:func:`dicom_or_core.iod.pose.read_pose_sr`).

What no instance records, and the rule used instead (docs/drivers.md, "Replay"):

* the ROS topic: the ``ros2:`` Retrieve URL (0008,1190) when the instance carries one (an
  identifier the bridge answered), else the demo drivers' topic for the kind and Modality
  (:func:`default_topic`: ES video ``/or/endoscope/frames``, other video
  ``/or/camera/frames``, poses ``/or/tracker/poses``, ECG / HD / RESP
  ``/or/patient_monitor/ecg`` (``ecg12`` above 3 leads) / ``hemodynamic`` /
  ``respiration``); a second Series on the same topic gets ``_<SeriesNumber>``;
* the video and waveform Frame of Reference UID (those IODs have no Frame of Reference
  Module): a UID derived from the Series Instance UID, the same at every replay;
* the tf frame: the drivers' defaults (``endoscope_optical`` / ``camera`` / ``tracker``);
* sequence numbers: the recorder keeps losses as time gaps, not counters, so a replayed
  stream counts its samples from 0; a waveform's ``first_sample_index`` is the sample's
  place on the Series' time base (``(t - t0) * SamplingFrequency``), so a recorded gap stays
  a gap;
* occluded poses and tracking quality (not recorded): replayed poses are visible, quality 1.
"""

from __future__ import annotations

import io
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO

import av
import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom.sop_class import (
    Comprehensive3DSRStorage,
    GeneralECGWaveformStorage,
    HemodynamicWaveformStorage,
    MultichannelRespiratoryWaveformStorage,
    MultiFrameTrueColorSecondaryCaptureImageStorage,
    RespiratoryWaveformStorage,
    VideoEndoscopicImageStorage,
    VideoPhotographicImageStorage,
)

from dicom_or_core.iod.pose import TITLE, acquisition_start_ns, read_pose_sr
from dicom_or_core.iod.video import frame_offsets_ms
from dicom_or_core.iod.waveform import read_samples
from dicom_or_core.model import context as ctx
from dicom_or_core.model import ros2_uri
from dicom_or_core.model.errors import DicomOrError
from dicom_or_core.model.uid import new_uid

VIDEO_CLASSES = (VideoEndoscopicImageStorage, VideoPhotographicImageStorage,
                 MultiFrameTrueColorSecondaryCaptureImageStorage)
WAVEFORM_CLASSES = (GeneralECGWaveformStorage, HemodynamicWaveformStorage,
                    RespiratoryWaveformStorage, MultichannelRespiratoryWaveformStorage)
POSE_CLASSES = (Comprehensive3DSRStorage,)
MESSAGE_TYPES: dict[int, str] = {ctx.KIND_VIDEO: "dicom_or_msgs/msg/ImageFrame",
                 ctx.KIND_POSE: "dicom_or_msgs/msg/PoseSample",
                 ctx.KIND_WAVEFORM: "dicom_or_msgs/msg/WaveformChunk"}
QOS_PROFILES: dict[int, str] = {ctx.KIND_VIDEO: "video", ctx.KIND_POSE: "pose",
                                ctx.KIND_WAVEFORM: "waveform"}
WAVEFORM_TOPICS = {"ECG": "ecg", "HD": "hemodynamic", "RESP": "respiration"}
DEFAULT_PREFIX = "/or"
# Cine Rate (0018,0040) is an integer: the nominal rate when the mean frame period agrees.
RATE_SNAP = 0.002
_ITEM = b"\xfe\xff\x00\xe0"
_SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0"


def kind_of(sop_class_uid: str) -> int | None:
    """The stream kind whose recording uses this SOP Class, None for any other (snapshots,
    foreign instances)."""
    if sop_class_uid in VIDEO_CLASSES:
        return ctx.KIND_VIDEO
    if sop_class_uid in WAVEFORM_CLASSES:
        return ctx.KIND_WAVEFORM
    if sop_class_uid in POSE_CLASSES:
        return ctx.KIND_POSE
    return None


# --- samples ---------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Sample:
    """One message's worth of a stream: published at ``due_ns`` on the recording's clock
    (the time its last sample was acquired), stamped with ``acquisition_ns`` (its first)."""

    due_ns: int
    acquisition_ns: int

    def shifted(self, offset_ns: int) -> Sample:
        """The same sample ``offset_ns`` later (a loop's next pass)."""
        return replace(self, due_ns=self.due_ns + offset_ns,
                       acquisition_ns=self.acquisition_ns + offset_ns)


@dataclass(frozen=True, eq=False)
class VideoSample(Sample):
    """One decoded frame, RGB (rows, columns, 3) uint8."""

    image: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 3), np.uint8))


@dataclass(frozen=True, eq=False)
class WaveformSample(Sample):
    """A chunk of contiguous samples (count, channels) int16; ``first_sample_index`` on the
    Series' time base."""

    samples: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.int16))
    first_sample_index: int = 0
    sampling_frequency_hz: float = 1.0

    def shifted(self, offset_ns: int) -> Sample:
        """Later by ``offset_ns``; the sample index moves on by as many samples."""
        index = self.first_sample_index + round(offset_ns * self.sampling_frequency_hz / 1e9)
        return replace(self, due_ns=self.due_ns + offset_ns,
                       acquisition_ns=self.acquisition_ns + offset_ns,
                       first_sample_index=index)


@dataclass(frozen=True, eq=False)
class PoseSample(Sample):
    """One visible pose: position in metres, orientation quaternion x, y, z, w."""

    tool_id: str = ""
    position: tuple[float, float, float] = (0.0, 0.0, 0.0)
    orientation: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 1.0)


# --- instances -------------------------------------------------------------------------


@dataclass(frozen=True)
class InstanceRef:
    """One recorded instance of a Series (header read, samples not yet)."""

    path: Path
    sop_class_uid: str
    instance_number: int
    first_ns: int


class FragmentReader(io.RawIOBase):
    """The fragments of encapsulated Pixel Data (PS3.5 A.4) as one byte stream, read from
    the file as the decoder asks (no fragment held beyond the caller's buffer). ``fp`` is
    at the Pixel Data element (Explicit VR Little Endian element header)."""

    def __init__(self, fp: BinaryIO) -> None:
        super().__init__()
        self._fp = fp
        header = fp.read(12)
        if len(header) != 12 or header[:4] != b"\xe0\x7f\x10\x00" or \
                header[8:12] != b"\xff\xff\xff\xff":
            raise DicomOrError("input", "video Pixel Data is not encapsulated")
        self._left = 0
        self._done = False
        # The Basic Offset Table (empty or not) is the first item: skip it.
        offset_table = self._next_item()
        if offset_table:
            fp.seek(offset_table, io.SEEK_CUR)
        self._left = 0

    def _next_item(self) -> int:
        header = self._fp.read(8)
        if len(header) < 8 or header[:4] == _SEQUENCE_DELIMITER:
            self._done = True
            return 0
        if header[:4] != _ITEM:
            raise DicomOrError("input", "encapsulated Pixel Data holds a non-item element")
        return int.from_bytes(header[4:], "little")

    def readable(self) -> bool:
        """A byte stream for reading."""
        return True

    def readinto(self, buffer: Any) -> int:
        """Fill ``buffer`` from the current fragment (0 at the Sequence Delimiter)."""
        while self._left == 0 and not self._done:
            self._left = self._next_item()
        if self._done:
            return 0
        view = memoryview(buffer).cast("B")
        data = self._fp.read(min(len(view), self._left))
        if not data:
            self._done = True
            return 0
        view[:len(data)] = data
        self._left -= len(data)
        return len(data)


def _decoded_frames(path: Path) -> Generator[np.ndarray, None, None]:
    """The frames of a video instance one at a time, RGB: decoded from its Transport Stream
    (PyAV), or read from native Pixel Data frame by frame."""
    with open(path, "rb") as fp:
        ds = dcmread(fp, stop_before_pixels=True)  # leaves fp at the Pixel Data element
        syntax = ds.file_meta.TransferSyntaxUID
        if syntax.is_encapsulated:
            with av.open(FragmentReader(fp), "r", format="mpegts") as container:
                for frame in container.decode(video=0):
                    yield frame.to_ndarray(format="rgb24")
            return
        if syntax != ExplicitVRLittleEndian or int(ds.SamplesPerPixel) != 3:
            raise DicomOrError("input", "native video must be Explicit VR Little Endian RGB",
                               path.name)
        fp.seek(12, io.SEEK_CUR)  # OB element header (PS3.5 7.1.2)
        shape = (int(ds.Rows), int(ds.Columns), 3)
        size = shape[0] * shape[1] * 3
        for _ in range(int(ds.NumberOfFrames)):
            data = fp.read(size)
            if len(data) < size:
                return
            yield np.frombuffer(data, np.uint8).reshape(shape)


def video_samples(ref: InstanceRef) -> Iterator[VideoSample]:
    """The frames of one video instance at their Cine Module times (PS3.3 C.7.6.5)."""
    header = dcmread(ref.path, stop_before_pixels=True)
    offsets = frame_offsets_ms(header)
    frames = _decoded_frames(ref.path)
    try:
        for offset_ms, image in zip(offsets, frames, strict=False):
            # Offsets are whole microseconds (DS with 3 decimals in ms): no float residue.
            t = ref.first_ns + round(float(offset_ms) * 1000) * 1000
            yield VideoSample(t, t, image)
    finally:
        frames.close()


def waveform_samples(ref: InstanceRef, series_first_ns: int,
                     chunk_ms: float) -> Iterator[WaveformSample]:
    """One waveform instance in chunks of ``chunk_ms``, each due when its last sample is."""
    ds = dcmread(ref.path)
    fs = float(ds.WaveformSequence[0].SamplingFrequency)
    samples = read_samples(ds).astype(np.int16, copy=False)
    per_chunk = max(1, round(fs * chunk_ms / 1000.0))
    base_index = round((ref.first_ns - series_first_ns) * fs / 1e9)
    for start in range(0, samples.shape[0], per_chunk):
        block = np.ascontiguousarray(samples[start:start + per_chunk])
        first = ref.first_ns + round(start * 1e9 / fs)
        last = ref.first_ns + round((start + block.shape[0] - 1) * 1e9 / fs)
        yield WaveformSample(last, first, block, base_index + start, fs)


def pose_samples(ref: InstanceRef) -> Iterator[PoseSample]:
    """The poses of one SR, every tool merged in time order (one topic carries all tools)."""
    tracks = read_pose_sr(dcmread(ref.path))
    rows = [(int(t), tool_id, index) for tool_id, (stamps, _, _) in tracks.items()
            for index, t in enumerate(stamps)]
    rows.sort(key=lambda r: (r[0], r[1]))
    for t, tool_id, index in rows:
        _, positions, quaternions = tracks[tool_id]
        p, q = positions[index], quaternions[index]
        yield PoseSample(t, t, tool_id, (float(p[0]), float(p[1]), float(p[2])),
                         (float(q[0]), float(q[1]), float(q[2]), float(q[3])))


# --- context ----------------------------------------------------------------------------


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    if value is None:
        return ""
    if isinstance(value, MultiValue):
        return " ".join(str(v) for v in value)
    return str(value)


def _code(item: Dataset, keyword: str) -> tuple[str, str, str]:
    codes = item.get(keyword) or []
    if not codes:
        return "", "", ""
    code = codes[0]
    return (_text(code, "CodeValue"), _text(code, "CodingSchemeDesignator"),
            _text(code, "CodeMeaning"))


def _request(item: Dataset) -> ctx.RequestAttributes:
    procedure = _code(item, "RequestedProcedureCodeSequence")
    protocol = _code(item, "ScheduledProtocolCodeSequence")
    return ctx.RequestAttributes(
        study_instance_uid=_text(item, "StudyInstanceUID"),
        accession_number=_text(item, "AccessionNumber"),
        requested_procedure_id=_text(item, "RequestedProcedureID"),
        requested_procedure_description=_text(item, "RequestedProcedureDescription"),
        requested_procedure_code_value=procedure[0],
        requested_procedure_code_scheme=procedure[1],
        requested_procedure_code_meaning=procedure[2],
        scheduled_procedure_step_id=_text(item, "ScheduledProcedureStepID"),
        scheduled_procedure_step_description=_text(item, "ScheduledProcedureStepDescription"),
        scheduled_protocol_code_value=protocol[0],
        scheduled_protocol_code_scheme=protocol[1],
        scheduled_protocol_code_meaning=protocol[2])


def session_from(ds: Dataset) -> ctx.SessionContext:
    """The session an instance was recorded in (the inverse of
    :func:`dicom_or_core.model.context.apply_stream_context`'s session part)."""
    patient = ctx.Patient(
        patient_id=_text(ds, "PatientID"), issuer_of_patient_id=_text(ds, "IssuerOfPatientID"),
        patient_name=_text(ds, "PatientName"), birth_date=_text(ds, "PatientBirthDate"),
        sex=_text(ds, "PatientSex"))
    study = ctx.Study(
        study_instance_uid=_text(ds, "StudyInstanceUID"),
        accession_number=_text(ds, "AccessionNumber"), study_id=_text(ds, "StudyID"),
        study_date=_text(ds, "StudyDate"), study_time=_text(ds, "StudyTime"),
        study_description=_text(ds, "StudyDescription"),
        referring_physician_name=_text(ds, "ReferringPhysicianName"))
    requests = [_request(item) for item in (ds.get("RequestAttributesSequence")
                                            or ds.get("ReferencedRequestSequence") or [])]
    steps = ds.get("ReferencedPerformedProcedureStepSequence") or []
    return ctx.SessionContext(
        patient=patient, study=study,
        synchronization_frame_of_reference_uid=_text(
            ds, "SynchronizationFrameOfReferenceUID"),
        scheduled_procedure_step_id=requests[0].scheduled_procedure_step_id
        if requests else "",
        requests=requests,
        performed_procedure_step_sop_instance_uid=_text(steps[0], "ReferencedSOPInstanceUID")
        if steps else "",
        performed_procedure_step_id=_text(ds, "PerformedProcedureStepID"),
        performed_procedure_step_start_date=_text(ds, "PerformedProcedureStepStartDate"),
        performed_procedure_step_start_time=_text(ds, "PerformedProcedureStepStartTime"),
        performed_procedure_step_description=_text(ds, "PerformedProcedureStepDescription"))


def _channel(item: Dataset) -> ctx.WaveformChannel:
    value, scheme, meaning = _code(item, "ChannelSourceSequence")
    unit = _code(item, "ChannelSensitivityUnitsSequence")[0]
    return ctx.WaveformChannel(
        label=_text(item, "ChannelLabel"), source_code_value=value,
        source_coding_scheme=scheme, source_code_meaning=meaning, unit_ucum=unit,
        sensitivity=float(item.get("ChannelSensitivity", 1.0)),
        sensitivity_correction=float(item.get("ChannelSensitivityCorrectionFactor", 1.0)),
        baseline=float(item.get("ChannelBaseline", 0.0)),
        filter_low_hz=float(item.get("FilterLowFrequency", 0.0) or 0.0),
        filter_high_hz=float(item.get("FilterHighFrequency", 0.0) or 0.0))


def _snap_rate(rate_hz: float, integer_hz: float) -> float:
    """``integer_hz`` (Cine Rate) when ``rate_hz`` agrees within RATE_SNAP, else ``rate_hz``
    to 3 decimals."""
    if integer_hz > 0 and abs(rate_hz - integer_hz) <= RATE_SNAP * integer_hz:
        return float(integer_hz)
    return round(rate_hz, 3)


def video_rate(ds: Dataset) -> float:
    """Nominal frame rate: from the median frame increment (Frame Time Vector: a dropped
    frame does not count) or Frame Time, as Cine Rate (0018,0040) when they agree within
    0.2 % (MPEG-2's "33.3" ms is 30 fps), else to 3 decimals."""
    cine = float(ds.get("CineRate", 0) or 0)
    if "FrameTimeVector" in ds and len(ds.FrameTimeVector) > 1:
        period = float(np.median([float(v) for v in ds.FrameTimeVector][1:]))
    else:
        period = float(ds.get("FrameTime", 0) or 0)
    return _snap_rate(1000.0 / period, cine) if period > 0 else (cine or 1.0)


def pose_rate(ds: Dataset) -> float:
    """Poses per second per tool: from the median interval of the busiest tool."""
    tracks = read_pose_sr(ds)
    stamps = max((s for s, _, _ in tracks.values()), key=len, default=np.zeros(0))
    if len(stamps) < 2:
        return 1.0
    rate = 1e9 / float(np.median(np.diff(stamps)))
    return _snap_rate(rate, float(round(rate)))


def default_topic(kind: int, modality: str, channels: int = 0,
                  prefix: str = DEFAULT_PREFIX) -> str:
    """The demo drivers' sample topic for a stream of this kind and Modality."""
    if kind == ctx.KIND_VIDEO:
        name = "endoscope/frames" if modality == "ES" else "camera/frames"
    elif kind == ctx.KIND_POSE:
        name = "tracker/poses"
    else:
        group = WAVEFORM_TOPICS.get(modality, modality.lower() or "waveform")
        name = f"patient_monitor/{'ecg12' if group == 'ecg' and channels > 3 else group}"
    return f"{prefix.rstrip('/')}/{name}"


def _recorded_topic(ds: Dataset) -> str:
    """The topic of a ``ros2:`` Retrieve URL (0008,1190) in the instance, else ""."""
    url = _text(ds, "RetrieveURL")
    if not url.startswith(f"{ros2_uri.SCHEME}:"):
        return ""
    try:
        return ros2_uri.parse(url).topic
    except DicomOrError:
        return ""


def descriptor_from(ds: Dataset, kind: int, prefix: str = DEFAULT_PREFIX
                    ) -> ctx.StreamDescriptor:
    """The stream descriptor of the Series ``ds`` (its first instance) belongs to."""
    series_uid = _text(ds, "SeriesInstanceUID")
    equipment = ctx.Equipment(
        manufacturer=_text(ds, "Manufacturer"), model_name=_text(ds, "ManufacturerModelName"),
        device_serial_number=_text(ds, "DeviceSerialNumber"),
        station_name=_text(ds, "StationName"), software_versions=_text(ds, "SoftwareVersions"),
        institution_name=_text(ds, "InstitutionName"))
    modality = _text(ds, "Modality")
    descriptor = ctx.StreamDescriptor(
        session=session_from(ds), stream_uuid=str(new_uid(series_uid, "stream")),
        kind=kind, message_type=MESSAGE_TYPES[kind], qos_profile=QOS_PROFILES[kind],
        series_instance_uid=series_uid, series_number=int(ds.get("SeriesNumber", 1) or 1),
        modality=modality, series_description=_text(ds, "SeriesDescription"),
        series_date=_text(ds, "SeriesDate"), series_time=_text(ds, "SeriesTime"),
        body_part_examined=_text(ds, "BodyPartExamined"),
        # Video and waveform IODs have no Frame of Reference Module: a stable derived UID.
        frame_of_reference_uid=_text(ds, "FrameOfReferenceUID")
        or new_uid(series_uid, "frame-of-reference"),
        position_reference_indicator=_text(ds, "PositionReferenceIndicator"),
        equipment=equipment)
    if kind == ctx.KIND_VIDEO:
        return replace(descriptor, nominal_rate_hz=video_rate(ds), rows=int(ds.Rows),
                       columns=int(ds.Columns), pixel_encoding="rgb8",
                       tf_frame_id="endoscope_optical" if modality == "ES" else "camera",
                       topic=_recorded_topic(ds) or default_topic(kind, modality,
                                                                  prefix=prefix))
    if kind == ctx.KIND_WAVEFORM:
        groups = ds.WaveformSequence
        channels = [_channel(item) for group in groups
                    for item in group.ChannelDefinitionSequence]
        fs = float(groups[0].SamplingFrequency)
        return replace(descriptor, nominal_rate_hz=fs, sampling_frequency_hz=fs,
                       channels=channels,
                       topic=_recorded_topic(ds) or default_topic(kind, modality,
                                                                  len(channels), prefix))
    tracks = read_pose_sr(ds)
    frames = [item.get("ReferencedFrameOfReferenceUID", "")
              for tool in ds.ContentSequence for item in tool.get("ContentSequence", [])
              if "ReferencedFrameOfReferenceUID" in item]
    return replace(descriptor, nominal_rate_hz=pose_rate(ds), tool_ids=list(tracks),
                   frame_of_reference_uid=str(frames[0]) if frames
                   else descriptor.frame_of_reference_uid, tf_frame_id="tracker",
                   topic=_recorded_topic(ds) or default_topic(kind, modality, prefix=prefix))


# --- series and studies -----------------------------------------------------------------


@dataclass
class RecordedSeries:
    """One recorded stream: its descriptor and its instances in time order."""

    descriptor: ctx.StreamDescriptor
    instances: list[InstanceRef]
    start_ns: int
    end_ns: int        # just after the last sample (its time + one sample period)

    @property
    def kind(self) -> int:
        """KIND_VIDEO, KIND_POSE or KIND_WAVEFORM."""
        return self.descriptor.kind

    def samples(self, chunk_ms: float = 100.0) -> Iterator[Sample]:
        """Every sample of the stream in time order, read lazily instance by instance
        (a video frame is decoded when it is asked for)."""
        for ref in self.instances:
            if self.kind == ctx.KIND_VIDEO:
                yield from video_samples(ref)
            elif self.kind == ctx.KIND_WAVEFORM:
                yield from waveform_samples(ref, self.start_ns, chunk_ms)
            else:
                yield from pose_samples(ref)


def _last_sample_ns(ds: Dataset, kind: int, first_ns: int) -> int:
    """Time of an instance's last sample (its header decides; no Pixel Data is read)."""
    if kind == ctx.KIND_VIDEO:
        return first_ns + round(float(frame_offsets_ms(ds)[-1]) * 1000) * 1000
    if kind == ctx.KIND_WAVEFORM:
        group = ds.WaveformSequence[0]
        return first_ns + round((int(group.NumberOfWaveformSamples) - 1) * 1e9
                                / float(group.SamplingFrequency))
    return max((int(s[-1]) for s, _, _ in read_pose_sr(ds).values() if len(s)),
               default=first_ns)


@dataclass
class RecordedStudy:
    """A study's recorded streams and the session they share."""

    session: ctx.SessionContext
    series: list[RecordedSeries]
    skipped: list[str] = field(default_factory=list)   # files that are no stream's instance

    @property
    def start_ns(self) -> int:
        """The first sample of any stream."""
        return min(s.start_ns for s in self.series)

    @property
    def end_ns(self) -> int:
        """Just after the last sample of any stream."""
        return max(s.end_ns for s in self.series)


def _is_pose_sr(ds: Dataset) -> bool:
    concept = ds.get("ConceptNameCodeSequence") or []
    return bool(concept) and _text(concept[0], "CodeValue") == TITLE.value and \
        _text(concept[0], "CodingSchemeDesignator") == TITLE.scheme_designator


def _scan(folder: Path) -> tuple[dict[tuple[str, str], list[tuple[Dataset, InstanceRef]]],
                                 list[str]]:
    found: dict[tuple[str, str], list[tuple[Dataset, InstanceRef]]] = {}
    skipped = []
    for path in sorted(folder.rglob("*.dcm")):
        try:
            ds = dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError) as exc:
            skipped.append(f"{path.name}: {exc}")
            continue
        sop_class = _text(ds, "SOPClassUID")
        kind = kind_of(sop_class)
        if kind is None or (kind == ctx.KIND_POSE and not _is_pose_sr(ds)):
            skipped.append(f"{path.name}: SOP Class {sop_class} is no recorded stream")
            continue
        ref = InstanceRef(path, sop_class, int(ds.get("InstanceNumber", 1) or 1),
                          acquisition_start_ns(ds))
        key = (_text(ds, "StudyInstanceUID"), _text(ds, "SeriesInstanceUID"))
        found.setdefault(key, []).append((ds, ref))
    return found, skipped


def _unique_topics(series: list[RecordedSeries]) -> None:
    """A second Series on a topic gets ``_<SeriesNumber>`` (one topic is one stream)."""
    seen: set[str] = set()
    for s in sorted(series, key=lambda s: (s.descriptor.series_number, s.start_ns)):
        topic = s.descriptor.topic
        if topic in seen:
            topic = f"{topic}_{s.descriptor.series_number}"
            while topic in seen:
                topic += "_"
            s.descriptor = replace(s.descriptor, topic=topic)
        seen.add(topic)


def load_study(folder: str | Path, study_instance_uid: str = "",
               topic_prefix: str = DEFAULT_PREFIX) -> RecordedStudy:
    """The recorded streams of one study under ``folder`` (headers only; samples are read
    when replayed). ``study_instance_uid`` chooses among several studies (required then).
    DicomOrError naming ``input`` / ``study_instance_uid`` when there is nothing to replay."""
    if not str(folder):
        raise DicomOrError("input", "is required: the folder of recorded instances")
    root = Path(folder)
    if not root.is_dir():
        raise DicomOrError("input", "is not a folder", str(folder))
    found, skipped = _scan(root)
    studies = sorted({study for study, _ in found})
    if study_instance_uid:
        if study_instance_uid not in studies:
            raise DicomOrError("study_instance_uid", f"no recorded stream of this study in "
                               f"{root} (studies: {', '.join(studies) or 'none'})",
                               study_instance_uid)
        chosen = study_instance_uid
    elif len(studies) == 1:
        chosen = studies[0]
    elif not studies:
        raise DicomOrError("input", "holds no recorded video, waveform or pose instance",
                           str(root))
    else:
        raise DicomOrError("study_instance_uid", f"{root} holds {len(studies)} studies: "
                           "choose one", ", ".join(studies))
    series = []
    for (study, _), members in sorted(found.items()):
        if study != chosen:
            continue
        members.sort(key=lambda m: (m[1].first_ns, m[1].instance_number))
        first_ds, first_ref = members[0]
        kind = kind_of(first_ref.sop_class_uid)
        if kind is None or any(kind_of(r.sop_class_uid) != kind for _, r in members):
            raise DicomOrError("input", "a Series mixes stream kinds",
                               _text(first_ds, "SeriesInstanceUID"))
        last_ds, last_ref = members[-1]
        descriptor = descriptor_from(first_ds, kind, topic_prefix)
        period_ns = round(1e9 / max(descriptor.nominal_rate_hz, 1e-3))
        end = _last_sample_ns(last_ds, kind, last_ref.first_ns) + period_ns
        series.append(RecordedSeries(descriptor, [r for _, r in members], first_ref.first_ns,
                                     end))
    _unique_topics(series)
    session = min(series, key=lambda s: s.start_ns).descriptor.session
    return RecordedStudy(session, series, skipped)


def remap_topics(study: RecordedStudy, remaps: dict[str, str]) -> None:
    """Rename sample topics ``{from: to}`` (both fully qualified); DicomOrError naming
    ``topic_remap`` for a target that is not a topic name."""
    for s in study.series:
        target = remaps.get(s.descriptor.topic)
        if target is None:
            continue
        try:
            ros2_uri.Ros2Uri(target, s.descriptor.message_type,
                             s.descriptor.qos_profile).validate()
        except DicomOrError:
            raise DicomOrError("topic_remap", "needs a fully qualified topic name (/a/b)",
                               target) from None
        s.descriptor = replace(s.descriptor, topic=target)
