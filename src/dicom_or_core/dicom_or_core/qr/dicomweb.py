"""DICOMweb (PS3.18) on the Query/Retrieve model: QIDO-RS queries, DICOM JSON, WADO-RS
multipart bodies and media-type negotiation, ROS-free.

One model, two protocols: a QIDO-RS request (PS3.18 10.6) becomes a Study Root C-FIND
identifier (PS3.4 C.6.2) at the level of its resource, validated by the same
:func:`~dicom_or_core.qr.query.parse_identifier` and matched by the same
:func:`~dicom_or_core.qr.query.find` over the same
:class:`~dicom_or_core.qr.model.QueryModel` as the DIMSE C-FIND; a QIDO answer is a C-FIND
answer encoded as DICOM JSON (PS3.18 F.2). The upper-level keys may be open (``/series``
over all studies), as for C-FIND.

Query parameters (PS3.18 8.3.4): ``{attributeID}={value}`` by keyword, tag (``0020000D``)
or one sequence level (``RequestAttributesSequence.ScheduledProcedureStepID``); values take
the C-FIND matching rules (wild cards, ranges, a comma-separated UID list);
``includefield`` (repeated or comma-separated, ``all``); ``limit``; ``offset``;
``fuzzymatching`` (``false``; ``true`` is ignored and answered with a Warning header,
PS3.18 8.3.4.3); any other parameter is an error (400).

WADO-RS (PS3.18 10.4): instances leave the archive bit for bit in their stored Transfer
Syntax, each a part of a ``multipart/related; type="application/dicom"`` body
(:func:`multipart_body`), read in chunks from the file, never whole into memory.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID

from dicom_or_core.qr import query as q
from dicom_or_core.qr.model import QueryModel

# Resources (PS3.18 10.6.1) and the C-FIND level each one queries.
LEVEL_OF_RESOURCE = {"studies": "STUDY", "series": "SERIES", "instances": "IMAGE"}
MEDIA_DICOM = "application/dicom"
MEDIA_DICOM_JSON = "application/dicom+json"
MEDIA_JPEG = "image/jpeg"
MEDIA_PNG = "image/png"
FUZZY_WARNING = ("299 dicom_or: The fuzzymatching parameter is not supported. Only literal "
                 "matching has been performed.")

# Default return attributes of QIDO-RS (PS3.18 Tables 10.6.3-3, -4, -5), plus the keys the
# C-FIND model answers that a viewer needs (NumberOf*Related*, Retrieve URL).
STUDY_RETURN_KEYS = ("StudyDate", "StudyTime", "AccessionNumber", "InstanceAvailability",
                     "ModalitiesInStudy", "ReferringPhysicianName", "TimezoneOffsetFromUTC",
                     "RetrieveURL", "PatientName", "PatientID", "PatientBirthDate",
                     "PatientSex", "StudyInstanceUID", "StudyID",
                     "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances")
SERIES_RETURN_KEYS = ("Modality", "TimezoneOffsetFromUTC", "SeriesDescription",
                      "RetrieveURL", "SeriesInstanceUID", "SeriesNumber",
                      "NumberOfSeriesRelatedInstances", "PerformedProcedureStepStartDate",
                      "PerformedProcedureStepStartTime", "RequestAttributesSequence")
INSTANCE_RETURN_KEYS = ("SOPClassUID", "SOPInstanceUID", "InstanceAvailability",
                        "TimezoneOffsetFromUTC", "RetrieveURL", "InstanceNumber", "Rows",
                        "Columns", "BitsAllocated", "NumberOfFrames")
_OWN_KEYS = {"STUDY": STUDY_RETURN_KEYS, "SERIES": SERIES_RETURN_KEYS,
             "IMAGE": INSTANCE_RETURN_KEYS}
_CONTROL_PARAMETERS = {"includefield", "limit", "offset", "fuzzymatching"}
# Binary VRs: bulk data, never in a metadata answer (PS3.18 F.2.7, 8.6.1).
_BULK_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}
BULK_INLINE_MAX = 1024           # smaller binary values stay inline (InlineBinary)
# Bulk data whatever its size (PS3.18 10.4.1.1.3): Float / Double Float / Pixel Data,
# Waveform Data.
_ALWAYS_BULK = {Tag(0x7FE00008), Tag(0x7FE00009), Tag(0x7FE00010), Tag(0x54001010)}
_NOT_KEYS = {Tag("QueryRetrieveLevel"), Tag("SpecificCharacterSet")}   # set by the server
_TAG_ID = re.compile(r"^[0-9A-Fa-f]{8}$")


class QidoError(ValueError):
    """A QIDO-RS request the origin server refuses with 400 (PS3.18 8.3.4, 10.6.1.3);
    ``comment`` is the same text a C-FIND would give as Error Comment."""

    def __init__(self, comment: str) -> None:
        super().__init__(comment)
        self.comment = comment


class TooManyMatches(QidoError):
    """More matches than the server answers at once (C-FIND 0xA700; HTTP 413)."""


@dataclass(frozen=True)
class QidoRequest:
    """A parsed QIDO-RS request: the validated C-FIND query and the paging parameters."""

    query: q.Query
    limit: int | None = None
    offset: int = 0
    include_all: bool = False
    fuzzy_ignored: bool = False


def _attribute_tag(attribute: str) -> BaseTag:
    """An attributeID (PS3.18 8.3.4.1): a keyword or eight hex digits."""
    if _TAG_ID.match(attribute):
        return Tag(int(attribute, 16))
    tag = tag_for_keyword(attribute)
    if tag is None:
        raise QidoError(f"unknown attribute {attribute[:40]!r}")
    return Tag(tag)


def _vr(tag: BaseTag) -> str:
    try:
        return dictionary_VR(tag)
    except KeyError:
        raise QidoError(f"attribute {tag} is not in the data dictionary") from None


def _element(tag: BaseTag, text: str) -> DataElement:
    """A matching key from a query parameter's text value."""
    vr = _vr(tag)
    if vr == "SQ":
        raise QidoError(f"{keyword_for_tag(tag)}: a sequence is matched by its items' "
                        "attributes (Sequence.Attribute=value)")
    if vr == "UI" and ("," in text or "\\" in text):
        return DataElement(tag, vr, [u.strip() for u in re.split(r"[,\\]", text)])
    return DataElement(tag, vr, text)


def _add_key(identifier: Dataset, attribute: str, text: str | None) -> None:
    """Add ``attribute`` (optionally ``Sequence.Attribute``) to ``identifier``; ``None``
    is a return key (universal), text a matching key."""
    path = attribute.split(".")
    if len(path) > 2:
        raise QidoError(f"{attribute[:60]!r}: one sequence level is supported")
    tag = _attribute_tag(path[0])
    if tag in _NOT_KEYS:
        raise QidoError(f"{path[0][:40]} is not a query key")
    if len(path) == 1:
        if text is None:
            if tag not in identifier:
                identifier.add_new(tag, _vr(tag), [] if _vr(tag) == "SQ" else None)
            return
        if tag in identifier and not q.is_universal(identifier[tag]):
            raise QidoError(f"{path[0][:40]} is given twice")
        identifier[tag] = _element(tag, text)
        return
    if _vr(tag) != "SQ":
        raise QidoError(f"{path[0][:40]} is not a sequence")
    if tag not in identifier or not identifier[tag].value:
        identifier.add_new(tag, "SQ", [Dataset()])
    _add_key(identifier[tag].value[0], path[1], text)


def _non_negative(name: str, values: list[str]) -> int:
    if len(values) != 1 or not values[0].isdigit():
        raise QidoError(f"{name} must be one non-negative integer")
    return int(values[0])


def _fuzzy(values: list[str]) -> bool:
    """True when ``fuzzymatching=true`` was asked (and is ignored)."""
    if len(values) != 1 or values[0].lower() not in ("true", "false"):
        raise QidoError("fuzzymatching must be true or false")
    return values[0].lower() == "true"


def default_return_keys(level: str, study_in_path: bool, series_in_path: bool
                        ) -> tuple[str, ...]:
    """The default return attributes of the resource (PS3.18 10.6.3.3.1): the level's own,
    plus the study's for ``/series`` and ``/instances`` over all studies, plus the series'
    for instances not under a series."""
    keys = _OWN_KEYS[level]
    if level in ("SERIES", "IMAGE") and not study_in_path:
        keys = STUDY_RETURN_KEYS + keys
    if level == "IMAGE" and not series_in_path:
        keys = SERIES_RETURN_KEYS + keys
    return keys


def parse_qido(resource: str, params: Iterable[tuple[str, str]], *,
               study_uid: str | None = None, series_uid: str | None = None) -> QidoRequest:
    """The QIDO-RS request on ``resource`` (studies / series / instances, under the study
    and series of the path) with query ``params`` (name, value pairs in request order), as
    a C-FIND query validated like the DIMSE one. Raises :class:`QidoError` (400)."""
    level = LEVEL_OF_RESOURCE[resource]
    grouped: dict[str, list[str]] = {}
    identifier = Dataset()
    identifier.QueryRetrieveLevel = level
    for name, value in params:
        if name in _CONTROL_PARAMETERS:
            grouped.setdefault(name, []).append(value)
        else:
            _add_key(identifier, name, value)
    for uid_keyword, uid in (("StudyInstanceUID", study_uid),
                             ("SeriesInstanceUID", series_uid)):
        if uid is not None:
            if uid_keyword in identifier and not q.is_universal(identifier[uid_keyword]):
                raise QidoError(f"{uid_keyword} is given by the path")
            identifier[uid_keyword] = DataElement(Tag(uid_keyword), "UI", uid)
    include_all = _includes(grouped.get("includefield", []), identifier)
    for keyword in default_return_keys(level, study_uid is not None, series_uid is not None):
        _add_key(identifier, keyword, None)
    try:
        query = q.parse_identifier(identifier, q.STUDY_ROOT, open_upper_levels=True)
    except q.QueryError as exc:
        raise QidoError(exc.comment) from None
    limit = _non_negative("limit", grouped["limit"]) if "limit" in grouped else None
    offset = _non_negative("offset", grouped["offset"]) if "offset" in grouped else 0
    fuzzy = _fuzzy(grouped["fuzzymatching"]) if "fuzzymatching" in grouped else False
    return QidoRequest(query, limit, offset, include_all, fuzzy)


def _includes(values: list[str], identifier: Dataset) -> bool:
    """``includefield`` values (PS3.18 8.3.4.2): attributes added to the identifier as
    return keys; True when one of them is ``all``."""
    include_all = False
    for value in values:
        for attribute in filter(None, (v.strip() for v in value.split(","))):
            if attribute == "all":
                include_all = True
            else:
                _add_key(identifier, attribute, None)
    return include_all


def run_qido(request: QidoRequest, model: QueryModel, max_matches: int) -> list[Dataset]:
    """The answers of ``request`` over ``model`` after ``offset``, at most ``limit``.

    More than ``max_matches`` answers without a ``limit`` is refused (:class:`QidoError`
    carrying C-FIND's 0xA700 comment, the HTTP service answers 413); a ``limit`` above it
    is lowered to it."""
    query = request.query
    answers = q.find(model.records(query.level, query), query)
    page = min(request.limit, max_matches) if request.limit is not None else max_matches + 1
    found = list(islice(answers, request.offset, request.offset + page))
    if request.limit is None and len(found) > max_matches:
        raise TooManyMatches(f"more than {max_matches} matches; narrow the query")
    return _with_all(found, model, query.level) if request.include_all else found


def _with_all(answers: list[Dataset], model: QueryModel, level: str) -> list[Dataset]:
    """``includefield=all``: every attribute the model holds for each matched record."""
    key = q.UNIQUE_KEYS[level]
    records = {str(r.get(key, "")): r for r in model.records(level)}
    for answer in answers:
        record = records.get(str(answer.get(key, "")))
        for elem in record if record is not None else ():
            if elem.tag not in answer:
                answer[elem.tag] = elem
    return answers


# ---------------------------------------------------------------------------------------
# DICOM JSON (PS3.18 F.2).


def retrieve_url(base_url: str, record: Dataset, level: str) -> str:
    """The WADO-RS URL of ``record``'s resource (PS3.18 10.6.3.3: Retrieve URL)."""
    url = f"{base_url}/studies/{record.get('StudyInstanceUID', '')}"
    if level in ("SERIES", "IMAGE"):
        url += f"/series/{record.get('SeriesInstanceUID', '')}"
    if level == "IMAGE":
        url += f"/instances/{record.get('SOPInstanceUID', '')}"
    return url


def to_json(answer: Dataset, level: str, base_url: str | None = None) -> dict[str, Any]:
    """A QIDO answer as a DICOM JSON object (PS3.18 F.2). Query/Retrieve Level and the
    response's Specific Character Set stay out (JSON is UTF-8, F.2.1). A live series keeps
    its ``ros2:`` Retrieve URL; an archived resource without one gets its WADO-RS URL when
    ``base_url`` is given."""
    out = Dataset()
    for elem in answer:
        if elem.keyword not in ("QueryRetrieveLevel", "SpecificCharacterSet"):
            out[elem.tag] = elem
    if base_url and "RetrieveURL" in out and not out.RetrieveURL:
        out.RetrieveURL = retrieve_url(base_url, answer, level)
    return strip_bulk(out).to_json_dict(bulk_data_threshold=BULK_INLINE_MAX,
                            bulk_data_element_handler=_no_bulk)


def _no_bulk(elem: DataElement) -> str:  # pragma: no cover - bulk is stripped before
    raise ValueError(f"bulk data {elem.tag} in a JSON answer")


def strip_bulk(ds: Dataset) -> Dataset:
    """Remove the pixel and waveform data, and binary values longer than
    :data:`BULK_INLINE_MAX`, at every nesting depth without reading them when they were deferred
    (PS3.18 10.4.1.1.3: metadata without bulk data; F.2.7 allows leaving them out)."""
    for tag in list(ds.keys()):
        raw = ds.get_item(tag)
        vr = raw.VR or _dictionary_vr(tag)
        if vr == "SQ":
            for item in ds[tag].value or []:
                strip_bulk(item)
        elif tag in _ALWAYS_BULK:
            del ds[tag]
        elif vr in _BULK_VRS:
            length = raw.length if isinstance(raw, RawDataElement) else len(raw.value or b"")
            if length > BULK_INLINE_MAX:
                del ds[tag]
    return ds


def _dictionary_vr(tag: BaseTag) -> str:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return "UN"


def metadata_json(path: Path) -> dict[str, Any]:
    """The DICOM JSON metadata of the archived instance at ``path`` (PS3.18 10.4.1.1.3):
    every attribute but the File Meta Information and the bulk data, which is never read
    (deferred)."""
    ds = dcmread(path, defer_size=BULK_INLINE_MAX)
    return strip_bulk(ds).to_json_dict(bulk_data_threshold=BULK_INLINE_MAX,
                                       bulk_data_element_handler=_no_bulk)


# ---------------------------------------------------------------------------------------
# Media types (PS3.18 8.7) and multipart/related (RFC 2387, PS3.18 8.7.1.2).


@dataclass(frozen=True)
class MediaRange:
    """One element of an Accept header: ``type/subtype`` and its parameters (lower-case
    names, unquoted values)."""

    media_type: str
    params: Mapping[str, str] = field(default_factory=dict)


_ACCEPT_ITEM = re.compile(r'(?:[^,"]|"[^"]*")+')
_PARAM = re.compile(r'\s*;\s*([^=;\s]+)\s*=\s*("[^"]*"|[^;]*)')


def parse_accept(header: str | None) -> list[MediaRange]:
    """The media ranges of an Accept header in order (quality values ignored); none or
    empty means ``*/*``."""
    if not header or not header.strip():
        return [MediaRange("*/*")]
    ranges = []
    for item in _ACCEPT_ITEM.findall(header):
        media_type, _, rest = item.strip().partition(";")
        params = {m[1].lower(): m[2].strip().strip('"') for m in _PARAM.finditer(";" + rest)}
        ranges.append(MediaRange(media_type.strip().lower(), params))
    return ranges


def _covers(pattern: str, media_type: str) -> bool:
    if pattern in ("*/*", media_type):
        return True
    return pattern.endswith("/*") and media_type.startswith(pattern[:-1])


def accepts_dicom(ranges: list[MediaRange], stored: set[str]) -> bool:
    """Whether a WADO-RS instance retrieval accepting ``ranges`` can be answered with the
    ``stored`` Transfer Syntaxes as they are (no transcoding): a
    ``multipart/related; type=application/dicom`` (or ``*/*``) range whose
    ``transfer-syntax`` is absent, ``*`` or the one stored (PS3.18 8.7.3.5.2)."""
    for media in ranges:
        if media.media_type == "*/*":
            return True
        if media.media_type != "multipart/related":
            continue
        if not _covers(media.params.get("type", "*/*"), MEDIA_DICOM):
            continue
        syntax = media.params.get("transfer-syntax", "*")
        if syntax == "*" or stored <= {syntax}:
            return True
    return False


def choose(ranges: list[MediaRange], offered: Iterable[str]) -> str | None:
    """The first of ``offered`` the Accept ``ranges`` allow, in the client's order."""
    offered = list(offered)
    for media in ranges:
        for candidate in offered:
            if _covers(media.media_type, candidate):
                return candidate
    return None


def new_boundary() -> str:
    """A multipart boundary no DICOM file holds by chance (128 random bits)."""
    return f"dicom_or-{uuid.uuid4().hex}"


def multipart_content_type(boundary: str, media_type: str = MEDIA_DICOM) -> str:
    """The Content-Type of a multipart/related body of ``media_type`` parts."""
    return f'multipart/related; type="{media_type}"; boundary={boundary}'


def _part_header(boundary: str, transfer_syntax: str, size: int) -> bytes:
    return (f"--{boundary}\r\nContent-Type: {MEDIA_DICOM}; transfer-syntax={transfer_syntax}"
            f"\r\nContent-Length: {size}\r\n\r\n").encode("ascii")


def stored_transfer_syntax(path: Path) -> str:
    """The Transfer Syntax UID of an archived file, from its File Meta Information."""
    meta = dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).file_meta
    return str(UID(meta.TransferSyntaxUID))


@dataclass(frozen=True)
class MultipartBody:
    """A WADO-RS body: its exact length (a Content-Length, no chunked encoding) and the
    generator of its bytes."""

    content_length: int
    chunks: Generator[bytes, None, None]


def multipart_body(files: list[tuple[Path, str]], boundary: str,
                   chunk_size: int = 1 << 16) -> MultipartBody:
    """``multipart/related`` of the archived ``files`` (path, stored transfer syntax), each
    a part streamed from its file in ``chunk_size`` pieces: the instances leave bit for bit
    and no instance is ever held whole in memory."""
    sizes = [path.stat().st_size for path, _ in files]
    length = sum(len(_part_header(boundary, ts, size)) + size + 2
                 for (_, ts), size in zip(files, sizes, strict=True))
    length += len(f"--{boundary}--\r\n")

    def chunks() -> Generator[bytes, None, None]:
        for (path, ts), size in zip(files, sizes, strict=True):
            yield _part_header(boundary, ts, size)
            with path.open("rb") as stream:
                yield from _exactly(stream, size, chunk_size)
            yield b"\r\n"
        yield f"--{boundary}--\r\n".encode("ascii")

    return MultipartBody(length, chunks())


def _exactly(stream: Any, size: int, chunk_size: int) -> Iterator[bytes]:
    """``size`` bytes of ``stream`` in chunks; a file that changed size since it was
    measured raises (the announced Content-Length would be a lie)."""
    left = size
    while left:
        chunk = stream.read(min(chunk_size, left))
        if not chunk:
            raise OSError(f"{getattr(stream, 'name', 'file')} shrank while being sent")
        left -= len(chunk)
        yield chunk


def instance_files(model: QueryModel, study_uid: str, series_uid: str | None = None,
                   sop_uid: str | None = None) -> list[Path]:
    """The archived files of a study, series or instance (WADO-RS 10.4.1), in model order
    (study, series number, instance); empty when none is archived."""
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "IMAGE"
    identifier.StudyInstanceUID = study_uid
    if series_uid is not None:
        identifier.SeriesInstanceUID = series_uid
    if sop_uid is not None:
        identifier.SOPInstanceUID = sop_uid
    try:
        query = q.parse_identifier(identifier, q.STUDY_ROOT, open_upper_levels=True)
    except q.QueryError as exc:
        raise QidoError(exc.comment) from None
    paths = []
    for record in _all_of(model, query):
        path = model.paths.get(str(record.SOPInstanceUID))
        if path is not None:
            paths.append(path)
    return paths


def _all_of(model: QueryModel, query: q.Query) -> Iterator[Dataset]:
    for record in model.records("IMAGE", query):
        if q.match_dataset(query.identifier, record):
            yield record


def has_series(model: QueryModel, study_uid: str, series_uid: str | None = None) -> bool:
    """Whether the model knows the study (and series): 404 otherwise (PS3.18 10.4.1.3)."""
    for record in model.series:
        if str(record.get("StudyInstanceUID", "")) != study_uid:
            continue
        if series_uid is None or str(record.get("SeriesInstanceUID", "")) == series_uid:
            return True
    return False
