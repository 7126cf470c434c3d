"""Tracked tool poses -> Comprehensive 3D SR (PS3.3 A.35.13), one trajectory per tool.

Why this IOD: a pose recording is a set of measured 3D coordinates over time in the
tracker's frame. Comprehensive 3D SR is the storage SOP class that carries 3D spatial
coordinates (SCOORD3D, PS3.3 C.18.9, each in a stated Frame of Reference); dicom3tools, dcmtk,
PixelMed, highdicom and Orthanc all read it. Spatial Registration would only hold one rigid
transform per frame pair, not a trajectory; a waveform would lose the Frame of Reference.

Content tree (PS3.3 C.17.3; codes in :data:`CODES`):

* CONTAINER ``99DICOMOR DOR001`` "Tracked tool poses" (root, SEPARATE)

  * per tool: CONTAINER ``99DICOMOR DOR002`` "Tracked tool" (SEPARATE)

    * TEXT ``DCM 112039`` "Tracking Identifier" = the tracker's tool id
    * per chunk of at most :data:`MAX_CHUNK` consecutive visible poses, two items:

      * SCOORD3D ``DCM 121230`` "Path Vertex", MULTIPOINT: the tool origin of each pose in
        the stream's Frame of Reference (mm), and **Referenced Time Offsets (0040,A138)**:
        each pose's time in seconds (DS, microseconds) after the instance's Acquisition
        DateTime (0008,002A)
      * SCOORD3D ``99DICOMOR DOR007`` "Rotation vector", MULTIPOINT, same count and order:
        each pose's orientation as the rotation vector ``theta * axis`` (radians) of the
        rotation from the tool frame to the tracker frame

Why this shape (measured, see ``bench/pose_sr.py`` and ``docs/recorder.md``):

* **Size.** One sample costs 12 bytes of position (3 x FL), 12 of orientation (3 x FL) and
  11-12 of time (fixed-width DS + separator): 35-36 bytes, against ~540 for one
  CONTAINER + DATETIME + SCOORD3D tree per pose. The value bytes are built with numpy and
  handed to pydicom as raw little-endian elements (pydicom 3.0.2's FL writer only takes
  Python floats: ``struct.pack`` refuses bytes, and 7 M floats would cost seconds), and read
  back with ``np.frombuffer``, so no Python object exists per sample.
* **16-bit lengths.** In Explicit VR Little Endian GraphicData (FL) and Referenced Time
  Offsets (DS) have a 16-bit Value Length (PS3.5 7.1.2): one element holds at most 65534
  bytes, i.e. 5461 xyz points. A trajectory is therefore cut into chunks of at most
  :data:`MAX_CHUNK` poses, each a pair of items within the limit; pydicom would otherwise
  silently write an over-long value as UN, which many readers refuse.
* **Time.** A TCOORD (PS3.3 C.18.7) MULTIPOINT of time offsets SELECTED FROM the path would
  be the natural encoding, but TCOORD may only select from SCOORD, IMAGE or WAVEFORM:
  dciodvfy reports "incorrect required child Content Item for TCOORD got SCOORD3D expected
  SCOORD, IMAGE or WAVEFORM" (PixelMed does not check this; every reader must accept the
  file, so the stricter one decides). A NUM cannot carry a list either: its Numeric Value
  holds a single value (PS3.3 C.18.1) and dcmtk refuses the item when it does not. So the
  times ride in the path item as the standard attribute Referenced Time Offsets, with the
  definition it has in TCOORD (seconds relative to the acquisition start), making the SOP
  Class Standard Extended (PS3.4 B.1.3; dciodvfy warns, no reader errs). The offsets are
  exact integer microseconds after Acquisition DateTime, itself the first pose truncated to
  the microsecond; they are written fixed width (leading spaces, allowed in DS, PS3.5 6.2)
  so a reader parses them with one reshape.
* **Orientation.** Three numbers are the fewest that hold a rotation. The rotation vector
  (angle in [0, pi] times unit axis) is used rather than three quaternion components with
  ``w`` implied, because ``w = sqrt(1 - x^2 - y^2 - z^2)`` loses all precision near 180 deg;
  from float32 the unit quaternion comes back within 9e-8 per component (a float32
  quaternion itself: 3e-8), 2e-7 rad in angle, for every rotation. No standard concept
  names a rotation vector, hence the private code. The previous three-point encoding
  (origin and two axis tips, 36 bytes of coordinates alone) was geometric but left no room
  for the time within 40 bytes.
* **Date-times.** dcmtk 3.6.7 (dsrdump, dsr2html) refuses a content-item DT with an offset
  (``+0000``). Content items here carry no DT at all; the dataset has local-time Content
  Date/Time, Acquisition DateTime with the same offset as Timezone Offset From UTC
  (0008,0201), which PS3.3 C.12.1.1.8 applies to every date-time without its own offset.

Positions are metres in ROS and millimetres in DICOM; GraphicData is FL (float32), so a 2 m
working volume keeps about 0.1 um position resolution. Occluded samples (``visible`` false)
are not measurements and are not recorded: a gap in the time offsets shows the occlusion.

To get a tool's pose at time ``t``: ``t0`` = Acquisition DateTime (its offset, else
Timezone Offset From UTC); concatenate the tool's chunks in order; find ``t - t0`` in the
offsets (``np.searchsorted``) and interpolate the positions linearly and the orientations by
slerp between the neighbouring samples (:func:`read_pose_sr` returns the arrays).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.tag import BaseTag, Tag
from pynetdicom.sop_class import Comprehensive3DSRStorage
from scipy.spatial.transform import Rotation

from dicom_or_core.iod.common import (
    PRIVATE_SCHEME,
    apply_instance_context,
    concept_item,
    drop_frame_of_reference,
    new_dataset,
    ns_to_datetime,
    ns_to_dt,
    require_kind,
)
from dicom_or_core.model.context import KIND_POSE, StreamDescriptor
from dicom_or_core.model.errors import DicomOrError

COMPREHENSIVE_3D_SR = Comprehensive3DSRStorage

# Standard concepts from pydicom's code dictionary; the private scheme for the rest.
TITLE = Code("DOR001", PRIVATE_SCHEME, "Tracked tool poses")
TOOL = Code("DOR002", PRIVATE_SCHEME, "Tracked tool")
TOOL_ID = codes.DCM.TrackingIdentifier
POSITION = codes.DCM.PathVertex
ROTATION = Code("DOR007", PRIVATE_SCHEME, "Rotation vector")
#: Every concept of the content tree; listed in the conformance statement. DOR003-DOR006
#: were used by the retired one-container-per-pose encoding.
CODES = (TITLE, TOOL, TOOL_ID, POSITION, ROTATION)

# PS3.5 7.1.2: Explicit VR Little Endian gives FL and DS a 16-bit Value Length; the largest
# even length is 65534 bytes.
MAX_VALUE_BYTES = 65534
#: Poses per chunk: 3 float32 per pose in one GraphicData (5461 * 12 = 65532 bytes).
MAX_CHUNK = MAX_VALUE_BYTES // 12
FRACTION_DIGITS = 6  # time offsets in microseconds

_GRAPHIC_DATA = Tag(0x0070, 0x0022)
_TIME_OFFSETS = Tag(0x0040, 0xA138)
_BACKSLASH, _DOT, _SPACE, _ZERO = (ord(c) for c in "\\. 0")


@dataclass
class ToolTrack:
    """The visible poses of one tool: times (ns, session clock), positions (n, 3) in metres,
    orientations (n, 4) as unit quaternions x, y, z, w (geometry_msgs order)."""

    tool_id: str
    stamps_ns: np.ndarray
    positions_m: np.ndarray
    quaternions_xyzw: np.ndarray


def quaternion_to_matrix(q: np.ndarray) -> np.ndarray:
    """Rotation matrices (n, 3, 3) of quaternions (n, 4) in x, y, z, w order (normalised
    here), by scipy's ``Rotation``."""
    return Rotation.from_quat(np.asarray(q, dtype=np.float64).reshape(-1, 4)).as_matrix()


def matrix_to_quaternion(m: np.ndarray) -> np.ndarray:
    """Unit quaternions (n, 4, x y z w, w >= 0) of rotation matrices (n, 3, 3), by scipy's
    ``Rotation`` (canonical: for a half turn, w = 0, the first non-zero component is
    positive)."""
    matrices = np.asarray(m, dtype=np.float64).reshape(-1, 3, 3)
    return Rotation.from_matrix(matrices).as_quat(canonical=True)


def quaternion_to_rotvec(q: np.ndarray) -> np.ndarray:
    """Rotation vectors (n, 3), angle in [0, pi] times unit axis, of quaternions (n, 4) xyzw
    (normalised here; q and -q give the same vector).

    Not scipy's ``Rotation.from_quat(q).as_rotvec()``, which gives the same vectors (within
    2e-15) but took twice as long (100k poses: 28 ms against 11 ms, a third of
    :func:`build_pose_sr`'s time), and this is the recorder's write path."""
    q = np.asarray(q, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    q = np.where(q[:, 3:4] < 0, -q, q)
    v = q[:, :3]
    s = np.linalg.norm(v, axis=1)
    angle = 2.0 * np.arctan2(s, q[:, 3])
    # angle / s -> 2 / w as s -> 0; only s == 0 needs the limit (atan2 keeps precision).
    scale = np.divide(angle, s, out=np.full_like(s, 2.0), where=s > 0)
    return v * scale[:, None]


def rotvec_to_quaternion(r: np.ndarray) -> np.ndarray:
    """Unit quaternions (n, 4, x y z w, w >= 0) of rotation vectors (n, 3), by scipy's
    ``Rotation`` in float64 (a float32 rotation vector read from GraphicData included; a
    half turn that float32 rounding pushed just past pi comes back in the w >= 0
    hemisphere)."""
    vectors = np.asarray(r, dtype=np.float64).reshape(-1, 3)
    return Rotation.from_rotvec(vectors).as_quat(canonical=True)


def format_time_offsets(offsets_us: np.ndarray, int_digits: int) -> bytes:
    r"""Non-negative integer microseconds as one DS value ``S.FFFFFF\S.FFFFFF...``, every
    number ``int_digits + 7`` characters wide (leading spaces: PS3.5 6.2 lets DS have them),
    built with numpy so no Python object exists per value."""
    us = np.asarray(offsets_us, dtype=np.int64)
    width = int_digits + 1 + FRACTION_DIGITS
    cells = np.empty((len(us), width + 1), np.uint8)
    value = us.copy()
    for col in range(width - 1, -1, -1):
        if col == int_digits:
            cells[:, col] = _DOT
            continue
        cells[:, col] = _ZERO + value % 10
        value //= 10
    if np.any(value):
        raise DicomOrError("poses", "time offset too large for the DS width", int(us.max()))
    # Leading zeros of the seconds (all but the units digit) become spaces.
    leading = np.cumsum(cells[:, :int_digits - 1] != _ZERO, axis=1) == 0
    cells[:, :int_digits - 1][leading] = _SPACE
    cells[:, width] = _BACKSLASH
    return cells.tobytes()[:-1]


def parse_time_offsets(values: bytes) -> np.ndarray:
    """DS time offsets in seconds -> int64 microseconds (rounded). Fast path for the fixed
    width this module writes, a general DS parse for any other writer."""
    raw = values.rstrip(b" \x00")
    if not raw:
        return np.zeros(0, np.int64)
    width = raw.find(b"\\")
    width = len(raw) if width < 0 else width
    dot = width - FRACTION_DIGITS - 1
    if dot > 0 and (len(raw) + 1) % (width + 1) == 0:
        cells = np.frombuffer(raw + b"\\", np.uint8).reshape(-1, width + 1)
        # uint8 arithmetic wraps: a space becomes 240, any non-digit > 9.
        digits = cells[:, :width] - np.uint8(_ZERO)
        digits[:, :dot][digits[:, :dot] == (_SPACE - _ZERO) % 256] = 0
        digits[:, dot] = 0
        if (np.all(cells[:, width] == _BACKSLASH) and np.all(cells[:, dot] == _DOT)
                and digits.max() <= 9):
            micros = np.zeros(len(cells), np.int64)
            for col in [*range(dot), *range(dot + 1, width)]:
                micros *= 10
                micros += digits[:, col]
            return micros
    seconds = np.array(raw.split(b"\\")).astype(np.float64)
    return np.round(seconds * 1e6).astype(np.int64)


def _raw(tag: BaseTag, vr: str, value: bytes) -> RawDataElement:
    """An element whose value bytes are already encoded (Explicit VR Little Endian), padded
    to even length (PS3.5 7.1.1: DS with a trailing space, FL is always even)."""
    if len(value) % 2:
        value += b" "
    if len(value) > MAX_VALUE_BYTES:  # never reached by construction; a UN would follow
        raise DicomOrError("poses", f"{vr} value exceeds the 16-bit length", len(value))
    return RawDataElement(tag, vr, len(value), value, 0, False, True)


def _item(value_type: str, concept: Code, relationship: str | None) -> Dataset:
    item = Dataset()
    if relationship:
        item.RelationshipType = relationship
    item.ValueType = value_type
    item.ConceptNameCodeSequence = [concept_item(concept)]
    return item


def _scoord3d(concept: Code, points: np.ndarray,
              frame_of_reference_uid: str) -> Dataset:
    item = _item("SCOORD3D", concept, "CONTAINS")
    item.GraphicType = "MULTIPOINT"
    item[_GRAPHIC_DATA] = _raw(_GRAPHIC_DATA, "FL", np.ascontiguousarray(points, "<f4").tobytes())
    item.ReferencedFrameOfReferenceUID = frame_of_reference_uid
    return item


def _checked(track: ToolTrack) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(stamps int64, positions float64 (n, 3) m, quaternions float64 (n, 4)) of a track,
    refused with the field named when not finite, misshapen or out of order."""
    field = f"poses.{track.tool_id}"
    stamps = np.asarray(track.stamps_ns, dtype=np.int64).reshape(-1)
    positions = np.asarray(track.positions_m, dtype=np.float64)
    quaternions = np.asarray(track.quaternions_xyzw, dtype=np.float64)
    n = len(stamps)
    if positions.shape != (n, 3) or quaternions.shape != (n, 4):
        raise DicomOrError(field, "needs positions (n, 3) and quaternions (n, 4) for n stamps",
                           (positions.shape, quaternions.shape))
    if np.any(np.diff(stamps) <= 0):
        raise DicomOrError(field, "pose stamps must increase strictly")
    if not (np.all(np.isfinite(positions)) and np.all(np.isfinite(quaternions))):
        raise DicomOrError(field, "positions and quaternions must be finite")
    if np.any(np.linalg.norm(quaternions, axis=1) < 1e-6):
        raise DicomOrError(field, "quaternions must be non-zero")
    # float32 GraphicData: a coordinate beyond its range would be stored as infinity.
    if np.any(np.abs(positions) * 1000.0 > np.finfo(np.float32).max):
        raise DicomOrError(field, "positions exceed the float32 range")
    return stamps, positions, quaternions


def timezone_offset(moment: _dt.datetime) -> str:
    """Timezone Offset From UTC (0008,0201) of an aware datetime, ``&ZZXX`` (PS3.3 C.12.1)."""
    return moment.strftime("%z")


def _sr_document_modules(ds: Dataset) -> None:
    """The SR document's own modules and root container (no content items yet)."""
    # PS3.3 C.12.1 SOP Common: declare the private coding scheme (PS3.3 8.2).
    scheme = Dataset()
    scheme.CodingSchemeDesignator = PRIVATE_SCHEME
    scheme.CodingSchemeName = "dicom_or concepts"
    scheme.CodingSchemeResponsibleOrganization = "dicom_or project"
    ds.CodingSchemeIdentificationSequence = [scheme]
    # The SR has no Frame of Reference Module: each SCOORD3D names its frame itself.
    drop_frame_of_reference(ds)
    # PS3.3 C.17.1 SR Document Series Module (Modality SR) and C.17.2 SR Document General.
    ds.Modality = "SR"
    # Type 2: the MPPS of a worklist case (apply_workflow_context) or empty.
    if "ReferencedPerformedProcedureStepSequence" not in ds:
        ds.ReferencedPerformedProcedureStepSequence = []
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    ds.PerformedProcedureCodeSequence = []
    # PS3.3 C.17.3 SR Document Content Module: the root container.
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = [concept_item(TITLE)]
    ds.ContinuityOfContent = "SEPARATE"


def build_pose_sr(stream: StreamDescriptor, tracks: Sequence[ToolTrack],
                  sop_instance_uid: str, instance_number: int = 1,
                  created_ns: int | None = None) -> Dataset:
    """One Comprehensive 3D SR instance with the trajectories of ``tracks`` (module
    docstring: content tree, chunking, time and orientation encoding)."""
    require_kind(stream, KIND_POSE, "pose")
    checked = [(t.tool_id, *_checked(t)) for t in tracks]
    checked = [c for c in checked if len(c[1])]
    if not checked:
        raise DicomOrError("poses", "an instance needs at least one visible pose")
    first = min(int(c[1][0]) for c in checked)
    first_us = first // 1000
    last_us = max(int(c[1][-1]) for c in checked) // 1000
    int_digits = len(str((last_us - first_us) // 1_000_000))
    # A DS value is at most 16 bytes (PS3.5 6.2); the chunk also keeps the DS list < 64 KiB.
    if int_digits + 1 + FRACTION_DIGITS > 16:
        raise DicomOrError("poses", "an instance cannot span that long", last_us - first_us)
    chunk = min(MAX_CHUNK, MAX_VALUE_BYTES // (int_digits + 2 + FRACTION_DIGITS))

    ds = new_dataset(COMPREHENSIVE_3D_SR, sop_instance_uid)
    apply_instance_context(ds, stream, instance_number, first, created_ns)
    # PS3.3 C.12.1.1.8: one offset for the dataset's dates and times; Acquisition DateTime
    # keeps the same offset explicitly (consistent), content items carry no DT at all.
    ds.TimezoneOffsetFromUTC = timezone_offset(ns_to_datetime(first))
    ds.AcquisitionDateTime = ns_to_dt(first)
    _sr_document_modules(ds)
    frame = stream.frame_of_reference_uid
    content, raw_items = [], []
    for tool_id, stamps, positions, quaternions in checked:
        offsets = format_time_offsets(stamps // 1000 - first_us, int_digits)
        stride = int_digits + 2 + FRACTION_DIGITS
        points = (positions * 1000.0).astype("<f4")
        rotvecs = quaternion_to_rotvec(quaternions).astype("<f4")
        tool = _item("CONTAINER", TOOL, "CONTAINS")
        tool.ContinuityOfContent = "SEPARATE"
        text = _item("TEXT", TOOL_ID, "CONTAINS")
        text.TextValue = tool_id
        items = [text]
        for start in range(0, len(stamps), chunk):
            stop = min(start + chunk, len(stamps))
            where = _scoord3d(POSITION, points[start:stop], frame)
            where[_TIME_OFFSETS] = _raw(_TIME_OFFSETS, "DS",
                                        offsets[start * stride:stop * stride - 1])
            items += [where, _scoord3d(ROTATION, rotvecs[start:stop], frame)]
        raw_items += items[1:]
        tool.ContentSequence = items
        content.append(tool)
    ds.ContentSequence = content
    # pydicom writes a RawDataElement's bytes as they are only when the item's encoding
    # matches the file's; otherwise it decodes them into Python numbers first (correct, but
    # seconds slower). Explicit VR Little Endian is what new_dataset declares.
    for item in raw_items:
        item.set_original_encoding(False, True, item._character_set)
    return ds


def _value_bytes(item: Dataset, tag: BaseTag) -> bytes:
    """An FL or DS element's value as Explicit VR Little Endian bytes. After ``dcmread`` the
    element is still raw and its bytes are taken as they are (no Python number per value);
    an element pydicom already decoded (or from another transfer syntax) is re-encoded."""
    elem = item.get_item(tag)
    if elem is None:
        raise DicomOrError("poses", "SR content item lacks an element", str(tag))
    if isinstance(elem, RawDataElement) and elem.is_little_endian:
        return bytes(elem.value or b"")
    value = item[tag].value
    values = [] if value is None else list(np.atleast_1d(value))
    if tag == _GRAPHIC_DATA:
        return np.asarray(values, "<f4").tobytes()
    return "\\".join(format(float(v), ".6f") for v in values).encode()


_VALUE_TYPE = Tag(0x0040, 0xA040)
_CONCEPT_NAME = Tag(0x0040, 0xA043)


def _kind(item: Dataset, concepts: dict[bytes, tuple[str, str, str]]
          ) -> tuple[str, str, str]:
    """(Value Type, scheme, code value) of a content item. A recording has thousands of
    chunk items with a handful of distinct concepts: each distinct encoded Concept Name Code
    Sequence is decoded once (``concepts`` caches it by its bytes), the others are looked up,
    which keeps pydicom's per-item decoding out of the read time."""
    raw_type, raw_concept = item.get_item(_VALUE_TYPE), item.get_item(_CONCEPT_NAME)
    if raw_type is None or raw_concept is None:
        return "", "", ""
    key = (raw_type.value + b"|" + raw_concept.value
           if raw_type.is_raw and raw_concept.is_raw else None)
    if key is None or key not in concepts:
        code = item.ConceptNameCodeSequence[0]
        found = (str(item.ValueType), str(code.CodingSchemeDesignator), str(code.CodeValue))
        if key is None:
            return found
        concepts[key] = found
    return concepts[key]


def acquisition_start_ns(ds: Dataset) -> int:
    """Acquisition DateTime (0008,002A) as session-clock ns (UTC epoch): its own offset,
    else Timezone Offset From UTC (0008,0201), else UTC (PS3.3 C.12.1.1.8)."""
    text = str(ds.AcquisitionDateTime).strip()
    zone = str(ds.get("TimezoneOffsetFromUTC", "") or "+0000")
    cut = max(text.rfind("+"), text.rfind("-"))  # DT has no other sign (PS3.5 6.2)
    if cut > 0:
        text, zone = text[:cut], text[cut:]
    whole, _, frac = text.partition(".")
    # Missing trailing components take their first value (PS3.5 6.2 DT).
    whole = whole + "00000101000000"[len(whole):]
    moment = _dt.datetime.strptime(whole[:14] + zone, "%Y%m%d%H%M%S%z")
    micros = int(frac.ljust(6, "0")[:6]) if frac else 0
    return int(moment.timestamp()) * 1_000_000_000 + micros * 1000


def read_pose_sr(ds: Dataset) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Tool id -> (stamps ns int64 at microsecond resolution, positions (n, 3) m,
    quaternions (n, 4) xyzw with w >= 0): the inverse of :func:`build_pose_sr`."""
    t0 = acquisition_start_ns(ds)
    position = ("SCOORD3D", POSITION.scheme_designator, POSITION.value)
    rotation = ("SCOORD3D", ROTATION.scheme_designator, ROTATION.value)
    tool_id_text = ("TEXT", TOOL_ID.scheme_designator, TOOL_ID.value)
    concepts: dict[bytes, tuple[str, str, str]] = {}
    out = {}
    for tool in ds.ContentSequence:
        tool_id = ""
        times: list[bytes] = []
        points: list[bytes] = []
        rotvecs: list[bytes] = []
        for item in tool.ContentSequence:
            kind = _kind(item, concepts)
            if kind == tool_id_text:
                tool_id = str(item.TextValue)
            elif kind == position:
                points.append(_value_bytes(item, _GRAPHIC_DATA))
                times.append(_value_bytes(item, _TIME_OFFSETS).rstrip(b" \x00"))
            elif kind == rotation:
                rotvecs.append(_value_bytes(item, _GRAPHIC_DATA))
        if not points:
            continue
        # One decode per tool: joined DS lists stay one fixed-width list (fast path).
        offsets = parse_time_offsets(b"\\".join(t for t in times if t))
        positions = np.frombuffer(b"".join(points), "<f4").reshape(-1, 3).astype(np.float64)
        positions /= 1000.0
        rotations = np.frombuffer(b"".join(rotvecs), "<f4").reshape(-1, 3)
        if not len(offsets) == len(positions) == len(rotations):
            raise DicomOrError(f"poses.{tool_id}", "time offsets, positions and rotation "
                               "vectors differ in count",
                               (len(offsets), len(positions), len(rotations)))
        out[tool_id] = (t0 + offsets * 1000, positions, rotvec_to_quaternion(rotations))
    return out
