"""An MPPS SCP for tests (pynetdicom), since no packaged one runs here: dcmtk has none and
neither PixelMed nor odil is installed.

It accepts the Modality Performed Procedure Step SOP Class (N-CREATE, N-SET) and applies the
rules PS3.4 F.7.2 gives an SCP, so an SCU that breaks them is caught:

* N-CREATE: the Affected SOP Instance UID is required (dicom_or assigns it), a known one is
  0x0111 "Duplicate SOP Instance"; Performed Procedure Step Status must be IN PROGRESS
  (else 0x0106 "Invalid attribute value"); Scheduled Step Attributes Sequence, Performed
  Procedure Step ID, Performed Station AE Title, Start Date / Time and Modality must be
  present and not empty (else 0x0120 "Missing attribute").
* N-SET: an unknown instance is 0x0112 "No such SOP Instance"; an instance already
  COMPLETED or DISCONTINUED is 0x0110 "Processing failure" with Error ID A710 ("Performed
  Procedure Step Object may no longer be updated", PS3.4 F.7.2.2.4); an attribute N-SET may
  not change (Table F.7.2-1, e.g. the Scheduled Step Attributes or the Patient ID) is 0x0106;
  a COMPLETED status without a Performed Series is 0x0110.

Everything received is kept (``received``: (operation, SOP Instance UID, dataset)), and
``instances`` holds each instance's current attributes. ``stop()`` ends it; ``wait_for``
waits for a condition with a timeout.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import ModalityPerformedProcedureStep

# Attributes the N-SET may not carry (PS3.4 Table F.7.2-1, "-" / "Not allowed" in the N-SET
# column): what identifies the step and what it was scheduled for.
NOT_SETTABLE = ("ScheduledStepAttributesSequence", "PatientName", "PatientID",
                "PatientBirthDate", "PatientSex", "PerformedProcedureStepID",
                "PerformedStationAETitle", "PerformedProcedureStepStartDate",
                "PerformedProcedureStepStartTime", "Modality", "StudyID")
REQUIRED_ON_CREATE = ("PerformedProcedureStepID", "PerformedStationAETitle",
                      "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime",
                      "Modality", "PerformedProcedureStepStatus")


def _status(code: int, comment: str = "", error_id: int | None = None) -> Dataset:
    status = Dataset()
    status.Status = code
    if comment:
        status.ErrorComment = comment[:64]
    if error_id is not None:
        status.ErrorID = error_id
    return status


class MppsScp:
    """A running MPPS SCP on ``127.0.0.1:port`` (AE ``ae_title``)."""

    def __init__(self, port: int, ae_title: str = "MPPS_SCP") -> None:
        self.port, self.ae_title = port, ae_title
        self.received: list[tuple[str, str, Dataset]] = []
        self.instances: dict[str, Dataset] = {}
        self.answers: list[tuple[str, int]] = []  # (operation, status) sent back
        self._cond = threading.Condition()
        ae = AE(ae_title=ae_title)
        ae.add_supported_context(ModalityPerformedProcedureStep)
        self._server = ae.start_server(
            ("127.0.0.1", port), block=False,
            evt_handlers=[(evt.EVT_N_CREATE, self._on_create), (evt.EVT_N_SET, self._on_set)])

    def stop(self) -> None:
        """Close the server (waits for open associations)."""
        self._server.shutdown()

    def __enter__(self) -> MppsScp:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def wait_for(self, condition: Callable[[MppsScp], bool], timeout_s: float) -> bool:
        """Wait until ``condition(self)`` holds (checked after every message) or timeout."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not condition(self):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    def _answer(self, operation: str, uid: str, ds: Dataset | None,
                status: Dataset) -> tuple[Dataset, Dataset | None]:
        with self._cond:
            self.received.append((operation, uid, ds if ds is not None else Dataset()))
            self.answers.append((operation, int(status.Status)))
            self._cond.notify_all()
        return status, (ds if int(status.Status) == 0 else None)

    def _on_create(self, event: Any) -> tuple[Dataset, Dataset | None]:
        uid = str(event.request.AffectedSOPInstanceUID or "")
        ds = event.attribute_list
        if not uid:
            return self._answer("create", uid, ds, _status(
                0x0120, "Affected SOP Instance UID required"))
        if uid in self.instances:
            return self._answer("create", uid, ds, _status(0x0111, "Duplicate instance"))
        missing = [k for k in REQUIRED_ON_CREATE if not ds.get(k)]
        if not ds.get("ScheduledStepAttributesSequence"):
            missing.append("ScheduledStepAttributesSequence")
        if missing:
            return self._answer("create", uid, ds, _status(
                0x0120, f"missing {', '.join(missing)}"))
        if ds.PerformedProcedureStepStatus != "IN PROGRESS":
            return self._answer("create", uid, ds, _status(
                0x0106, "status must be IN PROGRESS"))
        with self._cond:  # a copy: N-SETs change the instance, not what was received
            self.instances[uid] = copy.deepcopy(ds)
        return self._answer("create", uid, ds, _status(0x0000))

    def _on_set(self, event: Any) -> tuple[Dataset, Dataset | None]:
        uid = str(event.request.RequestedSOPInstanceUID or "")
        mods = event.modification_list
        current = self.instances.get(uid)
        if current is None:
            return self._answer("set", uid, mods, _status(0x0112, "No such SOP Instance"))
        if current.PerformedProcedureStepStatus in ("COMPLETED", "DISCONTINUED"):
            return self._answer("set", uid, mods, _status(
                0x0110, "Performed Procedure Step Object may no longer be updated",
                0xA710))
        forbidden = [k for k in NOT_SETTABLE if k in mods]
        if forbidden:
            return self._answer("set", uid, mods, _status(
                0x0106, f"not settable: {', '.join(forbidden)}"))
        if mods.get("PerformedProcedureStepStatus") == "COMPLETED" and not (
                mods.get("PerformedSeriesSequence") or current.get("PerformedSeriesSequence")):
            return self._answer("set", uid, mods, _status(
                0x0110, "COMPLETED without Performed Series"))
        with self._cond:
            for element in mods:
                current[element.tag] = element
        return self._answer("set", uid, mods, _status(0x0000))
