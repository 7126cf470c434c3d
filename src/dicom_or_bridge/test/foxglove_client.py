"""A small Foxglove WebSocket protocol client for the tests, on aiohttp's websocket client.

The protocol (foxglove/ws-protocol docs/spec.md, subprotocol ``foxglove.websocket.v1``;
foxglove-sdk servers speak it as ``foxglove.sdk.v1``, the same messages under a new name):
JSON text messages ``serverInfo``, ``advertise`` (channels: id, topic, encoding, schemaName,
schemaEncoding, schema), ``unadvertise``; the client sends ``subscribe`` with its own
subscription ids; the server sends binary ``messageData``: opcode 0x01, subscription id
(uint32 LE), log time (uint64 LE, ns), payload. Written from the spec, not from the server.

Also a minimal protobuf wire-format reader, enough to check foxglove's FrameTransforms and
CompressedImage / CompressedVideo messages without the protobuf package.
"""

from __future__ import annotations

import asyncio
import json
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

SUBPROTOCOLS = ("foxglove.sdk.v1", "foxglove.websocket.v1")
MESSAGE_DATA = 0x01


@dataclass
class Received:
    """One messageData: the channel it came on, its log time and payload, and when."""

    channel_id: int
    topic: str
    log_time_ns: int
    payload: bytes
    received_s: float


class FoxgloveClient:
    """Connects, records serverInfo and advertisements, subscribes, records messages.

    Runs its own asyncio loop on a thread, so the test's thread can spin ROS meanwhile.
    """

    def __init__(self, url: str, connect_timeout_s: float = 20.0) -> None:
        self.url = url
        self.server_info: dict[str, Any] = {}
        self.channels: dict[int, dict[str, Any]] = {}
        self.messages: list[Received] = []
        self.protocol = ""
        self.errors: list[str] = []
        self._subscriptions: dict[int, int] = {}  # subscription id -> channel id
        self._changed = threading.Condition()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._session: aiohttp.ClientSession | None = None
        self._call(self._connect(connect_timeout_s), connect_timeout_s + 5)
        self._reader = asyncio.run_coroutine_threadsafe(self._read(), self._loop)

    def _call(self, coroutine: Any, timeout_s: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout_s)

    async def _connect(self, timeout_s: float) -> None:
        self._session = aiohttp.ClientSession()
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self._ws = await self._session.ws_connect(self.url, protocols=SUBPROTOCOLS,
                                                          autoping=True)
                self.protocol = self._ws.protocol or ""
                return
            except aiohttp.ClientConnectorError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)  # the server is still starting: poll its port

    async def _read(self) -> None:
        assert self._ws is not None
        async for frame in self._ws:
            if frame.type == aiohttp.WSMsgType.TEXT:
                self._on_text(json.loads(frame.data))
            elif frame.type == aiohttp.WSMsgType.BINARY:
                self._on_binary(frame.data)
        with self._changed:
            self.errors.append("connection closed")
            self._changed.notify_all()

    def _on_text(self, message: dict[str, Any]) -> None:
        with self._changed:
            op = message.get("op")
            if op == "serverInfo":
                self.server_info = message
            elif op == "advertise":
                for channel in message["channels"]:
                    self.channels[channel["id"]] = channel
            elif op == "unadvertise":
                for channel_id in message["channelIds"]:
                    self.channels.pop(channel_id, None)
            elif op == "status" and message.get("level", 0) >= 2:
                self.errors.append(message.get("message", ""))
            self._changed.notify_all()

    def _on_binary(self, data: bytes) -> None:
        if data[0] != MESSAGE_DATA:
            return
        subscription, log_time = struct.unpack_from("<IQ", data, 1)
        with self._changed:
            channel_id = self._subscriptions.get(subscription)
            if channel_id is None:
                self.errors.append(f"messageData for unknown subscription {subscription}")
            else:
                topic = self.channels.get(channel_id, {}).get("topic", "?")
                self.messages.append(Received(channel_id, topic, log_time, bytes(data[13:]),
                                              time.time()))
            self._changed.notify_all()

    # --- the test's side --------------------------------------------------------------------

    def wait_for(self, predicate: Callable[[FoxgloveClient], bool], timeout_s: float) -> bool:
        """Wait until ``predicate(self)`` holds (checked on every server message)."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while not predicate(self):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(min(remaining, 0.2))
        return True

    def channel_ids(self, topics: Any) -> list[int]:
        """The advertised channel ids of ``topics``."""
        with self._changed:
            return [cid for cid, c in self.channels.items() if c["topic"] in set(topics)]

    def subscribe(self, channel_ids: list[int]) -> None:
        """Subscribe to ``channel_ids`` (subscription id = channel id + 1000, any unique
        number the client picks)."""
        subscriptions = [{"id": cid + 1000, "channelId": cid} for cid in channel_ids]
        with self._changed:
            self._subscriptions.update({s["id"]: s["channelId"] for s in subscriptions})
        text = json.dumps({"op": "subscribe", "subscriptions": subscriptions})
        assert self._ws is not None
        self._call(self._ws.send_str(text))

    def on(self, topic: str) -> list[Received]:
        """The messages received so far on ``topic``."""
        with self._changed:
            return [m for m in self.messages if m.topic == topic]

    def close(self) -> None:
        """A clean close (close frame), then the loop stops."""
        async def _close() -> None:
            if self._ws is not None:
                await self._ws.close()
            if self._session is not None:
                await self._session.close()
        try:
            self._call(_close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)


# --- protobuf wire format (https://protobuf.dev/programming-guides/encoding/) ---------------

def _varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, i


def proto_fields(data: bytes) -> list[tuple[int, Any]]:
    """(field number, value) of a protobuf message: varints as int, fixed64 as double
    (the only 64-bit fields read here), length-delimited as bytes."""
    fields, i = [], 0
    while i < len(data):
        key, i = _varint(data, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(data, i)
        elif wire == 1:
            value, i = struct.unpack_from("<d", data, i)[0], i + 8
        elif wire == 2:
            length, i = _varint(data, i)
            value, i = data[i:i + length], i + length
        elif wire == 5:
            value, i = struct.unpack_from("<f", data, i)[0], i + 4
        else:
            raise ValueError(f"wire type {wire}")
        fields.append((number, value))
    return fields


def proto_dict(data: bytes) -> dict[int, Any]:
    """The last value of each field (no repeated fields)."""
    return dict(proto_fields(data))


def timestamp_ns(data: bytes) -> int:
    """A google.protobuf.Timestamp (seconds = 1, nanos = 2) in ns."""
    fields = proto_dict(data)
    return fields.get(1, 0) * 1_000_000_000 + fields.get(2, 0)


def frame_transforms(payload: bytes) -> list[dict[str, Any]]:
    """foxglove.FrameTransforms: transforms = 1 (repeated FrameTransform: timestamp = 1,
    parent_frame_id = 2, child_frame_id = 3, translation = 4 (Vector3 x, y, z = 1..3),
    rotation = 5 (Quaternion x, y, z, w = 1..4)); proto3 leaves zeros out."""
    out = []
    for number, value in proto_fields(payload):
        assert number == 1
        f = proto_dict(value)
        t, r = proto_dict(f.get(4, b"")), proto_dict(f.get(5, b""))
        out.append({"timestamp_ns": timestamp_ns(f.get(1, b"")),
                    "parent": f.get(2, b"").decode(), "child": f.get(3, b"").decode(),
                    "translation": [t.get(k, 0.0) for k in (1, 2, 3)],
                    "rotation": [r.get(k, 0.0) for k in (1, 2, 3, 4)]})
    return out


def compressed_image(payload: bytes) -> dict[str, Any]:
    """foxglove.CompressedImage: timestamp = 1, data = 2, format = 3, frame_id = 4."""
    f = proto_dict(payload)
    return {"timestamp_ns": timestamp_ns(f.get(1, b"")), "data": f.get(2, b""),
            "format": f.get(3, b"").decode(), "frame_id": f.get(4, b"").decode()}


def compressed_video(payload: bytes) -> dict[str, Any]:
    """foxglove.CompressedVideo: timestamp = 1, frame_id = 2, data = 3, format = 4."""
    f = proto_dict(payload)
    return {"timestamp_ns": timestamp_ns(f.get(1, b"")), "frame_id": f.get(2, b"").decode(),
            "data": f.get(3, b""), "format": f.get(4, b"").decode()}


def main() -> None:
    """``python foxglove_client.py URL N``: connect, wait for N channels, subscribe to them
    all, print READY when a message came, then wait to be killed (the abrupt-disconnect
    test's viewer)."""
    client = FoxgloveClient(sys.argv[1])
    client.wait_for(lambda c: len(c.channels) >= int(sys.argv[2]), 20)
    client.subscribe(list(client.channels))
    client.wait_for(lambda c: bool(c.messages), 20)
    print("READY", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
