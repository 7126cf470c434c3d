"""Modality Worklist (PS3.4 Annex K) as the source of the OR session's context, ROS-free.

The context node asks the hospital's worklist SCP (Modality Worklist Information Model -
FIND, 1.2.840.10008.5.1.4.31) for the Scheduled Procedure Steps of this OR, picks one and
turns it into a :class:`~dicom_or_core.model.context.SessionContext`:

* selection: Scheduled Station AE Title (0040,0001) and/or Scheduled Procedure Step Location
  (0040,0011) and Scheduled Procedure Step Start Date (0040,0002), inside the Scheduled
  Procedure Step Sequence (0040,0100) as PS3.4 K.6.1.2.2 defines the matching keys;
* items are ordered by scheduled start date/time, then by SPS ID, so "next case" is
  deterministic;
* mapping (IHE RAD TF-2 "Modality Worklist to images" / PS3.17 Annex on MWL): Patient
  Module attributes as is, Study Instance UID from the item (a stable UID derived from the
  Accession Number / Requested Procedure ID when the RIS sends none, so a restarted node
  keeps the same study), Accession Number, Requested Procedure ID -> Study ID (SH),
  Requested Procedure Description -> Study Description, Referring Physician's Name, and the
  SPS ID;
* the item's Requested Procedure and Scheduled Procedure Step (IDs, descriptions, the first
  Requested Procedure Code and Scheduled Protocol Code) as the session's ``requests``, which
  the recorder writes as the Request Attributes Sequence of every instance and sends in its
  MPPS (IHE RAD TF-2 RAD-6).
"""

from __future__ import annotations

import datetime as _dt
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pynetdicom.sop_class import ModalityWorklistInformationFind

from dicom_or_core.model import context as ctx
from dicom_or_core.model import vr
from dicom_or_core.model.errors import DicomOrError
from dicom_or_core.model.uid import new_uid
from dicom_or_core.scu.association import AssociationFailed, associated, client_ae

log = logging.getLogger(__name__)

MWL_FIND = ModalityWorklistInformationFind


@dataclass(frozen=True)
class WorklistSelection:
    """Which Scheduled Procedure Steps belong to this OR (empty fields are not used)."""

    station_ae_title: str = ""
    location: str = ""
    date: str = ""  # DA, a DA range, or "" for any date

    def validate(self, prefix: str = "worklist") -> WorklistSelection:
        """Check the fields as AE, SH and DA (each end of a range, PS3.4 C.2.2.2.5.1) and return
        self; else DicomOrError naming ``<prefix>.<field>``."""
        vr.check_ae(f"{prefix}.station_ae_title", self.station_ae_title)
        vr.check_sh(f"{prefix}.location", self.location)
        for part in self.date.split("-") if self.date else ():
            vr.check_da(f"{prefix}.date", part)
        return self


def worklist_identifier(selection: WorklistSelection) -> Dataset:
    """The C-FIND identifier: matching keys from ``selection``, return keys for everything
    the session context needs (PS3.4 K.6.1.2.2, return key types per Table K.6-1)."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    for keyword in ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate",
                    "PatientSex", "StudyInstanceUID", "AccessionNumber",
                    "RequestedProcedureID", "RequestedProcedureDescription",
                    "ReferringPhysicianName"):
        setattr(ds, keyword, "")
    # Sequence return keys: an empty sequence asks for the whole sequence (PS3.4 C.2.2.2.6).
    ds.RequestedProcedureCodeSequence = []
    sps = Dataset()
    sps.ScheduledStationAETitle = selection.station_ae_title
    sps.ScheduledProcedureStepLocation = selection.location
    sps.ScheduledProcedureStepStartDate = selection.date
    sps.ScheduledProcedureStepStartTime = ""
    sps.Modality = ""
    sps.ScheduledProcedureStepID = ""
    sps.ScheduledProcedureStepDescription = ""
    sps.ScheduledPerformingPhysicianName = ""
    sps.ScheduledProtocolCodeSequence = []
    ds.ScheduledProcedureStepSequence = [sps]
    return ds


def _sps(item: Dataset) -> Dataset:
    seq = item.get("ScheduledProcedureStepSequence")
    return seq[0] if seq else Dataset()


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    return "" if value is None else str(value).strip()


def sort_items(items: Iterable[Dataset]) -> list[Dataset]:
    """Worklist items in scheduled order (start date, start time, SPS ID)."""
    def key(item: Dataset) -> tuple[str, str, str]:
        sps = _sps(item)
        return (_text(sps, "ScheduledProcedureStepStartDate"),
                _text(sps, "ScheduledProcedureStepStartTime").ljust(6, "0"),
                _text(sps, "ScheduledProcedureStepID"))
    return sorted(items, key=key)


def step_id(item: Dataset) -> str:
    """The Scheduled Procedure Step ID of an item ("" when absent)."""
    return _text(_sps(item), "ScheduledProcedureStepID")


def next_item(items: list[Dataset], current_step_id: str | None) -> Dataset | None:
    """The item after ``current_step_id`` in scheduled order (the first when None; None
    when the current step is the last)."""
    ordered = sort_items(items)
    if not ordered:
        return None
    if current_step_id is None:
        return ordered[0]
    ids = [step_id(i) for i in ordered]
    if current_step_id not in ids:
        return ordered[0]
    index = ids.index(current_step_id) + 1
    return ordered[index] if index < len(ordered) else None


def _first_code(ds: Dataset, keyword: str) -> tuple[str, str, str]:
    """(value, scheme, meaning) of the first item of a Code Sequence ("" when none)."""
    seq = ds.get(keyword)
    if not seq:
        return "", "", ""
    return (_text(seq[0], "CodeValue"), _text(seq[0], "CodingSchemeDesignator"),
            _text(seq[0], "CodeMeaning"))


def request_from_item(item: Dataset, study_uid: str) -> ctx.RequestAttributes:
    """The Request Attributes of one worklist item (its Requested Procedure and its
    Scheduled Procedure Step); ``study_uid`` is the study the case is recorded in."""
    sps = _sps(item)
    requested = _first_code(item, "RequestedProcedureCodeSequence")
    protocol = _first_code(sps, "ScheduledProtocolCodeSequence")
    return ctx.RequestAttributes(
        study_instance_uid=study_uid, accession_number=_text(item, "AccessionNumber"),
        requested_procedure_id=_text(item, "RequestedProcedureID"),
        requested_procedure_description=_text(item, "RequestedProcedureDescription"),
        requested_procedure_code_value=requested[0],
        requested_procedure_code_scheme=requested[1],
        requested_procedure_code_meaning=requested[2],
        scheduled_procedure_step_id=_text(sps, "ScheduledProcedureStepID"),
        scheduled_procedure_step_description=_text(sps, "ScheduledProcedureStepDescription"),
        scheduled_protocol_code_value=protocol[0], scheduled_protocol_code_scheme=protocol[1],
        scheduled_protocol_code_meaning=protocol[2])


def session_from_item(item: Dataset, *, operating_room: str = "",
                      now: _dt.datetime | None = None,
                      synchronization_uid: str | None = None) -> ctx.SessionContext:
    """The session context of one worklist item (see the module docstring for the map).

    Values that break the VR rules of the context (too long, control characters) raise
    DicomOrError naming the field, so a bad RIS entry is reported, not propagated.
    """
    now = now or _dt.datetime.now()
    sps = _sps(item)
    accession = _text(item, "AccessionNumber")
    requested = _text(item, "RequestedProcedureID")
    study_uid = _text(item, "StudyInstanceUID")
    if not study_uid:
        if not (accession or requested):
            raise DicomOrError("worklist.item", "has neither Study Instance UID nor "
                               "Accession Number nor Requested Procedure ID")
        study_uid = new_uid("dicom_or-mwl", _text(item, "PatientID"), accession, requested)
    da, tm = ctx.now_da_tm(now)
    session = ctx.SessionContext(
        patient=ctx.Patient(patient_id=_text(item, "PatientID"),
                            issuer_of_patient_id=_text(item, "IssuerOfPatientID"),
                            patient_name=_text(item, "PatientName"),
                            birth_date=_text(item, "PatientBirthDate"),
                            sex=_text(item, "PatientSex")),
        study=ctx.Study(study_instance_uid=study_uid, accession_number=accession,
                        study_id=requested[:16], study_date=da, study_time=tm,
                        study_description=_text(item, "RequestedProcedureDescription")[:64],
                        referring_physician_name=_text(item, "ReferringPhysicianName")),
        synchronization_frame_of_reference_uid=synchronization_uid or new_uid(),
        scheduled_procedure_step_id=_text(sps, "ScheduledProcedureStepID"),
        operating_room=operating_room or _text(sps, "ScheduledProcedureStepLocation"),
        requests=[request_from_item(item, study_uid)],
    )
    return session.validate("worklist_item")


@dataclass(frozen=True)
class WorklistPeer:
    """The worklist SCP to ask."""

    host: str
    port: int
    called_ae_title: str
    calling_ae_title: str = "DICOM_OR_CTX"
    timeout_s: float = 10.0


class WorklistUnavailable(Exception):
    """The worklist SCP could not be reached or refused the query."""


def query_worklist(peer: WorklistPeer, selection: WorklistSelection) -> list[Dataset]:
    """C-FIND the worklist; raise :class:`WorklistUnavailable` with the reason on any
    network or status failure (never hangs longer than ``peer.timeout_s`` per step)."""
    ae = client_ae(peer.calling_ae_title, peer.timeout_s)
    ae.add_requested_context(MWL_FIND)
    items: list[Dataset] = []
    try:
        with associated(ae, peer.host, peer.port, peer.called_ae_title) as assoc:
            for status, identifier in assoc.send_c_find(worklist_identifier(selection),
                                                        MWL_FIND):
                if not status:
                    raise WorklistUnavailable("worklist C-FIND timed out or was aborted")
                code = int(status.Status)
                if code in (0xFF00, 0xFF01):
                    if identifier is not None:
                        items.append(identifier)
                elif code != 0x0000:
                    raise WorklistUnavailable(
                        f"worklist C-FIND failed with status 0x{code:04X}")
    except AssociationFailed as exc:
        raise WorklistUnavailable(str(exc)) from None
    return sort_items(items)
