"""The view's conversions in memory: what the browser is sent, from the graph's messages."""

import json
import threading
import time
from types import SimpleNamespace as NS

import cv2
import numpy as np
import pytest

from dicom_or_msgs.msg import (
    RecorderStatus,
    RecorderStreamStatus,
    RequestAttributes,
    SessionContext,
)
from dicom_or_view import live


def stamp(ns: int) -> NS:
    return NS(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def test_session_from_the_context_message():
    msg = SessionContext()
    msg.patient.patient_name, msg.patient.patient_id = "Demo^Patient^J", "P1"
    msg.study.study_instance_uid, msg.study.study_description = "1.2.3", "Lap chole"
    msg.study.study_date, msg.study.study_time = "20261126", "081500.25"
    msg.operating_room = "OR1"
    session = live.session_json(msg)
    assert session["patient_name"] == "Demo, Patient J"
    assert session["procedure"] == "Lap chole"           # no request: the study's
    assert session["start"] == "2026-11-26T08:15:00"     # no step started: the study's
    msg.performed_procedure_step_start_date = "20261126"
    msg.performed_procedure_step_start_time = "0930"
    msg.requests = [RequestAttributes(requested_procedure_description="Cholecystectomy")]
    session = live.session_json(msg)
    assert session["start"] == "2026-11-26T09:30:00"
    assert session["procedure"] == "Cholecystectomy"
    assert session["operating_room"] == "OR1" and session["study_instance_uid"] == "1.2.3"


@pytest.mark.parametrize("date,time_,iso", [
    ("20261126", "", "2026-11-26T00:00:00"), ("2026112", "10", ""), ("", "1010", ""),
    ("20261126", "2599", "2026-11-26T00:00:00")])
def test_dicom_date_time_to_iso(date, time_, iso):
    assert live.dicom_datetime(date, time_) == iso


def test_recorder_status_as_json_values():
    msg = RecorderStatus(instances_final=3, disk_free_mib=float("nan"))
    msg.header.stamp.sec = 5
    msg.streams = [RecorderStreamStatus(topic="/or/ecg", recording=True, samples=500)]
    data = live.message_dict(msg)
    text = json.dumps(data, allow_nan=False)   # NaN is not JSON: sent as null
    assert data["instances_final"] == 3 and data["disk_free_mib"] is None
    assert data["header"]["stamp"] == 5.0
    assert data["streams"][0]["topic"] == "/or/ecg" and data["streams"][0]["samples"] == 500
    assert data["pacs"]["enabled"] is False and "mpps" in json.loads(text)


def test_waveform_chunk_in_physical_units():
    descriptor = NS(channels=[
        NS(label="II", unit_ucum="uV", sensitivity=2.5, sensitivity_correction=1.0,
           baseline=0.0),
        NS(label="ART", unit_ucum="mm[Hg]", sensitivity=0.1, sensitivity_correction=0.0,
           baseline=10.0)])
    channels = live.channels_of(descriptor)
    assert channels[1].scale == pytest.approx(0.1)   # correction 0 = not given: 1
    chunk = NS(channel_count=2, samples=[100, 790, -40, 800], sample_period=0.002,
               first_sample_index=7, first_sample_time=stamp(1_700_000_000_123_000_000))
    message = live.waveform_json("1.2.9", chunk, channels)
    assert message["data"] == [[250.0, -100.0], [80.0, 81.0]]   # (v + baseline) * scale
    assert message["t0_ms"] == pytest.approx(1_700_000_000_123.0)
    assert message["period_ms"] == pytest.approx(2.0)
    assert message["series"] == "1.2.9" and message["first_index"] == 7


def test_pose_in_millimetres():
    sample = NS(tool_id="pointer", visible=False, tracking_quality=0.87654,
                pose=NS(position=NS(x=0.1, y=-0.0255, z=1.2)),
                context=NS(acquisition_time=stamp(2_000_000_000)))
    pose = live.pose_json("1.2.8", "tracker", sample)
    assert (pose["x"], pose["y"], pose["z"]) == (100.0, -25.5, 1200.0)
    assert pose["visible"] is False and pose["quality"] == 0.877
    assert pose["frame"] == "tracker" and pose["t_ms"] == 2000.0


def parse(message: bytes) -> tuple[dict, np.ndarray]:
    length = live.FRAME_HEADER.unpack_from(message)[0]
    header = json.loads(message[4:4 + length])
    image = cv2.imdecode(np.frombuffer(message[4 + length:], np.uint8), cv2.IMREAD_COLOR)
    return header, image


def test_frame_message_carries_capture_time_and_a_scaled_jpeg():
    pixels = np.zeros((120, 200, 3), np.uint8)
    pixels[:, :100] = (255, 0, 0)                       # red left half, in rgb8
    frame = live.RawFrame("1.2.7", "rgb8", 200, 120, 600, pixels.tobytes(), 42,
                          1_700_000_000_500_000_000, 1_700_000_000_510.0)
    encoder = live.FrameEncoder(lambda *_: None, lambda: True, max_width=100, quality=90)
    try:
        header, image = parse(encoder.encode(frame))
    finally:
        encoder.close()
    assert header["seq"] == 42 and header["capture_ms"] == 1_700_000_000_500.0
    assert (header["width"], header["height"]) == (200, 120)
    assert image.shape == (60, 100, 3)                  # scaled to max_width
    assert image[30, 10, 2] > 200 and image[30, 10, 0] < 60   # still red (BGR decode)
    assert image[30, 90, 2] < 60


def test_encoder_sends_the_newest_frame_only_and_only_when_watched():
    delivered, gate, watched = [], threading.Event(), [False]

    def deliver(series, message):
        gate.wait(5)
        delivered.append(parse(message)[0]["seq"])

    encoder = live.FrameEncoder(deliver, lambda: watched[0], max_width=0)
    pixels = np.zeros((16, 16), np.uint8).tobytes()

    def frame(seq):
        return live.RawFrame("s", "mono8", 16, 16, 16, pixels, seq, 0, 0.0)

    try:
        encoder.offer(frame(1))                 # nobody watches: not even queued
        watched[0] = True
        for seq in range(2, 8):                 # 2 is taken at once; 3..7 replace each other
            encoder.offer(frame(seq))
            time.sleep(0.01)
        gate.set()
        deadline = time.monotonic() + 5
        while len(delivered) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        encoder.close()
    assert delivered[-1] == 7 and 1 not in delivered
    assert len(delivered) < 6 and encoder.replaced >= 3


def packet_frames(first_sequence, packets, indices):
    return [live.PacketFrame("1.2.264", "h264", packets[i].key_frame, packets[i].data,
                             first_sequence + i, packets[i].pts,
                             1_700_000_000_000_000_000 + i * 33_000_000, 0.0)
            for i in indices]


def test_h264_access_units_are_all_decoded_and_the_newest_picture_sent():
    from dicom_or_test_common.video_packets import encode, read_barcode

    packets = encode(40, 240, 320)                     # key frames at 0 and 30
    encoder = live.FrameEncoder(lambda *_: None, lambda: True, max_width=0, quality=90)
    try:
        # Joined mid-GOP: nothing to show until the key frame.
        assert encoder.decode_and_encode("1.2.264", packet_frames(0, packets,
                                                                  range(3, 10))) is None
        header, image = parse(encoder.decode_and_encode(
            "1.2.264", packet_frames(0, packets, range(10, 33))))
        # The newest picture (access unit 32), with its own sequence and capture time.
        assert header["seq"] == 32 and header["series"] == "1.2.264"
        assert header["capture_ms"] == 1_700_000_000_000.0 + 32 * 33.0
        assert (header["width"], header["height"]) == (320, 240)
        assert read_barcode(image[..., ::-1]) == 32
        assert image[-1, -1, 2] > 200 and image[-1, -1, 0] < 60   # red right (BGR decode)
        # Garbage is counted and skipped; the stream goes on at the next key frame.
        bad = packet_frames(0, packets, [33])
        bad[0].data = b"not h264"
        assert encoder.decode_and_encode("1.2.264", bad) is None
        assert encoder.errors == 1
        assert encoder.decode_and_encode("1.2.264", packet_frames(0, packets,
                                                                  range(34, 40))) is None
    finally:
        encoder.close()


def test_h264_queue_is_dropped_when_the_thread_falls_behind_and_only_when_watched():
    from dicom_or_test_common.video_packets import encode

    packets = encode(2, 48, 64)
    delivered, watched, gate = [], [False], threading.Event()

    def deliver(series, message):
        gate.wait(5)
        delivered.append(parse(message)[0]["seq"])

    encoder = live.FrameEncoder(deliver, lambda: watched[0], max_width=0)
    try:
        encoder.offer_packet(packet_frames(0, packets, [0])[0])   # nobody watches
        watched[0] = True
        encoder.offer_packet(packet_frames(100, packets, [0])[0])  # taken, delivery held
        deadline = time.monotonic() + 5
        while encoder._packets and time.monotonic() < deadline:
            time.sleep(0.01)
        frames = [packet_frames(200 + n, packets, [1])[0] for n in
                  range(live.MAX_QUEUED_PACKETS + 5)]
        for frame in frames:
            encoder.offer_packet(frame)
        assert encoder.dropped_packets == live.MAX_QUEUED_PACKETS
        gate.set()
        while len(delivered) < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        encoder.close()
    assert delivered[0] == 100
