"""STOW-RS user agent (PS3.18 10.5): the storage sender's second transport, beside C-STORE.

Each request is ``POST {base}/studies`` with ``Content-Type: multipart/related;
type="application/dicom"; boundary=...``, one ``application/dicom`` part per instance (the
archived PS3.10 file as it is on disk), ``Accept: application/dicom+json``. The body is
streamed from the files in 1 MiB chunks (:class:`MultipartBody`: its length, computed from
the file sizes, is the request's Content-Length), so a request costs one chunk of memory
whatever the size of its instances. A round's instances go in requests of at most
``max_instances`` instances and ``max_request_bytes`` bytes (a larger file goes alone).

What each answer means (:func:`judge`), per instance:

* listed in the Referenced SOP Sequence (0008,1199) -> stored (a Warning Reason (0008,1196)
  is logged). With STOW-RS there is no Storage Commitment: this confirmation in the response
  is what makes an instance count as delivered.
* listed in the Failed SOP Sequence (0008,1198) -> its Failure Reason (0008,1197) is read like
  a C-STORE status (:func:`~dicom_or_core.scu.transport.classify_status`): A7xx out of
  resources -> sent again after the backoff; A9xx, Cxxx, 0110, 0122, ... -> failed for good.
* in neither: in a request of several instances it is sent again alone (a server that
  answers a whole request with 4xx, e.g. 413 Payload Too Large or 400 for one bad part, then
  says which instance it refuses); alone, a 2xx answer that does not confirm it -> sent again
  after the backoff, a 4xx / 409 -> failed.

A request answered as a whole (:class:`~dicom_or_core.scu.transport.PacsUnreachable`: every
instance of it waits with backoff, the outage is logged once): connection refused or reset,
TLS failure, connect or read timeout, HTTP 5xx, 408, 429 (the destination is down or busy);
401, 403, 407 (it refuses our credentials: an operator fixes ``pacs_token`` or the client
certificate, and delivery resumes without a restart of the case); 3xx, 404, 405 (no STOW-RS
service at the configured URL). Failing instances for good on such an answer would hand an
operator every instance of the outage to resend by hand.

Exactly-once: an instance is sent until one response confirms it, and never after (the spool
keeps its state). A request whose response is lost (timeout, destination stopped while
answering) is sent again; the destination then receives the same SOP Instance UID twice,
which a PACS keeps once (Orthanc does; a Failure Reason 0111 duplicate counts as stored).
"""

from __future__ import annotations

import logging
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
from pydicom.dataset import Dataset

from dicom_or_core.archive.spool import InstanceRow
from dicom_or_core.model.errors import DicomOrError
from dicom_or_core.scu.transport import (
    FAILED,
    RETRY,
    STORED,
    DeliverySink,
    PacsUnreachable,
    StoredFile,
    classify_status,
)

log = logging.getLogger("dicom_or.stow_rs")
DICOM_MEDIA_TYPE = "application/dicom"
DICOM_JSON = "application/dicom+json"
CHUNK_BYTES = 1 << 20
# A STOW-RS response lists each instance once (about 600 bytes each): anything near this is
# not a response to our request, and is not read further.
MAX_RESPONSE_BYTES = 16 << 20
# HTTP statuses that answer a request as a whole: the destination is down or busy ...
OUTAGE_STATUSES = frozenset({408, 429})
# ... refuses our credentials ...
CREDENTIAL_STATUSES = frozenset({401, 403, 407})
# ... or is not a STOW-RS service (wrong URL; a redirect is not followed with a body).
NOT_STOW_STATUSES = frozenset({404, 405})


@dataclass(frozen=True)
class StowConfig:
    """Where and how to POST; checked by :meth:`validate`."""

    url: str                       # base URL of the DICOMweb service, e.g. .../dicom-web
    token: str = ""                # bearer token (RFC 6750), sent as Authorization
    ca_file: str = ""              # CA bundle to verify an https server (empty: system CAs)
    cert_file: str = ""            # client certificate (PEM) for mutual TLS
    key_file: str = ""             # its private key, if not in cert_file
    connect_timeout_s: float = 5.0
    timeout_s: float = 30.0        # read timeout: no byte of the answer for this long
    max_instances: int = 50
    max_request_bytes: int = 256 << 20

    def validate(self) -> StowConfig:
        """Self, checked; else DicomOrError naming the recorder parameter."""
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise DicomOrError("pacs_stow_url", "must be an http:// or https:// URL of a "
                               "DICOMweb service, e.g. http://pacs:8042/dicom-web", self.url)
        if parts.query or parts.fragment:
            raise DicomOrError("pacs_stow_url", "must be a base URL without query or "
                               "fragment", self.url)
        for name, path in (("pacs_tls_ca_file", self.ca_file),
                           ("pacs_tls_cert_file", self.cert_file),
                           ("pacs_tls_key_file", self.key_file)):
            if path and not Path(path).is_file():
                raise DicomOrError(name, "is not a readable file", path)
        if self.key_file and not self.cert_file:
            raise DicomOrError("pacs_tls_key_file", "needs pacs_tls_cert_file")
        if (self.ca_file or self.cert_file) and parts.scheme != "https":
            raise DicomOrError("pacs_stow_url", "TLS files are set: the URL must be https://",
                               self.url)
        if any(c in self.token for c in "\r\n"):
            raise DicomOrError("pacs_token", "must be one line")
        if self.connect_timeout_s <= 0 or self.timeout_s <= 0:
            raise DicomOrError("timeout_s", "timeouts must be > 0")
        if self.max_instances < 1:
            raise DicomOrError("pacs_batch_size", "must be >= 1", self.max_instances)
        if self.max_request_bytes < 1:
            raise DicomOrError("pacs_stow_max_request_mib", "must be >= 1",
                               self.max_request_bytes)
        return self

    @property
    def studies_url(self) -> str:
        """The Store Instances resource (PS3.18 10.5.1): ``{base}/studies``."""
        return self.url.rstrip("/") + "/studies"


class MultipartBody:
    """A ``multipart/related; type="application/dicom"`` body (RFC 2387, PS3.18 8.6.1.2)
    streamed from files: iterating yields it in chunks of at most :data:`CHUNK_BYTES`,
    ``len()`` is its exact size (the Content-Length) computed from the file sizes. The files
    must not change while it is sent (archived instances never do); a file that did is an
    OSError, never a request with a wrong length."""

    def __init__(self, paths: list[Path], boundary: str = "") -> None:
        self.paths = list(paths)
        self.boundary = boundary or f"dicom-or-{uuid.uuid4().hex}"
        self.sizes = [p.stat().st_size for p in self.paths]
        self._head = (f"--{self.boundary}\r\nContent-Type: {DICOM_MEDIA_TYPE}\r\n\r\n"
                      ).encode("ascii")
        self._tail = f"--{self.boundary}--\r\n".encode("ascii")

    @property
    def content_type(self) -> str:
        """The request's Content-Type header."""
        return f'multipart/related; type="{DICOM_MEDIA_TYPE}"; boundary={self.boundary}'

    def __len__(self) -> int:
        return sum(len(self._head) + size + 2 for size in self.sizes) + len(self._tail)

    def __iter__(self) -> Iterator[bytes]:
        for path, size in zip(self.paths, self.sizes, strict=True):
            yield self._head
            sent = 0
            with open(path, "rb") as fp:
                while chunk := fp.read(min(CHUNK_BYTES, size - sent)):
                    sent += len(chunk)
                    yield chunk
                if sent != size or fp.read(1):
                    raise OSError(f"{path} changed size while it was sent")
            yield b"\r\n"
        yield self._tail


@dataclass
class StowResponse:
    """The per-instance content of a STOW-RS response (PS3.18 Table 10.5.3-1)."""

    referenced: dict[str, int] = field(default_factory=dict)  # SOP UID -> Warning Reason
    failed: dict[str, int] = field(default_factory=dict)      # SOP UID -> Failure Reason
    readable: bool = True


def parse_response(body: bytes) -> StowResponse:
    """Read a DICOM JSON (PS3.18 F.2) Store Instances response; an unreadable one is
    ``readable=False`` with no instance in it (bad network input is never an exception)."""
    try:
        ds = Dataset.from_json(body.decode("utf-8"))
        referenced = {str(item.ReferencedSOPInstanceUID): int(item.get("WarningReason", 0))
                      for item in ds.get("ReferencedSOPSequence", [])
                      if "ReferencedSOPInstanceUID" in item}
        failed = {str(item.ReferencedSOPInstanceUID): int(item.get("FailureReason", 0xC000))
                  for item in ds.get("FailedSOPSequence", [])
                  if "ReferencedSOPInstanceUID" in item}
    except (ValueError, TypeError, KeyError, AttributeError, IndexError):
        return StowResponse(readable=False)
    return StowResponse(referenced, failed)


def _status_text(status: int) -> str:
    try:
        return f"HTTP {status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"HTTP {status}"


@dataclass
class Verdict:
    """What one response means for each instance of its request."""

    fates: dict[str, tuple[str, str]] = field(default_factory=dict)  # UID -> (fate, why)
    alone: list[str] = field(default_factory=list)  # UIDs to send again one per request


def judge(status: int, body: bytes, sent: list[str], url: str = "") -> Verdict:
    """The fate of each SOP Instance UID of ``sent`` from the response (``status``,
    ``body``); raises PacsUnreachable for an answer to the request as a whole (see the
    module docstring for every rule)."""
    text = _status_text(status)
    if status >= 500 or status in OUTAGE_STATUSES:
        raise PacsUnreachable(f"{text}: the destination is unavailable")
    if status in CREDENTIAL_STATUSES:
        raise PacsUnreachable(f"{text}: the destination refuses our credentials (check "
                              "pacs_token and the TLS client certificate)", True)
    if 300 <= status < 400 or status in NOT_STOW_STATUSES:
        raise PacsUnreachable(f"{text}: no STOW-RS service at {url} (check pacs_stow_url)",
                              True)
    answer = parse_response(body)
    verdict = Verdict()
    for uid in sent:
        if uid in answer.referenced:
            warning = answer.referenced[uid]
            verdict.fates[uid] = (STORED, f"warning 0x{warning:04X}" if warning else "")
        elif uid in answer.failed:
            reason = answer.failed[uid]
            verdict.fates[uid] = (classify_status(reason),
                                  f"STOW-RS {text}, failure reason 0x{reason:04X}")
        elif len(sent) > 1:
            verdict.alone.append(uid)
        elif status < 300:
            verdict.fates[uid] = (RETRY, f"STOW-RS {text} does not confirm the instance")
        else:
            verdict.fates[uid] = (FAILED, f"STOW-RS {text} without a reason for the instance")
    return verdict


def batches(rows: list[InstanceRow], max_instances: int,
            max_bytes: int) -> list[list[InstanceRow]]:
    """``rows`` in order, cut into requests of at most ``max_instances`` instances and
    ``max_bytes`` bytes of files (an instance larger than that goes alone)."""
    out: list[list[InstanceRow]] = []
    size = 0
    for row in rows:
        if not out or len(out[-1]) >= max_instances or size + row.size > max_bytes:
            out.append([])
            size = 0
        out[-1].append(row)
        size += row.size
    return out


class StowTransport:
    """Stores instances by STOW-RS over one kept-alive HTTP session (requests)."""

    def __init__(self, config: StowConfig) -> None:
        self.config = config.validate()
        self.session = requests.Session()
        self.session.headers["Accept"] = DICOM_JSON
        if config.token:
            self.session.headers["Authorization"] = f"Bearer {config.token}"
            if config.url.startswith("http://"):
                log.warning("pacs_token is sent over plain http to %s: use https",
                            config.url)
        # Given with each request: requests lets REQUESTS_CA_BUNDLE override a session's.
        self.verify: str | bool = config.ca_file or True
        self.cert: str | tuple[str, str] | None = None
        if config.cert_file:
            self.cert = (config.cert_file, config.key_file) if config.key_file \
                else config.cert_file

    def peer(self) -> str:
        """The destination, for logs."""
        return self.config.url

    def poll(self) -> bool:
        """Nothing arrives between rounds: STOW-RS has no Storage Commitment."""
        return False

    def waiting(self) -> list[InstanceRow]:
        """No stored instance waits for anything: the response confirmed it."""
        return []

    def close(self) -> None:
        """Close the kept-alive connections."""
        self.session.close()

    def deliver(self, rows: list[InstanceRow], files: dict[str, StoredFile],
                waiting: list[InstanceRow], sink: DeliverySink) -> None:
        """POST ``rows`` in bounded requests; report each instance to ``sink``."""
        todo = deque(batches([r for r in rows if r.sop_instance_uid in files],
                             self.config.max_instances, self.config.max_request_bytes))
        while todo:
            batch = todo.popleft()
            by_uid = {r.sop_instance_uid: r for r in batch}
            verdict = self._post(batch, files)
            sink.reached()
            for uid, (fate, why) in verdict.fates.items():
                row = by_uid[uid]
                if fate == STORED:
                    sink.stored(row, why)
                elif fate == RETRY:
                    sink.retry(row, why)
                else:
                    sink.failed(row, why)
            todo.extend([by_uid[uid]] for uid in verdict.alone)

    def _post(self, batch: list[InstanceRow], files: dict[str, StoredFile]) -> Verdict:
        """One Store Instances request; PacsUnreachable when it has no usable answer."""
        url = self.config.studies_url
        try:
            body = MultipartBody([files[r.sop_instance_uid].path for r in batch])
            with self.session.post(url, data=body, stream=True, allow_redirects=False,
                                   verify=self.verify, cert=self.cert,
                                   headers={"Content-Type": body.content_type},
                                   timeout=(self.config.connect_timeout_s,
                                            self.config.timeout_s)) as response:
                status = response.status_code
                answer = _read_bounded(response)
        except requests.exceptions.SSLError as exc:
            raise PacsUnreachable(f"TLS with {url} failed: {_reason(exc)} (check "
                                  "pacs_tls_ca_file, pacs_tls_cert_file)", True) from None
        except requests.Timeout:
            raise PacsUnreachable(f"no answer from {url} within "
                                  f"{self.config.timeout_s:g} s") from None
        except requests.ConnectionError as exc:
            raise PacsUnreachable(f"cannot connect to {url}: {_reason(exc)}") from None
        except (requests.RequestException, OSError) as exc:
            raise PacsUnreachable(f"STOW-RS request to {url} failed: {_reason(exc)}") \
                from None
        return judge(status, answer, [r.sop_instance_uid for r in batch], url)


def _read_bounded(response: requests.Response) -> bytes:
    """The response body, at most :data:`MAX_RESPONSE_BYTES` of it."""
    out = bytearray()
    for chunk in response.iter_content(64 << 10):
        out += chunk
        if len(out) > MAX_RESPONSE_BYTES:
            break
    return bytes(out)


def _reason(exc: Any) -> str:
    """The innermost reason of a requests / urllib3 error, one line."""
    inner, seen = exc, set()
    while inner.__context__ is not None and id(inner) not in seen:
        seen.add(id(inner))
        inner = inner.__context__
    text = str(inner) or type(inner).__name__
    return text.splitlines()[0][:200]
