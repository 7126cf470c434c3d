"""Modality Performed Procedure Step SCU (PS3.4 Annex F.7; IHE RAD TF-2 RAD-6 / RAD-7), ROS-free.

When an OR case taken from a Modality Worklist starts recording, the acquisition is
reported to the RIS as a Performed Procedure Step: an N-CREATE with status IN PROGRESS
(what is performed, for which Scheduled Procedure Steps, by which station, since when),
then one N-SET that ends it, COMPLETED or DISCONTINUED, listing every Series it produced.
Both datasets follow PS3.4 Table F.7.2-1: what the N-CREATE must carry (type 1 and 2 of
the "N-CREATE SCU" column), and only what the N-SET may change.

The SCU assigns the SOP Instance UID itself (PS3.4 F.7.2.1.1 allows it; IHE requires it), so
the instances recorded can reference the step (Referenced Performed Procedure Step Sequence)
before the RIS has answered, or while it is unreachable.

Delivery never blocks or endangers a recording: :class:`MppsOutbox` keeps every message
not yet accepted in a small JSON file beside the spool (written atomically), sends them in
order with bounded timeouts, and keeps a message that met a network failure for the next
attempt (backoff). A message the SCP refuses with a failure status is not sent again (the
SCP's answer would not change); it is reported with its status.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pynetdicom.sop_class import ModalityPerformedProcedureStep

from dicom_or_core.archive.spool import write_atomic
from dicom_or_core.model import context as ctx
from dicom_or_core.model import vr
from dicom_or_core.model.errors import DicomOrError
from dicom_or_core.scu.association import AssociationFailed, associated, client_ae, peer_name

log = logging.getLogger(__name__)

MPPS = ModalityPerformedProcedureStep
IN_PROGRESS, COMPLETED, DISCONTINUED = "IN PROGRESS", "COMPLETED", "DISCONTINUED"
FINAL_STATES = (COMPLETED, DISCONTINUED)
# Waveform (PS3.4 B.5, 1.2.840.10008.5.1.4.1.1.9.x) and SR (…1.1.88.x) instances are not
# images: the Performed Series lists them under Referenced Non-Image Composite SOP Instance
# Sequence (0040,0220), every other instance under Referenced Image Sequence (0008,1140).
NON_IMAGE_PREFIXES = ("1.2.840.10008.5.1.4.1.1.9.", ctx.SR_STORAGE_PREFIX)
# Modalities that describe a performed step less well than the image modality beside them.
SECONDARY_MODALITIES = ("SR", "ECG", "HD", "RESP", "EEG", "EMG", "AU", "OT")
# Statuses that end a message successfully: success, and the warnings PS3.7 C.4.1 / C.4.3
# gives for N-CREATE / N-SET (attribute list error, value out of range). 0x0111 "duplicate
# SOP instance" to an N-CREATE means an earlier attempt arrived (its answer was lost).
DONE_STATUSES = {"create": {0x0000, 0x0001, 0x0107, 0x0116, 0x0111},
                 "set": {0x0000, 0x0001, 0x0107, 0x0116}}
DISCONTINUED_REASON: Code = codes.DCM.DiscontinuedForUnspecifiedReason  # PS3.16 CID 9300


@dataclass(frozen=True)
class MppsPeer:
    """The MPPS SCP (usually the RIS). An empty ``ae_title`` or ``host``, or port 0: off."""

    ae_title: str = ""
    host: str = ""
    port: int = 0
    calling_ae_title: str = "DICOM_OR"
    timeout_s: float = 10.0

    @property
    def enabled(self) -> bool:
        """Whether MPPS messages are sent at all."""
        return bool(self.ae_title and self.host and self.port)

    def validate(self, prefix: str = "mpps") -> MppsPeer:
        """Self, or DicomOrError naming ``<prefix>_<field>``."""
        vr.check_ae(f"{prefix}_ae_title", self.ae_title)
        vr.check_ae("calling_ae_title", self.calling_ae_title)
        if not 0 <= self.port <= 65535:
            raise DicomOrError(f"{prefix}_port", "must be 0 (off) or a TCP port", self.port)
        if (self.ae_title or self.port) and not self.enabled:
            raise DicomOrError(f"{prefix}_host", "set ae_title, host and port together, or "
                               "leave ae_title empty / port 0 for no MPPS",
                               (self.ae_title, self.host, self.port))
        if self.timeout_s <= 0:
            raise DicomOrError(f"{prefix}_timeout_s", "must be greater than 0",
                               self.timeout_s)
        return self

    def __str__(self) -> str:
        return peer_name(self.ae_title, self.host, self.port)


@dataclass
class PerformedStep:
    """What the N-CREATE states: the step, the case it performs, the station, the start."""

    sop_instance_uid: str
    performed_procedure_step_id: str
    session: ctx.SessionContext
    modality: str
    station_ae_title: str
    station_name: str = ""
    start_date: str = ""
    start_time: str = ""
    description: str = ""


@dataclass
class PerformedSeries:
    """One Performed Series Sequence (0040,0340) item: a Series the step produced, with its
    instances as (SOP Class UID, SOP Instance UID)."""

    series_instance_uid: str
    modality: str = ""
    series_description: str = ""
    retrieve_ae_title: str = ""
    instances: list[tuple[str, str]] = field(default_factory=list)


def new_step_id(moment: _dt.datetime) -> str:
    """A Performed Procedure Step ID (SH, 16 characters at most) unique for one station:
    ``PPS`` and the start time to the second."""
    return "PPS" + moment.strftime("%y%m%d%H%M%S")


def step_modality(modalities: Iterable[str]) -> str:
    """The one Modality (0008,0060) of a step recording several Series: an image modality
    (ES, XC, ...) rather than a waveform or SR beside it; the first in sorted order."""
    ordered = sorted(set(modalities), key=lambda m: (m in SECONDARY_MODALITIES, m))
    if not ordered:
        raise DicomOrError("modality", "a performed step needs at least one Series")
    return ordered[0]


def scheduled_step_item(request: ctx.RequestAttributes) -> Dataset:
    """One Scheduled Step Attributes Sequence (0040,0270) item (PS3.4 Table F.7.2-1:
    Study Instance UID type 1, the rest type 2, written empty when unknown)."""
    item = Dataset()
    item.StudyInstanceUID = request.study_instance_uid
    item.ReferencedStudySequence = []
    item.AccessionNumber = request.accession_number
    item.RequestedProcedureID = request.requested_procedure_id
    item.RequestedProcedureDescription = request.requested_procedure_description
    item.ScheduledProcedureStepID = request.scheduled_procedure_step_id
    item.ScheduledProcedureStepDescription = request.scheduled_procedure_step_description
    item.ScheduledProtocolCodeSequence = ctx.code_sequence(request.scheduled_protocol_code_value,
                                                           request.scheduled_protocol_code_scheme,
                                                           request.scheduled_protocol_code_meaning)
    return item


def n_create_dataset(step: PerformedStep) -> Dataset:
    """The N-CREATE Attribute List of a step that starts (PS3.4 Table F.7.2-1, N-CREATE SCU
    column): Performed Procedure Step Relationship (the scheduled steps, the patient),
    Performed Procedure Step Information (status IN PROGRESS, station, start) and Image
    Acquisition Results (modality, study ID, no Series yet)."""
    session = step.session
    if not session.requests:
        raise DicomOrError("session.requests", "an MPPS needs the worklist item it performs")
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.ScheduledStepAttributesSequence = [scheduled_step_item(r) for r in session.requests]
    ctx.apply_patient_module(ds, session.patient)
    ds.IssuerOfPatientID = session.patient.issuer_of_patient_id
    ds.ReferencedPatientSequence = []
    ds.PerformedStationAETitle = step.station_ae_title
    ds.PerformedStationName = step.station_name
    ds.PerformedLocation = session.operating_room
    ds.PerformedProcedureStepStartDate = step.start_date
    ds.PerformedProcedureStepStartTime = step.start_time
    ds.PerformedProcedureStepStatus = IN_PROGRESS
    ds.PerformedProcedureStepID = step.performed_procedure_step_id
    ds.PerformedProcedureStepEndDate = ""
    ds.PerformedProcedureStepEndTime = ""
    ds.PerformedProcedureStepDescription = step.description
    ds.PerformedProcedureTypeDescription = ""
    first = session.requests[0]
    ds.ProcedureCodeSequence = ctx.code_sequence(first.requested_procedure_code_value,
                                                 first.requested_procedure_code_scheme,
                                                 first.requested_procedure_code_meaning)
    ds.Modality = step.modality
    ds.StudyID = session.study.study_id
    ds.PerformedProtocolCodeSequence = ctx.code_sequence(first.scheduled_protocol_code_value,
                                                         first.scheduled_protocol_code_scheme,
                                                         first.scheduled_protocol_code_meaning)
    ds.PerformedSeriesSequence = []
    return ds


def performed_series_item(series: PerformedSeries) -> Dataset:
    """One Performed Series Sequence item (PS3.4 Table F.7.2-1): Protocol Name and Series
    Instance UID type 1, the rest type 2; the instances split into images and non-images."""
    item = Dataset()
    item.PerformingPhysicianName = ""
    # Protocol Name is type 1: the series description, else what was recorded.
    item.ProtocolName = series.series_description or f"dicom_or {series.modality}".strip()
    item.OperatorsName = ""
    item.SeriesInstanceUID = series.series_instance_uid
    item.SeriesDescription = series.series_description
    item.RetrieveAETitle = series.retrieve_ae_title
    images: list[Dataset] = []
    others: list[Dataset] = []
    for sop_class, sop_instance in series.instances:
        ref = Dataset()
        ref.ReferencedSOPClassUID = sop_class
        ref.ReferencedSOPInstanceUID = sop_instance
        (others if sop_class.startswith(NON_IMAGE_PREFIXES) else images).append(ref)
    item.ReferencedImageSequence = images
    item.ReferencedNonImageCompositeSOPInstanceSequence = others
    return item


def n_set_dataset(status: str, series: Sequence[PerformedSeries],
                  end: _dt.datetime | None = None,
                  reason: Code | None = None) -> Dataset:
    """The N-SET Modification List that ends a step (PS3.4 Table F.7.2-1, N-SET column):
    final status, end date and time, and the Performed Series Sequence; a DISCONTINUED step
    also gives its reason (PS3.16 CID 9300). A COMPLETED step must list at least one Series
    (PS3.4 F.7.2.2.2: the final state needs the Performed Series)."""
    if status not in FINAL_STATES:
        raise DicomOrError("status", "must be COMPLETED or DISCONTINUED", status)
    if status == COMPLETED and not series:
        raise DicomOrError("performed_series", "a COMPLETED step lists at least one Series")
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PerformedProcedureStepStatus = status
    ds.PerformedProcedureStepEndDate, ds.PerformedProcedureStepEndTime = ctx.now_da_tm(end)
    ds.PerformedSeriesSequence = [performed_series_item(s) for s in series]
    if status == DISCONTINUED:
        code = reason or DISCONTINUED_REASON
        ds.PerformedProcedureStepDiscontinuationReasonCodeSequence = ctx.code_sequence(
            code.value, code.scheme_designator, code.meaning)
    return ds


# ---------------------------------------------------------------------------------------
# Sending.


class MppsFailed(Exception):
    """An MPPS message was not accepted. ``status`` is the SCP's failure status (a refusal:
    sending it again would not help), None for a network failure (worth retrying)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def send(peer: MppsPeer, operation: str, sop_instance_uid: str, dataset: Dataset) -> int:
    """Send one N-CREATE (``operation`` "create") or N-SET ("set") of the MPPS SOP Instance
    ``sop_instance_uid``; return the accepting status. Raises :class:`MppsFailed` when the
    SCP cannot be reached, times out (every timer is ``peer.timeout_s``) or refuses."""
    ae = client_ae(peer.calling_ae_title, peer.timeout_s)
    ae.add_requested_context(MPPS)
    verb = {"create": "N-CREATE", "set": "N-SET"}[operation]
    try:
        with associated(ae, peer.host, peer.port, peer.ae_title) as assoc:
            if operation == "create":
                status, _ = assoc.send_n_create(dataset, MPPS, sop_instance_uid)
            else:
                status, _ = assoc.send_n_set(dataset, MPPS, sop_instance_uid)
    except AssociationFailed as exc:
        raise MppsFailed(f"MPPS {verb}: {exc}") from None
    if not status:
        raise MppsFailed(f"MPPS {verb} to {peer}: no response (timed out or aborted)")
    code = int(status.Status)
    if code not in DONE_STATUSES[operation]:
        comment = str(status.get("ErrorComment", "")).strip()
        raise MppsFailed(f"MPPS {verb} to {peer} refused with status 0x{code:04X}"
                         + (f": {comment}" if comment else ""), code)
    return code


@dataclass
class OutboxStats:
    """What the outbox did, for status and diagnostics."""

    sent: int = 0
    refused: int = 0
    retries: int = 0
    reachable: bool | None = None
    last_error: str = ""


class MppsOutbox:
    """MPPS messages not yet accepted, durable in ``path`` (JSON, replaced atomically).

    Messages of one SOP Instance go in the order they were queued (an N-SET never before its
    N-CREATE); a network failure keeps the message and everything after it for
    :meth:`flush` to try again after a backoff (``initial_backoff_s`` doubling up to
    ``max_backoff_s``); a refusal drops that message (and, for a refused N-CREATE, the
    N-SETs that would follow it: the SCP has no such instance) and is counted.
    """

    def __init__(self, path: str | Path, initial_backoff_s: float = 2.0,
                 max_backoff_s: float = 60.0) -> None:
        self.path = Path(path)
        self.initial_backoff_s, self.max_backoff_s = initial_backoff_s, max_backoff_s
        self.stats = OutboxStats()
        self.refusals: list[str] = []  # every refusal's reason, oldest first
        self._lock = threading.Lock()
        self._backoff = 0.0
        self._next_attempt = 0.0
        self._pending: list[dict[str, Any]] = self._load()

    def _load(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        try:
            pending = json.loads(self.path.read_text("utf-8"))
            if not isinstance(pending, list):
                raise ValueError("not a list")
            return pending
        except (OSError, ValueError) as exc:
            # A damaged outbox must not stop recording: set it aside for an operator.
            aside = self.path.with_name(f"{self.path.name}.damaged-{int(time.time())}")
            self.path.replace(aside)
            log.error("MPPS outbox %s was unreadable (%s); moved to %s", self.path, exc,
                      aside.name)
            return []

    def _save(self) -> None:
        data = json.dumps(self._pending, indent=1).encode("utf-8")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, data)

    def put(self, operation: str, sop_instance_uid: str, dataset: Dataset) -> None:
        """Queue an N-CREATE ("create") or N-SET ("set"), durably, and make it due now."""
        with self._lock:
            self._pending.append({"operation": operation, "uid": sop_instance_uid,
                                  "dataset": dataset.to_json_dict(), "queued": time.time()})
            self._save()
            self._next_attempt = 0.0

    def pending(self) -> list[tuple[str, str]]:
        """(operation, SOP Instance UID) of every message not yet accepted, in order."""
        with self._lock:
            return [(m["operation"], m["uid"]) for m in self._pending]

    def due(self, now: float | None = None) -> bool:
        """Whether :meth:`flush` would try to send now."""
        with self._lock:
            return bool(self._pending) and (now or time.monotonic()) >= self._next_attempt

    def flush(self, peer: MppsPeer) -> int:
        """Send the pending messages in order until one fails on the network; return how
        many were accepted. Never raises for a peer's failure."""
        accepted = 0
        while True:
            with self._lock:
                if not self._pending:
                    return accepted
                message = self._pending[0]
            try:
                send(peer, message["operation"], message["uid"],
                     Dataset.from_json(message["dataset"]))
            except MppsFailed as exc:
                self.stats.last_error = str(exc)
                if exc.status is None:
                    self._retry_later(exc)
                    return accepted
                self._refused(message, exc)
                continue
            with self._lock:
                self._pending.pop(0)
                self._save()
            self.stats.sent += 1
            self.stats.reachable = True
            self._backoff = 0.0
            accepted += 1

    def _retry_later(self, exc: MppsFailed) -> None:
        self.stats.reachable = False
        self.stats.retries += 1
        self._backoff = min(self.max_backoff_s, max(self.initial_backoff_s,
                                                    self._backoff * 2))
        self._next_attempt = time.monotonic() + self._backoff
        log.warning("%s; %d MPPS message(s) kept, next attempt in %.0f s", exc,
                    len(self._pending), self._backoff)

    def _refused(self, message: dict[str, Any], exc: MppsFailed) -> None:
        self.stats.reachable = True
        with self._lock:
            dropped = [m for m in self._pending if m is message or (
                message["operation"] == "create" and m["uid"] == message["uid"])]
            self._pending = [m for m in self._pending if not any(m is d for d in dropped)]
            self._save()
        self.stats.refused += len(dropped)
        self.refusals.append(f"{exc} (SOP Instance {message['uid']})")
        log.error("%s; MPPS %s not sent again", exc, message["uid"])
