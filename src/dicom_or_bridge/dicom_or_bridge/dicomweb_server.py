"""The bridge's DICOMweb service (PS3.18): QIDO-RS and WADO-RS beside the DIMSE SCP.

One model, two protocols: every request is answered from the same
:class:`~dicom_or_core.qr.model.ModelStore` snapshot the C-FIND handler uses, through the
ROS-free :mod:`dicom_or_core.qr.dicomweb` (query parameters -> C-FIND identifier, DICOM
JSON, multipart bodies). This module is the HTTP side only, on aiohttp:

* QIDO-RS (10.6): ``GET {prefix}/studies``, ``/series``, ``/instances``,
  ``/studies/{study}/series``, ``/studies/{study}/instances``,
  ``/studies/{study}/series/{series}/instances`` -> ``application/dicom+json``.
* WADO-RS (10.4): ``/studies/{study}[/series/{series}[/instances/{sop}]]`` ->
  ``multipart/related; type="application/dicom"``, the archived files bit for bit in their
  stored Transfer Syntax; ``.../metadata`` at each level -> ``application/dicom+json``
  without bulk data; ``/studies/{study}/series/{series}/rendered`` of a live video series
  -> its current frame as JPEG or PNG (the twin of the C-GET snapshot), and
  ``.../instances/{sop}/rendered`` of an archived single-frame image, or of an archived
  video instance as ``video/mp4`` (PS3.18 8.7.4), remuxed from the stored stream without
  re-encoding (:mod:`dicom_or_core.iod.video_media`; cached, Range requests served).

The service runs its own asyncio loop in a thread; blocking work (model snapshot, matching,
file reads, waiting for a live frame) runs in a bounded thread pool. Limits: request line
and header sizes, a request body cap, and at most ``max_concurrent_requests`` requests in
progress (more get 503 at once). Security as on the DIMSE side: the bind host, TLS with the
bridge's certificate (client certificates required when a CA is set), and an optional
bearer token compared in constant time; refusals are logged at a limited rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import io
import json
import logging
import re
import shutil
import ssl
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from aiohttp import web
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset

from dicom_or_bridge.server import _RateLimitedLog
from dicom_or_core.iod import video_media
from dicom_or_core.model.context import KIND_VIDEO
from dicom_or_core.model.errors import DicomOrError
from dicom_or_core.qr import dicomweb as dw
from dicom_or_core.qr.model import ModelStore
from dicom_or_ros.loop_thread import start_loop_thread

log = logging.getLogger(__name__)
T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
RenderProvider = Callable[[str], "Dataset | None"]
_UID = r"{%s:[0-9.]{1,64}}"


_PREFIX = re.compile(r"^(/[A-Za-z0-9._~-]+)*/?$")


def url_prefix(value: str) -> str | None:
    """Parameter rule of ``dicomweb_prefix``: empty or ``/segment[/segment...]``."""
    return None if _PREFIX.match(value) else "must be empty or /path (letters, digits, . _ ~ -)"


@dataclass
class DicomWebConfig:
    """Everything the service needs; the node fills it from parameters."""

    host: str = "127.0.0.1"
    port: int = 0
    prefix: str = "/dicom-web"
    token: str = ""                          # empty: no bearer token required
    max_concurrent_requests: int = 16
    max_matches: int = 10000
    tls: ssl.SSLContext | None = None
    max_line_size: int = 8190                # request line (URL with its query)
    max_field_size: int = 8190               # one header field
    max_headers: int = 64
    max_body_bytes: int = 65536              # GET only: a body is never needed
    keepalive_timeout_s: float = 30.0


class _ProtocolLog(logging.Logger):
    """aiohttp's protocol logger: a malformed request (line too long, bad header, ...) is
    bad network input, logged as one rate-limited warning line, never a traceback."""

    def __init__(self, refusals: _RateLimitedLog) -> None:
        super().__init__(f"{__name__}.http")
        self._refusals = refusals

    def exception(self, msg: object, *args: object, exc_info: Any = True,
                  **kwargs: Any) -> None:
        """Called by aiohttp with the request's parse error as ``exc_info``."""
        error = exc_info if isinstance(exc_info, BaseException) else None
        reason = f"{type(error).__name__}: {' '.join(str(error).split())[:80]}" if error else ""
        self._refusals.warning("malformed", f"DICOMweb: {msg} ({reason})", *args)

    def debug(self, msg: object, *args: object, **kwargs: Any) -> None:
        """aiohttp's debug lines (e.g. non-HTTP bytes on the port) are not wanted."""


class _Http(Exception):
    """An HTTP error answer with a text body (the reason)."""

    def __init__(self, status: int, text: str, headers: dict[str, str] | None = None):
        super().__init__(text)
        self.status, self.text, self.headers = status, text, headers or {}


class DicomWebServer:
    """QIDO-RS / WADO-RS over ``store``. ``start()`` returns the bound port."""

    def __init__(self, store: ModelStore, config: DicomWebConfig,
                 logger: logging.Logger | None = None,
                 render: RenderProvider | None = None) -> None:
        self.store, self.config, self.render = store, config, render
        self.log = logger or log
        self._refusals = _RateLimitedLog(self.log)
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._pool = ThreadPoolExecutor(max_workers=config.max_concurrent_requests,
                                        thread_name_prefix="dicomweb")
        self._slots = config.max_concurrent_requests
        self.counts = {"http_requests": 0, "http_refused": 0, "http_busy": 0,
                       "http_errors": 0}
        self._videos = _Mp4Cache()

    # --- life cycle ------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """The service root (PS3.18 8.2), as clients should be configured with it."""
        scheme = "https" if self.config.tls else "http"
        host = self.config.host if ":" not in self.config.host else f"[{self.config.host}]"
        return f"{scheme}://{host}:{self.port}{self.config.prefix}"

    def start(self, timeout_s: float = 10.0) -> int:
        """Bind and serve in a thread of its own; OSError when the port cannot be bound."""
        self._loop, self._thread = start_loop_thread(self._bind, "dicomweb", "DICOMweb service",
                                                     timeout_s)
        return self.port

    async def _bind(self) -> None:
        c = self.config
        app = web.Application(client_max_size=c.max_body_bytes,
                              middlewares=[self._guard])
        self._routes(app, c.prefix.rstrip("/"))
        self._busy = asyncio.Semaphore(self._slots)
        self._runner = web.AppRunner(app, access_log=None, max_line_size=c.max_line_size,
                                     max_field_size=c.max_field_size,
                                     max_headers=c.max_headers, shutdown_timeout=1.0,
                                     logger=_ProtocolLog(self._refusals),
                                     keepalive_timeout=c.keepalive_timeout_s)
        await self._runner.setup()
        site = web.TCPSite(self._runner, c.host, c.port, ssl_context=c.tls,
                           backlog=c.max_concurrent_requests * 4)
        try:
            await site.start()
        except BaseException:
            await self._runner.cleanup()
            raise
        self.port = int(self._runner.addresses[0][1])

    def stop(self, timeout_s: float = 5.0) -> None:
        """Close the listener and every connection, then end the loop's thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or not thread.is_alive():
            return
        if self._runner is not None:
            future = asyncio.run_coroutine_threadsafe(self._runner.cleanup(), loop)
            try:
                future.result(timeout_s)
            except Exception as exc:  # a stuck connection must not block the node's exit
                self.log.warning("DICOMweb service did not stop cleanly: %s", exc)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout_s)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._videos.close()

    # --- routing and guard -------------------------------------------------------------

    def _routes(self, app: web.Application, p: str) -> None:
        study, series, sop = _UID % "study", _UID % "series", _UID % "sop"
        qido = self._qido
        get: list[tuple[str, Handler]] = [
            (f"{p}/studies", partial(qido, "studies")),
            (f"{p}/series", partial(qido, "series")),
            (f"{p}/instances", partial(qido, "instances")),
            (f"{p}/studies/{study}/series", partial(qido, "series")),
            (f"{p}/studies/{study}/instances", partial(qido, "instances")),
            (f"{p}/studies/{study}/series/{series}/instances", partial(qido, "instances")),
            (f"{p}/studies/{study}", self._retrieve),
            (f"{p}/studies/{study}/series/{series}", self._retrieve),
            (f"{p}/studies/{study}/series/{series}/instances/{sop}", self._retrieve),
            (f"{p}/studies/{study}/metadata", self._metadata),
            (f"{p}/studies/{study}/series/{series}/metadata", self._metadata),
            (f"{p}/studies/{study}/series/{series}/instances/{sop}/metadata", self._metadata),
            (f"{p}/studies/{study}/series/{series}/rendered", self._rendered_series),
            (f"{p}/studies/{study}/series/{series}/instances/{sop}/rendered",
             self._rendered_instance),
        ]
        for path, handler in get:
            app.router.add_get(path, handler, allow_head=False)

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Access rule, concurrency limit and error mapping around every handler."""
        self.counts["http_requests"] += 1
        if self.config.token and not self._authorized(request):
            self.counts["http_refused"] += 1
            self._refusals.warning("refused", "DICOMweb: refused %s %s from %s: missing or "
                                   "wrong bearer token", request.method, request.path,
                                   request.remote)
            return web.Response(status=401, text="a valid bearer token is required",
                                headers={"WWW-Authenticate": 'Bearer realm="dicom_or"'})
        if self._busy.locked():
            self.counts["http_busy"] += 1
            self._refusals.warning("busy", "DICOMweb: %d requests in progress; refused %s "
                                   "from %s (503)", self._slots, request.path, request.remote)
            return web.Response(status=503, text="too many requests in progress",
                                headers={"Retry-After": "1"})
        async with self._busy:
            return await self._answer(request, handler)

    async def _answer(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except _Http as exc:
            if exc.status >= 500:
                self.counts["http_errors"] += 1
            self.log.info("DICOMweb %s %s: %d %s", request.method, request.path_qs[:200],
                          exc.status, exc.text)
            return web.Response(status=exc.status, text=exc.text, headers=exc.headers)
        except web.HTTPException:
            raise
        except (ConnectionResetError, asyncio.CancelledError):
            raise
        except Exception as exc:  # a bug answers 500, never ends the service
            self.counts["http_errors"] += 1
            self.log.exception("DICOMweb %s failed", request.path)
            return web.Response(status=500, text=f"internal error: {type(exc).__name__}")

    def _authorized(self, request: web.Request) -> bool:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode(), self.config.token.encode())

    async def _run(self, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` in the pool: blocking work never stalls the loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, partial(function, *args))

    # --- QIDO-RS -----------------------------------------------------------------------

    async def _qido(self, resource: str, request: web.Request) -> web.StreamResponse:
        """QIDO-RS Search (PS3.18 10.6): the C-FIND of the same query, in DICOM JSON."""
        info = request.match_info
        try:
            parsed = dw.parse_qido(resource, list(request.query.items()),
                                   study_uid=info.get("study"), series_uid=info.get("series"))
        except dw.QidoError as exc:
            raise _Http(400, exc.comment) from None
        if dw.choose(dw.parse_accept(request.headers.get("Accept")),
                     (dw.MEDIA_DICOM_JSON, "application/json")) is None:
            raise _Http(406, "QIDO-RS answers application/dicom+json")
        body = await self._run(self._search, parsed)
        headers = {"Warning": dw.FUZZY_WARNING} if parsed.fuzzy_ignored else {}
        return web.Response(body=body, content_type=dw.MEDIA_DICOM_JSON, charset="utf-8",
                            headers=headers)

    def _search(self, parsed: dw.QidoRequest) -> bytes:
        try:
            answers = dw.run_qido(parsed, self.store.snapshot(), self.config.max_matches)
        except dw.TooManyMatches as exc:
            raise _Http(413, exc.comment) from None
        level = parsed.query.level
        return json.dumps([dw.to_json(a, level, self.base_url) for a in answers]).encode()

    # --- WADO-RS -----------------------------------------------------------------------

    def _archived(self, request: web.Request) -> list[Any]:
        """The archived files the path names (404 when the study / series / instance is
        unknown or has none archived)."""
        info = request.match_info
        model = self.store.snapshot()
        study, series, sop = info.get("study", ""), info.get("series"), info.get("sop")
        try:
            files = dw.instance_files(model, study, series, sop)
        except dw.QidoError as exc:
            raise _Http(400, exc.comment) from None
        if not files:
            known = dw.has_series(model, study, series) and sop is None
            raise _Http(404, "no archived instance there" if known else
                        "no such study, series or instance")
        return files

    def _parts(self, request: web.Request) -> tuple[str, dw.MultipartBody]:
        files = self._archived(request)
        syntaxes = [dw.stored_transfer_syntax(path) for path in files]
        if not dw.accepts_dicom(dw.parse_accept(request.headers.get("Accept")),
                                set(syntaxes)):
            raise _Http(406, 'only multipart/related; type="application/dicom" in the '
                        f"stored transfer syntax ({', '.join(sorted(set(syntaxes)))}) is "
                        "served")
        boundary = dw.new_boundary()
        return boundary, dw.multipart_body(list(zip(files, syntaxes, strict=True)), boundary)

    async def _retrieve(self, request: web.Request) -> web.StreamResponse:
        """WADO-RS Retrieve (PS3.18 10.4): the instances, streamed from their files."""
        boundary, body = await self._run(self._parts, request)
        response = web.StreamResponse(headers={
            "Content-Type": dw.multipart_content_type(boundary),
            "Content-Length": str(body.content_length)})
        await response.prepare(request)
        chunks, lock = body.chunks, threading.Lock()

        def step() -> bytes | None:
            with lock:   # the generator runs in one pool thread at a time
                return next(chunks, None)

        def close() -> None:
            with lock:
                chunks.close()   # closes the file being sent

        try:
            while (chunk := await self._run(step)) is not None:
                await response.write(chunk)
        except ConnectionResetError:   # the client went away: nothing to answer
            self.log.info("DICOMweb %s: client closed the connection", request.path)
            return response
        finally:
            # Cancelled (client gone, service stopping) while a pool thread is still in
            # step(): close after it, from the pool; the service's stop may have shut the
            # pool down already, then the file closes with the generator's collection.
            with contextlib.suppress(RuntimeError):
                self._pool.submit(close)
        await response.write_eof()
        return response

    async def _metadata(self, request: web.Request) -> web.StreamResponse:
        """WADO-RS Retrieve Metadata (10.4.1.1.3): DICOM JSON without bulk data."""
        if dw.choose(dw.parse_accept(request.headers.get("Accept")),
                     (dw.MEDIA_DICOM_JSON, "application/json")) is None:
            raise _Http(406, "metadata is served as application/dicom+json")
        body = await self._run(self._metadata_body, request)
        return web.Response(body=body, content_type=dw.MEDIA_DICOM_JSON, charset="utf-8")

    def _metadata_body(self, request: web.Request) -> bytes:
        return json.dumps([dw.metadata_json(path) for path in self._archived(request)]
                          ).encode()

    # --- rendered ------------------------------------------------------------------------

    async def _rendered_series(self, request: web.Request) -> web.StreamResponse:
        """Rendered (10.4.1.1.4) of a live video series: its current frame, grabbed like
        the C-GET snapshot."""
        media = self._rendered_media(request)
        study, series = request.match_info["study"], request.match_info["series"]
        if not await self._run(self._is_live_video, study, series):
            raise _Http(404, "not a live video series")
        image = await self._run(self.render, series) if self.render else None
        if image is None:
            raise _Http(503, "no current frame of the live series", {"Retry-After": "1"})
        body = await self._run(encode_image, image, media)
        return web.Response(body=body, content_type=media)

    async def _rendered_instance(self, request: web.Request) -> web.StreamResponse:
        """Rendered of an archived single-frame, uncompressed image, or of a video
        instance as ``video/mp4``."""
        (path,) = await self._run(self._archived, request)
        if await self._run(video_media.is_video, path):
            return await self._rendered_video(request, path)
        media = self._rendered_media(request)
        body = await self._run(_render_file, path, media)
        return web.Response(body=body, content_type=media)

    async def _rendered_video(self, request: web.Request, path: Path) -> web.StreamResponse:
        """A video instance rendered as ``video/mp4`` (PS3.18 8.7.4): the stored coded
        pictures in an MP4 container, sent as a file (Range requests answered 206, so a
        browser's video element can seek)."""
        accept = dw.parse_accept(request.headers.get("Accept"))
        if dw.choose(accept, (video_media.MEDIA_MP4,)) is None:
            raise _Http(406, "a video instance is rendered as video/mp4")
        try:
            mp4 = await self._run(self._videos.get, path)
        except DicomOrError as exc:
            raise _Http(406, f"cannot render this video: {exc}") from None
        response = web.FileResponse(mp4, headers={"Content-Type": video_media.MEDIA_MP4})
        try:
            await response.prepare(request)   # sent while the cache still holds the file
        except ConnectionResetError:
            self.log.info("DICOMweb %s: client closed the connection", request.path)
        return response

    @staticmethod
    def _rendered_media(request: web.Request) -> str:
        media = dw.choose(dw.parse_accept(request.headers.get("Accept")),
                          (dw.MEDIA_JPEG, dw.MEDIA_PNG))
        if media is None:
            raise _Http(406, "rendered images are image/jpeg or image/png")
        return media

    def _is_live_video(self, study: str, series: str) -> bool:
        return any(s.descriptor.series_instance_uid == series
                   and s.descriptor.session.study.study_instance_uid == study
                   and s.descriptor.kind == KIND_VIDEO for s in self.store.streams())


def encode_image(image: Dataset, media: str) -> bytes:
    """A single-frame 8-bit image (RGB or MONOCHROME2) as JPEG or PNG."""
    pixels = np.asarray(image.pixel_array)
    if pixels.ndim not in (2, 3) or pixels.dtype != np.uint8 or \
            int(getattr(image, "NumberOfFrames", 1) or 1) != 1:
        raise _Http(406, "only single-frame 8-bit images can be rendered")
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG" if media == dw.MEDIA_JPEG else "PNG",
                                 quality=90)
    return buffer.getvalue()


def _render_file(path: Any, media: str) -> bytes:
    try:
        image = dcmread(path)
        return encode_image(image, media)
    except _Http:
        raise
    except Exception as exc:  # compressed, no pixels, ...: not renderable here
        raise _Http(406, f"cannot render this instance: {type(exc).__name__}") from None


class _Mp4Cache:
    """The last few remuxed MP4s (a player asks for one file many times: Range requests),
    in a temporary folder the service removes when it stops; one remux at a time."""

    def __init__(self, size: int = 4) -> None:
        self._size = size
        self._dir: Path | None = None
        self._files: OrderedDict[tuple[str, int], Path] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: Path) -> Path:
        """The MP4 of the archived video instance at ``path`` (DicomOrError: not one)."""
        key = (str(path), path.stat().st_mtime_ns)
        with self._lock:
            if key in self._files:
                self._files.move_to_end(key)
                return self._files[key]
            if self._dir is None:
                self._dir = Path(tempfile.mkdtemp(prefix="dicomweb_mp4_"))
            folder = Path(tempfile.mkdtemp(dir=self._dir))
            try:
                self._files[key] = video_media.render_mp4(path, folder)
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise
            while len(self._files) > self._size:
                _, old = self._files.popitem(last=False)
                shutil.rmtree(old.parent, ignore_errors=True)   # an open file stays readable
            return self._files[key]

    def close(self) -> None:
        """Remove every cached file."""
        with self._lock:
            if self._dir is not None:
                shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
            self._files.clear()
