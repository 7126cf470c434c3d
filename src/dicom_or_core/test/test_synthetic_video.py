"""The synthetic video's pixel code band: exact round trip, survives JPEG and H.264."""

from __future__ import annotations

import av
import cv2
import numpy as np
import pytest

from dicom_or_core.model.errors import DicomOrError
from dicom_or_core.sim.video import PatternSource, crc16, decode_band, encode_band, layout


def test_crc16_known_value() -> None:
    # CRC-16/CCITT-FALSE check value of "123456789".
    assert crc16(b"123456789") == 0x29B1


def _bitwise_crc16(data: bytes) -> int:
    """The hand-written CRC-16/CCITT-FALSE crc16 used before binascii.crc_hqx."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def test_crc16_matches_the_bitwise_reference() -> None:
    # Real band payloads (sequence + time) and random bytes of every length up to 64.
    rng = np.random.default_rng(7)
    payloads = [int(s).to_bytes(4, "big") + int(t).to_bytes(8, "big")
                for s, t in [(0, 0), (1, 1_700_000_000_123_456_789), (2**32 - 1, 2**64 - 1)]]
    payloads += [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in range(65)]
    for data in payloads:
        assert crc16(data) == _bitwise_crc16(data), data.hex()


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "mono8"])
@pytest.mark.parametrize("size", [(96, 64), (640, 480), (1920, 1080)])
def test_round_trip(encoding: str, size: tuple[int, int]) -> None:
    source = PatternSource(*size, encoding)
    for sequence, time_ns in [(0, 0), (1, 1_700_000_000_123_456_789),
                              (2**32 - 1, 2**64 - 1)]:
        frame = source.frame(sequence, time_ns)
        assert frame.shape[:2] == (size[1], size[0])
        assert decode_band(frame) == (sequence, time_ns)


def test_content_moves_between_frames() -> None:
    source = PatternSource(320, 240)
    band = source.layout.band_height
    first = source.frame(0, 0)[band:].copy()
    second = source.frame(5, 0)[band:].copy()
    assert np.mean(first != second) > 0.2


def test_damaged_band_is_rejected_not_misread() -> None:
    frame = PatternSource(640, 480).frame(1234, 5678)
    lay = layout(640, 480)
    frame[:lay.band_height, lay.cell * 20:lay.cell * 21] ^= 0xFF  # flip one cell column
    assert decode_band(frame) is None
    assert decode_band(np.zeros((480, 640, 3), np.uint8)) is None


def test_too_small_frame_is_an_error_naming_the_parameter() -> None:
    with pytest.raises(DicomOrError, match="width"):
        layout(32, 32)
    with pytest.raises(DicomOrError, match="pixel_format"):
        PatternSource(640, 480, "yuv422")


def test_encode_band_in_place_on_plain_image() -> None:
    frame = np.full((480, 640), 77, np.uint8)
    encode_band(frame, 42, 99)
    assert decode_band(frame) == (42, 99)


@pytest.mark.parametrize("size", [(640, 480), (1920, 1080)])
def test_survives_jpeg_default_quality(size: tuple[int, int]) -> None:
    source = PatternSource(*size, "bgr8")
    for sequence in (0, 77, 123456):
        ok, jpeg = cv2.imencode(".jpg", source.frame(sequence, sequence * 33_333_333))
        assert ok
        decoded = cv2.imdecode(jpeg, cv2.IMREAD_COLOR)
        assert decode_band(decoded) == (sequence, sequence * 33_333_333)


def test_survives_h264_default_settings(tmp_path) -> None:
    path = tmp_path / "pattern.mp4"
    source = PatternSource(640, 480, "rgb8")
    count = 30
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 640, 480, "yuv420p"
        for sequence in range(count):
            frame = av.VideoFrame.from_ndarray(source.frame(sequence, 1000 + sequence),
                                               format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    decoded = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            decoded.append(decode_band(frame.to_ndarray(format="rgb24")))
    assert decoded == [(s, 1000 + s) for s in range(count)]
