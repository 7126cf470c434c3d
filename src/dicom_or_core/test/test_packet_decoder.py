"""The streaming H.264 decoder of VideoPacket consumers: it starts at the first key frame,
skips from a sequence gap to the next key frame (never a corrupted picture), converts only
on demand, and turns garbage into PacketDecodeError, after which it recovers."""

from __future__ import annotations

import array

import numpy as np
import pytest
from dicom_or_test_common.video_packets import barcode_frame, encode, read_barcode

from dicom_or_core.iod.codec import psnr
from dicom_or_core.iod.h264 import NAL_IDR, NAL_PPS, NAL_SPS, nal_types
from dicom_or_core.iod.packet_decoder import PacketDecodeError, PacketDecoder, decode_packets
from dicom_or_core.model.errors import DicomOrError

ROWS, COLUMNS = 240, 320


@pytest.fixture(scope="module")
def packets():
    """65 access units at 30 fps: key frames at 0, 30 and 60."""
    out = encode(65, ROWS, COLUMNS, 30.0)
    assert [i for i, p in enumerate(out) if p.key_frame] == [0, 30, 60]
    return out


def feed(decoder, packets, sequences):
    """Decode packets[s] for each sequence s; the (sequence, bar code) of every picture."""
    shown = []
    for s in sequences:
        p = packets[s]
        for picture in decoder.decode(p.data, p.key_frame, s, p.pts):
            assert picture.sequence == s and picture.pts == p.pts
            shown.append((s, read_barcode(picture.to_ndarray("rgb8"))))
    return shown


def test_every_access_unit_gives_its_own_picture_at_once(packets):
    decoder = PacketDecoder()
    shown = feed(decoder, packets, range(len(packets)))
    assert shown == [(i, i) for i in range(65)]
    c = decoder.counts
    assert (c.packets, c.pictures, c.skipped, c.gaps, c.errors) == (65, 65, 0, 0, 0)
    # Lossy but faithful: the picture is the frame that was encoded.
    rgb = decode_packets([(p.data, p.key_frame) for p in packets[:1]])[0]
    assert rgb.shape == (ROWS, COLUMNS, 3) and rgb.dtype == np.uint8
    assert psnr(rgb, barcode_frame(0, ROWS, COLUMNS)) > 30


def test_key_frames_carry_sps_pps_and_idr(packets):
    assert {NAL_SPS, NAL_PPS, NAL_IDR} <= set(nal_types(packets[30].data))
    assert NAL_IDR not in nal_types(packets[31].data)


def test_joining_mid_gop_skips_to_the_next_key_frame(packets):
    decoder = PacketDecoder()
    shown = feed(decoder, packets, range(5, 65))
    assert shown == [(i, i) for i in range(30, 65)]
    assert decoder.counts.skipped == 25 and decoder.counts.errors == 0


def test_a_gap_resumes_only_at_the_next_key_frame(packets):
    decoder = PacketDecoder()
    sequences = [s for s in range(65) if s != 10]   # access unit 10 lost
    shown = feed(decoder, packets, sequences)
    assert shown == [(i, i) for i in range(10)] + [(i, i) for i in range(30, 65)]
    assert decoder.counts.gaps == 1 and decoder.counts.skipped == 19
    assert not decoder.waiting_for_key_frame


def test_a_step_back_is_a_new_series_that_starts_at_its_key_frame(packets):
    decoder = PacketDecoder()
    feed(decoder, packets, range(0, 40))
    # The sequence restarts at 0 (a new Series): its first key frame decodes at once.
    assert feed(decoder, packets, range(0, 3)) == [(0, 0), (1, 1), (2, 2)]
    assert decoder.counts.gaps == 1


def test_conversion_is_on_demand_and_in_any_encoding(packets):
    decoder = PacketDecoder()
    (picture,) = decoder.decode(array.array("B", packets[0].data), True, 0, 0)
    assert picture.frame.format.name == "yuv420p"    # nothing converted yet
    assert (picture.width, picture.height) == (COLUMNS, ROWS)
    rgb, bgr = picture.to_ndarray("rgb8"), picture.to_ndarray("bgr24")
    assert np.array_equal(rgb[..., ::-1], bgr)
    assert rgb[-1, -1, 0] > 200 and rgb[-1, -1, 2] < 50    # red right, blue left
    assert picture.to_ndarray("mono8").shape == (ROWS, COLUMNS)
    with pytest.raises(DicomOrError, match="encoding"):
        picture.to_ndarray("yuv422")


@pytest.mark.parametrize("data, key, rule", [
    (b"", True, "is empty"),
    (b"hello, not a video", True, "Annex B"),
    (b"\x00\x00\x00\x01\x09\x10", True, "no IDR slice"),
    (b"\x00\x00\x00\x01\x65" + bytes(range(256)) * 8, True, "decoder rejected"),
])
def test_garbage_is_a_clear_error_and_the_next_key_frame_recovers(packets, data, key, rule):
    decoder = PacketDecoder()
    feed(decoder, packets, range(0, 3))
    with pytest.raises(PacketDecodeError, match=rule) as caught:
        decoder.decode(data, key, 3)
    assert "video_packet" in str(caught.value)
    assert decoder.waiting_for_key_frame and decoder.counts.errors == 1
    assert decoder.counts.last_error == str(caught.value)
    assert feed(decoder, packets, range(4, 32)) == [(30, 30), (31, 31)]


def test_wrong_format_and_codec_are_named():
    with pytest.raises(DicomOrError, match="video_codec"):
        PacketDecoder("vp9")
    with pytest.raises(PacketDecodeError, match="format must be 'h264'"):
        PacketDecoder().decode(b"\x00\x00\x01\x65", True, 0, fmt="hevc")
