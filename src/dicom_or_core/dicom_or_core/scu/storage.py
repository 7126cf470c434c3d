"""Storage SCU fed by the spool: retry with exponential backoff, exactly-once delivery, by
DIMSE C-STORE (with Storage Commitment) or by STOW-RS.

:class:`StorageSender` runs in a background thread (or step by step with
:meth:`StorageSender.run_once` in tests). Each round it takes the ``final`` instances whose
next attempt is due from the spool index and hands them to its transport
(:mod:`dicom_or_core.scu.transport`): :class:`DimseTransport` sends them over one
association, :class:`~dicom_or_core.scu.stow.StowTransport` in bounded STOW-RS requests
(``protocol`` ``dimse`` or ``stowrs``). Whatever the transport, each instance then moves on
the same way, and the same counters count it:

* stored (C-STORE Success (0000) or a warning (B000, B006, B007); listed in a STOW-RS
  response's Referenced SOP Sequence) -> ``stored``.
* out of resources (A7xx), or the destination unreachable / refusing / timing out (no
  association; connection refused, HTTP 5xx, 401/403) -> attempt counted, next attempt after
  ``min(max_backoff_s, initial_backoff_s * 2**n)``; an outage is warned once, not per retry.
* any other failure (A9xx data set does not match the SOP class, Cxxx cannot understand,
  0122 SOP class not supported, or a presentation context the PACS rejected) -> ``failed``:
  resending cannot help; the file stays for an operator.

Storage Commitment Push Model (PS3.4 J), DIMSE only: after a batch is stored the sender
requests commitment (N-ACTION, Action Type 1, a Transaction UID and the Referenced SOP
Sequence). The N-EVENT-REPORT may come on the same association (waited for briefly) or on a
new association the PACS opens to this AE (``commitment_port``; the PACS must know this AE
as a modality, as Orthanc's ``DicomModalities``), and is applied by the sender's thread:
committed instances -> ``committed``; instances the PACS reports as failed go back to
``final`` and are sent again; a request without report after ``commitment_timeout_s`` is
repeated. Sending never waits for a report. STOW-RS has no commitment: an instance the
response confirms is ``stored``, and that is final (``PacsConfig.commitment`` is False).

Exactly-once delivery: an instance is sent until one store succeeds and never after (its
state is kept in SQLite across restarts). A store whose response is lost (PACS died
mid-association, mid-request) is sent again; the PACS then receives the same SOP Instance
UID twice, which a PACS treats as the same instance (Orthanc keeps one).

Memory: only each file's File Meta Information is read (SOP class, transfer syntax); the
C-STORE payload is streamed from the file in PDU-sized chunks (pynetdicom's chunked send),
the STOW-RS body from the files in 1 MiB chunks, so a backlog of any size, with instances of
gigabytes, costs the same memory as one chunk.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import StorageCommitmentPushModel, StorageCommitmentPushModelInstance

from dicom_or_core.archive.spool import STORED, InstanceRow, Spool
from dicom_or_core.model import vr
from dicom_or_core.model.errors import DicomOrError
from dicom_or_core.model.uid import new_uid
from dicom_or_core.scu.association import client_ae, peer_name
from dicom_or_core.scu.compat import send_stored_files_chunked
from dicom_or_core.scu.stow import StowConfig, StowTransport
from dicom_or_core.scu.transport import (
    RETRY,
    DeliverySink,
    PacsUnreachable,
    StoredFile,
    Transport,
    classify_status,
    stored_file,
)
from dicom_or_core.scu.transport import STORED as STORED_FATE

__all__ = ["DIMSE", "STOWRS", "DimseTransport", "PacsConfig", "SenderStats",
           "StorageSender", "StoredFile", "stored_file"]

log = logging.getLogger("dicom_or.storage_scu")
# The well-known SOP Instance of Storage Commitment Push Model (PS3.4 J.3).
STORAGE_COMMITMENT_INSTANCE = StorageCommitmentPushModelInstance
SAME_ASSOCIATION_WAIT_S = 2.0
DIMSE, STOWRS = "dimse", "stowrs"
PROTOCOLS = (DIMSE, STOWRS)


@dataclass
class PacsConfig:
    """Where and how to store. ``port`` 0 (DIMSE) or an empty ``stow_url`` (STOW-RS) means
    local-only mode (no PACS)."""

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
    protocol: str = DIMSE             # dimse: C-STORE; stowrs: STOW-RS (PS3.18 10.5)
    stow_url: str = ""                # STOW-RS: base URL of the DICOMweb service
    token: str = ""                   # STOW-RS: bearer token
    tls_ca_file: str = ""             # STOW-RS over https: CA bundle (empty: system CAs)
    tls_cert_file: str = ""           # ... client certificate (mutual TLS)
    tls_key_file: str = ""            # ... its key, if not in the certificate file
    max_request_bytes: int = 256 << 20  # STOW-RS: files per request

    @property
    def enabled(self) -> bool:
        """Whether a PACS is configured: port 0 (DIMSE) or no STOW-RS URL is local-only mode
        (archive, nothing sent)."""
        return bool(self.stow_url) if self.protocol == STOWRS else self.port > 0

    @property
    def commitment(self) -> bool:
        """Whether stored instances wait for Storage Commitment (DIMSE only)."""
        return self.storage_commitment and self.protocol == DIMSE

    def stow(self) -> StowConfig:
        """The STOW-RS transport's part of the configuration."""
        return StowConfig(url=self.stow_url, token=self.token, ca_file=self.tls_ca_file,
                          cert_file=self.tls_cert_file, key_file=self.tls_key_file,
                          connect_timeout_s=min(self.timeout_s, 5.0), timeout_s=self.timeout_s,
                          max_instances=self.batch_size,
                          max_request_bytes=self.max_request_bytes)

    def describe(self) -> str:
        """Where instances go, for the start-up log line."""
        if not self.enabled:
            return "local-only"
        if self.protocol == STOWRS:
            return f"PACS {self.stow_url} by STOW-RS"
        return f"PACS {self.ae_title}@{self.host}:{self.port}"

    def validate(self) -> PacsConfig:
        """Self, checked: protocol, AE titles (PS3.5 Table 6.2-1), ports, backoff, timeouts,
        batch size, the STOW-RS URL and TLS files; else DicomOrError naming the parameter."""
        if self.protocol not in PROTOCOLS:
            raise DicomOrError("pacs_protocol", f"must be one of {', '.join(PROTOCOLS)}",
                               self.protocol)
        if self.enabled and self.protocol == DIMSE:
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
            raise DicomOrError("pacs_batch_size", "must be >= 1", self.batch_size)
        if self.enabled and self.protocol == STOWRS:
            self.stow().validate()
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
        self.transport: Transport
        if config.protocol == STOWRS and config.enabled:
            self.transport = StowTransport(config.stow())
        else:
            self.transport = DimseTransport(config, spool, self.stats, self._changed,
                                            self._stop, self._wake)

    @property
    def _pending(self) -> dict[str, tuple[float, set[str]]]:
        """Storage Commitment requests awaiting their report (DIMSE), by Transaction UID."""
        commitment = getattr(self.transport, "commitment", None)
        return commitment.pending if commitment is not None else {}

    def _changed(self) -> None:
        self._on_change()

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
        """Stop the sending thread (waiting up to ``timeout_s``), the Storage Commitment
        listener and the transport's connections."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        self.transport.close()

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
        """Send what is due (and request commitment, DIMSE); True if anything was
        attempted."""
        if not self.config.enabled:
            return False
        applied = self.transport.poll()
        rows = self.spool.due(self.config.batch_size)
        waiting = self.transport.waiting()
        if not rows and not waiting:
            return applied
        files = self._readable_files(rows)
        outcome = _Round(self, [r for r in rows if r.sop_instance_uid in files])
        try:
            self.transport.deliver(outcome.rows, files, waiting, outcome)
        except PacsUnreachable as exc:
            self._pacs_unreachable(outcome.unanswered(), str(exc), exc.needs_operator)
            self._on_change()
            return bool(rows)
        outcome.finish()
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

    def _pacs_unreachable(self, rows: list[InstanceRow], reason: str,
                          needs_operator: bool = False) -> None:
        """Defer every row with backoff; warn once per outage, not once per retry (an error
        when it needs an operator: credentials, URL, certificates)."""
        self._defer_all(rows, reason)
        if self.stats.pacs_reachable is not False:
            log.log(logging.ERROR if needs_operator else logging.WARNING,
                    "PACS %s unreachable or refusing: %s; %d instance(s) wait, retrying "
                    "with backoff", self.transport.peer(), reason, len(rows))
        self.stats.pacs_reachable = False

    def _next_attempt(self, row: InstanceRow) -> float:
        delay = min(self.config.max_backoff_s,
                    self.config.initial_backoff_s * 2 ** min(row.attempts, 30))
        return time.time() + delay

    def _defer(self, row: InstanceRow, reason: str) -> None:
        self.spool.defer(row.sop_instance_uid, reason, self._next_attempt(row))
        self.stats.retries += 1
        self.stats.last_error = reason

    def _defer_all(self, rows: list[InstanceRow], reason: str) -> None:
        for row in rows:
            self._defer(row, reason)
        self.stats.last_error = reason


class _Round:
    """One round's instances and what became of them: the one place where a transport's
    report moves an instance's state and the counters (:class:`DeliverySink`)."""

    def __init__(self, sender: StorageSender, rows: list[InstanceRow]) -> None:
        self.sender = sender
        self.rows = rows
        self.answered: set[str] = set()
        self.stored_now = 0

    def reached(self) -> None:
        stats = self.sender.stats
        if stats.pacs_reachable is not True:
            log.info("PACS %s reached", self.sender.transport.peer())
        stats.pacs_reachable = True

    def stored(self, row: InstanceRow, note: str = "") -> None:
        sender = self.sender
        sender.spool.mark_stored(row.sop_instance_uid)
        sender.stats.stored += 1
        sender.stats.bytes_sent += row.size
        self.stored_now += 1
        self.answered.add(row.sop_instance_uid)
        if note:
            log.info("instance %s stored with %s", row.sop_instance_uid, note)

    def retry(self, row: InstanceRow, message: str) -> None:
        self.sender._defer(row, message)
        self.answered.add(row.sop_instance_uid)

    def failed(self, row: InstanceRow, message: str) -> None:
        sender = self.sender
        sender.spool.mark_failed(row.sop_instance_uid, message)
        sender.stats.failed += 1
        sender.stats.last_error = message
        self.answered.add(row.sop_instance_uid)
        log.error("instance %s refused by the PACS: %s", row.sop_instance_uid, message)

    def unanswered(self) -> list[InstanceRow]:
        return [r for r in self.rows if r.sop_instance_uid not in self.answered]

    def finish(self) -> None:
        """Rows the transport said nothing about wait for the next attempt."""
        for row in self.unanswered():
            self.retry(row, "not sent: the destination gave no answer for it")
        if self.stored_now:
            log.info("stored %d instance(s) in PACS %s (%d so far)", self.stored_now,
                     self.sender.transport.peer(), self.sender.stats.stored)


class DimseTransport:
    """C-STORE over one association per round, with Storage Commitment (PS3.4 B, J)."""

    def __init__(self, config: PacsConfig, spool: Spool, stats: SenderStats,
                 on_change: Callable[[], None], stop: threading.Event,
                 wake: threading.Event) -> None:
        self.config = config
        # Send each file as stored, in PDU-sized chunks, instead of decoding it whole into
        # memory (pynetdicom >= 2.0). Process-wide in pynetdicom: the recorder process is the
        # only one that sends C-STOREs, and it always proposes each file's own syntax.
        send_stored_files_chunked()
        self._ae = client_ae(config.calling_ae_title, config.timeout_s)
        self.commitment = _Commitment(config, spool, stats, on_change, stop, wake)

    def peer(self) -> str:
        """``AE@host:port``."""
        return peer_name(self.config.ae_title, self.config.host, self.config.port)

    def poll(self) -> bool:
        """Apply the commitment reports received since the last round."""
        return self.commitment.apply_reports()

    def waiting(self) -> list[InstanceRow]:
        """Stored instances whose commitment is to be requested (none awaiting a report)."""
        return self.commitment.waiting() if self.config.commitment else []

    def close(self) -> None:
        """Stop the Storage Commitment listener."""
        self.commitment.close()

    def deliver(self, rows: list[InstanceRow], files: dict[str, StoredFile],
                waiting: list[InstanceRow], sink: DeliverySink) -> None:
        """C-STORE each row over one association, then request commitment of what is
        stored; PacsUnreachable without an association."""
        if not rows and not waiting:
            return
        assoc = self._associate(files.values())
        if assoc is None:
            raise PacsUnreachable("association failed: PACS unreachable or refused")
        if not assoc.is_established:
            if assoc.rejected_contexts:
                # The PACS answered but accepted none of the proposed contexts: the classes
                # it refused fail for good (PS3.8 9.3.3.2), the rest wait.
                refused = {str(c.abstract_syntax) for c in assoc.rejected_contexts}
                for row in rows:
                    file = files[row.sop_instance_uid]
                    if file.sop_class_uid in refused:
                        sink.failed(row, _refused(file))
            raise PacsUnreachable("association failed: PACS unreachable or refused")
        sink.reached()
        try:
            stored = self._store_rows(assoc, rows, files, sink)
            if self.config.commitment and assoc.is_established:
                self.commitment.request(assoc, stored + waiting)
        finally:
            if assoc.is_established:
                assoc.release()

    def _store_rows(self, assoc: Association, rows: list[InstanceRow],
                    files: dict[str, StoredFile], sink: DeliverySink) -> list[InstanceRow]:
        """C-STORE each row; a lost association defers the rest. The stored rows."""
        accepted = {(str(c.abstract_syntax), str(c.transfer_syntax[0]))
                    for c in assoc.accepted_contexts}
        stored: list[InstanceRow] = []
        for i, row in enumerate(rows):
            file = files[row.sop_instance_uid]
            if (file.sop_class_uid, file.transfer_syntax_uid) not in accepted:
                sink.failed(row, _refused(file))
                continue
            try:
                status = assoc.send_c_store(file.path)
            except (OSError, RuntimeError, ValueError) as exc:
                sink.retry(row, f"C-STORE error: {exc}")
                continue
            if not status or "Status" not in status:
                for rest in rows[i:]:
                    sink.retry(rest, "association lost during C-STORE")
                break
            code = int(status.Status)
            fate = classify_status(code)
            if fate == STORED_FATE:
                sink.stored(row)
                stored.append(row)
            elif fate == RETRY:
                sink.retry(row, f"C-STORE status 0x{code:04X}")
            else:
                sink.failed(row, f"C-STORE status 0x{code:04X}")
        return stored

    def _associate(self, files: Iterable[StoredFile]) -> Association | None:
        ae = self._ae
        ae.requested_contexts = []
        pairs = sorted({(f.sop_class_uid, f.transfer_syntax_uid) for f in files})
        for sop_class, syntax in pairs[:127]:
            ae.add_requested_context(sop_class, syntax)
        if self.config.commitment:
            ae.add_requested_context(StorageCommitmentPushModel)
        if not ae.requested_contexts:
            return None
        try:
            return ae.associate(self.config.host, self.config.port,
                                ae_title=self.config.ae_title,
                                evt_handlers=[(evt.EVT_N_EVENT_REPORT,
                                               self.commitment.on_event_report)])
        except (OSError, RuntimeError):
            return None


def _refused(file: StoredFile) -> str:
    # The PACS refused this SOP Class / Transfer Syntax at negotiation: resending cannot
    # help (PS3.4 B.2.2: the SCP does not support it).
    return (f"PACS does not accept SOP Class {file.sop_class_uid} in "
            f"{file.transfer_syntax_uid}")


class _Commitment:
    """Storage Commitment Push Model bookkeeping (PS3.4 J): requests awaiting a report,
    reports received (on the association or on our listener), applied in the sender's
    thread."""

    def __init__(self, config: PacsConfig, spool: Spool, stats: SenderStats,
                 on_change: Callable[[], None], stop: threading.Event,
                 wake: threading.Event) -> None:
        self.config = config
        self.spool = spool
        self.stats = stats
        self._on_change = on_change
        self._stop = stop
        self._wake = wake
        self._reports: dict[str, Dataset] = {}
        self.pending: dict[str, tuple[float, set[str]]] = {}
        self._report_cv = threading.Condition()
        self._server = None
        if config.enabled and config.commitment and config.commitment_port:
            listener = AE(ae_title=config.calling_ae_title)
            listener.add_supported_context(StorageCommitmentPushModel, scu_role=True,
                                           scp_role=True)
            try:
                self._server = listener.start_server(
                    ("0.0.0.0", config.commitment_port), block=False,
                    evt_handlers=[(evt.EVT_N_EVENT_REPORT, self.on_event_report)])
            except OSError as exc:  # in use, or not ours to bind: a configuration error
                raise DicomOrError("commitment_port", f"cannot listen: {exc.strerror}",
                                   config.commitment_port) from None

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def waiting(self) -> list[InstanceRow]:
        return [r for r in self.spool.rows(STORED) if not self._pending_for(
            r.sop_instance_uid)]

    def request(self, assoc: Association, rows: list[InstanceRow]) -> None:
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
        self.pending[transaction] = (time.monotonic(), {r.sop_instance_uid for r in rows})
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
        self.apply_reports()

    def _pending_for(self, sop_uid: str) -> bool:
        """Whether a commitment request for this instance is still awaiting its report
        (requests older than ``commitment_timeout_s`` are forgotten and repeated)."""
        now = time.monotonic()
        for transaction, (sent, uids) in list(self.pending.items()):
            if now - sent > self.config.commitment_timeout_s:
                del self.pending[transaction]
                self.stats.last_error = "Storage Commitment report timed out; asking again"
            elif sop_uid in uids:
                return True
        return False

    def apply_reports(self) -> bool:
        """Apply every N-EVENT-REPORT received so far; True if any."""
        with self._report_cv:
            reports, self._reports = self._reports, {}
        for transaction, report in reports.items():
            self.pending.pop(transaction, None)
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

    def on_event_report(self, event: evt.Event) -> tuple[int, Dataset | None]:
        # Runs in pynetdicom's thread; the report is applied by the sender's thread.
        ds = event.event_information
        transaction = str(ds.get("TransactionUID", ""))
        with self._report_cv:
            self._reports[transaction] = ds
            self._report_cv.notify_all()
        self._wake.set()
        return 0x0000, None
