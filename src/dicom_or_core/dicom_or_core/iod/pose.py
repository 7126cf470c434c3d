"""Tracked tool poses -> Comprehensive 3D SR (PS3.3 A.35.13).

Why this IOD: a pose recording is a set of measured 3D coordinates over time in the
tracker's frame. Comprehensive 3D SR is the storage SOP class that carries 3D spatial
coordinates (SCOORD3D, in a stated Frame of Reference) *and* time coordinates (TCOORD with
absolute DT values), dicom3tools validates it, Orthanc stores and indexes it, and any SR
viewer can show it. Spatial Registration would only hold one rigid transform per frame pair,
not a trajectory; a waveform would lose the Frame of Reference.

Content tree (concepts from the private scheme ``99DICOMOR``; PS3.3 C.17.3):

* CONTAINER "Tracked tool poses" (root, SEPARATE)

  * per tool: CONTAINER "Tracked tool"

    * TEXT "Tool identifier" = the tracker's tool id
    * per visible pose: CONTAINER "Pose sample"

      * DATETIME "Acquisition DateTime" = the pose's acquisition time (session clock)
      * SCOORD3D "Tool pose", MULTIPOINT of three points in the stream's Frame of
        Reference (mm): the tool origin, ``origin + R e_x * 100 mm`` and
        ``origin + R e_y * 100 mm``

A TCOORD trajectory (one time list for a point list) would be more compact, but PS3.3 allows
TCOORD to select only from SCOORD, IMAGE or WAVEFORM items, never SCOORD3D (dciodvfy
enforces it), so each pose is its own small container and instances are bounded by pose
count. The orientation is recovered exactly as the rotation whose first two columns are
``(x - origin) / 100`` and ``(y - origin) / 100`` (third = their cross product): three points
per pose encode the full rigid pose in standard coordinates, with no private attribute.
Positions are metres in ROS
and millimetres in DICOM; GraphicData is FL (float32), so a 2 m working volume keeps about
0.1 um position and 1e-6 rad orientation resolution. Occluded samples (``visible`` false) are
not measurements and are not recorded: a gap in the times shows the occlusion.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset

from dicom_or_core.context import KIND_POSE, StreamDescriptor
from dicom_or_core.errors import DicomOrError
from dicom_or_core.iod.common import (
    PRIVATE_SCHEME,
    apply_instance_context,
    code_item,
    drop_frame_of_reference,
    new_dataset,
    ns_to_dt,
    require_kind,
)

COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
AXIS_MM = 100.0
TITLE = ("DOR001", "Tracked tool poses")
TOOL = ("DOR002", "Tracked tool")
TOOL_ID = ("DOR003", "Tool identifier")
SAMPLE = ("DOR004", "Pose sample")
WHEN = ("DOR005", "Acquisition DateTime")
POSE = ("DOR006", "Tool pose")


@dataclass
class ToolTrack:
    """The visible poses of one tool: times (ns, session clock), positions (n, 3) in metres,
    orientations (n, 4) as unit quaternions x, y, z, w (geometry_msgs order)."""

    tool_id: str
    stamps_ns: np.ndarray
    positions_m: np.ndarray
    quaternions_xyzw: np.ndarray


def quaternion_to_matrix(q: np.ndarray) -> np.ndarray:
    """Rotation matrices (n, 3, 3) of unit quaternions (n, 4) in x, y, z, w order."""
    q = np.asarray(q, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    x, y, z, w = q.T
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
    ], axis=1)


def matrix_to_quaternion(m: np.ndarray) -> np.ndarray:
    """Unit quaternions (n, 4, x y z w, w >= 0) of rotation matrices (n, 3, 3)."""
    out = []
    for r in np.asarray(m, dtype=np.float64):
        # Shepperd's method: pick the largest diagonal term for numerical stability.
        t = np.trace(r)
        if t > 0:
            s = np.sqrt(t + 1.0) * 2
            q = [(r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s,
                 0.25 * s]
        elif r[0, 0] > r[1, 1] and r[0, 0] > r[2, 2]:
            s = np.sqrt(1.0 + r[0, 0] - r[1, 1] - r[2, 2]) * 2
            q = [0.25 * s, (r[0, 1] + r[1, 0]) / s, (r[0, 2] + r[2, 0]) / s,
                 (r[2, 1] - r[1, 2]) / s]
        elif r[1, 1] > r[2, 2]:
            s = np.sqrt(1.0 + r[1, 1] - r[0, 0] - r[2, 2]) * 2
            q = [(r[0, 1] + r[1, 0]) / s, 0.25 * s, (r[1, 2] + r[2, 1]) / s,
                 (r[0, 2] - r[2, 0]) / s]
        else:
            s = np.sqrt(1.0 + r[2, 2] - r[0, 0] - r[1, 1]) * 2
            q = [(r[0, 2] + r[2, 0]) / s, (r[1, 2] + r[2, 1]) / s, 0.25 * s,
                 (r[1, 0] - r[0, 1]) / s]
        q = np.array(q)
        out.append(q if q[3] >= 0 else -q)
    return np.array(out).reshape(-1, 4)


def _item(value_type: str, concept: tuple[str, str], relationship: str | None) -> Dataset:
    item = Dataset()
    if relationship:
        item.RelationshipType = relationship
    item.ValueType = value_type
    item.ConceptNameCodeSequence = [code_item(concept[0], PRIVATE_SCHEME, concept[1])]
    return item


def _pose_item(time_dt: str, points_mm: np.ndarray, frame_of_reference_uid: str) -> Dataset:
    sample = _item("CONTAINER", SAMPLE, "CONTAINS")
    sample.ContinuityOfContent = "SEPARATE"
    when = _item("DATETIME", WHEN, "CONTAINS")
    when.DateTime = time_dt
    where = _item("SCOORD3D", POSE, "CONTAINS")
    where.GraphicType = "MULTIPOINT"
    where.GraphicData = [float(v) for v in np.asarray(points_mm, np.float32).ravel()]
    where.ReferencedFrameOfReferenceUID = frame_of_reference_uid
    sample.ContentSequence = [when, where]
    return sample


def build_pose_sr(stream: StreamDescriptor, tracks: Sequence[ToolTrack],
                  sop_instance_uid: str, instance_number: int = 1,
                  created_ns: int | None = None) -> Dataset:
    """One Comprehensive 3D SR instance with the trajectories of ``tracks``."""
    require_kind(stream, KIND_POSE, "pose")
    tracks = [t for t in tracks if len(t.stamps_ns)]
    if not tracks:
        raise DicomOrError("poses", "an instance needs at least one visible pose")
    first = min(int(t.stamps_ns[0]) for t in tracks)
    ds = new_dataset(COMPREHENSIVE_3D_SR, sop_instance_uid)
    apply_instance_context(ds, stream, instance_number, first, created_ns)
    # The SR has no Frame of Reference Module: each SCOORD3D names its frame itself.
    drop_frame_of_reference(ds)
    # PS3.3 C.17.1 SR Document Series Module (Modality SR) and C.17.2 SR Document General.
    ds.Modality = "SR"
    ds.ReferencedPerformedProcedureStepSequence = []
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    ds.PerformedProcedureCodeSequence = []
    # PS3.3 C.17.3 SR Document Content Module: the root container.
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = [code_item(TITLE[0], PRIVATE_SCHEME, TITLE[1])]
    ds.ContinuityOfContent = "SEPARATE"
    content = []
    for track in tracks:
        stamps = np.asarray(track.stamps_ns, dtype=np.int64)
        if np.any(np.diff(stamps) <= 0):
            raise DicomOrError(f"poses.{track.tool_id}", "pose stamps must increase strictly")
        origin = np.asarray(track.positions_m, dtype=np.float64) * 1000.0
        rot = quaternion_to_matrix(track.quaternions_xyzw)
        points = np.stack([origin, origin + rot[:, :, 0] * AXIS_MM,
                           origin + rot[:, :, 1] * AXIS_MM], axis=1)
        tool = _item("CONTAINER", TOOL, "CONTAINS")
        tool.ContinuityOfContent = "SEPARATE"
        text = _item("TEXT", TOOL_ID, "CONTAINS")
        text.TextValue = track.tool_id
        tool.ContentSequence = [text] + [
            _pose_item(ns_to_dt(int(t)), p, stream.frame_of_reference_uid)
            for t, p in zip(stamps, points, strict=True)]
        content.append(tool)
    ds.ContentSequence = content
    return ds


def read_pose_sr(ds: Dataset) -> dict[str, tuple[list[str], np.ndarray, np.ndarray]]:
    """Tool id -> (DT times, positions (n, 3) m, quaternions (n, 4) xyzw): the inverse of
    :func:`build_pose_sr`."""
    out = {}
    for tool in ds.ContentSequence:
        tool_id, times, points = "", [], []
        for item in tool.ContentSequence:
            if item.ValueType == "TEXT":
                tool_id = item.TextValue
                continue
            when, where = item.ContentSequence
            times.append(str(when.DateTime))
            points.append(np.array(where.GraphicData, np.float64).reshape(3, 3))
        pts = np.array(points).reshape(-1, 3, 3)
        origin = pts[:, 0]
        ex = (pts[:, 1] - origin) / AXIS_MM
        ey = (pts[:, 2] - origin) / AXIS_MM
        ex /= np.linalg.norm(ex, axis=1, keepdims=True)
        ey -= ex * np.sum(ex * ey, axis=1, keepdims=True)
        ey /= np.linalg.norm(ey, axis=1, keepdims=True)
        rot = np.stack([ex, ey, np.cross(ex, ey)], axis=2)
        out[tool_id] = (times, origin / 1000.0, matrix_to_quaternion(rot))
    return out
