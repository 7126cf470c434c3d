"""The OR view's web service (aiohttp, ROS-free): the page, a live WebSocket, the bridge's
DICOMweb behind one origin, and the recorder's controls.

Routes:

* ``GET /`` and ``/static/*`` - the page (HTML, CSS, JS shipped with the package; no CDN).
* ``GET /api/config`` - whether a token is required (the page asks for it then).
* ``GET /ws`` - WebSocket. The client's first message is ``{"token": "...", "want":
  ["data", "video"]}`` (``want`` optional: both). "data": JSON text messages (``session``,
  ``recorder``, ``streams``, ``wave``, ``pose``, ``dicomweb``); "video": binary frames
  (:func:`dicom_or_view.live.frame_message`), the newest frame of each stream per client,
  so a slow client gets fewer frames, never a queue of old ones. The page takes its video
  on a connection of its own, in a Web Worker.
* ``GET /dicom-web/...`` - the bridge's DICOMweb service (QIDO-RS, WADO-RS, rendered),
  proxied: the page calls the PS3.18 API of the bridge without the bridge needing CORS, and
  the bridge's own bearer token stays on the server. Accept and Range pass through.
* ``GET /api/waveform/{study}/{series}/{sop}`` - a recorded waveform instance, retrieved
  with WADO-RS from the bridge, as traces in physical units (JSON).
* ``POST /api/record`` ``{"command": "START"|"STOP"|"SNAPSHOT", "series": [...]}`` - the
  recorder's RecordControl service.

Access rule (the bridge's DICOMweb rule): when ``token`` is set, every route but the static
page and ``/api/config`` needs ``Authorization: Bearer <token>`` (the WebSocket: its first
message), compared in constant time; refused requests get 401 and are logged at a limited
rate. The service listens on ``host`` (default loopback).
"""

from __future__ import annotations

import asyncio
import hmac
import io
import json
import logging
import ssl
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from aiohttp import web
from pydicom import dcmread

from dicom_or_core.model.errors import DicomOrError
from dicom_or_ros.loop_thread import start_loop_thread

log = logging.getLogger(__name__)
WEB_DIR = Path(__file__).resolve().parent / "web"
COMMANDS = {"START": 1, "STOP": 2, "SNAPSHOT": 3}
# Hop-by-hop and length headers are the proxy's own (RFC 9110 7.6.1).
_PASSED_REQUEST = ("Accept", "Range", "If-Range", "If-None-Match", "If-Modified-Since")
_PASSED_RESPONSE = ("Content-Type", "Content-Range", "Accept-Ranges", "Last-Modified",
                    "ETag", "Warning", "Retry-After")
Control = Callable[[int, list[str]], "Future[dict[str, Any]]"]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class ViewConfig:
    """Everything the service needs; the node fills it from its parameters."""

    host: str = "127.0.0.1"
    port: int = 0
    token: str = ""                 # empty: no token required
    dicomweb_url: str = ""          # the bridge's service root; "" until known
    dicomweb_token: str = ""        # the bridge's bearer token, if it requires one
    dicomweb_tls: ssl.SSLContext | None = None   # client TLS for an https:// bridge
    max_clients: int = 16
    control_timeout_s: float = 15.0
    max_waveform_bytes: int = 128 << 20  # a recorded waveform drawn by /api/waveform
    web_dir: Path = field(default_factory=lambda: WEB_DIR)


class _Client:
    """One browser: its JSON queue and the newest frame of each video stream."""

    def __init__(self, ws: web.WebSocketResponse, data: bool = True,
                 video: bool = True) -> None:
        self.ws, self.data, self.video = ws, data, video
        self.texts: asyncio.Queue[str] = asyncio.Queue(maxsize=512)
        self.frames: dict[str, bytes] = {}
        self.wake = asyncio.Event()
        self.dropped = 0


class ViewServer:
    """See the module docstring. ``start()`` returns the bound port; ``publish`` and
    ``publish_frame`` may be called from any thread."""

    def __init__(self, config: ViewConfig, control: Control | None = None,
                 logger: logging.Logger | None = None) -> None:
        self.config, self.control = config, control
        self.log = logger or log
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._session: aiohttp.ClientSession | None = None
        self._clients: set[_Client] = set()
        self._latest: dict[str, str] = {}      # session, recorder, streams, dicomweb
        self._last_refusal = 0.0
        self.counts = {"requests": 0, "refused": 0, "frames_sent": 0, "texts_dropped": 0}

    # --- life cycle ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The page's address."""
        host = self.config.host
        host = "127.0.0.1" if host in ("0.0.0.0", "") else host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/"

    def start(self, timeout_s: float = 10.0) -> int:
        """Bind and serve in a thread of its own; OSError when the port cannot be bound."""
        self._loop, self._thread = start_loop_thread(self._bind, "or_view_http", "the OR view",
                                                     timeout_s)
        return self.port

    async def _bind(self) -> None:
        app = web.Application(middlewares=[self._guard], client_max_size=65536)
        app.router.add_get("/", self._index)
        app.router.add_static("/static", self.config.web_dir, append_version=False)
        app.router.add_get("/api/config", self._config)
        app.router.add_get("/ws", self._websocket)
        app.router.add_get("/dicom-web/{tail:.*}", self._proxy)
        app.router.add_get("/api/waveform/{study}/{series}/{sop}", self._waveform)
        app.router.add_post("/api/record", self._record)
        tls = self.config.dicomweb_tls
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=30),
            auto_decompress=False,
            connector=aiohttp.TCPConnector(ssl=tls) if tls is not None else None)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.port)
        try:
            await site.start()
        except BaseException:
            await self._runner.cleanup()
            await self._session.close()
            raise
        self.port = int(self._runner.addresses[0][1])

    def stop(self, timeout_s: float = 5.0) -> None:
        """Close every connection and the listener, then end the loop's thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or not thread.is_alive():
            return

        async def close() -> None:
            for client in list(self._clients):
                await client.ws.close()
            if self._runner is not None:
                await self._runner.cleanup()
            if self._session is not None:
                await self._session.close()

        try:
            asyncio.run_coroutine_threadsafe(close(), loop).result(timeout_s)
        except Exception as exc:  # a stuck connection must not block the node's exit
            self.log.warning("the OR view did not stop cleanly: %s", exc)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout_s)

    # --- from the node (any thread) -------------------------------------------------------

    def has_clients(self) -> bool:
        """Whether a browser takes the live data (waveforms and poses are sent only then)."""
        return any(c.data for c in self._clients)

    def wants_video(self) -> bool:
        """Whether a browser takes video frames (they are subscribed and encoded only then)."""
        return any(c.video for c in self._clients)

    def set_dicomweb_url(self, url: str) -> None:
        """The bridge's service root (from its latched topic, or a parameter)."""
        self.config.dicomweb_url = url.rstrip("/")
        self.publish("dicomweb", {"url": self.config.dicomweb_url})

    def publish(self, kind: str, data: dict[str, Any], keep: bool = True) -> None:
        """Send ``{"type": kind, ...data}`` to every client; ``keep``: also to clients that
        connect later (the newest of each kind)."""
        text = json.dumps({"type": kind, **data}, allow_nan=False, default=str)
        if keep:
            self._latest[kind] = text
        loop = self._loop
        if loop is not None and self.has_clients():
            loop.call_soon_threadsafe(self._broadcast, text)

    def publish_frame(self, series: str, message: bytes) -> None:
        """The newest frame of ``series`` for every client (replaces an unsent one)."""
        loop = self._loop
        if loop is not None and self.wants_video():
            loop.call_soon_threadsafe(self._offer_frame, series, message)

    def _broadcast(self, text: str) -> None:
        for client in self._clients:
            if not client.data:
                continue
            try:
                client.texts.put_nowait(text)
            except asyncio.QueueFull:
                client.dropped += 1
                self.counts["texts_dropped"] += 1
                continue
            client.wake.set()

    def _offer_frame(self, series: str, message: bytes) -> None:
        for client in self._clients:
            if client.video:
                client.frames[series] = message
                client.wake.set()

    # --- access ---------------------------------------------------------------------------

    def _token_ok(self, token: str) -> bool:
        return not self.config.token or hmac.compare_digest(
            token.strip().encode(), self.config.token.encode())

    def _authorized(self, request: web.Request) -> bool:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        return not self.config.token or (scheme.lower() == "bearer"
                                         and self._token_ok(token))

    def _refused(self, what: str, peer: str | None) -> None:
        self.counts["refused"] += 1
        now = time.monotonic()
        if now - self._last_refusal >= 5.0:
            self._last_refusal = now
            self.log.warning("OR view: refused %s from %s: missing or wrong token", what, peer)

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """The access rule; a bug answers 500, never ends the service."""
        self.counts["requests"] += 1
        public = request.path in ("/", "/api/config", "/ws") or \
            request.path.startswith("/static/")
        if not public and not self._authorized(request):
            self._refused(f"{request.method} {request.path}", request.remote)
            return web.Response(status=401, text="a valid bearer token is required",
                                headers={"WWW-Authenticate": 'Bearer realm="dicom_or"'})
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except (ConnectionResetError, asyncio.CancelledError):
            raise
        except Exception as exc:
            self.log.exception("OR view %s failed", request.path)
            return web.Response(status=500, text=f"internal error: {type(exc).__name__}")

    # --- page -----------------------------------------------------------------------------

    async def _index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(self.config.web_dir / "index.html",
                                headers={"Cache-Control": "no-cache"})

    async def _config(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"token_required": bool(self.config.token),
                                  "dicomweb": "/dicom-web"})

    # --- live -----------------------------------------------------------------------------

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        if len(self._clients) >= self.config.max_clients:
            return web.Response(status=503, text="too many viewers",
                                headers={"Retry-After": "5"})
        ws = web.WebSocketResponse(heartbeat=20.0, max_msg_size=4096)
        await ws.prepare(request)
        try:
            hello = json.loads(await ws.receive_str(timeout=10.0))
            if not isinstance(hello, dict):
                hello = {}
            token: str | None = str(hello.get("token", ""))
            want = hello.get("want", ["data", "video"])
            want = set(want) if isinstance(want, list) else {"data", "video"}
        except (TimeoutError, TypeError, ValueError, RuntimeError):
            token, want = None, set()
        if token is None or not self._token_ok(token):
            self._refused("the live WebSocket", request.remote)
            await ws.close(code=4401, message=b"a valid token is required")
            return ws
        # A page may take its data and its video on two connections (the video one in a
        # Web Worker): "want": ["data"] / ["video"]; both by default.
        client = _Client(ws, data="data" in want, video="video" in want)
        for text in self._latest.values() if client.data else ():
            client.texts.put_nowait(text)
        client.wake.set()
        self._clients.add(client)
        sender = asyncio.create_task(self._send(client))
        try:
            async for _message in ws:   # the page sends nothing more; this sees the close
                pass
        finally:
            self._clients.discard(client)
            sender.cancel()
        return ws

    async def _send(self, client: _Client) -> None:
        """Texts in order, then the newest frame of each stream, until the client goes."""
        try:
            while not client.ws.closed:
                await client.wake.wait()
                client.wake.clear()
                while not client.texts.empty():
                    await client.ws.send_str(client.texts.get_nowait())
                frames, client.frames = client.frames, {}
                for message in frames.values():
                    await client.ws.send_bytes(message)
                    self.counts["frames_sent"] += 1
        except (ConnectionResetError, RuntimeError):
            pass   # the client went away

    # --- DICOMweb -------------------------------------------------------------------------

    def _bridge_headers(self, request: web.Request | None = None) -> dict[str, str]:
        headers = {}
        if request is not None:
            headers = {k: request.headers[k] for k in _PASSED_REQUEST if k in request.headers}
        if self.config.dicomweb_token:
            headers["Authorization"] = f"Bearer {self.config.dicomweb_token}"
        return headers

    def _bridge_url(self, tail: str) -> str:
        if not self.config.dicomweb_url:
            raise web.HTTPServiceUnavailable(text="the bridge's DICOMweb URL is not known yet",
                                             headers={"Retry-After": "1"})
        return f"{self.config.dicomweb_url}/{tail}"

    async def _proxy(self, request: web.Request) -> web.StreamResponse:
        """GET the same resource from the bridge and stream its answer back."""
        assert self._session is not None
        url = self._bridge_url(request.match_info["tail"])
        try:
            async with self._session.get(url, params=list(request.query.items()),
                                         headers=self._bridge_headers(request)) as answer:
                headers = {k: answer.headers[k] for k in _PASSED_RESPONSE
                           if k in answer.headers}
                if answer.content_length is not None:
                    headers["Content-Length"] = str(answer.content_length)
                response = web.StreamResponse(status=answer.status, headers=headers)
                await response.prepare(request)
                async for chunk in answer.content.iter_chunked(1 << 16):
                    await response.write(chunk)
                await response.write_eof()
                return response
        except (TimeoutError, aiohttp.ClientConnectionError) as exc:
            if request.transport is None or request.transport.is_closing():
                raise ConnectionResetError from None
            return web.Response(status=502, text=f"the bridge's DICOMweb service did not "
                                f"answer: {type(exc).__name__}")

    async def _waveform(self, request: web.Request) -> web.StreamResponse:
        """A recorded waveform instance as traces: WADO-RS Retrieve Instance from the bridge
        (multipart/related; type="application/dicom"), read with pydicom."""
        assert self._session is not None
        info = request.match_info
        url = self._bridge_url(f"studies/{info['study']}/series/{info['series']}/instances/"
                               f"{info['sop']}")
        headers = self._bridge_headers()
        headers["Accept"] = 'multipart/related; type="application/dicom"'
        async with self._session.get(url, headers=headers) as answer:
            if answer.status != 200:
                return web.Response(status=answer.status, text=await answer.text())
            reader = aiohttp.MultipartReader.from_response(answer)
            part = await reader.next()
            if part is None or isinstance(part, aiohttp.MultipartReader):
                return web.Response(status=502, text="no instance in the bridge's answer")
            body = bytearray()
            while chunk := await part.read_chunk(1 << 16):
                body += chunk
                if len(body) > self.config.max_waveform_bytes:   # a video, not a waveform
                    return web.Response(status=413, text="instance too large to draw")
        loop = asyncio.get_running_loop()
        try:
            traces = await loop.run_in_executor(None, waveform_traces, bytes(body))
        except (ValueError, AttributeError, KeyError) as exc:
            return web.Response(status=406, text=f"not a waveform instance: {exc}")
        return web.json_response(traces)

    # --- recorder -------------------------------------------------------------------------

    async def _record(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
            command = COMMANDS[str(body.get("command", "")).upper()]
            series = [str(s) for s in body.get("series", [])]
        except (ValueError, KeyError, AttributeError, TypeError):
            return web.Response(status=400, text='expected {"command": "START" | "STOP" | '
                                '"SNAPSHOT", "series": [SeriesInstanceUID, ...]}')
        if self.control is None:
            return web.Response(status=503, text="no recorder control here")
        future = self.control(command, series)
        try:
            result = await asyncio.wait_for(asyncio.wrap_future(future),
                                            self.config.control_timeout_s)
        except TimeoutError:
            return web.Response(status=504, text="the recorder did not answer")
        except RuntimeError as exc:   # no recorder on the graph
            return web.Response(status=503, text=str(exc))
        self.log.info("OR view: RecordControl %s from %s: %s", body.get("command"),
                      request.remote, result.get("message", ""))
        return web.json_response(result)


def client_tls(ca: str = "", cert: str = "", key: str = "") -> ssl.SSLContext | None:
    """The client TLS context for the bridge's DICOMweb over https: the CA that signed the
    bridge's certificate (default: the system's), and the view's own certificate when the
    bridge requires client certificates. None when nothing is set (the system's CAs apply to
    an https URL anyway)."""
    if not (ca or cert or key):
        return None
    if bool(cert) != bool(key):
        raise DicomOrError("dicomweb_cert", "dicomweb_cert and dicomweb_key must be set "
                           "together")
    try:
        context = ssl.create_default_context(cafile=ca or None)
    except (OSError, ssl.SSLError) as exc:
        raise DicomOrError("dicomweb_ca", f"cannot load the CA file: {exc}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        if cert:
            context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise DicomOrError("dicomweb_cert", f"cannot load certificate/key: {exc}") from None
    return context


def waveform_traces(data: bytes, max_points: int = 20000) -> dict[str, Any]:
    """A waveform instance (Waveform Sequence, PS3.3 C.10.9) as physical traces: per
    multiplex group its sampling frequency and per channel label, unit and values
    (pydicom's ``waveform_array`` applies sensitivity, correction and baseline), decimated
    to at most ``max_points`` per channel."""
    ds = dcmread(io.BytesIO(data))
    groups = []
    for index, group in enumerate(ds.WaveformSequence):
        values = np.asarray(ds.waveform_array(index), dtype=np.float64)
        step = max(1, -(-values.shape[0] // max_points))
        channels = []
        for c, item in enumerate(group.ChannelDefinitionSequence):
            units = item.get("ChannelSensitivityUnitsSequence")
            unit = str(units[0].CodeValue) if units else ""
            label = str(item.get("ChannelLabel", "")) or str(
                item.ChannelSourceSequence[0].CodeMeaning)
            channels.append({"label": label, "unit": unit,
                             "values": np.round(values[::step, c], 3).tolist()})
        groups.append({"sampling_hz": float(group.SamplingFrequency) / step,
                       "samples": int(values.shape[0]), "channels": channels})
    return {"sop_class": str(ds.SOPClassUID), "modality": str(ds.get("Modality", "")),
            "description": str(ds.get("SeriesDescription", "")),
            "start": str(ds.get("AcquisitionDateTime", "")), "groups": groups}
