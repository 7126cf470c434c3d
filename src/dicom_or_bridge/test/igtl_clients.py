"""OpenIGTLink test clients of the server tests: a raw-socket client that keeps every message
in arrival order with its receive time, and waiting helpers."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from pyigtl.messages import MessageBase


@dataclass
class Received:
    """One message as it arrived: header fields, body, receive time (time.time())."""

    message_type: str
    device_name: str
    timestamp_s: float
    body: bytes
    header: dict
    received_s: float

    def decode(self) -> MessageBase:
        message = MessageBase.create_message(self.message_type)
        message.unpack(self.header, self.body)
        return message

    @property
    def matrix(self) -> np.ndarray:
        return np.asarray(self.decode().matrix, dtype=np.float64)


class RawClient:
    """A TCP client that reads every message (``read=False``: connects and never reads,
    a client stuck or paused)."""

    def __init__(self, port: int, *, read: bool = True, rcvbuf: int = 0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.connect(("127.0.0.1", port))
        self.messages: list[Received] = []
        self.closed_by_server = False
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        if read:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()

    def _recv(self, size: int) -> bytes:
        chunks, remaining = [], size
        while remaining:
            chunk = self.sock.recv(min(remaining, 1 << 20))
            if not chunk:
                raise ConnectionError("closed")
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)

    def _run(self) -> None:
        try:
            while True:
                header = MessageBase.parse_header(self._recv(MessageBase.IGTL_HEADER_SIZE))
                body = self._recv(header["body_size"])
                now = time.time()
                with self._cond:
                    self.messages.append(Received(header["message_type"],
                                                  header["device_name"], header["timestamp"],
                                                  body, header, now))
                    self._cond.notify_all()
        except OSError:
            with self._cond:
                self.closed_by_server = True
                self._cond.notify_all()

    def wait_for(self, predicate: Callable[[list[Received]], bool],
                 timeout_s: float = 5.0) -> bool:
        """Wait until ``predicate(messages)`` holds (or the connection ends)."""
        with self._cond:
            return self._cond.wait_for(
                lambda: predicate(self.messages) or self.closed_by_server, timeout_s) and \
                predicate(self.messages)

    def wait_closed(self, timeout_s: float = 5.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.closed_by_server, timeout_s)

    def of_type(self, message_type: str) -> list[Received]:
        with self._cond:
            return [m for m in self.messages if m.message_type == message_type]

    def reset(self) -> None:
        """Close abruptly: SO_LINGER 0 makes close() send an RST, not a FIN."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        if self._thread is not None:
            self._thread.join(timeout=5.0)


def wait_until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    """Poll ``predicate`` (server counters) until it holds or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")
