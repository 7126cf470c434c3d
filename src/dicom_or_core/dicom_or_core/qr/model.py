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
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset

from dicom_or_core.archive.index import ArchivedInstance, ArchiveIndex
from dicom_or_core.model import context as ctx
from dicom_or_core.model.ros2_uri import Ros2Uri, format_uri
from dicom_or_core.model.stream import StreamState

log = logging.getLogger(__name__)

# Short names for the states (model/stream.py defines them).
STATE_STARTING = StreamState.STARTING
STATE_LIVE = StreamState.LIVE
STATE_STALE = StreamState.STALE
STATE_SOURCE_LOST = StreamState.SOURCE_LOST
STATE_STOPPED = StreamState.STOPPED
_STATE_SUFFIX: dict[int, str] = {STATE_STALE: " [STALE]", STATE_SOURCE_LOST: " [SOURCE LOST]"}

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


@dataclass(frozen=True)
class LiveStream:
    """One stream on the graph: its descriptor and its last known health."""

    descriptor: ctx.StreamDescriptor
    state: int = STATE_LIVE
    # Not part of equality: a new rate every second must not force a model rebuild.
    measured_rate_hz: float = field(default=0.0, compare=False)


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
    ds.SeriesDescription = _series_description(stream)
    ds.SeriesDate = d.series_date
    ds.SeriesTime = d.series_time
    ds.BodyPartExamined = d.body_part_examined
    ds.FrameOfReferenceUID = d.frame_of_reference_uid
    _apply_equipment(ds, d.equipment)
    _apply_geometry_and_rate(ds, d)
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


def _series_description(stream: LiveStream) -> str:
    """The descriptor's Series Description, suffixed with an unhealthy state (LO: 64 chars)."""
    description = stream.descriptor.series_description
    suffix = _STATE_SUFFIX.get(stream.state, "")
    if suffix:
        description = description[:64 - len(suffix)] + suffix
    return description


def _apply_equipment(ds: Dataset, e: ctx.Equipment) -> None:
    """PS3.3 C.7.5.1 General Equipment."""
    ds.Manufacturer = e.manufacturer
    ds.ManufacturerModelName = e.model_name
    ds.DeviceSerialNumber = e.device_serial_number
    ds.StationName = e.station_name
    ds.SoftwareVersions = e.software_versions
    ds.InstitutionName = e.institution_name


def _apply_geometry_and_rate(ds: Dataset, d: ctx.StreamDescriptor) -> None:
    """Geometry and rate in the standard attributes of the IOD the stream records into;
    zero-length for the other kinds, so a key on them is supported at every Series."""
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
    """The IMAGE record of an archived instance: its header without bulk data.

    Built once per instance and Retrieve AE Title, then shared read-only by every model
    (records are never modified after construction; C-FIND answers are copies).
    """
    cached = instance._records.get(retrieve_ae_title)
    if cached is not None:
        return cached
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
    instance._records[retrieve_ae_title] = ds
    return ds


@dataclass
class QueryModel:
    """An immutable snapshot: records per level, and the archived file of every instance."""

    patients: list[Dataset] = field(default_factory=list)
    studies: list[Dataset] = field(default_factory=list)
    series: list[Dataset] = field(default_factory=list)
    images: list[Dataset] = field(default_factory=list)
    paths: dict[str, Path] = field(default_factory=dict)
    # (level, keyword) -> UID -> positions of the records holding it; built on first use.
    _indexes: dict[tuple[str, str], dict[str, list[int]]] = field(default_factory=dict,
                                                                   repr=False)
    _index_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def records(self, level: str, query: object | None = None) -> list[Dataset]:
        """The records of ``level``; with a parsed query (anything with an ``identifier``
        Dataset), only those that can match its most specific unique key.

        A unique key (PS3.4 C.6.2.1: Study / Series / SOP Instance UID) of a non-universal
        value is Single Value or List of UID matching (C.2.2.2.1, C.2.2.2.2; UIDs take no
        wildcards, C.2.2.2.4), so the records not holding one of its UIDs cannot match: an
        IMAGE query for one instance among thousands then looks at one record. The result
        is a superset of the matches, in model order; the caller still matches every key.
        """
        records = {"PATIENT": self.patients, "STUDY": self.studies, "SERIES": self.series,
                   "IMAGE": self.images}[level]
        identifier = getattr(query, "identifier", None)
        if not isinstance(identifier, Dataset):
            return records
        for keyword in _NARROWING_KEYS.get(level, ()):
            if keyword not in identifier:
                continue
            elem = identifier[keyword]
            if elem.VM == 0:
                continue
            uids = [str(v) for v in (elem.value if elem.VM > 1 else [elem.value])]
            if any("*" in u or "?" in u or not u for u in uids):
                continue
            index = self._index(level, keyword, records)
            positions = sorted({i for uid in uids for i in index.get(uid, ())})
            return [records[i] for i in positions]
        return records

    def _index(self, level: str, keyword: str,
               records: list[Dataset]) -> dict[str, list[int]]:
        with self._index_lock:   # models are shared by every association thread
            index = self._indexes.get((level, keyword))
            if index is None:
                index = {}
                for position, record in enumerate(records):
                    value = record.get(keyword)
                    if value:
                        index.setdefault(str(value), []).append(position)
                self._indexes[(level, keyword)] = index
            return index


# Unique keys by which records() narrows, most specific first (PS3.4 C.6.2.1.1).
_NARROWING_KEYS = {
    "IMAGE": ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID"),
    "SERIES": ("SeriesInstanceUID", "StudyInstanceUID"),
    "STUDY": ("StudyInstanceUID",),
}


def build_model(streams: Iterable[LiveStream], instances: Iterable[ArchivedInstance], *,
                domain_id: int = 0, retrieve_ae_title: str = "") -> QueryModel:
    """Assemble the four levels from live streams and archived instances."""
    model = QueryModel()
    instances = list(instances)
    model.series = _series_records(streams, instances, domain_id=domain_id,
                                   retrieve_ae_title=retrieve_ae_title)
    for inst in instances:
        if not inst.header.get("SOPInstanceUID"):
            continue
        model.images.append(image_record(inst, retrieve_ae_title=retrieve_ae_title))
        model.paths[str(inst.header.SOPInstanceUID)] = inst.path
    # STUDY and PATIENT records aggregate their series (C.6.1.1.2 / C.6.2.1.2 optional keys).
    model.studies = _study_records(model.series, retrieve_ae_title)
    model.patients = _patient_records(model.studies)
    return model


def _series_records(streams: Iterable[LiveStream], instances: list[ArchivedInstance], *,
                    domain_id: int, retrieve_ae_title: str) -> list[Dataset]:
    """One SERIES record per live stream, plus one per archived series with no live stream;
    in study, series number, UID order."""
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
    return sorted(series.values(), key=lambda s: (str(s.StudyInstanceUID), s.SeriesNumber or 0,
                                                  str(s.SeriesInstanceUID)))


def _study_records(series: list[Dataset], retrieve_ae_title: str) -> list[Dataset]:
    """One STUDY record per study of ``series``, with the counts of its series."""
    studies: dict[str, Dataset] = {}
    study_members: dict[str, list[Dataset]] = {}
    for record in series:
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
    return list(studies.values())


def _patient_records(studies: list[Dataset]) -> list[Dataset]:
    """One PATIENT record per Patient ID of ``studies``, with the counts of its studies."""
    patients: dict[str, Dataset] = {}
    for study in studies:
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
    return list(patients.values())


class ModelStore:
    """Thread-safe holder of the live streams and the current :class:`QueryModel`.

    The ROS node updates streams from its executor; DICOM handlers (pynetdicom threads)
    call :meth:`snapshot`, which never waits for the archive: a background thread rescans
    it every ``archive_rescan_s`` (and when a snapshot finds the last scan older than
    that), and :meth:`snapshot` rebuilds the model from the cached instances only when a
    stream, a state or the archive changed; otherwise it returns the same immutable object.
    Rebuilding reuses each instance's IMAGE record, so a stream change stays cheap with
    thousands of archived instances.

    The very first snapshot waits at most ``first_scan_wait_s`` for the first scan, then
    answers from whatever is indexed so far. Call :meth:`close` to stop the thread.
    """

    def __init__(self, archive: ArchiveIndex | None = None, *, domain_id: int = 0,
                 retrieve_ae_title: str = "", archive_rescan_s: float = 1.0,
                 first_scan_wait_s: float = 2.0) -> None:
        self.archive = archive
        self.domain_id = domain_id
        self.retrieve_ae_title = retrieve_ae_title
        self.archive_rescan_s = archive_rescan_s
        self.first_scan_wait_s = first_scan_wait_s
        self._streams: dict[str, LiveStream] = {}
        self._lock = threading.Lock()
        self._scanned = threading.Condition(self._lock)   # a scan finished
        self._model: QueryModel | None = None
        self._instances: list[ArchivedInstance] = []
        self._dirty = True
        self._scans = 0                      # completed scans
        self._requests = 0                   # scan requests so far
        self._served = 0                     # requests covered by the last completed scan
        self._scan_finished = -float("inf")  # monotonic time of the last completed scan
        self._wake = threading.Event()       # a scan is wanted now
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if archive is not None:
            self._wake.set()
            self._thread = threading.Thread(target=self._run, name="archive-index",
                                            daemon=True)
            self._thread.start()

    # --- archive thread ----------------------------------------------------------------

    def _run(self) -> None:
        assert self.archive is not None
        while not self._stop.is_set():
            # Period 0 means "on request only" (every snapshot asks), not a busy loop.
            self._wake.wait(self.archive_rescan_s or None)
            if self._stop.is_set():
                return
            with self._lock:
                self._wake.clear()
                covering = self._requests   # every request so far is served by this scan
            try:
                instances = self.archive.scan()
                # Build new instances' IMAGE records here, not in snapshot() under the lock.
                for inst in instances:
                    image_record(inst, retrieve_ae_title=self.retrieve_ae_title)
            except Exception:  # a bug must not end indexing silently
                log.exception("archive: scan of %s failed", self.archive.root)
                instances = None
            with self._scanned:
                if instances is not None and (
                        len(instances) != len(self._instances)
                        or any(a is not b for a, b in zip(instances, self._instances,
                                                           strict=True))):
                    self._instances = instances
                    self._dirty = True
                self._scans += 1
                self._served = covering
                self._scan_finished = time.monotonic()
                self._scanned.notify_all()

    def rescan(self, timeout: float | None = None) -> bool:
        """Ask for a scan starting now; wait up to ``timeout`` s for it (None: do not wait).
        True when it finished (or there is no archive)."""
        if self._thread is None:
            return True
        with self._scanned:
            target = self._request()
            if timeout is None:
                return False
            return self._scanned.wait_for(lambda: self._served >= target, timeout)

    def wait_for_scans(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s until every scan requested so far has finished."""
        if self._thread is None:
            return True
        with self._scanned:
            target = self._requests
            return self._scanned.wait_for(lambda: self._served >= target, timeout)

    def _request(self) -> int:
        # Under the lock. A scan already running may have listed the folder before the
        # caller's change, so only a scan that starts after this request serves it.
        self._requests += 1
        self._wake.set()
        return self._requests

    def close(self, timeout: float = 5.0) -> None:
        """Stop the archive thread (a scan in progress finishes its current file)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    # --- streams and snapshots ------------------------------------------------------

    def set_streams(self, streams: Iterable[LiveStream]) -> None:
        """Replace every live stream at once (keyed by topic)."""
        new = {s.descriptor.topic: s for s in streams}
        with self._lock:
            if new != self._streams:
                self._streams = new
                self._dirty = True

    def streams(self) -> list[LiveStream]:
        """The live streams the model is built from, as last updated."""
        with self._lock:
            return list(self._streams.values())

    def snapshot(self, now: float | None = None) -> QueryModel:
        """The current model; never waits for an archive scan (except the first, bounded
        by ``first_scan_wait_s``)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            if self._thread is not None:
                if self._scans == 0 and self._model is None:
                    if not self._scanned.wait_for(lambda: self._scans > 0,
                                                  self.first_scan_wait_s):
                        assert self.archive is not None
                        self._instances = self.archive.indexed()   # so far
                        self._dirty = True
                if now - self._scan_finished >= self.archive_rescan_s and \
                        not self._wake.is_set():
                    self._request()   # the scan runs beside this call, not awaited
            if self._dirty or self._model is None:
                self._model = build_model(self._streams.values(), self._instances,
                                          domain_id=self.domain_id,
                                          retrieve_ae_title=self.retrieve_ae_title)
                self._dirty = False
            return self._model
