"""Pose IOD: Comprehensive 3D SR trajectories. Round trip (positions, orientations, times to
float32 / microsecond precision), size per sample, 16-bit element lengths, refusals, and
the readers every pose recording must open without error: dciodvfy, dcmtk dsrdump and
dsr2html, PixelMed's DicomSRValidator, highdicom, pydicom and Orthanc."""

from __future__ import annotations

import io
import shutil
import subprocess
import urllib.request
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_or_test_common.examples import example_descriptor, now_ns
from dicom_or_test_common.peers import ORTHANC_BINARY, Orthanc, dciodvfy, have, run_tool

from dicom_or_core.iod.pose import (
    COMPREHENSIVE_3D_SR,
    MAX_CHUNK,
    MAX_VALUE_BYTES,
    POSITION,
    ROTATION,
    ToolTrack,
    acquisition_start_ns,
    build_pose_sr,
    format_time_offsets,
    matrix_to_quaternion,
    parse_time_offsets,
    quaternion_to_matrix,
    quaternion_to_rotvec,
    read_pose_sr,
    rotvec_to_quaternion,
)
from dicom_or_core.model.errors import DicomOrError
from dicom_or_core.model.uid import new_uid
from dicom_or_core.sim.tracker import TrackerSimulator, default_tools

PIXELMED_JAR = Path("/usr/share/java/pixelmed.jar")


def random_tracks(tool_ids, n=120, seed=3, gap=None, period_ns=16_666_667, jitter_ns=0):
    """Random positions in a 2 m cube and uniformly random orientations (every quaternion
    sign and 180 degree turns included), optionally with an occlusion gap and stamp jitter."""
    rng = np.random.default_rng(seed)
    t0 = now_ns()
    tracks = []
    for tool in tool_ids:
        q = rng.normal(size=(n, 4))
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        stamps = t0 + np.arange(n, dtype=np.int64) * period_ns
        stamps += rng.integers(0, jitter_ns + 1, n) if jitter_ns else 0
        keep = np.ones(n, bool) if gap is None else ~np.isin(np.arange(n), gap)
        tracks.append(ToolTrack(tool, stamps[keep], rng.uniform(-1.0, 1.0, (n, 3))[keep],
                                q[keep]))
    return tracks


def tracked_tracks(tool_ids, n, seed=5):
    """A realistic 1 kHz recording: smooth hand motion (positions within 0.5 m, slowly
    turning orientations), stamps on a 1 ms grid with 0-50 us jitter."""
    rng = np.random.default_rng(seed)
    t0 = now_ns()
    seconds = np.arange(n) / 1000.0
    tracks = []
    for k, tool in enumerate(tool_ids):
        positions = 0.2 * np.stack([np.sin(0.3 * seconds + k), np.cos(0.2 * seconds),
                                    0.5 + 0.1 * np.sin(seconds)], axis=1)
        axis = np.array([np.sin(0.1 * seconds + k), np.cos(0.1 * seconds), 0.3 + 0 * seconds])
        axis /= np.linalg.norm(axis, axis=0)
        angle = 0.5 * seconds + k
        q = np.concatenate([(np.sin(angle / 2) * axis).T, np.cos(angle / 2)[:, None]], axis=1)
        stamps = t0 + np.arange(n, dtype=np.int64) * 1_000_000 + rng.integers(0, 50_000, n)
        tracks.append(ToolTrack(tool, stamps, positions, q))
    return tracks


def same_rotation_error(a: np.ndarray, b: np.ndarray) -> float:
    """Largest component difference between unit quaternions, q and -q being one rotation."""
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float(np.minimum(np.abs(a - b).max(axis=1), np.abs(a + b).max(axis=1)).max())


def save(ds, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def descriptor_for(tools):
    d = example_descriptor("pose")
    d.tool_ids = list(tools)
    return d


def test_quaternion_matrix_round_trip():
    q = np.array([[0, 0, 0, 1], [1, 0, 0, 0], [0, 0.6, 0, 0.8], [0.5, 0.5, 0.5, 0.5]])
    assert np.allclose(matrix_to_quaternion(quaternion_to_matrix(q)), q)


def _old_rotvec_to_quaternion(r):
    """The hand-written conversion rotvec_to_quaternion had before scipy's Rotation."""
    r = np.asarray(r, dtype=np.float64)
    angle = np.sqrt(np.einsum("ij,ij->i", r, r))
    half = 0.5 * angle
    scale = np.divide(np.sin(half), angle, out=np.full_like(angle, 0.5), where=angle > 1e-8)
    q = np.empty((len(r), 4))
    np.multiply(r, scale[:, None], out=q[:, :3])
    np.cos(half, out=q[:, 3])
    q[q[:, 3] < 0] *= -1.0
    return q


def _old_quaternion_to_matrix(q):
    q = np.asarray(q, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    x, y, z, w = q.T
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
    ], axis=1)


def test_scipy_conversions_equal_the_hand_written_ones():
    """rotvec_to_quaternion, quaternion_to_matrix and matrix_to_quaternion (scipy) give the
    former numpy results on the simulated tracker's poses and on edge cases: zero, tiny and
    half-turn rotations, float32 vectors as read back from GraphicData."""
    sim = TrackerSimulator(default_tools(4), seed=5)
    real = np.array([p.orientation for t in np.arange(0, 30, 0.01) for p in sim.poses(t)])
    rng = np.random.default_rng(3)
    axes = rng.normal(size=(3000, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    angles = np.concatenate([np.zeros(100), 10.0 ** rng.uniform(-12, -2, 400),
                             rng.uniform(0, np.pi, 2000), np.pi - 10.0 ** rng.uniform(-9, -3, 300),
                             np.full(200, np.pi)])
    vectors = np.concatenate([quaternion_to_rotvec(real), axes * angles[:, None]])
    for r in (vectors, vectors.astype(np.float32)):
        got, old = rotvec_to_quaternion(r), _old_rotvec_to_quaternion(r)
        assert np.all(got[:, 3] >= 0)
        # Equal, except that a half turn (|w| ~ 1e-16: q and -q both have w >= 0) may come
        # out with the other sign when the two round |r| to either side of pi.
        error = np.abs(got - old).max(axis=1)
        half_turn = np.abs(old[:, 3]) < 1e-15
        error[half_turn] = np.minimum(error, np.abs(got + old).max(axis=1))[half_turn]
        assert error.max() < 1e-15
        assert np.count_nonzero(np.abs(got - old).max(axis=1) > 1e-15) <= half_turn.sum()
    q = np.concatenate([real, rng.normal(size=(2000, 4))])
    matrices = quaternion_to_matrix(q)
    assert np.abs(matrices - _old_quaternion_to_matrix(q)).max() < 1e-14
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    q[q[:, 3] < 0] *= -1.0
    assert np.abs(matrix_to_quaternion(matrices) - q).max() < 1e-14
    # A half turn (w = 0) has two quaternions; scipy's canonical one is unique.
    half = matrix_to_quaternion(quaternion_to_matrix(np.array([[-0.6, 0.0, 0.8, 0.0]])))
    assert np.allclose(half, [[0.6, 0.0, -0.8, 0.0]])


def test_rotation_vectors_keep_every_rotation_to_float32_precision():
    rng = np.random.default_rng(11)
    q = rng.normal(size=(200_000, 4))
    special = [[0, 0, 0, 1], [0, 0, 0, -1], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0],
               [1e-9, 0, 0, 1], [0.6, 0, 0.8, 1e-9], [0.6, 0, 0.8, -1e-9], [1, 1, 1, 1e-7]]
    q = np.concatenate([q, special])
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    back = rotvec_to_quaternion(quaternion_to_rotvec(q).astype(np.float32))
    assert np.all(back[:, 3] >= 0)
    assert np.allclose(np.linalg.norm(back, axis=1), 1.0, atol=1e-12)
    # A float32 quaternion itself is off by up to 3e-8; the rotation vector by < 9e-8.
    assert same_rotation_error(back, q) < 1.5e-7
    assert np.array_equal(quaternion_to_rotvec(np.array([[0, 0, 0, -2.0]])), [[0, 0, 0]])


def test_time_offsets_fixed_width_and_any_writer():
    us = np.array([0, 1, 999_999, 1_000_000, 59_123_456, 599_999_999])
    text = format_time_offsets(us, 3)
    assert text.split(b"\\")[:2] == [b"  0.000000", b"  0.000001"]
    assert text.split(b"\\")[-1] == b"599.999999"
    assert np.array_equal(parse_time_offsets(text), us)
    assert np.array_equal(parse_time_offsets(text + b" "), us)  # even-length padding
    # Another writer's DS: any width, exponents, no fraction.
    assert np.array_equal(parse_time_offsets(b"0\\0.5\\1.25e1\\ 3.000001 "),
                          [0, 500_000, 12_500_000, 3_000_001])
    with pytest.raises(DicomOrError, match="too large"):
        format_time_offsets(np.array([1000 * 1_000_000]), 3)


def test_poses_round_trip_in_the_frame_of_reference(tmp_path):
    d = example_descriptor("pose")
    tracks = random_tracks(d.tool_ids, gap=[10, 11, 12], jitter_ns=999_999)
    ds = build_pose_sr(d, tracks, new_uid(), 2, now_ns())
    back = pydicom.dcmread(save(ds, tmp_path / "pose.dcm"))
    assert back.SOPClassUID == COMPREHENSIVE_3D_SR and back.Modality == "SR"
    poses = read_pose_sr(back)
    assert set(poses) == set(d.tool_ids)
    for track in tracks:
        stamps, positions, quaternions = poses[track.tool_id]
        assert stamps.dtype == np.int64
        # Times to the microsecond; the occlusion gap is kept.
        assert np.array_equal(stamps, track.stamps_ns // 1000 * 1000)
        # Positions exactly as float32 millimetres: < 0.1 um in this 2 m volume.
        mm32 = (track.positions_m * 1000.0).astype(np.float32).astype(np.float64)
        assert np.allclose(positions * 1000.0, mm32, rtol=1e-15, atol=0)
        assert np.abs(positions - track.positions_m).max() < 1e-7
        assert same_rotation_error(quaternions, track.quaternions_xyzw) < 1.5e-7
    first = min(int(t.stamps_ns[0]) for t in tracks)
    assert acquisition_start_ns(back) == first // 1000 * 1000
    tool = back.ContentSequence[0]
    assert tool.ContentSequence[0].TextValue == tracks[0].tool_id
    where, how = tool.ContentSequence[1], tool.ContentSequence[2]
    assert (where.ValueType, where.ConceptNameCodeSequence[0].CodeValue) == \
        ("SCOORD3D", POSITION.value)
    assert how.ConceptNameCodeSequence[0].CodeValue == ROTATION.value
    assert where.ReferencedFrameOfReferenceUID == d.frame_of_reference_uid
    assert back.SynchronizationFrameOfReferenceUID == \
        d.session.synchronization_frame_of_reference_uid
    # Dataset-level local times with one offset; no DT inside the content tree.
    assert back.TimezoneOffsetFromUTC and back.AcquisitionDateTime.endswith(
        back.TimezoneOffsetFromUTC)
    assert "DateTime" not in str(back.ContentSequence)
    assert [s.CodingSchemeDesignator for s in back.CodingSchemeIdentificationSequence] == \
        ["99DICOMOR"]


def test_read_in_memory_and_after_another_transfer_syntax_or_decoding():
    """The raw-bytes fast path and pydicom's decoded values give the same poses."""
    d = descriptor_for(["pointer"])
    tracks = random_tracks(["pointer"], n=MAX_CHUNK + 10, period_ns=1_000_123)
    ds = build_pose_sr(d, tracks, new_uid())
    expected = read_pose_sr(ds)["pointer"]  # straight from the builder, in memory
    buffer = io.BytesIO()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    ds.save_as(buffer, enforce_file_format=True)
    implicit = pydicom.dcmread(io.BytesIO(buffer.getvalue()))
    decoded = pydicom.dcmread(io.BytesIO(buffer.getvalue()))
    for item in decoded.ContentSequence[0].ContentSequence[1:]:
        assert item.GraphicData  # pydicom decodes the value into Python floats
    for got in (read_pose_sr(implicit)["pointer"], read_pose_sr(decoded)["pointer"]):
        for a, b in zip(expected, got, strict=True):
            assert np.array_equal(a, b)
    assert np.array_equal(expected[0], tracks[0].stamps_ns // 1000 * 1000)


def test_offsets_without_dataset_offset_use_timezone_offset_from_utc():
    ds = pydicom.Dataset()
    ds.AcquisitionDateTime = "20260101120000.250000"
    ds.TimezoneOffsetFromUTC = "+0100"
    assert acquisition_start_ns(ds) == 1767265200_250000_000
    ds.AcquisitionDateTime = "20260101120000.250000-0030"
    assert acquisition_start_ns(ds) == 1767270600_250000_000


def walk_raw(ds):
    """Every data element of a dataset and its sequences, depth first, as read (values not
    decoded)."""
    for tag in list(ds.keys()):
        elem = ds.get_item(tag)
        yield elem
        if elem.VR == "SQ":
            for item in ds[tag].value:
                yield from walk_raw(item)


def test_size_per_pose_and_16_bit_lengths(tmp_path):
    tools = ["pointer", "patient_reference", "endoscope", "needle"]
    n = 20_000  # 20 s of 4 tools at 1 kHz: 80 000 poses, 4 chunks per tool
    tracks = tracked_tracks(tools, n)
    path = save(build_pose_sr(descriptor_for(tools), tracks, new_uid(), 1, now_ns()),
                tmp_path / "pose.dcm")
    per_pose = path.stat().st_size / (len(tools) * n)
    print(f"\npose SR: {path.stat().st_size} bytes, {per_pose:.2f} bytes per pose sample")
    assert per_pose <= 40
    lengths: dict[str, list[int]] = {"FL": [], "DS": []}
    for elem in walk_raw(pydicom.dcmread(path)):
        assert elem.VR != "UN", elem.tag  # pydicom's fallback for over-long values
        if elem.VR in lengths:
            lengths[elem.VR].append(elem.length)
    assert max(lengths["FL"]) == MAX_CHUNK * 12 <= MAX_VALUE_BYTES
    assert max(lengths["DS"]) <= MAX_VALUE_BYTES
    assert len(lengths["FL"]) == 2 * len(tools) * -(-n // MAX_CHUNK)
    poses = read_pose_sr(pydicom.dcmread(path))
    for track in tracks:
        stamps, positions, quaternions = poses[track.tool_id]
        assert np.array_equal(stamps, track.stamps_ns // 1000 * 1000)
        assert np.abs(positions - track.positions_m).max() < 1e-7
        assert same_rotation_error(quaternions, track.quaternions_xyzw) < 1.5e-7


def test_a_long_segment_keeps_every_element_within_16_bits(tmp_path):
    """An hour-long instance writes 11-character offsets: the chunk still fits."""
    track = random_tracks(["pointer"], n=2 * MAX_CHUNK + 5, period_ns=700_000_000)[0]
    path = save(build_pose_sr(descriptor_for(["pointer"]), [track], new_uid()),
                tmp_path / "long.dcm")
    raw = path.read_bytes()
    # Explicit VR LE: tag (4) VR (2) 16-bit length. Find every DS Referenced Time Offsets.
    at = 0
    sizes = []
    while (at := raw.find(b"\x40\x00\x38\xa1DS", at)) >= 0:
        sizes.append(int.from_bytes(raw[at + 6:at + 8], "little"))
        at += 8
    assert len(sizes) == 3 and max(sizes) <= MAX_VALUE_BYTES
    stamps, _, _ = read_pose_sr(pydicom.dcmread(path))["pointer"]
    assert np.array_equal(stamps, track.stamps_ns // 1000 * 1000)


def test_pose_sr_refuses_empty_unordered_and_non_finite_tracks():
    d = example_descriptor("pose")
    with pytest.raises(DicomOrError, match="at least one"):
        build_pose_sr(d, [ToolTrack("pointer", np.array([], np.int64), np.zeros((0, 3)),
                                    np.zeros((0, 4)))], new_uid())
    track = random_tracks(["pointer"], n=3)[0]
    track.stamps_ns = track.stamps_ns[::-1]
    with pytest.raises(DicomOrError, match="increase"):
        build_pose_sr(d, [track], new_uid())
    for field, index, value in [("positions_m", (1, 2), np.nan),
                                ("positions_m", (0, 0), np.inf),
                                ("quaternions_xyzw", (2, 3), -np.inf)]:
        track = random_tracks(["pointer"], n=3)[0]
        getattr(track, field)[index] = value
        with pytest.raises(DicomOrError, match="finite"):
            build_pose_sr(d, [track], new_uid())
    track = random_tracks(["pointer"], n=3)[0]
    track.quaternions_xyzw[1] = 0.0
    with pytest.raises(DicomOrError, match="non-zero"):
        build_pose_sr(d, [track], new_uid())
    track = random_tracks(["pointer"], n=3)[0]
    track.positions_m = track.positions_m[:2]
    with pytest.raises(DicomOrError, match="shape|positions"):
        build_pose_sr(d, [track], new_uid())


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> tuple[Path, list[ToolTrack]]:
    """A small multi-chunk recording every reader test opens: 2 tools x 6000 poses."""
    tools = ["pointer", "patient_reference"]
    tracks = tracked_tracks(tools, 6000)
    tracks[0] = ToolTrack(tracks[0].tool_id, *(np.delete(a, range(100, 200), axis=0) for a in
                          (tracks[0].stamps_ns, tracks[0].positions_m,
                           tracks[0].quaternions_xyzw)))
    path = tmp_path_factory.mktemp("pose") / "pose.dcm"
    save(build_pose_sr(descriptor_for(tools), tracks, new_uid(), 1, now_ns()), path)
    return path, tracks


@pytest.mark.skipif(not have("dciodvfy"), reason="dicom3tools (dciodvfy) not installed")
def test_dciodvfy_accepts_the_pose_sr(recording):
    count, errors = dciodvfy(recording[0])
    assert count == 0, errors


@pytest.mark.skipif(not (have("dsrdump") and have("dsr2html")),
                    reason="dcmtk (dsrdump, dsr2html) not installed")
def test_dcmtk_dsrdump_and_dsr2html_read_the_pose_sr(recording):
    for tool in ("dsrdump", "dsr2html"):
        result = run_tool([tool, str(recording[0])], timeout_s=120)
        messages = [line for line in result.stderr.splitlines()
                    if line.startswith(("E:", "F:"))]
        assert result.returncode == 0 and not messages, (tool, result.stderr)
    text = run_tool(["dsrdump", str(recording[0])]).stdout
    assert '"Path Vertex"' in text and '"Rotation vector"' in text and '"pointer"' in text
    assert run_tool(["dcmdump", "-q", str(recording[0])]).returncode == 0


@pytest.mark.skipif(not (PIXELMED_JAR.is_file() and shutil.which("java")),
                    reason="PixelMed (pixelmed-apps) or java not installed")
def test_pixelmed_sr_validator_finds_no_error(recording):
    result = subprocess.run(
        ["java", "-Djdk.xml.xpathExprOpLimit=0", "-Djdk.xml.xpathExprGrpLimit=0",
         "-Djdk.xml.xpathTotalOpLimit=0", "-cp", str(PIXELMED_JAR),
         "com.pixelmed.validate.DicomSRValidator", str(recording[0])],
        capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert "Found Comprehensive3DSR IOD" in output and "IOD validation complete" in output
    errors = [line for line in output.splitlines() if line.lower().startswith("error")]
    assert not errors, errors
    # Its only remarks: no template is declared (docs/recorder.md lists them).
    warnings = [line for line in output.splitlines() if line.startswith("Warning")]
    assert all("not in template" in line for line in warnings), warnings


def test_highdicom_reads_the_trajectory(recording):
    hd = pytest.importorskip("highdicom", reason="highdicom not installed")
    path, tracks = recording
    sr = hd.sr.Comprehensive3DSR.from_dataset(pydicom.dcmread(path))
    root = sr.content[0]
    for tool, track in zip(root.ContentSequence, tracks, strict=True):
        items = tool.ContentSequence
        assert items[0].value == track.tool_id
        points = [i for i in items if isinstance(i, hd.sr.Scoord3DContentItem)
                  and i.name.value == POSITION.value]
        assert all(p.graphic_type == hd.sr.GraphicTypeValues3D.MULTIPOINT for p in points)
        mm = np.concatenate([p.value for p in points])
        assert np.allclose(mm / 1000.0, track.positions_m, atol=1e-7)


@pytest.mark.skipif(not Path(ORTHANC_BINARY).is_file(), reason="Orthanc not installed")
def test_orthanc_stores_the_pose_sr(recording, tmp_path):
    path = recording[0]
    with Orthanc(tmp_path / "orthanc") as orthanc:
        request = urllib.request.Request(f"http://127.0.0.1:{orthanc.http_port}/instances",
                                         data=path.read_bytes(), method="POST")
        with urllib.request.urlopen(request, timeout=60) as response:
            assert response.status == 200
        [instance] = orthanc.rest("GET", "/instances")
        tags = orthanc.rest("GET", f"/instances/{instance}/simplified-tags")
        assert tags["SOPClassUID"] == COMPREHENSIVE_3D_SR
        stored = orthanc.rest("GET", f"/instances/{instance}/file")
    poses = read_pose_sr(pydicom.dcmread(io.BytesIO(stored)))
    for track in recording[1]:
        assert np.array_equal(poses[track.tool_id][0], track.stamps_ns // 1000 * 1000)
