"""C-STORE SCU with retry + exponential backoff and Storage Commitment, fed by the spool.

:class:`StorageSender` runs in a background thread (or step by step with
:meth:`StorageSender.run_once` in tests). Each round it takes the ``final`` instances whose
next attempt is due from the spool index, sends them over one association, and moves each
one on according to the C-STORE status (PS3.4 B.2.3):

* Success (0000) or a warning (B000, B006, B007) -> ``stored``.
* Out of resources (A7xx), association refused / aborted / no connection / timeout ->
  attempt counted, next attempt after ``min(max_backoff_s, initial_backoff_s * 2**n)``.
* Any other failure (A9xx data set does not match the SOP class, Cxxx cannot understand,
  0122 SOP class not supported) or a presentation context the PACS rejected -> ``failed``:
  resending cannot help; the file stays for an operator.

Storage Commitment Push Model (PS3.4 J): after a batch is stored the sender requests
commitment (N-ACTION, Action Type 1, a Transaction UID and the Referenced SOP Sequence). The
N-EVENT-REPORT may come on the same association (waited for briefly) or on a new association
the PACS opens to this AE (``commitment_port``; the PACS must know this AE as a modality, as
Orthanc's ``DicomModalities``), and is applied by the sender's thread: committed instances ->
``committed``; instances the PACS reports as failed go back to ``final`` and are sent again;
a request without report after ``commitment_timeout_s`` is repeated. Sending never waits for
a report.

Exactly-once delivery: an instance is sent until one C-STORE succeeds and never after (its
state is kept in SQLite across restarts). A store whose response is lost (PACS died
mid-association) is sent again; the PACS then receives the same SOP Instance UID twice,
which a PACS treats as the same instance (Orthanc keeps one).

Memory: only each file's File Meta Information is read (SOP class, transfer syntax); the
C-STORE payload is streamed from the file in PDU-sized chunks (pynetdicom's chunked send),
so a backlog of any size, with instances of gigabytes, costs the same memory as one PDU.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.filereader import read_file_meta_info
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import StorageCommitmentPushModel, StorageCommitmentPushModelInstance

from dicom_or_core.archive.spool import FAILED, STORED, InstanceRow, Spool
from dicom_or_core.model import vr
from dicom_or_core.model.errors import DicomOrError
from dicom_or_core.model.uid import new_uid
from dicom_or_core.scu.association import client_ae, peer_name
from dicom_or_core.scu.compat import send_stored_files_chunked

log = logging.getLogger("dicom_or.storage_scu")
# The well-known SOP Instance of Storage Commitment Push Model (PS3.4 J.3).
STORAGE_COMMITMENT_INSTANCE = StorageCommitmentPushModelInstance
_WARNINGS = {0xB000, 0xB006, 0xB007}
SAME_ASSOCIATION_WAIT_S = 2.0


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


@dataclass
class PacsConfig:
    """Where and how to store. ``port`` 0 means local-only mode (no PACS)."""

    ae_title: str = ""
    host: str = "127.0.0.1"
    port: int = 0
    calling_ae_title: str = "DICOM_OR_REC"
    storage_commitment: bool = True
    commitment_port: int = 0          # our N-EVENT-REPORT listener; 0 = same association
    commitment_timeout_s: float = 30.0
    initial_backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    timeout_s: float = 30.0
    batch_size: int = 50

    @property
    def enabled(self) -> bool:
        """Whether a PACS is configured: port 0 is local-only mode (archive, nothing sent)."""
        return self.port > 0

    def validate(self) -> PacsConfig:
        """Self, checked: AE titles (PS3.5 Table 6.2-1), ports, backoff, timeouts, batch size;
        else DicomOrError naming the parameter."""
        if self.enabled:
            vr.require("pacs_ae_title", self.ae_title)
            vr.check_ae("pacs_ae_title", self.ae_title)
            vr.require("pacs_host", self.host)
        vr.check_ae("calling_ae_title", self.calling_ae_title)
        if not 0 <= self.port <= 65535:
            raise DicomOrError("pacs_port", "must be 0 (local only) or 1..65535", self.port)
        if not 0 <= self.commitment_port <= 65535:
            raise DicomOrError("commitment_port", "must be 0..65535", self.commitment_port)
        if not 0 < self.initial_backoff_s <= self.max_backoff_s:
            raise DicomOrError("initial_backoff_s", "must be > 0 and <= max_backoff_s",
                               self.initial_backoff_s)
        if self.commitment_timeout_s <= 0 or self.timeout_s <= 0:
            raise DicomOrError("timeout_s", "timeouts must be > 0")
        if self.batch_size < 1:
            raise DicomOrError("batch_size", "must be >= 1", self.batch_size)
        return self


@dataclass
class SenderStats:
    """Counters for the status topic."""

    stored: int = 0
    committed: int = 0
    failed: int = 0
    retries: int = 0
    bytes_sent: int = 0
    last_error: str = ""
    pacs_reachable: bool | None = None


class StorageSender:
    """Sends spooled instances to the PACS in a background thread."""

    def __init__(self, spool: Spool, config: PacsConfig,
                 on_change: Callable[[], None] | None = None) -> None:
        self.spool = spool
        self.config = config.validate()
        self.stats = SenderStats()
        self._on_change = on_change or (lambda: None)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._reports: dict[str, Dataset] = {}
        self._pending: dict[str, tuple[float, set[str]]] = {}
        self._report_cv = threading.Condition()
        self._server = None
        # Send each file as stored, in PDU-sized chunks, instead of decoding it whole into
        # memory (pynetdicom >= 2.0). Process-wide in pynetdicom: the recorder process is the
        # only one that sends C-STOREs, and it always proposes each file's own syntax.
        send_stored_files_chunked()
        self._ae = client_ae(config.calling_ae_title, config.timeout_s)
        if config.enabled and config.storage_commitment and config.commitment_port:
            listener = AE(ae_title=config.calling_ae_title)
            listener.add_supported_context(StorageCommitmentPushModel, scu_role=True,
                                           scp_role=True)
            try:
                self._server = listener.start_server(
                    ("0.0.0.0", config.commitment_port), block=False,
                    evt_handlers=[(evt.EVT_N_EVENT_REPORT, self._on_event_report)])
            except OSError as exc:  # in use, or not ours to bind: a configuration error
                raise DicomOrError("commitment_port", f"cannot listen: {exc.strerror}",
                                   config.commitment_port) from None

    # -- thread ------------------------------------------------------------------------

    def start(self) -> None:
        """Start the sending thread; local-only mode (no PACS) has none."""
        if self.config.enabled and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="storage_scu",
                                            daemon=True)
            self._thread.start()

    def wake(self) -> None:
        """A new instance is final: look now instead of at the next poll."""
        self._wake.set()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the sending thread (waiting up to ``timeout_s``) and the Storage Commitment
        listener."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                worked = self.run_once()
            except Exception as exc:  # noqa: BLE001  (the thread must survive any peer)
                log.exception("storage round failed")
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                worked = False
            if not worked:
                self._wake.wait(0.5)
                self._wake.clear()

    # -- one round ---------------------------------------------------------------------

    def run_once(self) -> bool:
        """Send what is due, request commitment; True if anything was attempted."""
        if not self.config.enabled:
            return False
        applied = self._apply_reports()
        rows = self.spool.due(self.config.batch_size)
        waiting = [r for r in self.spool.rows(STORED) if not self._pending_for(
            r.sop_instance_uid)] if self.config.storage_commitment else []
        if not rows and not waiting:
            return applied
        files = self._readable_files(rows)
        assoc = self._associate(files.values())
        if assoc is not None and not assoc.is_established and assoc.rejected_contexts:
            rows = self._refuse_rejected_classes(assoc, rows, files)
        if assoc is None or not assoc.is_established:
            self._pacs_unreachable(rows)
            return bool(rows)
        if self.stats.pacs_reachable is not True:
            log.info("associated with PACS %s", self._peer())
        self.stats.pacs_reachable = True
        try:
            stored = self._store_rows(assoc, rows, files)
            if self.config.storage_commitment and assoc.is_established:
                self._request_commitment(assoc, stored + waiting)
        finally:
            if assoc.is_established:
                assoc.release()
        self._on_change()
        return True

    def _readable_files(self, rows: list[InstanceRow]) -> dict[str, StoredFile]:
        """The due rows' files by SOP Instance UID; an unreadable file fails for good."""
        files: dict[str, StoredFile] = {}
        for row in rows:
            try:
                files[row.sop_instance_uid] = stored_file(self.spool.absolute(row))
            except (OSError, ValueError, AttributeError) as exc:
                self.spool.mark_failed(row.sop_instance_uid, f"unreadable file: {exc}")
                self.stats.failed += 1
        return files

    def _refuse_rejected_classes(self, assoc: Association, rows: list[InstanceRow],
                                 files: dict[str, StoredFile]) -> list[InstanceRow]:
        """The PACS answered but accepted none of the proposed contexts: the classes it
        refused fail for good (PS3.8 9.3.3.2), the rest are tried again next round."""
        refused = {str(c.abstract_syntax) for c in assoc.rejected_contexts}
        for row in rows:
            file = files.get(row.sop_instance_uid)
            if file is not None and file.sop_class_uid in refused:
                self._refuse(row, file)
        return [r for r in rows if self._state_of(r) != FAILED]

    def _state_of(self, row: InstanceRow) -> str | None:
        """The row's delivery state now (None: no longer in the spool's index)."""
        current = self.spool.get(row.sop_instance_uid)
        return current.state if current is not None else None

    def _pacs_unreachable(self, rows: list[InstanceRow]) -> None:
        """Defer every row with backoff; warn once per outage, not once per retry."""
        self._defer_all(rows, "association failed: PACS unreachable or refused")
        if self.stats.pacs_reachable is not False:
            log.warning("PACS %s unreachable or refusing associations: %d instance(s) "
                        "wait, retrying with backoff", self._peer(), len(rows))
        self.stats.pacs_reachable = False

    def _store_rows(self, assoc: Association, rows: list[InstanceRow],
                    files: dict[str, StoredFile]) -> list[InstanceRow]:
        """C-STORE each readable row; a lost association defers the rest. The stored rows."""
        stored: list[InstanceRow] = []
        for row in rows:
            file = files.get(row.sop_instance_uid)
            if file is None:
                continue
            outcome = self._store(assoc, row, file)
            if outcome == "stored":
                stored.append(row)
            elif outcome == "lost":
                self._defer_all([r for r in rows if r not in stored and
                                 self._state_of(r) != STORED],
                                "association lost during C-STORE")
                break
        if stored:
            log.info("stored %d instance(s) in PACS %s (%d so far)", len(stored),
                     self._peer(), self.stats.stored)
        return stored

    def _peer(self) -> str:
        return peer_name(self.config.ae_title, self.config.host, self.config.port)

    def _associate(self, files: Iterable[StoredFile]) -> Association | None:
        ae = self._ae
        ae.requested_contexts = []
        pairs = sorted({(f.sop_class_uid, f.transfer_syntax_uid) for f in files})
        for sop_class, syntax in pairs[:127]:
            ae.add_requested_context(sop_class, syntax)
        if self.config.storage_commitment:
            ae.add_requested_context(StorageCommitmentPushModel)
        if not ae.requested_contexts:
            return None
        try:
            return ae.associate(self.config.host, self.config.port,
                                ae_title=self.config.ae_title,
                                evt_handlers=[(evt.EVT_N_EVENT_REPORT,
                                               self._on_event_report)])
        except (OSError, RuntimeError) as exc:
            self.stats.last_error = str(exc)
            return None

    def _store(self, assoc: Association, row: InstanceRow, file: StoredFile) -> str:
        accepted = {(str(c.abstract_syntax), str(c.transfer_syntax[0]))
                    for c in assoc.accepted_contexts}
        if (file.sop_class_uid, file.transfer_syntax_uid) not in accepted:
            self._refuse(row, file)
            return "failed"
        try:
            status = assoc.send_c_store(file.path)
        except (OSError, RuntimeError, ValueError) as exc:
            self.spool.defer(row.sop_instance_uid, f"C-STORE error: {exc}",
                             self._next_attempt(row))
            self.stats.retries += 1
            return "retry"
        if not status or "Status" not in status:
            return "lost"
        code = int(status.Status)
        if code == 0 or code in _WARNINGS:
            self.spool.mark_stored(row.sop_instance_uid)
            self.stats.stored += 1
            self.stats.bytes_sent += row.size
            return "stored"
        message = f"C-STORE status 0x{code:04X}"
        if 0xA700 <= code <= 0xA7FF:
            self.spool.defer(row.sop_instance_uid, message, self._next_attempt(row))
            self.stats.retries += 1
            return "retry"
        self.spool.mark_failed(row.sop_instance_uid, message)
        self.stats.failed += 1
        self.stats.last_error = message
        log.error("instance %s refused by the PACS: %s", row.sop_instance_uid, message)
        return "failed"

    def _refuse(self, row: InstanceRow, file: StoredFile) -> None:
        # The PACS refused this SOP Class / Transfer Syntax at negotiation: resending
        # cannot help (PS3.4 B.2.2: the SCP does not support it).
        message = (f"PACS does not accept SOP Class {file.sop_class_uid} in "
                   f"{file.transfer_syntax_uid}")
        self.spool.mark_failed(row.sop_instance_uid, message)
        self.stats.failed += 1
        self.stats.last_error = message
        log.error("instance %s refused by the PACS: %s", row.sop_instance_uid, message)

    def _next_attempt(self, row: InstanceRow) -> float:
        delay = min(self.config.max_backoff_s,
                    self.config.initial_backoff_s * 2 ** min(row.attempts, 30))
        return time.time() + delay

    def _defer_all(self, rows: list[InstanceRow], reason: str) -> None:
        for row in rows:
            self.spool.defer(row.sop_instance_uid, reason, self._next_attempt(row))
            self.stats.retries += 1
        self.stats.last_error = reason

    # -- storage commitment ------------------------------------------------------------

    def _request_commitment(self, assoc: Association, rows: list[InstanceRow]) -> None:
        if not rows:
            return
        request = Dataset()
        transaction = new_uid()
        request.TransactionUID = transaction
        refs = []
        for row in rows:
            item = Dataset()
            item.ReferencedSOPClassUID = row.sop_class_uid
            item.ReferencedSOPInstanceUID = row.sop_instance_uid
            refs.append(item)
        request.ReferencedSOPSequence = refs
        # Pending from now: whatever happens, these are asked again only after
        # commitment_timeout_s (a PACS refusing commitment is not hammered).
        self._pending[transaction] = (time.monotonic(), {r.sop_instance_uid for r in rows})
        try:
            status, _ = assoc.send_n_action(request, 1, StorageCommitmentPushModel,
                                            STORAGE_COMMITMENT_INSTANCE)
        except (OSError, RuntimeError, ValueError) as exc:
            self.stats.last_error = f"N-ACTION error: {exc}"
            return
        if not status or int(getattr(status, "Status", 0xFFFF)) != 0:
            code = int(getattr(status, "Status", 0xFFFF)) if status else 0xFFFF
            self.stats.last_error = f"Storage Commitment N-ACTION refused (0x{code:04X}); " \
                "set storage_commitment false if the PACS does not support it"
            log.warning("%s", self.stats.last_error)
            return
        # A PACS may answer on this association (wait briefly for it); one that opens its
        # own association (Orthanc) answers on the listener, applied at the next round.
        deadline = time.monotonic() + min(self.config.commitment_timeout_s / 2,
                                          SAME_ASSOCIATION_WAIT_S)
        with self._report_cv:
            while transaction not in self._reports and not self._stop.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._report_cv.wait(min(remaining, 0.1))
        self._apply_reports()

    def _pending_for(self, sop_uid: str) -> bool:
        """Whether a commitment request for this instance is still awaiting its report
        (requests older than ``commitment_timeout_s`` are forgotten and repeated)."""
        now = time.monotonic()
        for transaction, (sent, uids) in list(self._pending.items()):
            if now - sent > self.config.commitment_timeout_s:
                del self._pending[transaction]
                self.stats.last_error = "Storage Commitment report timed out; asking again"
            elif sop_uid in uids:
                return True
        return False

    def _apply_reports(self) -> bool:
        """Apply every N-EVENT-REPORT received so far; True if any."""
        with self._report_cv:
            reports, self._reports = self._reports, {}
        for transaction, report in reports.items():
            self._pending.pop(transaction, None)
            committed = report.get("ReferencedSOPSequence", [])
            for item in committed:
                self.spool.mark_committed(item.ReferencedSOPInstanceUID)
                self.stats.committed += 1
            if committed:
                log.info("PACS committed %d instance(s) (%d so far)", len(committed),
                         self.stats.committed)
            for item in report.get("FailedSOPSequence", []):
                reason = int(item.get("FailureReason", 0))
                log.warning("PACS did not commit %s (reason 0x%04X): sending it again",
                            item.ReferencedSOPInstanceUID, reason)
                self.spool.reset_to_final(item.ReferencedSOPInstanceUID,
                                          f"commitment failed, reason 0x{reason:04X}")
        if reports:
            self._on_change()
        return bool(reports)

    def _on_event_report(self, event: evt.Event) -> tuple[int, Dataset | None]:
        # Runs in pynetdicom's thread; the report is applied by the sender's thread.
        ds = event.event_information
        transaction = str(ds.get("TransactionUID", ""))
        with self._report_cv:
            self._reports[transaction] = ds
            self._report_cv.notify_all()
        self._wake.set()
        return 0x0000, None

