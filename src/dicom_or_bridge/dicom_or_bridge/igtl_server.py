"""OpenIGTLink server that pushes TRANSFORM and IMAGE messages to its clients, ROS-free.

3D Slicer's OpenIGTLinkIF (and PLUS, IGSIO, pyigtl) connect as clients to port 18944, the
protocol's default, and receive whatever the server pushes: one message = a 58-byte header
(type, device name, timestamp, body size, CRC-64) + body (http://openigtlink.org/protocols/
v2_header.html). Messages are encoded with pyigtl's message classes (header version 1, which
every OpenIGTLink version reads); the socket handling is our own, as in the drivers' client
(:mod:`dicom_or_drivers.igtl`), because pyigtl's server serves one client, blocks its sender
on a slow one and does not notice a vanished one.

Design:

* One I/O thread owns every socket (non-blocking, one ``selectors`` loop): it accepts,
  reads and discards what clients send (Slicer may send queries or its own nodes; reading
  also notices an orderly close or an RST at once), and writes each client's queue as far
  as its socket takes it. ``publish_transform`` / ``offer_image`` only enqueue and wake the
  loop: the caller (the ROS node) never blocks on a client.
* One bounded send queue per client: TRANSFORMs in order (a full queue drops the oldest,
  counted), and at most one pending IMAGE per device (a newer frame replaces an unsent one:
  latest wins). A message is never cut: framing survives every drop.
* Video is encoded on an encoder thread of its own, only when some client is due for a
  frame (``image_max_rate_hz`` per client; 1080p30 RGB is 186 MB/s), and once for all the
  clients due; so the I/O thread and the node stay free for TRANSFORMs whatever the video.
* A client that connects late gets the latest TRANSFORM of each device and the latest IMAGE
  of each device at once.
* A client that closes (FIN) or resets (RST) is dropped when the loop next reads or writes
  it; a half-open one (peer gone without a word) by TCP keepalive and TCP_USER_TIMEOUT, and a
  client that takes no byte for ``client_timeout_s`` while data waits for it is dropped too:
  it is not reading, and its queue would only ever drop.
* ``max_clients``: more connections are accepted and closed at once (counted, logged).
"""

from __future__ import annotations

import logging
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from pyigtl.messages import ImageMessage, TransformMessage

DEFAULT_PORT = 18944  # IANA-registered OpenIGTLink port
DEVICE_NAME_BYTES = 20  # the header's device name field (v2_header: char[20])
# TRANSFORMs queued per client: 1 s of a 4-tool 250 Hz tracker; older ones are dropped.
DEFAULT_TRANSFORM_QUEUE = 1000
# Queued TRANSFORMs are written together, up to this many bytes per send() call.
_BATCH_BYTES = 64 << 10
_RECV_BYTES = 64 << 10
_LOOP_PERIOD_S = 0.2

log = logging.getLogger(__name__)


def igtl_device_name(name: str) -> str:
    """``name`` as an OpenIGTLink device name: ASCII (others -> '_'), at most 20 bytes, the
    header's fixed field (longer names would be cut by the encoder without a word)."""
    ascii_name = "".join(c if 32 <= ord(c) < 127 else "_" for c in name)
    return ascii_name[:DEVICE_NAME_BYTES]


def pose_matrix_mm(position_m: tuple[float, float, float],
                   quaternion_xyzw: tuple[float, float, float, float]) -> np.ndarray:
    """The 4x4 homogeneous matrix of a pose given in metres (ROS, REP 103) as OpenIGTLink
    and Slicer expect it: rotation from the unit quaternion, translation in millimetres."""
    x, y, z, w = quaternion_xyzw
    norm = float(np.sqrt(x * x + y * y + z * z + w * w)) or 1.0
    x, y, z, w = x / norm, y / norm, z / norm, w / norm
    matrix = np.eye(4)
    matrix[:3, :3] = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]]
    matrix[:3, 3] = np.asarray(position_m, dtype=np.float64) * 1000.0
    return matrix


def video_ijk_to_ras(rows: int, columns: int, spacing_mm: float) -> np.ndarray:
    """IJK-to-RAS of a video frame as one slice: column i to the screen's right and row j
    downwards in Slicer's axial (Red) view, which looks from the feet with R on the left
    and A up: i along -R, j along -A, k along +S; centred on the origin. ``spacing_mm``:
    the size of a pixel (video has no physical spacing: 1 mm, scaled with the frame)."""
    matrix = np.diag([-spacing_mm, -spacing_mm, spacing_mm, 1.0])
    centre = matrix @ np.array([(columns - 1) / 2.0, (rows - 1) / 2.0, 0.0, 1.0])
    matrix[:3, 3] = -centre[:3]
    return matrix


@dataclass(frozen=True)
class IgtlImage:
    """One video frame to send: (rows, columns) grey or (rows, columns, 3) RGB uint8,
    pixel spacing in mm, acquisition time in seconds since 1970."""

    pixels: np.ndarray
    timestamp_s: float
    spacing_mm: float = 1.0


def encode_image(device_name: str, image: IgtlImage) -> bytes:
    """An IMAGE message (RAS, IJK-to-RAS of :func:`video_ijk_to_ras`), one slice; RGB as a
    3-component vector volume, as Slicer shows it."""
    pixels = np.ascontiguousarray(image.pixels, dtype=np.uint8)
    if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] != 3):
        raise ValueError(f"image must be (rows, columns) or (rows, columns, 3), got "
                         f"{pixels.shape}")
    rows, columns = pixels.shape[:2]
    message = ImageMessage(pixels[np.newaxis], video_ijk_to_ras(rows, columns, image.spacing_mm),
                           world_coordinate_system="ras", timestamp=image.timestamp_s,
                           device_name=igtl_device_name(device_name))
    return bytes(message.pack())


def encode_transform(device_name: str, matrix_mm: np.ndarray, timestamp_s: float) -> bytes:
    """A TRANSFORM message: 4x4 matrix (translation in mm), sender's timestamp."""
    return bytes(TransformMessage(matrix_mm, timestamp=timestamp_s,
                                  device_name=igtl_device_name(device_name)).pack())


@dataclass
class ClientStats:
    """Counters of one connection."""

    address: str
    connected_at: float
    messages_sent: int = 0
    bytes_sent: int = 0
    transforms_dropped: int = 0
    images_sent: int = 0
    images_dropped: int = 0
    bytes_received: int = 0


@dataclass
class ServerStats:
    """A snapshot of the server's counters (totals since start)."""

    port: int
    clients: list[ClientStats]
    accepted: int
    refused: int
    disconnected: int
    transforms_published: int
    images_offered: int
    images_encoded: int
    transforms_dropped: int = field(default=0)
    images_dropped: int = field(default=0)
    messages_sent: int = field(default=0)


class _Client:
    """One connection: its socket, queues and counters. Touched under the server's lock
    (queues) or by the I/O thread only (the write buffer)."""

    def __init__(self, sock: socket.socket, address: str, transform_queue: int) -> None:
        self.sock = sock
        self.stats = ClientStats(address, time.time())
        self.transforms: deque[bytes] = deque()
        self.transform_limit = transform_queue
        self.images: dict[str, bytes] = {}  # device -> latest unsent IMAGE
        self.image_due: dict[str, float] = {}  # device -> monotonic time of the next frame
        self.buffer: memoryview | None = None  # message(s) being written
        self.buffer_counts = (0, 0)  # (messages, images) in the buffer
        self.last_progress = time.monotonic()
        self.writing = False  # registered for EVENT_WRITE
        self.closed = False

    def pending(self) -> bool:
        return self.buffer is not None or bool(self.transforms) or bool(self.images)

    def push_transform(self, data: bytes) -> None:
        if not self.pending():
            self.last_progress = time.monotonic()  # the stall clock starts with the data
        if len(self.transforms) >= self.transform_limit:
            self.transforms.popleft()
            self.stats.transforms_dropped += 1
        self.transforms.append(data)

    def push_image(self, device: str, data: bytes) -> None:
        if not self.pending():
            self.last_progress = time.monotonic()
        if self.images.pop(device, None) is not None:
            self.stats.images_dropped += 1  # latest wins
        self.images[device] = data

    def next_buffer(self) -> bool:
        """Take the next data to write: every queued TRANSFORM (up to a batch) first, as
        they are small and latency matters; else the oldest pending IMAGE."""
        if self.transforms:
            parts: list[bytes] = []
            size = 0
            while self.transforms and size < _BATCH_BYTES:
                parts.append(self.transforms.popleft())
                size += len(parts[-1])
            self.buffer = memoryview(b"".join(parts))
            self.buffer_counts = (len(parts), 0)
            return True
        if self.images:
            device = next(iter(self.images))
            self.buffer = memoryview(self.images.pop(device))
            self.buffer_counts = (1, 1)
            return True
        return False


def _tune_client_socket(sock: socket.socket, timeout_s: float) -> None:
    """No Nagle delay (TRANSFORMs are small and late ones are useless); keepalive and
    TCP_USER_TIMEOUT so a peer that vanished without FIN or RST (half-open: cable, crash of
    the host) is declared dead by the kernel within about ``timeout_s``."""
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    idle = max(1, int(timeout_s / 2))
    for option, value in (("TCP_KEEPIDLE", idle), ("TCP_KEEPINTVL", 1), ("TCP_KEEPCNT", 3),
                          ("TCP_USER_TIMEOUT", int(timeout_s * 1000))):
        if hasattr(socket, option):  # Linux; elsewhere the stall timeout alone
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


class IgtlServer:
    """The OpenIGTLink server: :meth:`start`, then :meth:`publish_transform` and
    :meth:`offer_image` from any thread, :meth:`close` at the end."""

    def __init__(self, host: str = "127.0.0.1", port: int = DEFAULT_PORT, *,
                 max_clients: int = 8, image_max_rate_hz: float = 15.0,
                 transform_queue: int = DEFAULT_TRANSFORM_QUEUE,
                 client_timeout_s: float = 10.0) -> None:
        self.host, self.requested_port = host, port
        self.max_clients = max_clients
        self.image_period_s = 1.0 / image_max_rate_hz if image_max_rate_hz > 0 else 0.0
        self.transform_queue = transform_queue
        self.client_timeout_s = client_timeout_s
        self._lock = threading.Lock()
        self._clients: dict[int, _Client] = {}  # by file descriptor
        self._latest_transforms: dict[str, bytes] = {}
        # device -> (offer number, build): the newest frame, encoded only when needed.
        self._latest_offer: dict[str, tuple[int, Callable[[], IgtlImage]]] = {}
        self._latest_image: dict[str, tuple[int, bytes]] = {}  # device -> encoded offer
        self._to_encode: set[str] = set()
        self._offers = 0
        self._counters = {"accepted": 0, "refused": 0, "disconnected": 0, "transforms": 0,
                          "images_encoded": 0, "transforms_dropped": 0,
                          "images_dropped": 0, "messages_sent": 0}
        self._closing = threading.Event()
        self._encode_wake = threading.Condition(self._lock)
        self._selector = selectors.DefaultSelector()
        self._listener: socket.socket | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_pending = False
        self._threads: list[threading.Thread] = []

    # --- life cycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Listen on (host, port) and start the I/O and encoder threads; OSError (e.g.
        address in use) propagates."""
        listener = socket.create_server((self.host, self.requested_port), backlog=16,
                                        reuse_port=False)
        listener.setblocking(False)
        self._listener = listener
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(listener, selectors.EVENT_READ, "accept")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        for target, name in ((self._io_loop, "igtl_io"), (self._encode_loop, "igtl_encode")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    @property
    def port(self) -> int:
        """The port listened on (the one the OS chose when 0 was asked)."""
        return int(self._listener.getsockname()[1]) if self._listener else self.requested_port

    def close(self) -> None:
        """Stop the threads and close every connection; safe to call twice."""
        if self._closing.is_set():
            return
        self._closing.set()
        with self._lock:
            self._encode_wake.notify_all()
        self._wake()
        for thread in self._threads:
            thread.join(timeout=5.0)
        with self._lock:
            clients = list(self._clients.values())
            self._clients.clear()
        for client in clients:
            client.sock.close()
        if self._listener is not None:
            self._listener.close()
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    # --- publishing (any thread) ------------------------------------------------------------

    def publish_transform(self, device_name: str, matrix_mm: np.ndarray,
                          timestamp_s: float) -> None:
        """Queue a TRANSFORM to every client (in order); kept as the device's latest for
        clients that connect later."""
        data = encode_transform(device_name, matrix_mm, timestamp_s)
        with self._lock:
            self._latest_transforms[device_name] = data
            self._counters["transforms"] += 1
            for client in self._clients.values():
                client.push_transform(data)
            wake = bool(self._clients)
        if wake:
            self._wake()

    def offer_image(self, device_name: str, build: Callable[[], IgtlImage]) -> None:
        """Offer the device's newest frame; ``build`` makes the :class:`IgtlImage` and is
        called on the encoder thread only if a client is due for a frame (rate cap) or
        connects before the next offer. Never blocks on encoding."""
        with self._lock:
            self._offers += 1
            self._latest_offer[device_name] = (self._offers, build)
            if self._clients:
                self._to_encode.add(device_name)
                self._encode_wake.notify()

    def publish_image(self, device_name: str, image: IgtlImage) -> None:
        """:meth:`offer_image` of a ready frame."""
        self.offer_image(device_name, lambda: image)

    def stats(self) -> ServerStats:
        """Counters now."""
        with self._lock:
            clients = [ClientStats(**vars(c.stats)) for c in self._clients.values()]
            c = self._counters
            return ServerStats(self.port, clients, c["accepted"], c["refused"],
                               c["disconnected"], c["transforms"], self._offers,
                               c["images_encoded"],
                               c["transforms_dropped"] + sum(s.transforms_dropped
                                                             for s in clients),
                               c["images_dropped"] + sum(s.images_dropped for s in clients),
                               c["messages_sent"] + sum(s.messages_sent for s in clients))

    # --- encoder thread ---------------------------------------------------------------------

    def _due_clients(self, device: str, now: float) -> list[_Client]:
        # A quarter period of slack, so frame-time jitter does not halve the rate.
        slack = self.image_period_s / 4
        return [c for c in self._clients.values()
                if not c.closed and c.image_due.get(device, 0.0) - slack <= now]

    def _encode_loop(self) -> None:
        while not self._closing.is_set():
            with self._lock:
                while not self._to_encode and not self._closing.is_set():
                    self._encode_wake.wait(timeout=1.0)
                devices, self._to_encode = self._to_encode, set()
            for device in devices:
                try:
                    self._encode_for_due_clients(device)
                except Exception as exc:  # noqa: BLE001 - a bad frame must not end the video
                    log.warning("IMAGE %s not sent: %s", device, exc)

    def _encode_for_due_clients(self, device: str) -> None:
        with self._lock:
            now = time.monotonic()
            due = self._due_clients(device, now)
            offer = self._latest_offer.get(device)
            latest = self._latest_image.get(device)
        if not due or offer is None:
            return
        number, build = offer
        if latest is not None and latest[0] == number:
            data = latest[1]  # already encoded for an earlier client
        else:
            data = encode_image(device, build())
        with self._lock:
            self._latest_image[device] = (number, data)
            if latest is None or latest[0] != number:
                self._counters["images_encoded"] += 1
            for client in due:
                if client.closed:
                    continue
                client.push_image(device, data)
                # On schedule: the next frame one period after this one was due; behind
                # (no frame came for a while): one period from now.
                due_at = client.image_due.get(device, 0.0)
                client.image_due[device] = due_at + self.image_period_s \
                    if now - due_at < self.image_period_s else now + self.image_period_s
        self._wake()

    # --- I/O thread -------------------------------------------------------------------------

    def _wake(self) -> None:
        """Make the I/O loop look at the queues now (one byte; none if one is pending)."""
        if self._wake_pending:
            return
        self._wake_pending = True
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass  # the pair is full (the loop is awake anyway) or closed

    def _io_loop(self) -> None:
        while not self._closing.is_set():
            try:
                events = self._selector.select(timeout=_LOOP_PERIOD_S)
            except (OSError, ValueError):
                return  # the selector was closed
            for key, mask in events:
                if key.data == "accept":
                    self._accept()
                elif key.data == "wake":
                    try:
                        self._wake_r.recv(4096)
                    except OSError:
                        pass
                    # Cleared after the read: a wake that came in between is covered by
                    # the _flush_all below, which sees its queued data.
                    self._wake_pending = False
                else:
                    client = key.data
                    if mask & selectors.EVENT_READ:
                        self._read(client)
                    if mask & selectors.EVENT_WRITE and not client.closed:
                        self._write(client)
            self._flush_all()

    def _accept(self) -> None:
        assert self._listener is not None
        try:
            sock, address = self._listener.accept()
        except OSError:
            return
        peer = f"{address[0]}:{address[1]}"
        with self._lock:
            if len(self._clients) >= self.max_clients:
                self._counters["refused"] += 1
                refused = True
            else:
                refused = False
                self._counters["accepted"] += 1
        if refused:
            log.warning("OpenIGTLink client %s refused: max_clients (%d) connected", peer,
                        self.max_clients)
            sock.close()
            return
        _tune_client_socket(sock, self.client_timeout_s)
        client = _Client(sock, peer, self.transform_queue)
        with self._lock:
            self._clients[sock.fileno()] = client
            # The latest state at once: every device's last TRANSFORM, then its last IMAGE
            # (encoded now if no client needed this frame yet).
            for data in self._latest_transforms.values():
                client.push_transform(data)
            for device, (number, _) in self._latest_offer.items():
                latest = self._latest_image.get(device)
                if latest is not None and latest[0] == number:
                    client.push_image(device, latest[1])
                    client.image_due[device] = time.monotonic() + self.image_period_s
                else:
                    self._to_encode.add(device)
                    self._encode_wake.notify()
        self._selector.register(sock, selectors.EVENT_READ, client)
        log.info("OpenIGTLink client %s connected", peer)

    def _read(self, client: _Client) -> None:
        """Read and discard what the client sends (queries, its own nodes); an empty read
        is its orderly close, an error its reset."""
        try:
            data = client.sock.recv(_RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._drop(client, f"connection lost ({exc.strerror or exc})")
            return
        if not data:
            self._drop(client, "closed the connection")
            return
        client.stats.bytes_received += len(data)

    def _write(self, client: _Client) -> None:
        """Write as much of the client's queue as its socket takes now, without blocking."""
        while True:
            if client.buffer is None:
                with self._lock:
                    if not client.next_buffer():
                        break
            assert client.buffer is not None
            try:
                sent = client.sock.send(client.buffer)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self._drop(client, f"connection lost ({exc.strerror or exc})")
                return
            client.last_progress = time.monotonic()
            client.stats.bytes_sent += sent
            if sent < len(client.buffer):
                client.buffer = client.buffer[sent:]
                break
            messages, images = client.buffer_counts
            client.stats.messages_sent += messages
            client.stats.images_sent += images
            client.buffer = None
        self._set_writing(client, client.buffer is not None)

    def _set_writing(self, client: _Client, writing: bool) -> None:
        if client.closed or writing == client.writing:
            return
        client.writing = writing
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if writing else 0)
        self._selector.modify(client.sock, events, client)

    def _flush_all(self) -> None:
        """Write to every client with queued data (those blocked wait for EVENT_WRITE);
        drop the ones that took nothing for ``client_timeout_s`` while data waited."""
        now = time.monotonic()
        with self._lock:
            clients = list(self._clients.values())
        for client in clients:
            if client.closed:
                continue
            with self._lock:
                pending = client.pending()
            if not pending:
                continue
            if now - client.last_progress > self.client_timeout_s:
                self._drop(client, f"took no data for {self.client_timeout_s:g} s")
            elif not client.writing:
                self._write(client)

    def _drop(self, client: _Client, reason: str) -> None:
        if client.closed:
            return
        client.closed = True
        try:
            self._selector.unregister(client.sock)
        except (KeyError, ValueError):
            pass
        with self._lock:
            self._clients.pop(client.sock.fileno(), None)
            c = self._counters
            c["disconnected"] += 1
            c["transforms_dropped"] += client.stats.transforms_dropped
            c["images_dropped"] += client.stats.images_dropped
            c["messages_sent"] += client.stats.messages_sent
        client.sock.close()
        log.info("OpenIGTLink client %s %s; %d sent, %d TRANSFORMs and %d IMAGEs dropped",
                 client.stats.address, reason, client.stats.messages_sent,
                 client.stats.transforms_dropped, client.stats.images_dropped)
