"""Connection-level defences of the bridge's DICOM SCP, ROS-free: a pynetdicom association
server that refuses, times out and bounds before pynetdicom's own machinery runs.

pynetdicom 3.0.4's ThreadedAssociationServer does the TLS handshake inside its accept loop
without a timeout, hands every accepted TCP connection a full association (two threads)
that counts against ``maximum_associations`` before it has said a word, checks nothing
about the peer before an A-ASSOCIATE-RQ arrives, and reads every PDU whole, whatever length
its header announces. :class:`BridgeServer` replaces that front end. The rules, in the
order a connection meets them:

1. **Host allow-list at accept.** A peer whose address is not among the addresses the
   ``allowed_hosts`` entries resolved to at start (:func:`resolve_hosts`) is closed right
   after ``accept()``: no byte of it is read, nothing is sent (there is no A-ASSOCIATE-RQ
   yet to reject, PS3.8 9.2 state Sta2).
2. **Pending connections are bounded.** A connection is *pending* from accept until its
   A-ASSOCIATE-RQ is complete; at most ``max_pending`` are. One more is answered at once
   with A-ASSOCIATE-RJ rejected-transient, service-provider (presentation related),
   local-limit-exceeded (PS3.8 9.3.4, Table 9-21) and closed; with TLS, where nothing can
   be said before a handshake, it is only closed. Pending connections never count against
   ``max_associations``.
3. **TLS handshake in the connection's own thread** (PS3.15 B.1), within the time of rule
   4: an idle or slow TLS client costs its own thread only, never the accept loop.
4. **A complete A-ASSOCIATE-RQ within ``request_timeout_s`` of accept** (handshake
   included), read by the connection's thread itself: this is the ARTIM timer of PS3.8
   9.1.5 (state Sta2, event Evt18: action AA-2, close the transport connection). A first
   PDU that is not an A-ASSOCIATE-RQ gets an A-ABORT (service-provider, unexpected-PDU or
   unrecognized-PDU, PS3.8 9.3.8 Table 9-26: Sta2 + Evt3/4/10/12/13/16/19 is AA-1) and the
   connection is closed; so is an A-ASSOCIATE-RQ announcing more than
   :data:`MAX_ASSOCIATE_RQ_BYTES` (invalid-PDU-parameter-value).
5. **Associations are counted from the A-ASSOCIATE-RQ on.** With the request read, the
   connection takes one of ``max_associations`` slots or is answered A-ASSOCIATE-RJ
   rejected-transient local-limit-exceeded, at once and without any pynetdicom object.
   The slot is held until the association's thread has ended, so the limit is exact.
6. **Limits while receiving** (:class:`PduGuard`, on every byte pynetdicom's DUL reads):
   a P-DATA-TF PDU longer than the Maximum Length the bridge advertised (PS3.8 D.1,
   ``max_pdu_size``) or any other PDU longer than :data:`MAX_ASSOCIATE_RQ_BYTES` is
   refused from its 6-byte header, before its body is read: A-ABORT (service-provider,
   invalid-PDU-parameter-value). A DIMSE command or data set (PS3.7 6.3.1, PS3.8 9.3.5.1:
   the P-DATA fragments up to the one with the "last" bit) of more than
   ``max_message_bytes`` bytes or ``max_message_fragments`` fragments is refused as the
   fragment that crosses the limit arrives: A-ABORT (service-user). Either way the
   refusal is logged with the peer, and at most one PDU beyond the limit was buffered.
7. Established connections get ``network_timeout_s`` as socket timeout: a peer that stops
   in the middle of a PDU, or stops reading what the bridge sends, is dropped after it
   (pynetdicom's own idle timer only runs between PDUs).

Everything that relies on pynetdicom internals is in :func:`adopt_connection`, which checks
the pynetdicom version first; the private attribute it needs goes through
:mod:`dicom_or_core.scu.compat`, pynetdicom's one compatibility shim.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import socketserver
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from dicom_or_core.model.errors import DicomOrError
from dicom_or_core.scu.compat import check_pynetdicom, create_acceptor_association

log = logging.getLogger("dicom_or_bridge.server")

# PS3.8 9.3.1: PDU types.
_A_ASSOCIATE_RQ, _P_DATA_TF = 0x01, 0x04
_KNOWN_PDU_TYPES = frozenset(range(0x01, 0x08))
# Largest A-ASSOCIATE-RQ (or any PDU but P-DATA-TF) read: 128 presentation contexts of 40
# transfer syntaxes each, with role selection items, are ~150 KB.
MAX_ASSOCIATE_RQ_BYTES = 1 << 20

# A-ABORT source / reason (PS3.8 9.3.8, Table 9-26).
ABORT_SERVICE_USER = 0x00
ABORT_SERVICE_PROVIDER = 0x02
REASON_NOT_SPECIFIED = 0x00
REASON_UNRECOGNIZED_PDU = 0x01
REASON_UNEXPECTED_PDU = 0x02
REASON_INVALID_PARAMETER = 0x06
# A-ASSOCIATE-RJ rejected-transient (2), service-provider presentation related (3),
# local-limit-exceeded (2) (PS3.8 9.3.4, Table 9-21).
REJECT_LOCAL_LIMIT = (0x02, 0x03, 0x02)


def a_abort(source: int, reason: int) -> bytes:
    """An encoded A-ABORT PDU (PS3.8 9.3.8)."""
    return struct.pack(">BBLBBBB", 0x07, 0, 4, 0, 0, source, reason)


def a_associate_rj(result: int, source: int, reason: int) -> bytes:
    """An encoded A-ASSOCIATE-RJ PDU (PS3.8 9.3.4)."""
    return struct.pack(">BBLBBBB", 0x03, 0, 4, 0, result, source, reason)


# --- host allow-list ---------------------------------------------------------------------


def normalise_address(address: str) -> str:
    """``address`` in canonical text form; an IPv4-mapped IPv6 address (``::ffff:a.b.c.d``,
    what a dual-stack socket reports for an IPv4 peer) as the IPv4 address."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


def resolve_hosts(names: Iterable[str], parameter: str = "allowed_hosts") -> frozenset[str]:
    """Every address each of ``names`` (IP literals or host names) resolves to now.

    Peers are compared by address, so ``localhost`` admits 127.0.0.1 and ::1. Resolution
    happens once, at start: a name that does not resolve is a configuration error
    (DicomOrError naming ``parameter``), not a silent refusal of every peer."""
    addresses: set[str] = set()
    for name in names:
        name = name.strip()
        try:
            addresses.add(normalise_address(name))
            continue
        except ValueError:
            pass  # not an IP literal: a host name
        try:
            infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise DicomOrError(parameter, f"host name does not resolve ({reason})",
                               name) from None
        addresses.update(normalise_address(str(info[4][0])) for info in infos)
    return frozenset(addresses)


# --- limits while receiving ----------------------------------------------------------------


class LimitExceeded(Exception):
    """A received PDU broke a limit; the association is aborted with ``source`` and
    ``reason`` (PS3.8 9.3.8)."""

    def __init__(self, text: str, source: int, reason: int) -> None:
        super().__init__(text)
        self.source = source
        self.reason = reason
        self.received = 0


class PduGuard:
    """Follows the byte stream received on one association, PDU by PDU, and raises
    :class:`LimitExceeded` as soon as a PDU header or a P-DATA fragment breaks a limit
    (rule 6 of the module docstring). It parses only framing: PDU type and length (PS3.8
    9.3.1), and in P-DATA-TF PDUs each PDV item's length and message control header
    (PS3.8 9.3.5.1, E.2: bit 0 command, bit 1 last fragment). It works on any split of
    the stream into chunks, so it needs nothing of how the DUL calls recv()."""

    def __init__(self, max_pdata_length: int, max_message_bytes: int,
                 max_fragments: int) -> None:
        self.max_pdata_length = max_pdata_length  # 0: unlimited (pynetdicom's meaning)
        self.max_message_bytes = max_message_bytes
        self.max_fragments = max_fragments
        self.received = 0
        self._head = bytearray()       # the PDU header being read
        self._body_left = 0
        self._pdata = False
        self._lost = False             # an unknown PDU type: pynetdicom aborts, stop following
        self._item_head = bytearray()  # the PDV item header being read
        self._item_left = 0
        self._fragments = [0, 0]       # per data set (0) / command (1) being received
        self._bytes = [0, 0]

    def feed(self, data: bytes | bytearray) -> None:
        """Follow ``data``, the next bytes received; LimitExceeded (its ``received``: the
        bytes received on the association so far) when a limit is broken."""
        self.received += len(data)
        try:
            self._feed(data)
        except LimitExceeded as exc:
            exc.received = self.received
            raise

    def _feed(self, data: bytes | bytearray) -> None:
        view = memoryview(data)
        i, n = 0, len(view)
        while i < n and not self._lost:
            if self._body_left == 0:
                take = min(6 - len(self._head), n - i)
                self._head += view[i:i + take]
                i += take
                if len(self._head) == 6:
                    pdu_type, _, length = struct.unpack(">BBL", self._head)
                    self._head.clear()
                    self._start_pdu(pdu_type, length)
                continue
            take = min(self._body_left, n - i)
            if self._pdata:
                self._pdv_bytes(view[i:i + take])
            self._body_left -= take
            i += take

    def _start_pdu(self, pdu_type: int, length: int) -> None:
        if pdu_type not in _KNOWN_PDU_TYPES:
            self._lost = True
            return
        if pdu_type == _P_DATA_TF:
            # PS3.8 D.1: the Maximum Length the bridge sent in its A-ASSOCIATE-AC bounds
            # the variable field of every P-DATA-TF PDU it receives. Unlimited (0) still
            # cannot exceed what one message may hold.
            limit = self.max_pdata_length or 2 * self.max_message_bytes + 64
            if length > limit:
                raise LimitExceeded(f"P-DATA-TF PDU of {length} bytes exceeds the maximum "
                                    f"length {limit} (max_pdu_size)",
                                    ABORT_SERVICE_PROVIDER, REASON_INVALID_PARAMETER)
            self._item_head.clear()
            self._item_left = 0
        elif length > MAX_ASSOCIATE_RQ_BYTES:
            raise LimitExceeded(f"PDU of type 0x{pdu_type:02X} and {length} bytes exceeds "
                                f"{MAX_ASSOCIATE_RQ_BYTES} bytes",
                                ABORT_SERVICE_PROVIDER, REASON_INVALID_PARAMETER)
        self._pdata = pdu_type == _P_DATA_TF
        self._body_left = length

    def _pdv_bytes(self, chunk: memoryview) -> None:
        j, n = 0, len(chunk)
        while j < n:
            if self._item_left == 0:
                take = min(6 - len(self._item_head), n - j)
                self._item_head += chunk[j:j + take]
                j += take
                if len(self._item_head) == 6:
                    length, _context_id, control = struct.unpack(">LBB", self._item_head)
                    self._item_head.clear()
                    if length < 2:  # the length counts the context ID and control header
                        raise LimitExceeded(f"PDV item length {length} < 2",
                                            ABORT_SERVICE_PROVIDER, REASON_INVALID_PARAMETER)
                    self._fragment(length - 2, control)
                    self._item_left = length - 2
                continue
            take = min(self._item_left, n - j)
            self._item_left -= take
            j += take

    def _fragment(self, size: int, control: int) -> None:
        kind = control & 0x01
        self._fragments[kind] += 1
        self._bytes[kind] += size
        what = "command set" if kind else "data set"
        if self._fragments[kind] > self.max_fragments:
            raise LimitExceeded(f"DIMSE {what} of more than {self.max_fragments} P-DATA "
                                "fragments (max_message_fragments)",
                                ABORT_SERVICE_USER, REASON_NOT_SPECIFIED)
        if self._bytes[kind] > self.max_message_bytes:
            raise LimitExceeded(f"DIMSE {what} of more than {self.max_message_bytes} bytes "
                                "(max_message_bytes)", ABORT_SERVICE_USER, REASON_NOT_SPECIFIED)
        if control & 0x02:  # last fragment: the next one starts a new message
            self._fragments[kind] = self._bytes[kind] = 0


class GuardedSocket(AssociationSocket):
    """pynetdicom's socket wrapper, made to serve the already-read A-ASSOCIATE-RQ first
    and to pass every received byte through a :class:`PduGuard`. Set up by
    :func:`adopt_connection` only (instances are adopted, not constructed)."""

    _prefix: bytearray
    _guard: PduGuard
    _on_limit: Callable[[LimitExceeded], None]
    _failed: bool

    @property
    def ready(self) -> bool:
        """Whether there is data to read: A-ASSOCIATE-RQ bytes still to serve, or the socket's;
        never once a limit was exceeded."""
        if self._failed:
            return False
        return bool(self._prefix) or super().ready

    def recv(self, nr_bytes: int) -> bytearray:
        """Up to ``nr_bytes``, the already-read A-ASSOCIATE-RQ first, every byte fed to the
        PduGuard (rule 6); a refused PDU gets an A-ABORT and reads as a closed transport."""
        if self._failed:
            return bytearray()
        data = self._prefix[:nr_bytes]
        del self._prefix[:nr_bytes]
        if len(data) < nr_bytes:
            data += super().recv(nr_bytes - len(data))
        try:
            self._guard.feed(data)
        except LimitExceeded as exc:
            self._failed = True
            try:
                # The DUL thread is the only sender too, so no PDU of ours is half sent.
                if self.socket is not None:
                    self.socket.sendall(a_abort(exc.source, exc.reason))
            except OSError:
                pass  # the peer is gone already
            self._on_limit(exc)
            # Nothing of this PDU reaches the DUL: a short read is its "transport closed"
            # (Evt17), so the association ends as aborted and the socket is closed.
            return bytearray()
        return data


def adopt_connection(handler: RequestHandler, prefix: bytes, guard: PduGuard,
                     on_limit: Callable[[LimitExceeded], None]) -> Association:
    """The acceptor Association for ``handler``'s connection (``handler.request``, TLS
    already negotiated), configured and with the server's event handlers bound, whose DUL
    first reads ``prefix`` (the A-ASSOCIATE-RQ read by the handler) and then the socket
    through ``guard``.

    The one function that relies on pynetdicom internals, checked against
    ``compat.TESTED_PYNETDICOM``: ``RequestHandler._create_association()`` (through
    :func:`dicom_or_core.scu.compat.create_acceptor_association`) builds the
    association (pynetdicom's own set-up, so nothing of it is copied here), and its
    AssociationSocket becomes a :class:`GuardedSocket`, which holds only because the DUL
    (dul.py ``_read_pdu_data``) reads PDUs exclusively through ``AssociationSocket.recv``
    after ``AssociationSocket.ready`` said so. Raises RuntimeError on another version."""
    check_pynetdicom()
    assoc = create_acceptor_association(handler)
    sock = assoc.dul.socket
    assert type(sock) is AssociationSocket, type(sock)
    sock.__class__ = GuardedSocket
    sock._prefix = bytearray(prefix)
    sock._guard = guard
    sock._on_limit = on_limit
    sock._failed = False
    return assoc


# --- the server ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConnectionLimits:
    """The rules of the module docstring, as numbers."""

    allowed_addresses: frozenset[str] | None = None  # None: any peer
    max_associations: int = 64
    max_pending: int = 128
    request_timeout_s: float = 5.0
    network_timeout_s: float | None = 60.0
    max_pdu_size: int = 65536                        # 0: unlimited
    max_message_bytes: int = 1 << 20
    max_message_fragments: int = 1024
    tls: ssl.SSLContext | None = None


class _Slots:
    """A counter with a hard maximum: the count never passes ``limit``; try_acquire()
    waits at most ``timeout_s`` (0: not at all) for a slot; ``peak`` is the highest count
    seen."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_use = 0
        self.peak = 0
        self._free = threading.Condition()

    def try_acquire(self, timeout_s: float = 0.0) -> bool:
        with self._free:
            if not self._free.wait_for(lambda: self.in_use < self.limit, timeout_s):
                return False
            self.in_use += 1
            self.peak = max(self.peak, self.in_use)
            return True

    def release(self) -> None:
        with self._free:
            self.in_use -= 1
            self._free.notify()


class _RateLimitedLog:
    """At most one log line per ``period_s`` and kind; the lines held back are counted in
    the next one (a flood must not become a log flood)."""

    def __init__(self, logger: logging.Logger, period_s: float = 5.0) -> None:
        self.logger = logger
        self.period_s = period_s
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def warning(self, kind: str, text: str, *args: object) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(kind, -self.period_s) < self.period_s:
                self._held[kind] = self._held.get(kind, 0) + 1
                return
            self._last[kind] = now
            held = self._held.pop(kind, 0)
        if held:
            text += f" (+{held} more since the last such message)"
        self.logger.warning(text, *args)


class _Refused(Exception):
    """The first PDU is no acceptable A-ASSOCIATE-RQ: answer with ``pdu``, then close."""

    def __init__(self, text: str, pdu: bytes) -> None:
        super().__init__(text)
        self.pdu = pdu


def _recv_exact(sock: socket.socket, count: int, deadline: float) -> bytearray:
    """``count`` bytes from ``sock`` by ``deadline`` (monotonic), else TimeoutError, or
    ConnectionError when the peer closes first."""
    data = bytearray()
    while len(data) < count:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        sock.settimeout(left)
        chunk = sock.recv(min(count - len(data), 65536))
        if not chunk:
            raise ConnectionError("closed by the peer")
        data += chunk
    return data


def read_associate_rq(sock: socket.socket, deadline: float) -> bytes:
    """The whole first PDU of a connection, which must be an A-ASSOCIATE-RQ of at most
    :data:`MAX_ASSOCIATE_RQ_BYTES` (rule 4), else :class:`_Refused`."""
    head = _recv_exact(sock, 6, deadline)
    pdu_type, _, length = struct.unpack(">BBL", head)
    if pdu_type != _A_ASSOCIATE_RQ:
        reason = REASON_UNEXPECTED_PDU if pdu_type in _KNOWN_PDU_TYPES \
            else REASON_UNRECOGNIZED_PDU
        raise _Refused(f"first PDU of type 0x{pdu_type:02X}, not an A-ASSOCIATE-RQ",
                       a_abort(ABORT_SERVICE_PROVIDER, reason))
    if length > MAX_ASSOCIATE_RQ_BYTES:
        raise _Refused(f"A-ASSOCIATE-RQ of {length} bytes",
                       a_abort(ABORT_SERVICE_PROVIDER, REASON_INVALID_PARAMETER))
    return bytes(head + _recv_exact(sock, length, deadline))


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # not connected any more
    sock.close()


class BridgeRequestHandler(RequestHandler):
    """One accepted connection, in its own thread: TLS handshake, A-ASSOCIATE-RQ,
    association slot (rules 3-5), then pynetdicom's association, waited for."""

    server: BridgeServer

    def handle(self) -> None:
        """Serve the connection: A-ASSOCIATE-RQ first, then a slot, then the association."""
        raw: socket.socket = self.request
        received = self._read_request(raw)
        if received is None:
            return
        sock, request = received
        if not self._acquire_slot(raw, sock):
            return
        self._serve(raw, sock, request)

    def _read_request(self, raw: socket.socket) -> tuple[socket.socket, bytes] | None:
        """TLS handshake and the A-ASSOCIATE-RQ within ``request_timeout_s``; None when the
        connection was refused or ended first (counted, logged at a limited rate, closed)."""
        server, limits = self.server, self.server.limits
        peer = self.client_address[0]
        deadline = time.monotonic() + limits.request_timeout_s
        sock = raw
        try:
            try:
                if limits.tls is not None:
                    sock = limits.tls.wrap_socket(raw, server_side=True,
                                                  do_handshake_on_connect=False)
                    server.register_pending(raw, sock)
                    sock.settimeout(max(0.001, deadline - time.monotonic()))
                    sock.do_handshake()
                request = read_associate_rq(sock, deadline)
            finally:
                server.pending.release()
        except _Refused as exc:
            server.count("refused_first_pdu")
            server.rate_log.warning("first_pdu", "closed connection from %s: %s", peer, exc)
            try:
                sock.sendall(exc.pdu)
            except OSError:
                pass  # gone already
            self._finish(raw, sock)
            return None
        except TimeoutError:
            server.count("request_timeouts")
            server.rate_log.warning("timeout", "closed connection from %s: no A-ASSOCIATE-RQ "
                                    "within %.1f s", peer, limits.request_timeout_s)
            self._finish(raw, sock)
            return None
        except (OSError, ssl.SSLError, ValueError) as exc:
            # TLS handshake failed, peer closed, or the server is stopping.
            server.count("closed_before_request")
            server.rate_log.warning("early_close", "connection from %s ended before an "
                                    "A-ASSOCIATE-RQ: %s", peer, exc)
            self._finish(raw, sock)
            return None
        return sock, request

    def _acquire_slot(self, raw: socket.socket, sock: socket.socket) -> bool:
        """An association slot, or A-ASSOCIATE-RJ (local limit exceeded, PS3.8 7.1.1.9)."""
        server = self.server
        # A requestor that has just released and associates again may arrive a moment
        # before its old association's thread has marked the release: give the slot that
        # moment rather than reject it (the flood path never waits).
        if server.associations.try_acquire(SLOT_WAIT_S):
            return True
        server.count("rejected_limit")
        server.rate_log.warning("limit", "rejected association from %s: %d associations "
                                "(max_associations)", self.client_address[0],
                                server.limits.max_associations)
        try:
            sock.sendall(a_associate_rj(*REJECT_LOCAL_LIMIT))
        except OSError:
            pass  # gone already
        self._finish(raw, sock)
        return False

    def _serve(self, raw: socket.socket, sock: socket.socket, request: bytes) -> None:
        """Hand the connection and its request to a pynetdicom association and wait for it;
        the slot is freed as soon as the association is released or aborted."""
        server, limits = self.server, self.server.limits
        peer = self.client_address[0]
        assoc = None
        released = threading.Lock()

        def free_slot(_event: object = None) -> None:
            # Once: the association is over when it is released or aborted, not when its
            # thread has finished closing the transport, so a requestor that releases and
            # associates again at once finds its slot free.
            if released.acquire(blocking=False):
                server.associations.release()

        try:
            sock.settimeout(limits.network_timeout_s)
            self.request = sock
            guard = PduGuard(limits.max_pdu_size, limits.max_message_bytes,
                             limits.max_message_fragments)
            assoc = adopt_connection(self, request, guard,
                                     lambda exc: server.on_limit(peer, exc))
            for event in (evt.EVT_RELEASED, evt.EVT_ABORTED):
                assoc.bind(event, free_slot)
            server.register_association(raw, assoc)
            evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
            assoc.start()
            assoc.join()
        finally:
            server.unregister(raw)
            free_slot()
            if assoc is None:
                _close(sock)

    def _finish(self, raw: socket.socket, sock: socket.socket) -> None:
        self.server.unregister(raw)
        _close(sock)


# Connections waiting for their A-ASSOCIATE-RQ beyond which a full server rejects at accept.
FLOOD_PENDING = 8
# How long an association request waits for a slot being freed before it is rejected.
SLOT_WAIT_S = 0.25


class _SharedContexts(list):
    """The server's supported presentation contexts, shared by every association instead
    of deep-copied for each. pynetdicom 3.0.4's RequestHandler._create_association() deep
    copies them per connection: the bridge's 127 contexts of 5428 transfer syntaxes took
    40-110 ms of the GIL each, and 64 of them in a burst delayed every answer by seconds.
    The acceptor only reads them (presentation.negotiate_as_acceptor builds new context
    objects for its result), so a shallow copy is safe (versions: check_pynetdicom)."""

    def __deepcopy__(self, memo: dict) -> list:
        return list(self)


class BridgeServer(ThreadedAssociationServer):
    """pynetdicom's threaded association server with the front end of the module
    docstring. Build it with ``ae.make_server(address, evt_handlers=...,
    server_class=BridgeServer, limits=..., logger=...)`` and run it with
    :meth:`serve_in_thread`; :meth:`shutdown` also ends every connection it holds."""

    daemon_threads = True
    # The listen backlog: socketserver's 5 dropped SYNs of a burst of requests, whose
    # retransmission after 1 s delayed their answer (Linux caps it at somaxconn).
    request_queue_size = 512

    def __init__(self, ae: object, address: tuple[str, int], ae_title: str,
                 contexts: list, ssl_context: ssl.SSLContext | None = None, *,
                 limits: ConnectionLimits, logger: logging.Logger | None = None,
                 **kwargs: object) -> None:
        check_pynetdicom()
        self.limits = limits
        self.log = logger or log
        self.rate_log = _RateLimitedLog(self.log)
        self.pending = _Slots(limits.max_pending)
        self.associations = _Slots(limits.max_associations)
        self.stats: dict[str, int] = {}
        self._lock = threading.Lock()
        self._connections: dict[socket.socket, Association | socket.socket | None] = {}
        self._thread: threading.Thread | None = None
        self._lingering: dict[socket.socket, float] = {}  # serving thread only
        self._awaiting: dict[socket.socket, float] = {}   # rejected, awaiting their RQ
        kwargs.setdefault("request_handler", BridgeRequestHandler)
        # TLS is the handler's job (rule 3), never accept's: limits.tls, not ssl_context.
        super().__init__(ae, address, ae_title, _SharedContexts(contexts), None, **kwargs)

    def count(self, name: str) -> None:
        """Add one to counter ``name`` of :attr:`stats` (the bridge's diagnostics show them)."""
        with self._lock:
            self.stats[name] = self.stats.get(name, 0) + 1

    def on_limit(self, peer: str, exc: LimitExceeded) -> None:
        """A PduGuard refusal (rule 6) of ``peer``'s association: counted, with the byte count it
        was refused at, and logged."""
        self.count("aborted_limits")
        with self._lock:
            self.stats["aborted_at_bytes"] = exc.received
        self.log.warning("aborted association from %s after %d bytes received: %s", peer,
                         exc.received, exc)

    # accept loop (socketserver calls these in the serving thread: nothing may block)

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        """Accept without TLS: the handshake is the connection thread's (rule 3), not the accept
        loop's as in pynetdicom."""
        return self.socket.accept()

    def verify_request(self, request: socket.socket, client_address: object) -> bool:
        """Rules 1 and 2; False closes the connection (socketserver's shutdown_request)."""
        peer = str(client_address[0])  # type: ignore[index]
        allowed = self.limits.allowed_addresses
        if allowed is not None and normalise_address(peer) not in allowed:
            self.count("refused_hosts")
            self.rate_log.warning("host", "refused connection from %s: host not in "
                                  "allowed_hosts", peer)
            return False
        full = self.associations.in_use >= self.limits.max_associations
        # Under a flood (many connections still waiting for their request) a full server
        # rejects from this thread; otherwise the connection's own thread reads the
        # A-ASSOCIATE-RQ first and rejects it in order, as a requestor expects.
        flooded = self.pending.in_use >= FLOOD_PENDING
        if full and flooded and self.limits.tls is None:
            # Every association slot is taken now: answer at once, from this thread, and
            # spend no thread on it. (It may be answered before its A-ASSOCIATE-RQ
            # arrived; requestors send it right after connecting and read the reply
            # after, so they read it as the reply. With TLS nothing can be said yet.)
            self.count("rejected_limit")
            self.rate_log.warning("limit", "rejected association from %s: %d associations "
                                  "(max_associations)", peer, self.limits.max_associations)
            self._reject_at_once(request)
            return False
        if not self.pending.try_acquire():
            self.count("refused_pending")
            self.rate_log.warning("pending", "rejected connection from %s: %d connections "
                                  "without A-ASSOCIATE-RQ (max_pending_connections)", peer,
                                  self.limits.max_pending)
            if self.limits.tls is None:
                self._reject_at_once(request)
            return False
        try:
            # Nagle plus the peer's delayed ACK would hold every second small write of a
            # C-FIND answer (command PDU, then data set PDU) for ~40 ms.
            request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass  # not TCP, or gone already
        self.register_pending(request, None)
        return True

    def shutdown_request(self, request: object) -> None:
        """Close a refused connection, except one rejected at once: service_actions() closes
        those after the peer has read the A-ASSOCIATE-RJ."""
        if request in self._lingering or request in self._awaiting:
            return  # closed by service_actions() once the peer has read the reject
        super().shutdown_request(request)

    def _reject_at_once(self, sock: socket.socket) -> None:
        """A-ASSOCIATE-RJ rejected-transient local-limit-exceeded, without a thread: the
        socket waits (non-blocking, polled by service_actions()) for the first bytes of its
        A-ASSOCIATE-RQ, then gets the reject. Answering before the request arrived made a
        requestor whose state machine had not sent it yet see an unexpected PDU and abort
        instead of reading a reject (PS3.8 9.2: the RJ answers the RQ). After the reject the
        socket lingers until the peer closes it or LINGER_S passed, what it sends read and
        dropped: closing it with unread data would reset the connection, and a reset can
        discard the reject before the peer reads it. At most MAX_LINGERING sockets wait or
        linger; beyond, the oldest is closed."""
        try:
            sock.setblocking(False)
        except OSError:
            sock.close()
            return
        self._awaiting[sock] = time.monotonic() + self.LINGER_S
        while len(self._awaiting) + len(self._lingering) > self.MAX_LINGERING:
            queue = self._awaiting if self._awaiting else self._lingering
            oldest = next(iter(queue))
            del queue[oldest]
            oldest.close()

    def _send_reject(self, sock: socket.socket) -> None:
        try:
            sock.send(a_associate_rj(*REJECT_LOCAL_LIMIT))  # 10 bytes: never blocks
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            sock.close()
            return
        self._lingering[sock] = time.monotonic() + self.LINGER_S

    LINGER_S = 2.0
    MAX_LINGERING = 1024

    def service_actions(self) -> None:
        """After every accept and every poll interval (the serving thread): reject the
        waiting sockets whose request has arrived (or whose wait ran out), and drain and
        close the lingering rejected sockets that are done."""
        super().service_actions()
        now = time.monotonic()
        for sock, deadline in list(self._awaiting.items()):
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                if now < deadline:
                    continue  # no request yet
                data = b"late"  # waited long enough: reject anyway
            except OSError:
                data = b""
            del self._awaiting[sock]
            if data:
                self._send_reject(sock)
            else:
                sock.close()  # the peer left without asking
        for sock, deadline in list(self._lingering.items()):
            try:
                while True:
                    data = sock.recv(65536)
                    if not data:
                        break  # the peer closed: done
            except BlockingIOError:
                if now < deadline:
                    continue  # nothing yet, the peer has not closed: keep waiting
            except OSError:
                pass  # reset or gone: done
            del self._lingering[sock]
            sock.close()

    def process_request(self, request: socket.socket, client_address: object) -> None:
        """Start the connection's thread; if that fails, give back the pending slot
        verify_request() took."""
        try:
            super().process_request(request, client_address)  # starts the thread
        except BaseException:
            self.unregister(request)
            self.pending.release()
            raise

    def handle_error(self, request: object, client_address: object) -> None:
        """Log an exception that escaped a connection's handler, with its traceback; the server
        keeps serving."""
        self.log.exception("connection from %s failed", client_address)

    # bookkeeping, so that shutdown() can end every connection

    def register_pending(self, raw: socket.socket, wrapped: socket.socket | None) -> None:
        """Hold a connection with no association yet (``wrapped``: its TLS socket, once made) so
        that shutdown() can close it."""
        with self._lock:
            self._connections[raw] = wrapped

    def register_association(self, raw: socket.socket, assoc: Association) -> None:
        """Hold the association of connection ``raw`` so that shutdown() aborts it (A-ABORT)
        rather than only closing its socket."""
        with self._lock:
            self._connections[raw] = assoc

    def unregister(self, raw: socket.socket) -> None:
        """Forget connection ``raw``: its association or its refusal is over."""
        with self._lock:
            self._connections.pop(raw, None)

    def serve_in_thread(self) -> None:
        """Run the accept loop in a daemon thread; its 50 ms poll keeps service_actions()'
        rejects and shutdown() prompt."""
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="BridgeServer", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        """Stop accepting, abort every association, close every pending connection."""
        if self._thread is not None:
            # socketserver's own shutdown: pynetdicom's would also deregister the server
            # from its AE, which never knew it (the AE's association count stays empty).
            socketserver.BaseServer.shutdown(self)
            self._thread.join(timeout=5)
        self.server_close()
        for waiting in (self._awaiting, self._lingering):
            for sock in list(waiting):
                sock.close()
            waiting.clear()
        with self._lock:
            held = list(self._connections.items())
        for raw, what in held:
            if isinstance(what, Association):
                what.abort()
            else:  # pending: the TLS socket owns the descriptor once wrapped
                _close(what or raw)

