"""OpenIGTLink client that receives TRANSFORM messages (PLUS Server, 3D Slicer), ROS-free.

The wire format (58-byte header + body) is decoded with pyigtl's message classes; the socket
handling is our own because pyigtl's client keeps only the latest message per device (a
1 kHz tracker would lose most poses between polls), does not notice a server that closed
the connection, and prints tracebacks on errors. Here every message is delivered in order
to a callback, a closed or refused connection is reported to the caller, and the caller
decides on backoff.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from pyigtl.messages import MessageBase

HEADER_SIZE = MessageBase.IGTL_HEADER_SIZE
MAX_BODY = 64 << 20  # refuse absurd sizes instead of allocating them


class IgtlConnectionError(ConnectionError):
    """The server is unreachable or closed the connection."""


@dataclass(frozen=True)
class IgtlTransform:
    """One TRANSFORM message: device name, 4x4 matrix (translation in the sender's unit,
    millimetres for PLUS / Slicer), sender timestamp in seconds since 1970."""

    device_name: str
    matrix: np.ndarray
    timestamp_s: float


def matrix_to_quaternion(rotation: np.ndarray) -> tuple[float, float, float, float]:
    """Unit quaternion (x, y, z, w) of a 3x3 rotation matrix (Shepperd's method); the
    rotation is re-orthonormalised first, as float32 matrices from the wire are not exact."""
    u, _, vt = np.linalg.svd(np.asarray(rotation, dtype=np.float64))
    r = u @ vt
    if np.linalg.det(r) < 0:
        u[:, -1] *= -1
        r = u @ vt
    trace = np.trace(r)
    if trace > 0:
        s = 2.0 * np.sqrt(trace + 1.0)
        w, x = 0.25 * s, (r[2, 1] - r[1, 2]) / s
        y, z = (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s
    elif r[0, 0] > r[1, 1] and r[0, 0] > r[2, 2]:
        s = 2.0 * np.sqrt(1.0 + r[0, 0] - r[1, 1] - r[2, 2])
        w, x = (r[2, 1] - r[1, 2]) / s, 0.25 * s
        y, z = (r[0, 1] + r[1, 0]) / s, (r[0, 2] + r[2, 0]) / s
    elif r[1, 1] > r[2, 2]:
        s = 2.0 * np.sqrt(1.0 + r[1, 1] - r[0, 0] - r[2, 2])
        w, x = (r[0, 2] - r[2, 0]) / s, (r[0, 1] + r[1, 0]) / s
        y, z = 0.25 * s, (r[1, 2] + r[2, 1]) / s
    else:
        s = 2.0 * np.sqrt(1.0 + r[2, 2] - r[0, 0] - r[1, 1])
        w, x = (r[1, 0] - r[0, 1]) / s, (r[0, 2] + r[2, 0]) / s
        y, z = (r[1, 2] + r[2, 1]) / s, 0.25 * s
    q = np.array([x, y, z, w])
    q /= np.linalg.norm(q)
    if q[3] < 0:
        q = -q
    return float(q[0]), float(q[1]), float(q[2]), float(q[3])


class IgtlClient:
    """One connection to an OpenIGTLink server; :meth:`run` receives until it closes.

    ``device_names``: only TRANSFORMs from these devices are delivered (empty: all).
    """

    def __init__(self, host: str, port: int, device_names: list[str] | None = None,
                 connect_timeout_s: float = 2.0) -> None:
        self.host, self.port = host, port
        self.device_names = set(device_names or [])
        self.connect_timeout_s = connect_timeout_s
        self._socket: socket.socket | None = None
        self._lock = threading.Lock()

    def connect(self) -> None:
        """Connect to the OpenIGTLink server; IgtlConnectionError naming it on failure."""
        try:
            sock = socket.create_connection((self.host, self.port),
                                            timeout=self.connect_timeout_s)
        except OSError as exc:
            raise IgtlConnectionError(f"cannot connect to {self.host}:{self.port}: "
                                      f"{exc.strerror or exc}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(0.5)  # lets run() notice close() promptly
        with self._lock:
            self._socket = sock

    def close(self) -> None:
        """Close the connection; safe to call twice, also from another thread."""
        with self._lock:
            sock, self._socket = self._socket, None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def _read(self, size: int, stop: threading.Event) -> bytes:
        chunks, remaining = [], size
        while remaining:
            sock = self._socket
            if sock is None or stop.is_set():
                raise IgtlConnectionError("connection closed")
            try:
                chunk = sock.recv(remaining)
            except TimeoutError:
                continue
            except OSError as exc:
                raise IgtlConnectionError(f"connection lost: {exc}") from None
            if not chunk:
                raise IgtlConnectionError(f"server {self.host}:{self.port} closed the "
                                          "connection")
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)

    def run(self, on_transform: Callable[[IgtlTransform], None],
            stop: threading.Event) -> None:
        """Receive messages until ``stop`` or a connection error (raised). Non-TRANSFORM
        messages (STATUS, IMAGE, STRING ...) are read and skipped."""
        while not stop.is_set():
            header = MessageBase.parse_header(self._read(HEADER_SIZE, stop))
            size = header["body_size"]
            if size > MAX_BODY:
                raise IgtlConnectionError(f"message body of {size} bytes refused")
            body = self._read(size, stop)
            if header["message_type"] != "TRANSFORM":
                continue
            if self.device_names and header["device_name"] not in self.device_names:
                continue
            message = MessageBase.create_message("TRANSFORM")
            try:
                message.unpack(header, body)
            except Exception:  # a malformed body: skip the message, keep the connection
                continue
            on_transform(IgtlTransform(message.device_name, np.asarray(message.matrix,
                                                                       np.float64),
                                       float(message.timestamp)))
