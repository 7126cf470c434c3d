"""What the storage sender asks of a transport (DIMSE C-STORE or STOW-RS), and the one rule
both use to read a storage status.

A round of :class:`~dicom_or_core.scu.storage.StorageSender` hands the due instances to its
:class:`Transport`; the transport sends them its way and reports each instance's fate to a
:class:`DeliverySink` (the sender, which alone moves the spool's states and the counters):
``stored``, ``retry`` (counted, next attempt after the backoff) or ``failed`` (for good; the
file stays for an operator). When the destination cannot be reached or refuses requests as a
whole, the transport raises :class:`PacsUnreachable`: every instance of the round it has not
answered for waits with backoff (an outage, warned once).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pydicom.filereader import read_file_meta_info

from dicom_or_core.archive.spool import InstanceRow

# An instance's fate after one attempt.
STORED, RETRY, FAILED = "stored", "retry", "failed"
# Warnings a storage SCP may answer: the instance is stored (PS3.4 B.2.3: B000 coercion of
# data elements, B006 elements discarded, B007 data set does not match SOP class).
WARNING_STATUSES = frozenset({0xB000, 0xB006, 0xB007})
# Duplicate SOP Instance (PS3.7 C.4.2): the destination has this instance already, e.g. from
# an attempt whose answer was lost. For exactly-once delivery that is a success.
DUPLICATE_SOP_INSTANCE = 0x0111


@dataclass(frozen=True)
class StoredFile:
    """What sending an archived file needs to know, from its File Meta Information only."""

    path: Path
    sop_class_uid: str
    transfer_syntax_uid: str


def stored_file(path: Path) -> StoredFile:
    """Read a file's File Meta Information (PS3.10 7.1), never its data set."""
    meta = read_file_meta_info(path)
    return StoredFile(path, str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID))


def classify_status(code: int) -> str:
    """The fate of an instance whose store was answered with ``code``: a C-STORE Status
    (PS3.4 B.2.3) or a STOW-RS Failure / Warning Reason (PS3.18 10.5.3, which uses the same
    codes). Success and warnings -> STORED; out of resources (A7xx) -> RETRY (the same
    instance may be accepted later); anything else (A9xx data set does not match the SOP
    class, Cxxx cannot understand, 0122 SOP class not supported, 0110 processing failure,
    C122 transfer syntax not supported) -> FAILED: sending the same bytes again cannot help."""
    if code == 0 or code in WARNING_STATUSES or code == DUPLICATE_SOP_INSTANCE:
        return STORED
    if 0xA700 <= code <= 0xA7FF:
        return RETRY
    return FAILED


class PacsUnreachable(Exception):  # noqa: N818  (an outage, not a programming error)
    """The destination cannot be reached, timed out, or refuses every request (HTTP 5xx,
    401/403, ...): the instances of the round not yet answered wait with backoff.
    ``needs_operator``: it will not pass by itself (credentials, URL, certificates), so it
    is logged as an error, not as a warning."""

    def __init__(self, message: str, needs_operator: bool = False) -> None:
        super().__init__(message)
        self.needs_operator = needs_operator


class DeliverySink(Protocol):
    """Where a transport reports what became of each instance of a round."""

    def reached(self) -> None:
        """The destination answered (an association, an HTTP response)."""

    def stored(self, row: InstanceRow, note: str = "") -> None:
        """The destination confirmed it holds the instance (``note``: a warning)."""

    def retry(self, row: InstanceRow, message: str) -> None:
        """Not stored this time; worth sending again after the backoff."""

    def failed(self, row: InstanceRow, message: str) -> None:
        """Refused for good: sending it again cannot help."""


class Transport(Protocol):
    """One way of storing instances in a destination (C-STORE, STOW-RS)."""

    def peer(self) -> str:
        """The destination, for logs."""

    def poll(self) -> bool:
        """Apply what arrived between rounds (Storage Commitment reports); True if any."""

    def waiting(self) -> list[InstanceRow]:
        """Stored instances this transport still has work for (commitment requests)."""

    def deliver(self, rows: list[InstanceRow], files: dict[str, StoredFile],
                waiting: list[InstanceRow], sink: DeliverySink) -> None:
        """Send ``rows`` (their ``files`` by SOP Instance UID), report each to ``sink``;
        raise :class:`PacsUnreachable` when the destination cannot be used now."""

    def close(self) -> None:
        """Release connections and listeners."""
