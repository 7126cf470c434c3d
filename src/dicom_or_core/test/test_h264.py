"""The camera-side H.264 encoder's settings and the Annex B parser the recorder checks
incoming streams with (PS3.5 8.2.7 / 8.2.8: High Profile, Level 4.1 / 4.2)."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest
from pydicom.uid import MPEG4HP41, MPEG4HP422D

from dicom_or_core.iod.codec import PTS_HZ, choose_codec, mux_mpegts
from dicom_or_core.iod.h264 import (
    NAL_AUD,
    NAL_IDR,
    NAL_PPS,
    NAL_SPS,
    SpsInfo,
    inspect,
    is_idr,
    live_encoder,
    nal_types,
    nal_units,
    parse_sps,
    transfer_syntax_for,
)
from dicom_or_core.model.context import StreamDescriptor
from dicom_or_core.model.errors import DicomOrError


def _encode(rows: int, columns: int, fps: float, frames: int, preset: str = "superfast"):
    encoder = live_encoder(rows, columns, fps, "rgb8", preset=preset)
    rng = np.random.default_rng(1)
    packets = []
    for i in range(frames):
        # A hard cut every 7 frames: with scenecut on, x264 would put an IDR there.
        image = rng.integers(0, 256, (rows, columns, 3), np.uint8) if i % 7 == 3 else \
            np.full((rows, columns, 3), (i * 9) % 256, np.uint8)
        packets += encoder.encode(image, round(i * PTS_HZ / fps))
    return encoder, packets + encoder.flush()


@pytest.mark.parametrize("fps, level", [(25.0, 41), (60.0, 42)])
def test_live_encoder_stream_shape(fps: float, level: int) -> None:
    # 1080p at 60 fps needs Level 4.2 (522240 MB/s); 25 fps fits 4.1.
    rows, columns = (1080, 1920) if fps == 60.0 else (240, 320)
    frames = int(2 * fps) + 5
    encoder, packets = _encode(rows, columns, fps, frames)
    assert len(packets) == frames  # zero latency: one access unit per frame, in order
    assert encoder.delayed_frames == 0
    keys = [i for i, p in enumerate(packets) if p.keyframe]
    assert keys == [0, int(fps), int(2 * fps)]  # one IDR per second, none at scene cuts
    for i, p in enumerate(packets):
        types = nal_types(p.data)
        assert types[0] == NAL_AUD, i
        assert is_idr(p.data) == p.keyframe
        assert (NAL_SPS in types and NAL_PPS in types) == p.keyframe
        assert p.pts == p.dts == round(i * PTS_HZ / fps)
        unit = inspect(p.data)
        assert unit.key_frame == p.keyframe
        if p.keyframe:
            assert unit.sps == SpsInfo(100, unit.sps.constraint_flags, level)
    choice = transfer_syntax_for(inspect(packets[0].data).sps, rows, columns, fps)
    assert choice.transfer_syntax_uid == (MPEG4HP41 if level == 41 else MPEG4HP422D)
    # Through FFmpeg's MPEG-TS muxer and back: the same bytes (no AUD inserted).
    ts = mux_mpegts(choice, rows, columns, fps, packets)
    with av.open(io.BytesIO(ts)) as container:
        demuxed = b"".join(bytes(p) for p in container.demux(video=0) if p.size)
    assert demuxed == b"".join(p.data for p in packets)


def test_ultrafast_is_refused_because_it_is_baseline() -> None:
    with pytest.raises(DicomOrError, match="h264_preset"):
        live_encoder(240, 320, 30.0, "rgb8", preset="ultrafast")


def test_geometry_beyond_level_4_2_is_refused() -> None:
    with pytest.raises(DicomOrError, match="4.2"):
        live_encoder(2160, 3840, 30.0, "rgb8")


def test_nal_units_three_and_four_byte_start_codes() -> None:
    data = b"\x00\x00\x00\x01\x09\xf0" + b"\x00\x00\x01\x67\x64\x00\x29\xac" \
        + b"\x00\x00\x01\x65\x88\x00\x00"
    units = list(nal_units(data))
    assert [t for t, _, _ in units] == [NAL_AUD, NAL_SPS, NAL_IDR]
    t, start, end = units[1]
    assert data[start:end] == b"\x67\x64\x00\x29\xac"
    assert parse_sps(data[start:end]) == SpsInfo(100, 0, 41)
    assert data[units[2][1]:units[2][2]] == b"\x65\x88"  # trailing zeros are not the NAL's


def test_sps_with_emulation_prevention() -> None:
    # constraint flags 0 and level 0 would read 00 00 03: the 03 is not payload.
    assert parse_sps(b"\x67\x64\x00\x00\x03\x01") == SpsInfo(100, 0, 0)


@pytest.mark.parametrize("sps, match", [
    (SpsInfo(66, 0xC0, 31), "not High Profile"),
    (SpsInfo(77, 0, 41), "not High Profile"),
    (SpsInfo(100, 0, 51), "exceeds"),
])
def test_stream_that_does_not_fit_is_refused(sps: SpsInfo, match: str) -> None:
    with pytest.raises(DicomOrError, match=match):
        transfer_syntax_for(sps, 1080, 1920, 30.0)


def test_transfer_syntax_the_higher_of_geometry_and_sps() -> None:
    assert transfer_syntax_for(SpsInfo(100, 0, 30), 240, 320, 30.0).transfer_syntax_uid \
        == MPEG4HP41
    assert transfer_syntax_for(SpsInfo(100, 0, 42), 240, 320, 30.0).transfer_syntax_uid \
        == MPEG4HP422D
    assert transfer_syntax_for(SpsInfo(100, 0, 41), 1080, 1920, 60.0).transfer_syntax_uid \
        == MPEG4HP422D == choose_codec(1080, 1920, 60.0).transfer_syntax_uid


@pytest.mark.parametrize("data", [b"", b"\x01\x02\x03", b"\x00\x00\x01"])
def test_not_annex_b_is_a_clear_error(data: bytes) -> None:
    with pytest.raises(DicomOrError, match="video_packet.data"):
        inspect(data)


def test_descriptor_video_codec_validated() -> None:
    from dataclasses import replace

    from dicom_or_test_common.examples import example_descriptor

    from dicom_or_core.model import context as ctx

    assert StreamDescriptor().video_codec == ""
    video = example_descriptor("video")
    assert replace(video, video_codec="h264").validate().video_codec == "h264"
    assert ctx.from_dict(StreamDescriptor, ctx.to_dict(replace(video, video_codec="h264"))) \
        .video_codec == "h264"
    with pytest.raises(DicomOrError, match="video_codec"):
        replace(video, video_codec="vp9").validate()
