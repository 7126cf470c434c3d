"""The bridge's DICOM SCP, ROS-free: pynetdicom over a :class:`ModelStore` snapshot.

Services (PS3.4): Verification (C-ECHO); Patient Root and Study Root Query/Retrieve - FIND,
GET and MOVE at every level. Handlers run in pynetdicom's association threads and only read
the store's immutable snapshot, so they never touch the ROS executor.

Security and limits: a calling-AE-title allow-list (refusals are A-ASSOCIATE-RJ "calling
AE title not recognised", logged with the peer address), a cap on the size of an
identifier and on the number of C-FIND matches, ACSE / DIMSE / network timeouts, and
optional DICOM TLS (PS3.15 B.1 "Basic TLS Secure Transport Connection Profile") from
certificate / key / CA files. Everything about connections - the host allow-list, the
association and pending-connection limits, the A-ASSOCIATE-RQ timeout, the TLS handshake,
PDU and message size limits - is :mod:`dicom_or_bridge.server`'s.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    HEVCMP51,
    MPEG2MPHL,
    MPEG2MPML,
    MPEG4HP41,
    MPEG4HP422D,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MPEGTransferSyntaxes,
    SecondaryCaptureImageStorage,
)
from pynetdicom import (
    AE,
    ALL_TRANSFER_SYNTAXES,
    StoragePresentationContexts,
    build_context,
    evt,
)
from pynetdicom import sop_class as sc
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_MOVE
from pynetdicom.dsutils import split_dataset

from dicom_or_bridge.server import BridgeServer, ConnectionLimits, resolve_hosts
from dicom_or_core.model.errors import DicomOrError
from dicom_or_core.qr import query as q
from dicom_or_core.qr.model import ModelStore
from dicom_or_core.scu.compat import send_stored_files_chunked, set_raw_move_destination

log = logging.getLogger("dicom_or_bridge.scp")

FIND_ROOTS = {
    sc.PatientRootQueryRetrieveInformationModelFind: q.PATIENT_ROOT,
    sc.StudyRootQueryRetrieveInformationModelFind: q.STUDY_ROOT,
}
GET_ROOTS = {
    sc.PatientRootQueryRetrieveInformationModelGet: q.PATIENT_ROOT,
    sc.StudyRootQueryRetrieveInformationModelGet: q.STUDY_ROOT,
}
MOVE_ROOTS = {
    sc.PatientRootQueryRetrieveInformationModelMove: q.PATIENT_ROOT,
    sc.StudyRootQueryRetrieveInformationModelMove: q.STUDY_ROOT,
}
# SOP Class Extended Negotiation for C-FIND (PS3.4 C.5.1.1): byte 0 relational queries,
# byte 1 combined date-time matching; fuzzy PN (2) and timezone adjustment (3) are declined.
_EXT_RELATIONAL = 0
_EXT_COMBINED_DATETIME = 1

# A-ASSOCIATE-RJ: rejected-permanent, service-user, calling AE title not recognised: what
# pynetdicom sends for a calling AE title outside AE.require_calling_aet (PS3.8 9.3.4).
_REJECT_CALLING_AE = (0x01, 0x01, 0x03)


# C-CANCEL during a long C-FIND (PS3.7 9.3.2.3). pynetdicom's DUL reactor sends every
# queued PDU before it reads the socket again, and a generator of answers fills that queue
# far faster than TCP drains it: a C-CANCEL-RQ would sit unread until the last answer went
# out. Every this many answers the handler waits for the queue to drain, so the DUL reads
# what the peer sent: at most twice this many answers leave after the cancel. Each drain
# costs up to one DUL idle sleep (1 ms); every 16 answers made a 200-series C-FIND ~8%
# slower, every 64 keeps it within noise.
_CANCEL_POLL_EVERY = 64
_DRAIN_POLL_S = 0.0002


def _let_peer_speak(event: evt.Event, timeout_s: float) -> None:
    """Wait (at most ``timeout_s``) until the association's outgoing PDU queue is empty,
    then give the DUL a moment to read the peer's messages (a C-CANCEL-RQ)."""
    outgoing = getattr(getattr(event.assoc, "dul", None), "to_provider_queue", None)
    if outgoing is None:  # another pynetdicom layout: no flow control, cancel still works late
        return
    deadline = time.monotonic() + timeout_s
    while not outgoing.empty() and event.assoc.is_established \
            and time.monotonic() < deadline:
        time.sleep(_DRAIN_POLL_S)  # pynetdicom offers no event for "queue drained"
    time.sleep(_DRAIN_POLL_S)


# --- transfer syntaxes of the C-STORE sub-operations ------------------------------------
#
# A presentation context is accepted with ONE transfer syntax (PS3.8 9.3.3.2), and
# pynetdicom 3.0.4's acceptor takes the first of ITS OWN list that the requestor offers in
# that context (presentation.negotiate_as_acceptor walks the acceptor's transfer syntaxes,
# not the requestor's order; PS3.8 leaves the choice to the acceptor). So the order below
# decides what a C-GET requestor that offers several syntaxes in one context gets.
#
# The archive holds what the recorder writes: video instances in the MPEG transfer syntax
# its encoder chose (PS3.5 8.2.5-8.2.10; dicom_or_core.iod.codec), which cannot be
# transcoded; everything else (waveforms, SR, snapshots) in Explicit VR Little Endian.
# Preferring exactly those lets the instance go out byte for byte, straight from its file.

# The video syntaxes the recorder writes, most frequent first (H.264 Level 4.1 is 1080p30),
# then the other MPEG syntaxes (a video from elsewhere).
_RECORDED_VIDEO_SYNTAXES = (MPEG4HP41, MPEG4HP422D, HEVCMP51, MPEG2MPHL, MPEG2MPML)
_UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                 DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian)
VIDEO_STORAGE = frozenset({sc.VideoEndoscopicImageStorage, sc.VideoMicroscopicImageStorage,
                           sc.VideoPhotographicImageStorage})


def _ordered(*groups: tuple[str, ...] | list[str]) -> list[str]:
    """The transfer syntaxes of ``groups`` in order, each once."""
    return list(dict.fromkeys(uid for group in groups for uid in group))


def storage_transfer_syntaxes(sop_class_uid: str) -> list[str]:
    """The bridge's transfer syntax preference, as acceptor, for the C-STORE
    sub-operations of a C-GET of ``sop_class_uid`` (see the comment above): for the video
    SOP classes (PS3.3 A.32.5-A.32.7) the MPEG syntaxes first, for every other class
    Explicit VR Little Endian first (the archive's encoding: no conversion), then Implicit
    VR Little Endian (pynetdicom converts explicit <-> implicit), then the rest, so a
    requestor offering only a compressed syntax still gets an instance stored that way."""
    if sop_class_uid in VIDEO_STORAGE:
        return _ordered(_RECORDED_VIDEO_SYNTAXES, MPEGTransferSyntaxes, _UNCOMPRESSED,
                        ALL_TRANSFER_SYNTAXES)
    return _ordered(_UNCOMPRESSED, ALL_TRANSFER_SYNTAXES)


# --- C-STORE sub-operations straight from the archived file ------------------------------
#
# pynetdicom 3.0.4's C-GET and C-MOVE service classes take only Datasets from the handler
# (anything else is counted as a failed sub-operation) and encode each one whole in memory
# before the C-STORE-RQ leaves: a 300 MB video was read, then copied, before the first
# byte, and a large SR converted element by element. Association.send_c_store() itself can
# send a file path in chunks of the peer's maximum PDU size without decoding it
# (``send_stored_files_chunked``), given a presentation context with exactly the
# file's transfer syntax. The handlers therefore yield an ArchivedFile placeholder (UIDs
# and File Meta only), and the association that sends it gets a send_c_store() that
# passes the file's path when an exact context was accepted, and the fully read Dataset
# (pynetdicom converts explicit <-> implicit VR) only when it must.
#
# With chunked sending on, pynetdicom's send_c_store(<path>) never converts; the bridge
# process sends paths only through the wrapper below, which checks the context first.
send_stored_files_chunked()

# The DUL queue between send_c_store() and the socket is unbounded, and reading a file is
# faster than the network: without a bound, the whole file sat in the queue (~file size of
# RSS). At most this many P-DATA PDUs (max PDU size each, 16 KiB for dcmtk) wait there.
_MAX_QUEUED_PDUS = 64


class ArchivedFile(Dataset):
    """An archived instance as pynetdicom's C-GET / C-MOVE loop sees it: SOP Class UID,
    SOP Instance UID (for the Failed SOP Instance UID List, PS3.4 C.4.2.1.4.3) and the
    File Meta Information; the data set itself stays in ``path`` until it is sent."""

    def __init__(self, path: Path, file_meta: FileMetaDataset) -> None:
        super().__init__()
        self.file_meta = file_meta
        self.SOPClassUID = file_meta.MediaStorageSOPClassUID
        self.SOPInstanceUID = file_meta.MediaStorageSOPInstanceUID
        self.source_path = path

    @classmethod
    def open(cls, path: Path) -> ArchivedFile | None:
        """The placeholder of the file at ``path`` from its File Meta Information (PS3.10
        7.1) alone, or None when the file is gone or is no DICOM file."""
        try:
            meta, _ = split_dataset(path)
            for keyword in ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID",
                            "TransferSyntaxUID"):
                if not meta.get(keyword):
                    raise ValueError(f"no {keyword} in the File Meta Information")
        except Exception as exc:  # file vanished or broke since the scan
            log.warning("cannot read %s: %s", path, exc)
            return None
        return cls(path, FileMetaDataset(meta))

    @property
    def transfer_syntax(self) -> UID:
        """The file's Transfer Syntax UID, from its File Meta Information (PS3.10 7.1)."""
        return UID(self.file_meta.TransferSyntaxUID)

    def payload(self, assoc: Association) -> Path | Dataset:
        """What ``assoc`` should send: the path when a context with this SOP class, the
        file's own transfer syntax and the SCU role (the bridge sends the C-STORE-RQ) was
        accepted, else the whole data set for pynetdicom to convert."""
        exact = any(cx.abstract_syntax == self.SOPClassUID and cx.as_scu
                    and cx.transfer_syntax[0] == self.transfer_syntax
                    for cx in assoc.accepted_contexts)
        return self.source_path if exact else dcmread(self.source_path)


def send_from_files(assoc: Association) -> None:
    """Make ``assoc`` send ArchivedFile placeholders from their files (see above) and
    bound its outgoing PDU queue; idempotent. Call it from the thread that sends."""
    if getattr(assoc.send_c_store, "sends_from_files", False):
        return
    send_c_store = assoc.send_c_store

    def from_file(dataset: Dataset | Path | str, *args: object, **kwargs: object) -> Dataset:
        if isinstance(dataset, ArchivedFile):
            dataset = dataset.payload(assoc)
        return send_c_store(dataset, *args, **kwargs)

    from_file.sends_from_files = True  # type: ignore[attr-defined]
    # An instance attribute shadows the method for this association only: pynetdicom's
    # service classes call self.assoc.send_c_store(dataset, msg_id=...).
    assoc.send_c_store = from_file  # type: ignore[method-assign]
    dul = getattr(assoc, "dul", None)
    outgoing = getattr(dul, "to_provider_queue", None)
    if outgoing is None:  # another pynetdicom layout: unbounded, as before
        return
    send_pdu = dul.send_pdu

    def bounded(primitive: object) -> None:
        # Only the sending thread waits here; the DUL thread drains the queue. Once the
        # association is gone nothing drains it: stop waiting, the PDU is dropped with it.
        while outgoing.qsize() >= _MAX_QUEUED_PDUS and assoc.is_established \
                and dul.is_alive():
            time.sleep(_DRAIN_POLL_S)
        send_pdu(primitive)

    dul.send_pdu = bounded


def is_ae_title(text: str) -> bool:
    """Whether ``text`` is a usable AE title (PS3.5 6.2, VR AE): 1 to 16 characters of the
    default repertoire without backslash or control characters, not only spaces (leading
    and trailing spaces are insignificant)."""
    value = text.strip(" ")
    return 0 < len(value) <= 16 and all(" " <= c <= "~" and c != "\\" for c in value)


def parse_destination(text: str) -> tuple[str, str, int]:
    """A C-MOVE destination ``AE@host:port`` as (AE, host, port); the AE title must be a
    valid AE value (:func:`is_ae_title`), the port 1-65535."""
    ae_title, at, address = text.partition("@")
    host, colon, port = address.rpartition(":")
    if not at or not colon or not is_ae_title(ae_title) or not host or not port.isdigit() \
            or not 0 < int(port) < 65536:
        raise DicomOrError("move_destinations", "each entry must be AE@host:port", text)
    return ae_title.strip(), host, int(port)


# --- C-MOVE-RQ with an invalid Move Destination --------------------------------------
#
# pynetdicom 3.0.4 checks Move Destination (0000,0600) (VR AE) while its DIMSE layer turns
# the received C-MOVE-RQ into a primitive: an empty or non-printable value raised
# ValueError there, pynetdicom logged a traceback and aborted the association (Evt19),
# before any handler ran. The right answer is a C-MOVE-RSP "Move Destination unknown"
# (0xA801, PS3.4 C.4.2.1.5 / C.4.3.1.4). So the setter below keeps a value that fails the
# check as the text it is, and _on_move refuses it. Valid values are set as before; the
# requestor side (send_c_move) still checks its argument separately.
_STRICT_MOVE_DESTINATION: property = C_MOVE.MoveDestination


def _lenient_move_destination(primitive: C_MOVE, value: str | bytes | None) -> None:
    try:
        _STRICT_MOVE_DESTINATION.fset(primitive, value)
    except (TypeError, ValueError):
        text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
        set_raw_move_destination(primitive, text)  # refused by _on_move with 0xA801


if getattr(_STRICT_MOVE_DESTINATION.fset, "__name__", "") != "_lenient_move_destination":
    C_MOVE.MoveDestination = property(_STRICT_MOVE_DESTINATION.fget,
                                      _lenient_move_destination,
                                      doc=_STRICT_MOVE_DESTINATION.__doc__)


def _answer_move_with(event: evt.Event, status: Dataset) -> Iterator[object]:
    """Refuse a C-MOVE with ``status`` (and its Error Comment / Offending Element) before
    any sub-association.

    pynetdicom 3.0.4 wants the destination as the handler's first yield and opens the
    sub-association before it takes any status from the handler; the only final statuses
    it sends before that are its own (0xA801 for a ``(None, None)`` destination, 0xC51x on
    errors). A bad identifier (0xA900) must not depend on reaching the destination, nor
    open an association to it. So the handler yields ``(None, None)`` and rewrites the one
    C-MOVE-RSP pynetdicom then sends for this request into ``status``."""
    dimse = event.assoc.dimse
    send_msg = dimse.send_msg
    message_id = event.request.MessageID

    def rewrite(primitive: object, context_id: int) -> None:
        if isinstance(primitive, C_MOVE) and \
                primitive.MessageIDBeingRespondedTo == message_id:
            dimse.send_msg = send_msg  # only this one response
            primitive.Status = status.Status
            primitive.ErrorComment = status.get("ErrorComment")
            if "OffendingElement" in status:
                primitive.OffendingElement = status.OffendingElement
        send_msg(primitive, context_id)

    dimse.send_msg = rewrite
    try:
        yield None, None
    finally:
        dimse.send_msg = send_msg


@dataclass
class ScpConfig:
    """Everything the SCP needs; the node fills it from parameters."""

    ae_title: str = "DICOM_OR"
    host: str = "127.0.0.1"
    port: int = 0
    allowed_calling_ae_titles: list[str] = field(default_factory=list)  # empty: any
    allowed_hosts: list[str] = field(default_factory=list)  # names or IPs; empty: any
    max_associations: int = 64  # counted from the A-ASSOCIATE-RQ on
    max_pending_connections: int = 128  # accepted, A-ASSOCIATE-RQ not complete yet
    association_request_timeout_s: float = 5.0  # accept (+ TLS) to complete A-ASSOCIATE-RQ
    acse_timeout_s: float = 30.0
    dimse_timeout_s: float = 30.0
    network_timeout_s: float = 60.0
    max_pdu_size: int = 65536
    max_identifier_bytes: int = 65536
    max_message_bytes: int = 1 << 20  # one received DIMSE command / data set
    max_message_fragments: int = 1024  # P-DATA fragments (PDVs) of one of them
    max_matches: int = 10000
    move_destinations: dict[str, tuple[str, int]] = field(default_factory=dict)
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""  # when set, clients must present a certificate signed by it

    def validate(self) -> None:
        """DicomOrError naming the first field that breaks its rule (the limits of
        :mod:`dicom_or_bridge.server`; the node checks the others when it declares them)."""
        if not 1 <= self.max_associations <= 1000:
            raise DicomOrError("max_associations", "must be 1..1000", self.max_associations)
        if not 1 <= self.max_pending_connections <= 1000:
            raise DicomOrError("max_pending_connections", "must be 1..1000",
                               self.max_pending_connections)
        if not 0 < self.association_request_timeout_s <= 600:
            raise DicomOrError("association_request_timeout_s", "must be in (0, 600]",
                               self.association_request_timeout_s)
        if self.max_message_bytes < max(self.max_identifier_bytes, 4096):
            # Below it, an identifier the 0xC000 check would refuse politely is aborted.
            raise DicomOrError("max_message_bytes", "must be >= max_identifier_bytes and "
                               ">= 4096", self.max_message_bytes)
        if not 1 <= self.max_message_fragments <= 1 << 20:
            raise DicomOrError("max_message_fragments", "must be 1..1048576",
                               self.max_message_fragments)
        if any(not host.strip() for host in self.allowed_hosts):
            raise DicomOrError("allowed_hosts", "entries must not be empty")

    def limits(self) -> ConnectionLimits:
        """The connection limits of :mod:`dicom_or_bridge.server`; resolves
        ``allowed_hosts`` now (DicomOrError naming it when a name does not resolve)."""
        self.validate()
        return ConnectionLimits(
            allowed_addresses=resolve_hosts(self.allowed_hosts) if self.allowed_hosts
            else None,
            max_associations=self.max_associations,
            max_pending=self.max_pending_connections,
            request_timeout_s=self.association_request_timeout_s,
            network_timeout_s=self.network_timeout_s, max_pdu_size=self.max_pdu_size,
            max_message_bytes=self.max_message_bytes,
            max_message_fragments=self.max_message_fragments, tls=tls_context(self))


def tls_context(config: ScpConfig) -> ssl.SSLContext | None:
    """The server SSL context, or None without a certificate."""
    if not config.tls_cert and not config.tls_key:
        return None
    if not config.tls_cert or not config.tls_key:
        raise DicomOrError("tls_cert", "tls_cert and tls_key must be set together")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(config.tls_cert, config.tls_key)
        if config.tls_ca:
            context.load_verify_locations(config.tls_ca)
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise DicomOrError("tls_cert", f"cannot load certificate/key/CA: {exc}") from None
    return context


SnapshotProvider = Callable[[str], "Dataset | None"]


def next_instance_number(images: list[Dataset], series_uid: str) -> int:
    """One above the highest Instance Number among the IMAGE records of ``series_uid``
    (1 for a Series with none). A record without a usable number counts as 0."""
    highest = 0
    for image in images:
        if str(image.get("SeriesInstanceUID", "")) != series_uid:
            continue
        try:
            highest = max(highest, int(image.get("InstanceNumber") or 0))
        except (TypeError, ValueError):  # a malformed IS in some archived header
            continue
    return highest + 1


class BridgeScp:
    """A pynetdicom server answering from ``store``. ``start()`` returns the bound port.

    ``snapshot`` (optional) maps a live video SeriesInstanceUID to a DICOM image of its
    current frame, or None; a SERIES-level C-GET or C-MOVE of a live video Series then
    delivers that snapshot in addition to the Series' archived instances.
    """

    def __init__(self, store: ModelStore, config: ScpConfig,
                 logger: logging.Logger | None = None,
                 snapshot: SnapshotProvider | None = None) -> None:
        self.store = store
        self.config = config
        self.log = logger or log
        self.snapshot = snapshot
        self._server = None
        self.port = 0
        self.rejected = 0
        self._lock = threading.Lock()

    # --- life cycle ------------------------------------------------------------------

    def _make_ae(self) -> AE:
        cfg = self.config
        ae = AE(ae_title=cfg.ae_title)
        # BridgeServer enforces max_associations exactly, counting an association until it
        # is released or aborted. pynetdicom's own check counts association *threads* still
        # closing their transport, so a requestor that released and associated again at
        # once was rejected by it; it must never be the one that decides.
        ae.maximum_associations = cfg.max_associations + cfg.max_pending_connections + 64
        ae.acse_timeout = cfg.acse_timeout_s
        ae.dimse_timeout = cfg.dimse_timeout_s
        ae.network_timeout = cfg.network_timeout_s
        ae.maximum_pdu_size = cfg.max_pdu_size
        # The calling AE title allow-list is pynetdicom's (empty: any): it compares the
        # stripped titles and answers A-ASSOCIATE-RJ calling-AE-title-not-recognised before
        # any presentation context is negotiated; _on_rejected logs and counts it.
        try:
            ae.require_calling_aet = list(cfg.allowed_calling_ae_titles)
        except ValueError as exc:
            raise DicomOrError("allowed_calling_ae_titles", "entries must be AE titles "
                               "(1-16 characters, not only spaces, no backslash)",
                               cfg.allowed_calling_ae_titles) from exc
        ae.add_supported_context(sc.Verification)
        for uid in (*FIND_ROOTS, *MOVE_ROOTS, *GET_ROOTS):
            ae.add_supported_context(uid)
        # C-GET sends the instances back over the same association: accept the storage
        # classes with the SCP role the requestor proposes through role selection, each
        # with the transfer syntax order that lets the archived file go out as stored.
        for context in StoragePresentationContexts[:128 - len(ae.supported_contexts)]:
            uid = context.abstract_syntax
            ae.add_supported_context(uid, storage_transfer_syntaxes(uid),
                                     scu_role=True, scp_role=True)
        return ae

    def start(self) -> int:
        """Listen on the configured host and port behind :class:`BridgeServer` (server.py) and
        return the bound port: the kernel's choice when the configured port is 0."""
        ae = self._make_ae()
        handlers = [
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_FIND, self._on_find),
            (evt.EVT_C_GET, self._on_get),
            (evt.EVT_C_MOVE, self._on_move),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_SOP_EXTENDED, self._on_sop_extended),
            (evt.EVT_ABORTED, self._on_aborted),
        ]
        # The connection front end (host allow-list, limits, TLS, timeouts): server.py.
        self._server = ae.make_server((self.config.host, self.config.port),
                                      evt_handlers=handlers, server_class=BridgeServer,
                                      limits=self.config.limits(), logger=self.log)
        self._server.serve_in_thread()
        self.port = self._server.server_address[1]
        return self.port

    def connection_counts(self) -> dict[str, int]:
        """Associations and connections now, and the front end's counters of refusals and
        aborts (for the node's diagnostics); empty before start and after stop."""
        server = self._server
        if server is None:
            return {}
        return {"associations": server.associations.in_use,
                "associations_peak": server.associations.peak,
                "pending_connections": server.pending.in_use,
                "rejected_calling_ae": self.rejected, **dict(server.stats)}

    def stop(self) -> None:
        """Stop accepting, abort the associations, close the pending connections."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    # --- association ---------------------------------------------------------------

    def _on_rejected(self, event: evt.Event) -> None:
        """Log and count the associations pynetdicom rejected: a calling AE title outside
        ``allowed_calling_ae_titles`` (``AE.require_calling_aet``; PS3.8 9.3.4
        rejected-permanent, service-user, calling-AE-title-not-recognized) counts in
        :attr:`rejected`. Hosts outside ``allowed_hosts`` never get this far: server.py
        closes them at accept."""
        assoc = event.assoc
        answer = assoc.acceptor.primitive
        reason = (answer.result, answer.result_source, answer.diagnostic)
        calling, host = assoc.requestor.ae_title, assoc.requestor.address
        if reason == _REJECT_CALLING_AE:
            with self._lock:
                self.rejected += 1
            self.log.warning("rejected association from %s@%s: calling AE title not in the "
                             "allow-list", calling, host)
        else:
            self.log.warning("rejected association from %s@%s (result, source, reason %s)",
                             calling, host, reason)

    def _on_sop_extended(self, event: evt.Event) -> dict:
        """Accept relational queries and combined date-time matching when asked."""
        replies = {}
        for uid, info in event.app_info.items():
            if uid not in FIND_ROOTS:
                continue
            wanted = bytes(info or b"")
            reply = bytearray(len(wanted))
            for byte in (_EXT_RELATIONAL, _EXT_COMBINED_DATETIME):
                if byte < len(wanted):
                    reply[byte] = 1 if wanted[byte] == 1 else 0
            replies[uid] = bytes(reply)
        return replies

    def _on_aborted(self, event: evt.Event) -> None:
        self.log.info("association with %s aborted", event.assoc.requestor.address)

    @staticmethod
    def _extended(event: evt.Event, uid: str) -> tuple[bool, bool]:
        info = event.assoc.acceptor.sop_class_extended.get(uid, b"") or b""
        relational = len(info) > _EXT_RELATIONAL and info[_EXT_RELATIONAL] == 1
        combined = len(info) > _EXT_COMBINED_DATETIME and info[_EXT_COMBINED_DATETIME] == 1
        return relational, combined

    # --- services ------------------------------------------------------------------

    def _on_echo(self, event: evt.Event) -> int:
        """C-ECHO (PS3.7 9.1.5): always Success; it carries no data to refuse."""
        return q.SUCCESS

    def _parse(self, event: evt.Event, roots: dict[str, str],
               open_upper_levels: bool = False) -> tuple[q.Query, bool]:
        """Decode and validate the request identifier or raise QueryError
        (``open_upper_levels``: see :func:`dicom_or_core.qr.query.parse_identifier`)."""
        uid = event.request.AffectedSOPClassUID
        raw = event.request.Identifier
        size = len(raw.getvalue()) if raw is not None else 0
        if size > self.config.max_identifier_bytes:
            raise q.QueryError(q.FAILURE_UNABLE_TO_PROCESS,
                               f"identifier of {size} bytes exceeds the limit of "
                               f"{self.config.max_identifier_bytes}")
        try:
            identifier = event.identifier
        except Exception as exc:  # undecodable bytes: a failure status, not a traceback
            raise q.QueryError(q.FAILURE_UNABLE_TO_PROCESS,
                               f"identifier cannot be decoded: {type(exc).__name__}") from None
        relational, combined = self._extended(event, uid)
        return q.parse_identifier(identifier, roots[uid], relational=relational,
                                  combined_datetime=combined,
                                  open_upper_levels=open_upper_levels), combined

    def _on_find(self, event: evt.Event) -> Iterator[tuple[object, Dataset | None]]:
        try:
            # A C-FIND may leave the upper levels open (Study Root SERIES without
            # StudyInstanceUID); retrieval below keeps the strict hierarchy.
            query, combined = self._parse(event, FIND_ROOTS, open_upper_levels=True)
            model = self.store.snapshot()
            # Only the records that can hold the query's unique key (a superset of the
            # matches): an IMAGE query for one instance does not walk the whole archive.
            answers = q.find(model.records(query.level, query), query,
                             combined_datetime=combined)
            count = 0
            for answer in answers:
                if count and count % _CANCEL_POLL_EVERY == 0:
                    _let_peer_speak(event, self.config.dimse_timeout_s)
                if event.is_cancelled:
                    yield q.CANCEL, None
                    return
                count += 1
                if count > self.config.max_matches:
                    yield q.QueryError(q.FAILURE_OUT_OF_RESOURCES,
                                       f"more than {self.config.max_matches} matches; "
                                       "narrow the query").status_dataset(), None
                    return
                yield q.PENDING, answer
        except q.QueryError as exc:
            self.log.info("C-FIND refused (0x%04X): %s", exc.status, exc.comment)
            yield exc.status_dataset(), None
            return
        except Exception as exc:  # a bug must not kill the association thread silently
            self.log.exception("C-FIND failed")
            yield q.QueryError(q.FAILURE_UNABLE_TO_PROCESS,
                               f"internal error: {type(exc).__name__}").status_dataset(), None
            return
        yield q.SUCCESS, None

    def _matches(self, event: evt.Event, roots: dict[str, str],
                 live_video: list[str] | None = None) -> list[Path]:
        """Archived files under the matched entities; SeriesInstanceUIDs of matched live
        video Series are appended to ``live_video`` when given."""
        query, _ = self._parse(event, roots)
        model = self.store.snapshot()
        paths = []
        # records(level, query): only the records holding the query's unique key (a
        # superset of the matches); matching_records still checks every key.
        for record in q.matching_records(model.records(query.level, query), query):
            if live_video is not None and query.level == "SERIES" and record.get("Rows") \
                    and str(record.get("RetrieveURL") or "").startswith("ros2:"):
                live_video.append(str(record.SeriesInstanceUID))
            if query.level == "IMAGE":
                path = model.paths.get(str(record.SOPInstanceUID))
                if path is not None:
                    paths.append(path)
            else:
                # Every archived image below the matched entity.
                keyword = q.UNIQUE_KEYS[query.level]
                value = str(record[keyword].value)
                paths.extend(model.paths[str(img.SOPInstanceUID)] for img in model.images
                             if str(img.get(keyword, "")) == value)
        return paths

    def _on_get(self, event: evt.Event) -> Iterator[object]:
        live: list[str] = []
        try:
            paths = self._matches(event, GET_ROOTS, live if self.snapshot else None)
        except q.QueryError as exc:
            self.log.info("C-GET refused (0x%04X): %s", exc.status, exc.comment)
            # pynetdicom wants the sub-operation count first; the failure status follows.
            yield 1
            yield exc.status_dataset(), None
            return
        except Exception as exc:  # a bug must not end in pynetdicom's 0xC511 and traceback
            self.log.exception("C-GET failed")
            yield 1
            yield q.QueryError(q.FAILURE_UNABLE_TO_PROCESS,
                               f"internal error: {type(exc).__name__}").status_dataset(), None
            return
        # The instances go back over this association, from their files.
        send_from_files(event.assoc)
        # Files, then the live snapshots, taken only when their turn comes.
        loaders: list[Callable[[], Dataset | None]] = [
            partial(ArchivedFile.open, path) for path in paths]
        loaders += [partial(self._take_snapshot, uid) for uid in live]
        yield from self._deliver(event, loaders)

    def _on_move(self, event: evt.Event) -> Iterator[object]:
        """C-MOVE (PS3.4 C.4.2.2): the Move Destination must be one of
        ``move_destinations`` (else 0xA801 Move Destination unknown, also for an empty or
        non-printable one), then the identifier must be valid (else 0xA900 / 0xC000 as for
        C-FIND, answered without contacting the destination); then the sub-association."""
        destination = str(event.move_destination or "").strip(" ")
        address = self.config.move_destinations.get(destination) \
            if is_ae_title(destination) else None
        if address is None:
            self.log.warning("C-MOVE refused (0x%04X): unknown destination %r",
                             q.FAILURE_MOVE_DESTINATION_UNKNOWN, destination[:32])
            yield None, None  # pynetdicom answers 0xA801 Move Destination Unknown
            return
        live: list[str] = []
        try:
            paths = self._matches(event, MOVE_ROOTS, live if self.snapshot else None)
        except q.QueryError as exc:
            self.log.info("C-MOVE refused (0x%04X): %s", exc.status, exc.comment)
            yield from _answer_move_with(event, exc.status_dataset())
            return
        except Exception as exc:  # a bug must not end in pynetdicom's 0xC51x and traceback
            self.log.exception("C-MOVE failed")
            yield from _answer_move_with(event, q.QueryError(
                q.FAILURE_UNABLE_TO_PROCESS,
                f"internal error: {type(exc).__name__}").status_dataset())
            return
        # Snapshots are taken before the sub-association is requested: their SOP class
        # and transfer syntax must be among the proposed presentation contexts.
        snapshots = [self._take_snapshot(uid) for uid in live]
        # The File Meta of every file (not the data sets): propose exactly the
        # (SOP class, transfer syntax) pairs the instances need, so each goes as stored.
        files = [ArchivedFile.open(path) for path in paths]
        contexts = {}
        for ds in [*files, *snapshots]:
            if ds is not None:
                contexts.setdefault((str(ds.file_meta.MediaStorageSOPClassUID),
                                     str(ds.file_meta.TransferSyntaxUID)), None)
        if not contexts:
            # Nothing readable, nothing captured: pynetdicom opens the sub-association
            # before the final status can be given, and needs some context to propose.
            contexts[(SecondaryCaptureImageStorage, ExplicitVRLittleEndian)] = None
        # pynetdicom opens the sub-association itself; its EVT_ACCEPTED handler (run
        # before associate() returns) hands it over so that it can send from the files.
        sub_association: list[Association] = []
        kwargs = {"contexts": [build_context(sop, [ts]) for sop, ts in contexts][:128],
                  "evt_handlers": [(evt.EVT_ACCEPTED,
                                    lambda sub: sub_association.append(sub.assoc))]}
        yield address[0], address[1], kwargs
        loaders = [lambda ds=ds: ds for ds in [*files, *snapshots]]
        yield from self._deliver(event, loaders, sub_association)

    def _deliver(self, event: evt.Event, loaders: list[Callable[[], Dataset | None]],
                 sub_association: list[Association] | None = None) -> Iterator[object]:
        """The C-GET / C-MOVE sub-operations after the destination: their number, then one
        Pending per instance. An instance that cannot be produced (file gone since the scan,
        no current frame) is skipped, not ended on: pynetdicom counts the ones never sent
        as failed sub-operations in the final response, which is Warning 0xB000 (PS3.4
        C.4.2.1.5, C.4.3.1.4), or Failure 0xC000 when none could be produced.

        Archived files are yielded as :class:`ArchivedFile` placeholders, sent from their
        files by the association :func:`send_from_files` prepared: for C-MOVE
        ``sub_association`` holds it once pynetdicom has opened it (it resumes this
        generator only after that); without it a placeholder is read whole instead."""
        yield len(loaders)
        missing = 0
        for load in loaders:
            if event.is_cancelled:
                yield q.CANCEL, None
                return
            ds = load()
            if isinstance(ds, ArchivedFile) and sub_association is not None:
                if sub_association:
                    send_from_files(sub_association[0])
                else:  # never expected: a placeholder must not reach pynetdicom as is
                    ds = self._read_whole(ds.source_path)
            if ds is None:
                missing += 1
            else:
                yield q.PENDING, ds
        if missing:
            status = q.WARNING_SUBOPS_FAILED if missing < len(loaders) \
                else q.FAILURE_UNABLE_TO_PROCESS
            yield q.QueryError(status, f"{missing} of {len(loaders)} instances could not "
                               "be read or captured").status_dataset(), None

    def _take_snapshot(self, series_uid: str) -> Dataset | None:
        """The current frame of a live video Series as a DICOM image, or None (logged).

        It is a new instance of the Series, so its Instance Number (0020,0013), which
        identifies the image within the Series (PS3.3 C.7.6.1.1), is one above the highest
        archived one there: it never repeats a recorded instance's number."""
        try:
            image = self.snapshot(series_uid) if self.snapshot else None
        except Exception:  # a broken frame must not end the association
            self.log.exception("snapshot of %s failed", series_uid)
            return None
        if image is None:
            self.log.warning("no current frame of live series %s to snapshot", series_uid)
            return None
        image.InstanceNumber = next_instance_number(self.store.snapshot().images, series_uid)
        return image

    @staticmethod
    def _read_whole(path: Path) -> Dataset | None:
        try:
            return dcmread(path)
        except Exception as exc:  # file vanished or broke since the scan
            log.warning("cannot read %s: %s", path, exc)
            return None
