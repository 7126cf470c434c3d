"""The Query/Retrieve information model the bridge answers from, ROS-free.

Patient -> Study (the OR session) -> Series (one per live stream, plus archived series
whose stream is gone) -> Image (instances the recorder archived). Every record is a pydicom
Dataset holding the attributes of its level *and of every level above* (so a Study Root
STUDY query matches patient attributes too, PS3.4 C.6.2.1), built once per change and
then shared read-only by any number of C-FIND handler threads.

Live Series attributes (PS3.3 C.7.3.1 General Series, C.7.5.1 General Equipment, C.7.6.3
Image Pixel, C.10.9.1 Waveform, C.7.6.5 Cine) come from the stream's descriptor; access to
the live data is a ``ros2:`` URI in Retrieve URL (0008,1190), see :mod:`.ros2_uri`.

Stream health (``DeviceStatus``): a stream whose driver is gone from the graph is dropped
(its publisher disappeared); a stream that missed its deadline (STALE) or lost its device
(SOURCE_LOST) stays listed, its Series Description suffixed ``[STALE]`` or
``[SOURCE LOST]`` and, for SOURCE_LOST, Instance Availability (0008,0056) ``UNAVAILABLE``
instead of ``ONLINE``. STOPPED streams are dropped.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from dicom_or_core import context as ctx
from dicom_or_core.ros2_uri import Ros2Uri, format_uri

log = logging.getLogger(__name__)

# DeviceStatus states (dicom_or_msgs/DeviceStatus), repeated here to stay ROS-free.
STATE_STARTING = 0
STATE_LIVE = 1
STATE_STALE = 2
STATE_SOURCE_LOST = 3
STATE_STOPPED = 4
_STATE_SUFFIX = {STATE_STALE: " [STALE]", STATE_SOURCE_LOST: " [SOURCE LOST]"}

PATIENT_KEYWORDS = ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate",
                    "PatientSex")
STUDY_KEYWORDS = ("StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber", "StudyID",
                  "StudyDescription", "ReferringPhysicianName")
SERIES_KEYWORDS = ("Modality", "SeriesInstanceUID", "SeriesNumber", "SeriesDescription",
                   "SeriesDate", "SeriesTime", "BodyPartExamined", "FrameOfReferenceUID",
                   "Manufacturer", "ManufacturerModelName", "DeviceSerialNumber",
                   "StationName", "SoftwareVersions", "InstitutionName")
# Derived / live keys the model answers at SERIES level.
SERIES_LIVE_KEYWORDS = ("Rows", "Columns", "RecommendedDisplayFrameRate", "CineRate",
                        "SamplingFrequency", "NumberOfWaveformChannels",
                        "NumberOfSeriesRelatedInstances", "RetrieveURL", "RetrieveAETitle",
                        "InstanceAvailability", "RequestAttributesSequence")
# Bulk data never goes into an IMAGE record (C-FIND answers only need headers).
_BULK_GROUPS = (0x7FE0, 0x5400)
_INSTANCE_FILE = "*.dcm"


@dataclass(frozen=True)
class LiveStream:
    """One stream on the graph: its descriptor and its last known health."""

    descriptor: ctx.StreamDescriptor
    state: int = STATE_LIVE
    # Not part of equality: a new rate every second must not force a model rebuild.
    measured_rate_hz: float = field(default=0.0, compare=False)


@dataclass(frozen=True)
class ArchivedInstance:
    """One finished ``*.dcm`` of the archive: its path and header (no bulk data)."""

    path: Path
    header: Dataset


def _set(ds: Dataset, keyword: str, value: object) -> None:
    setattr(ds, keyword, value)


def _ds_number(value: float) -> str:
    """A DS (16 characters at most) for a rate."""
    text = f"{value:.6g}"
    return text if len(text) <= 16 else f"{value:.10e}"[:16]


def series_record(stream: LiveStream, *, domain_id: int, retrieve_ae_title: str,
                  instances: int = 0) -> Dataset:
    """The SERIES record of a live stream (patient and study attributes included)."""
    d = stream.descriptor
    ds = Dataset()
    ctx.apply_patient_module(ds, d.session.patient)
    ds.IssuerOfPatientID = d.session.patient.issuer_of_patient_id
    ctx.apply_general_study_module(ds, d.session.study)
    ds.StudyDescription = d.session.study.study_description
    # PS3.3 C.7.3.1 General Series: every keyword present (zero-length when unknown), so a
    # key on it is supported and an empty value does not match a non-universal query.
    ds.Modality = d.modality
    ds.SeriesInstanceUID = d.series_instance_uid
    ds.SeriesNumber = d.series_number
    description = d.series_description
    suffix = _STATE_SUFFIX.get(stream.state, "")
    if suffix:
        description = description[:64 - len(suffix)] + suffix
    ds.SeriesDescription = description
    ds.SeriesDate = d.series_date
    ds.SeriesTime = d.series_time
    ds.BodyPartExamined = d.body_part_examined
    ds.FrameOfReferenceUID = d.frame_of_reference_uid
    # PS3.3 C.7.5.1 General Equipment.
    e = d.equipment
    ds.Manufacturer = e.manufacturer
    ds.ManufacturerModelName = e.model_name
    ds.DeviceSerialNumber = e.device_serial_number
    ds.StationName = e.station_name
    ds.SoftwareVersions = e.software_versions
    ds.InstitutionName = e.institution_name
    # Geometry and rate in the standard attributes of the IOD the stream records into.
    if d.kind == ctx.KIND_VIDEO:
        ds.Rows = d.rows                                       # C.7.6.3 Image Pixel
        ds.Columns = d.columns
        rate = max(1, round(d.nominal_rate_hz))
        ds.RecommendedDisplayFrameRate = rate                  # C.7.6.5 Cine (IS)
        ds.CineRate = rate
    else:
        ds.Rows = None
        ds.Columns = None
        ds.RecommendedDisplayFrameRate = None
        ds.CineRate = None
    if d.kind == ctx.KIND_WAVEFORM:
        ds.SamplingFrequency = _ds_number(d.sampling_frequency_hz)  # C.10.9.1 Waveform
        ds.NumberOfWaveformChannels = len(d.channels)
    else:
        ds.SamplingFrequency = None
        ds.NumberOfWaveformChannels = None
    ds.NumberOfSeriesRelatedInstances = instances
    ds.RetrieveURL = format_uri(Ros2Uri(d.topic, d.message_type, d.qos_profile or "default",
                                        domain_id))
    ds.RetrieveAETitle = retrieve_ae_title
    ds.InstanceAvailability = "UNAVAILABLE" if stream.state == STATE_SOURCE_LOST \
        else "ONLINE"
    # Request Attributes Sequence (C.7.3.1, type 3): the worklist step this stream serves.
    ds.RequestAttributesSequence = []
    if d.session.scheduled_procedure_step_id or d.session.study.accession_number:
        item = Dataset()
        item.ScheduledProcedureStepID = d.session.scheduled_procedure_step_id
        item.AccessionNumber = d.session.study.accession_number
        ds.RequestAttributesSequence = [item]
    return ds


def _copy_keywords(target: Dataset, source: Dataset, keywords: Iterable[str]) -> None:
    for keyword in keywords:
        if keyword in source:
            target[keyword] = source[keyword]
        else:
            setattr(target, keyword, None)


def archived_series_record(header: Dataset, *, retrieve_ae_title: str,
                           instances: int) -> Dataset:
    """The SERIES record of an archived series whose stream is no longer live."""
    ds = Dataset()
    _copy_keywords(ds, header, PATIENT_KEYWORDS + STUDY_KEYWORDS + SERIES_KEYWORDS)
    ds.NumberOfSeriesRelatedInstances = instances
    ds.RetrieveAETitle = retrieve_ae_title
    ds.InstanceAvailability = "ONLINE"
    ds.RetrieveURL = None
    return ds


def image_record(instance: ArchivedInstance, *, retrieve_ae_title: str) -> Dataset:
    """The IMAGE record of an archived instance: its header without bulk data."""
    ds = Dataset()
    for elem in instance.header:
        if elem.tag.group in _BULK_GROUPS or elem.tag.group == 0x0002:
            continue
        ds[elem.tag] = elem
    for keyword in PATIENT_KEYWORDS + STUDY_KEYWORDS + ("InstanceNumber", "ContentDate",
                                                         "ContentTime", "NumberOfFrames",
                                                         "Rows", "Columns"):
        if keyword not in ds:
            setattr(ds, keyword, None)
    ds.RetrieveAETitle = retrieve_ae_title
    ds.InstanceAvailability = "ONLINE"
    return ds


@dataclass
class QueryModel:
    """An immutable snapshot: records per level, and the archived file of every instance."""

    patients: list[Dataset] = field(default_factory=list)
    studies: list[Dataset] = field(default_factory=list)
    series: list[Dataset] = field(default_factory=list)
    images: list[Dataset] = field(default_factory=list)
    paths: dict[str, Path] = field(default_factory=dict)

    def records(self, level: str) -> list[Dataset]:
        return {"PATIENT": self.patients, "STUDY": self.studies, "SERIES": self.series,
                "IMAGE": self.images}[level]


def build_model(streams: Iterable[LiveStream], instances: Iterable[ArchivedInstance], *,
                domain_id: int = 0, retrieve_ae_title: str = "") -> QueryModel:
    """Assemble the four levels from live streams and archived instances."""
    model = QueryModel()
    instances = list(instances)
    per_series: dict[str, list[ArchivedInstance]] = {}
    for inst in instances:
        per_series.setdefault(str(inst.header.get("SeriesInstanceUID", "")), []).append(inst)
    series: dict[str, Dataset] = {}
    for stream in streams:
        if stream.state == STATE_STOPPED:
            continue
        uid = stream.descriptor.series_instance_uid
        series[uid] = series_record(stream, domain_id=domain_id,
                                    retrieve_ae_title=retrieve_ae_title,
                                    instances=len(per_series.get(uid, [])))
    for uid, members in per_series.items():
        if uid and uid not in series:
            series[uid] = archived_series_record(members[0].header,
                                                 retrieve_ae_title=retrieve_ae_title,
                                                 instances=len(members))
    model.series = sorted(series.values(),
                          key=lambda s: (str(s.StudyInstanceUID), s.SeriesNumber or 0,
                                         str(s.SeriesInstanceUID)))
    for inst in instances:
        if not inst.header.get("SOPInstanceUID"):
            continue
        model.images.append(image_record(inst, retrieve_ae_title=retrieve_ae_title))
        model.paths[str(inst.header.SOPInstanceUID)] = inst.path
    # STUDY and PATIENT records aggregate their series (C.6.1.1.2 / C.6.2.1.2 optional keys).
    studies: dict[str, Dataset] = {}
    study_members: dict[str, list[Dataset]] = {}
    for record in model.series:
        uid = str(record.StudyInstanceUID)
        if uid not in studies:
            study = Dataset()
            _copy_keywords(study, record, PATIENT_KEYWORDS + STUDY_KEYWORDS)
            study.RetrieveAETitle = retrieve_ae_title
            study.InstanceAvailability = "ONLINE"
            studies[uid] = study
        study_members.setdefault(uid, []).append(record)
    for uid, study in studies.items():
        members = study_members[uid]
        study.ModalitiesInStudy = sorted({str(m.Modality) for m in members if m.Modality})
        study.NumberOfStudyRelatedSeries = len(members)
        study.NumberOfStudyRelatedInstances = sum(
            int(m.NumberOfSeriesRelatedInstances or 0) for m in members)
    model.studies = list(studies.values())
    patients: dict[str, Dataset] = {}
    for study in model.studies:
        pid = str(study.PatientID or "")
        if pid not in patients:
            patient = Dataset()
            _copy_keywords(patient, study, PATIENT_KEYWORDS)
            patient.NumberOfPatientRelatedStudies = 0
            patient.NumberOfPatientRelatedSeries = 0
            patient.NumberOfPatientRelatedInstances = 0
            patients[pid] = patient
        patient = patients[pid]
        patient.NumberOfPatientRelatedStudies += 1
        patient.NumberOfPatientRelatedSeries += int(study.NumberOfStudyRelatedSeries)
        patient.NumberOfPatientRelatedInstances += int(study.NumberOfStudyRelatedInstances)
    model.patients = list(patients.values())
    return model


class ArchiveIndex:
    """The finished instances under ``root`` (``<Study>/<Series>/<SOP>.dcm``).

    Every ``*.dcm`` there is complete (the recorder writes ``*.partial`` and renames), so a
    scan never sees a half-written file; headers are cached by (mtime, size) so a rescan
    costs one ``stat`` per file. Unreadable files are skipped and logged once.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._cache: dict[Path, tuple[tuple[int, int], ArchivedInstance | None]] = {}
        self._lock = threading.Lock()

    def scan(self) -> list[ArchivedInstance]:
        found: list[ArchivedInstance] = []
        seen: set[Path] = set()
        with self._lock:
            if self.root.is_dir():
                for path in sorted(self.root.rglob(_INSTANCE_FILE)):
                    try:
                        st = path.stat()
                    except OSError:
                        continue
                    key = (st.st_mtime_ns, st.st_size)
                    seen.add(path)
                    cached = self._cache.get(path)
                    if cached is None or cached[0] != key:
                        cached = (key, self._read(path))
                        self._cache[path] = cached
                    if cached[1] is not None:
                        found.append(cached[1])
            for gone in set(self._cache) - seen:
                del self._cache[gone]
        return found

    @staticmethod
    def _read(path: Path) -> ArchivedInstance | None:
        try:
            header = dcmread(path, stop_before_pixels=True)
            header.remove_private_tags()
            return ArchivedInstance(path, header)
        except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
            log.warning("archive: skipping %s: %s", os.fspath(path), exc)
            return None


class ModelStore:
    """Thread-safe holder of the live streams and the current :class:`QueryModel`.

    The ROS node updates streams from its executor; DICOM handlers (pynetdicom threads)
    call :meth:`snapshot`, which rebuilds the model only when something changed (or the
    archive is due a rescan) and otherwise returns the same immutable object.
    """

    def __init__(self, archive: ArchiveIndex | None = None, *, domain_id: int = 0,
                 retrieve_ae_title: str = "", archive_rescan_s: float = 1.0) -> None:
        self.archive = archive
        self.domain_id = domain_id
        self.retrieve_ae_title = retrieve_ae_title
        self.archive_rescan_s = archive_rescan_s
        self._streams: dict[str, LiveStream] = {}
        self._lock = threading.Lock()
        self._model: QueryModel | None = None
        self._instances: list[ArchivedInstance] = []
        self._archive_stamp = -1.0
        self._dirty = True

    def set_streams(self, streams: Iterable[LiveStream]) -> None:
        """Replace every live stream at once (keyed by topic)."""
        new = {s.descriptor.topic: s for s in streams}
        with self._lock:
            if new != self._streams:
                self._streams = new
                self._dirty = True

    def streams(self) -> list[LiveStream]:
        with self._lock:
            return list(self._streams.values())

    def snapshot(self, now: float | None = None) -> QueryModel:
        import time

        now = time.monotonic() if now is None else now
        with self._lock:
            if self.archive is not None and now - self._archive_stamp >= self.archive_rescan_s:
                instances = self.archive.scan()
                self._archive_stamp = now
                if [i.path for i in instances] != [i.path for i in self._instances] or \
                        any(a is not b for a, b in zip(instances, self._instances,
                                                       strict=True)):
                    self._instances = instances
                    self._dirty = True
            if self._dirty or self._model is None:
                self._model = build_model(self._streams.values(), self._instances,
                                          domain_id=self.domain_id,
                                          retrieve_ae_title=self.retrieve_ae_title)
                self._dirty = False
            return self._model
