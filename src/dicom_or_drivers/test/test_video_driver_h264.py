"""Video driver, ``video_transport: h264``: ~/frames carries VideoPackets (H.264 High
Profile access units encoded in the driver), one IDR per second with SPS + PPS, an AUD in
every access unit, PTS from the acquisition stamps; the JPEG side output keeps working."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest
from dicom_or_test_common.ros import isolated_env, ros_context
from driver_harness import Probe, assert_contiguous, make_session, params, run_bad_parameter
from sensor_msgs.msg import CompressedImage

from dicom_or_core.iod.h264 import NAL_AUD, NAL_PPS, NAL_SPS, find_sps, is_idr, nal_types
from dicom_or_core.sim.video import decode_band
from dicom_or_drivers.video_node import VideoDriver
from dicom_or_msgs.msg import VideoPacket
from dicom_or_ros.convert import time_to_ns
from dicom_or_ros.qos import named_qos

FRAMES = "/or/endoscope/frames"
FPS = 10.0


def test_h264_transport_publishes_decodable_packets() -> None:
    with ros_context() as context:
        probe = Probe(context)
        probe.follow(FRAMES, VideoPacket, named_qos("video_compressed", FPS))
        jpeg: list[CompressedImage] = []
        probe.node.create_subscription(CompressedImage, "/or/endoscope/image_raw/compressed",
                                       jpeg.append, named_qos("video", FPS))
        driver = VideoDriver(context=context, namespace="/or", parameter_overrides=params(
            width=320, height=240, fps=FPS, video_transport="h264", publish_compressed=True))
        probe.executor.add_node(driver)
        try:
            assert probe.spin_until(
                lambda: driver.stream.publisher.get_subscription_count() >= 1, 10)
            probe.publish_session(make_session())
            count = int(2 * FPS) + 2  # past the second key frame
            assert probe.spin_until(lambda: len(probe.samples[FRAMES]) >= count, 30)
        finally:
            driver.close()
            driver.destroy_node()
            probe.close()
    descriptor = probe.descriptor(FRAMES)
    assert descriptor.message_type == "dicom_or_msgs/msg/VideoPacket"
    assert descriptor.video_codec == "h264"
    assert descriptor.qos_profile == "video_compressed"
    assert (descriptor.rows, descriptor.columns, descriptor.nominal_rate_hz) == (240, 320, FPS)
    packets: list[VideoPacket] = probe.samples[FRAMES]
    assert_contiguous([p.context.sequence for p in packets])
    assert packets[0].context.sequence == 0 and packets[0].pts == 0
    keys = [i for i, p in enumerate(packets) if p.key_frame]
    # One IDR per second, counted in packets (none dropped before encoding at 10 fps, 320x240).
    assert driver.frames_dropped_encoder == 0
    assert keys[:3] == [0, int(FPS), int(2 * FPS)][:len(keys[:3])] and len(keys) >= 2
    first_ns = time_to_ns(packets[0].context.acquisition_time)
    for i, p in enumerate(packets):
        data = bytes(p.data)
        types = nal_types(data)
        assert p.format == "h264" and types[0] == NAL_AUD
        assert p.key_frame == is_idr(data)
        if p.key_frame:
            assert NAL_SPS in types and NAL_PPS in types
            sps = find_sps(data)
            assert sps is not None and (sps.profile_idc, sps.level_idc) == (100, 41)
        else:
            assert NAL_SPS not in types
        expected = round((time_to_ns(p.context.acquisition_time) - first_ns) * 90_000 / 1e9)
        assert p.pts == expected, i
    # The packets decode, and each picture is the frame captured for it (the pattern's
    # code band: frame number, capture time).
    stream = b"".join(bytes(p.data) for p in packets)
    with av.open(io.BytesIO(stream), format="h264") as container:
        pictures = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(pictures) == len(packets)
    for p, picture in zip(packets, pictures, strict=True):
        number, captured_ns = decode_band(np.ascontiguousarray(picture))
        assert captured_ns == time_to_ns(p.context.acquisition_time)
    assert jpeg, "the JPEG side output keeps working in h264 mode"


@pytest.mark.parametrize("arg, name", [("video_transport:=mjpeg", "video_transport"),
                                       ("h264_preset:=ultrafast", "h264_preset"),
                                       ("h264_crf:=99", "h264_crf")])
def test_h264_bad_parameter_exits_1_naming_it(arg: str, name: str) -> None:
    with ros_context() as context:
        result = run_bad_parameter("video_driver", arg, env=isolated_env(context.domain))
    assert result.returncode == 1, result.stderr
    assert name in result.stderr and "invalid configuration" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
