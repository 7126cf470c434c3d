"""Pose IOD: Comprehensive 3D SR round trip (positions, orientations, times), dciodvfy."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from dicom_or_core.errors import DicomOrError
from dicom_or_core.iod.common import ns_to_dt
from dicom_or_core.iod.examples import example_descriptor, now_ns
from dicom_or_core.iod.pose import (
    COMPREHENSIVE_3D_SR,
    ToolTrack,
    build_pose_sr,
    matrix_to_quaternion,
    quaternion_to_matrix,
    read_pose_sr,
)
from dicom_or_core.peers import dciodvfy, have, run_tool
from dicom_or_core.uid import new_uid


def random_tracks(tool_ids, n=120, seed=3, gap=None):
    rng = np.random.default_rng(seed)
    t0 = now_ns()
    tracks = []
    for tool in tool_ids:
        q = rng.normal(size=(n, 4))
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        q[q[:, 3] < 0] *= -1
        stamps = t0 + np.arange(n, dtype=np.int64) * 16_666_667
        keep = np.ones(n, bool) if gap is None else ~np.isin(np.arange(n), gap)
        tracks.append(ToolTrack(tool, stamps[keep], rng.uniform(-1.0, 1.0, (n, 3))[keep],
                                q[keep]))
    return tracks


def test_quaternion_matrix_round_trip():
    q = np.array([[0, 0, 0, 1], [1, 0, 0, 0], [0, 0.6, 0, 0.8], [0.5, 0.5, 0.5, 0.5]])
    assert np.allclose(matrix_to_quaternion(quaternion_to_matrix(q)), q)


def test_poses_round_trip_in_the_frame_of_reference(tmp_path):
    d = example_descriptor("pose")
    tracks = random_tracks(d.tool_ids, gap=[10, 11, 12])
    ds = build_pose_sr(d, tracks, new_uid(), 2, now_ns())
    path = tmp_path / "pose.dcm"
    ds.save_as(path, enforce_file_format=True)
    back = pydicom.dcmread(path)
    assert back.SOPClassUID == COMPREHENSIVE_3D_SR and back.Modality == "SR"
    poses = read_pose_sr(back)
    assert set(poses) == set(d.tool_ids)
    for track in tracks:
        times, positions, quaternions = poses[track.tool_id]
        assert times == [ns_to_dt(int(t)) for t in track.stamps_ns]  # occlusion gap kept
        assert np.abs(positions - track.positions_m).max() < 1e-6        # < 1 um
        assert np.abs(quaternions - track.quaternions_xyzw).max() < 1e-5
    scoord = back.ContentSequence[0].ContentSequence[1].ContentSequence[1]
    assert scoord.ValueType == "SCOORD3D"
    assert scoord.ReferencedFrameOfReferenceUID == d.frame_of_reference_uid
    assert back.SynchronizationFrameOfReferenceUID == \
        d.session.synchronization_frame_of_reference_uid


def test_pose_sr_refuses_empty_and_unordered_tracks():
    d = example_descriptor("pose")
    with pytest.raises(DicomOrError, match="at least one"):
        build_pose_sr(d, [ToolTrack("pointer", np.array([], np.int64), np.zeros((0, 3)),
                                    np.zeros((0, 4)))], new_uid())
    track = random_tracks(["pointer"], n=3)[0]
    track.stamps_ns = track.stamps_ns[::-1]
    with pytest.raises(DicomOrError, match="increase"):
        build_pose_sr(d, [track], new_uid())


@pytest.mark.skipif(not have("dciodvfy"), reason="dicom3tools missing")
def test_dciodvfy_and_dcmdump_accept_the_pose_sr(tmp_path):
    d = example_descriptor("pose")
    path = tmp_path / "pose.dcm"
    build_pose_sr(d, random_tracks(d.tool_ids, n=50), new_uid(), 1, now_ns()).save_as(
        path, enforce_file_format=True)
    count, errors = dciodvfy(path)
    assert count == 0, errors
    assert run_tool(["dcmdump", "-q", str(path)]).returncode == 0
