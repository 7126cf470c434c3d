"""Passthrough video recording: H.264 access units from the camera-side encoder (real x264
packets, dicom_or_core.iod.h264.live_encoder) stored without re-encoding. The elementary
stream demuxed from each instance (PyAV and ffmpeg -c copy) is byte-identical to the packets
fed; instances start at IDRs; undecodable packets (before the first IDR, after a gap) are
dropped and counted; a stream outside High Profile Level 4.2 is refused."""

from __future__ import annotations

import dataclasses
import io
import subprocess
from fractions import Fraction

import av
import numpy as np
import pydicom
import pytest
from dicom_or_test_common import bags
from dicom_or_test_common.examples import example_descriptor, now_ns, synthetic_rgb
from dicom_or_test_common.peers import dciodvfy, have
from pydicom.encaps import generate_fragments
from pydicom.uid import MPEG4HP41

from dicom_or_core.archive.spool import FINAL, Spool
from dicom_or_core.bags.reader import Bag
from dicom_or_core.bags.to_dicom import ConvertOptions, convert_bag
from dicom_or_core.iod.codec import PTS_HZ, EncodedPacket
from dicom_or_core.iod.h264 import is_idr, live_encoder
from dicom_or_core.iod.video import frame_offsets_ms
from dicom_or_core.model.errors import DicomOrError
from dicom_or_recorder.segments import (
    PassthroughVideoRecorder,
    RecorderOptions,
    finalise_journal,
    recorder_for,
)
from dicom_or_recorder.video_queue import VideoEncoderQueue

FPS = 10.0
PERIOD = round(1e9 / FPS)


def _descriptor():
    return dataclasses.replace(example_descriptor("video"), video_codec="h264",
                               message_type="dicom_or_msgs/msg/VideoPacket",
                               nominal_rate_hz=FPS)


def _packets(n: int) -> list[EncodedPacket]:
    encoder = live_encoder(240, 320, FPS, "rgb8")
    out = []
    for i in range(n):
        out += encoder.encode(synthetic_rgb(240, 320, i), round(i * PTS_HZ / FPS))
    return out + encoder.flush()


def _instances(spool, uids):
    return [pydicom.dcmread(spool.absolute(spool.get(u))) for u in uids]


def _es(ds) -> bytes:
    """The H.264 elementary stream demuxed from an instance's Transport Stream (PyAV)."""
    ts = b"".join(generate_fragments(ds.PixelData))
    with av.open(io.BytesIO(ts)) as container:
        return b"".join(bytes(p) for p in container.demux(video=0) if p.size)


@pytest.fixture(scope="module")
def packets():
    return _packets(55)   # IDRs at 0, 10, 20, 30, 40, 50


def test_recorder_for_picks_passthrough_by_video_codec(tmp_path):
    rec = recorder_for(_descriptor(), Spool(tmp_path), RecorderOptions(video_mode="mpeg2"))
    assert isinstance(rec, PassthroughVideoRecorder)
    assert rec.choice is not None and rec.choice.transfer_syntax_uid == MPEG4HP41


def test_packets_stored_unchanged_and_instances_start_at_idrs(tmp_path, packets):
    spool = Spool(tmp_path)
    rec = PassthroughVideoRecorder(_descriptor(), spool, RecorderOptions(max_segment_s=1.5))
    t0 = now_ns()
    done = []
    for i, p in enumerate(packets):
        done += rec.feed(p.data, t0 + i * PERIOD, i)
    done += rec.stop()
    instances = _instances(spool, done)
    # Due after 1.5 s, each instance closes just before the next key frame: 2 s each.
    assert [int(ds.NumberOfFrames) for ds in instances] == [20, 20, 15]
    assert rec.stats.lost_messages == 0 and rec.stats.samples == 55
    first = 0
    for ds in instances:
        n = int(ds.NumberOfFrames)
        mine = packets[first:first + n]
        assert is_idr(mine[0].data)
        assert str(ds.file_meta.TransferSyntaxUID) == MPEG4HP41
        assert _es(ds) == b"".join(p.data for p in mine)
        assert frame_offsets_ms(ds)[-1] == pytest.approx((n - 1) * PERIOD / 1e6, abs=1e-3)
        first += n
    # ffmpeg's own demuxer agrees (the command the brief of this stream names).
    ts = tmp_path / "a.ts"
    ts.write_bytes(b"".join(generate_fragments(instances[0].PixelData)))
    es = subprocess.run(["ffmpeg", "-v", "error", "-i", str(ts), "-c", "copy", "-f", "h264",
                         "-"], capture_output=True, check=True).stdout
    assert es == b"".join(p.data for p in packets[:20])
    if have("dciodvfy"):
        for uid in done:
            assert dciodvfy(spool.absolute(spool.get(uid)))[0] == 0


def test_loss_drops_until_the_next_idr_and_keeps_the_gap(tmp_path, packets):
    spool = Spool(tmp_path)
    rec = PassthroughVideoRecorder(_descriptor(), spool, RecorderOptions())
    t0 = now_ns()
    # Joined late (packets 3..9 precede any IDR: dropped), and packet 14 is lost: 15..19
    # cannot be decoded until the IDR at 20.
    fed = [i for i in range(3, 35) if i != 14]
    for i in fed:
        rec.feed(packets[i].data, t0 + i * PERIOD, i)
    [uid] = rec.stop()
    [ds] = _instances(spool, [uid])
    stored = list(range(10, 14)) + list(range(20, 35))
    assert int(ds.NumberOfFrames) == len(stored)
    assert rec.stats.extra["dropped_until_key_frame"] == 7 + 5
    assert rec.stats.lost_messages == 7 + 1 + 5     # undecodable + the one never received
    assert _es(ds) == b"".join(packets[i].data for i in stored)
    # The gap stays in the timeline: frame 4 of the instance is packet 20, 1 s after 10.
    offsets = frame_offsets_ms(ds)
    assert offsets[4] == pytest.approx(10 * PERIOD / 1e6, abs=1e-3)
    with av.open(io.BytesIO(b"".join(generate_fragments(ds.PixelData)))) as container:
        decoded = [f.pts for f in container.decode(video=0)]
    assert len(decoded) == len(stored)
    if have("dciodvfy"):
        assert dciodvfy(spool.absolute(spool.get(uid)))[0] == 0


def test_recovery_from_the_journal_gives_the_same_bytes(tmp_path, packets):
    spool = Spool(tmp_path)
    rec = PassthroughVideoRecorder(_descriptor(), spool, RecorderOptions())
    t0 = now_ns()
    for i, p in enumerate(packets[:25]):
        rec.feed(p.data, t0 + i * PERIOD, i)
    del rec  # SIGKILL: the journal is all that is left
    spool = Spool(tmp_path)
    report = spool.recover(finalise_journal)
    [ds] = _instances(spool, report.sop_instance_uids)
    assert _es(ds) == b"".join(p.data for p in packets[:25])
    assert spool.counts()[FINAL] == 1


def test_not_high_profile_is_refused_and_nothing_recorded(tmp_path):
    # A Main Profile stream (what a camera without the live encoder's settings may send).
    ctx = av.CodecContext.create("libx264", "w")
    ctx.width, ctx.height, ctx.pix_fmt = 320, 240, "yuv420p"
    ctx.time_base = Fraction(1, 10)
    ctx.options = {"profile": "main", "tune": "zerolatency", "preset": "superfast",
                   "x264-params": "repeat-headers=1"}
    units = []
    for i in range(3):
        frame = av.VideoFrame.from_ndarray(synthetic_rgb(240, 320, i), format="rgb24")
        frame = frame.reformat(format="yuv420p")
        frame.pts = i
        units += [bytes(p) for p in ctx.encode(frame)]
    spool = Spool(tmp_path)
    rec = PassthroughVideoRecorder(_descriptor(), spool, RecorderOptions())
    t0 = now_ns()
    with pytest.raises(DicomOrError, match="not High Profile"):
        rec.feed(units[0], t0, 0)
    for i, unit in enumerate(units[1:], 1):  # its P-frames depend on the refused IDR
        rec.feed(unit, t0 + i * PERIOD, i)
    assert rec.stop() == [] and rec.stats.extra["dropped_until_key_frame"] == 2
    with pytest.raises(DicomOrError, match="Annex B"):
        rec.feed(b"\x01\x02\x03\x04", t0 + 5 * PERIOD, 5)


def test_snapshot_decodes_since_the_last_idr(tmp_path, packets):
    spool = Spool(tmp_path)
    rec = PassthroughVideoRecorder(_descriptor(), spool, RecorderOptions())
    t0 = now_ns()
    with pytest.raises(DicomOrError, match="no key frame"):
        rec.snapshot()
    for i, p in enumerate(packets[:17]):
        rec.remember(p.data, t0 + i * PERIOD)
    [uid] = rec.snapshot()
    [ds] = _instances(spool, [uid])
    image = ds.pixel_array
    expected = synthetic_rgb(240, 320, 16)
    assert image.shape == expected.shape
    assert np.mean(np.abs(image.astype(int) - expected.astype(int))) < 8  # lossy, close


def test_queue_worker_feeds_packets(tmp_path, packets):
    spool = Spool(tmp_path)
    rec = PassthroughVideoRecorder(_descriptor(), spool, RecorderOptions())
    queue = VideoEncoderQueue(rec, 100)
    t0 = now_ns()
    for i, p in enumerate(packets[:12]):
        assert queue.offer(p.data, t0 + i * PERIOD, i)
    [uid] = queue.stop()
    queue.close()
    [ds] = _instances(spool, [uid])
    assert _es(ds) == b"".join(p.data for p in packets[:12])


def test_a_bag_of_video_packets_converts_to_the_same_unchanged_stream(tmp_path, packets):
    """dicom_or_convert of a bag holding a VideoPacket stream (e.g. the recorder's own
    mcap_output of an h264 camera): the access units go through the same passthrough
    recorder, so the instance holds them unchanged; without its descriptor the topic is
    refused by name (geometry, rate and level are the camera's)."""
    d, t0 = _descriptor(), now_ns()
    messages = [bags.descriptor_message(d, t0)] + [
        bags.video_packet(d, t0 + i * PERIOD, i, p.data, p.keyframe, p.pts)
        for i, p in enumerate(packets)]
    path = bags.write_bag(tmp_path / "h264", messages)
    with Bag(path, bags.MSG_DIRS) as bag:
        report = convert_bag(bag, tmp_path / "out", lambda desc, spool: recorder_for(
            desc, spool, RecorderOptions(max_segment_s=60.0)))
    topic = report.topics[d.topic]
    assert (topic.samples, topic.refused, topic.instances) == (len(packets), 0, 1)
    (file,) = sorted((tmp_path / "out").rglob("*.dcm"))
    ds = pydicom.dcmread(file)
    assert ds.file_meta.TransferSyntaxUID == MPEG4HP41
    assert int(ds.NumberOfFrames) == len(packets)
    assert _es(ds) == b"".join(p.data for p in packets)
    bare = bags.write_bag(tmp_path / "bare", messages[1:])
    with Bag(bare, bags.MSG_DIRS) as bag, \
            pytest.raises(DicomOrError, match="H.264 stream needs its descriptor"):
        convert_bag(bag, tmp_path / "out2", lambda desc, spool: recorder_for(
            desc, spool, RecorderOptions()),
            ConvertOptions(streams={d.topic: {"modality": "ES"}}))  # a YAML cannot say it
