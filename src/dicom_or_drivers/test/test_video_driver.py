"""Video driver: in-process and across processes; context on every frame, no loss, pixel
counters equal to sequence numbers, Series life cycle, source loss, bad parameters."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from dicom_or_test_common.examples import write_test_video
from dicom_or_test_common.peers import free_tcp_port
from dicom_or_test_common.ros import isolated_env, ros_context
from driver_harness import (
    Probe,
    assert_contiguous,
    driver_process,
    make_session,
    params,
    run_bad_parameter,
)
from sensor_msgs.msg import CompressedImage, Image

from dicom_or_core.model.context import KIND_VIDEO
from dicom_or_core.sim.video import decode_band
from dicom_or_drivers.video_node import VideoDriver
from dicom_or_msgs.msg import DeviceStatus, ImageFrame
from dicom_or_ros.convert import time_to_ns
from dicom_or_ros.qos import named_qos

FRAMES = "/or/endoscope/frames"
RELIABLE = {"qos_overrides./or/endoscope/frames.publisher.reliability": "reliable"}


def _pixels(frame: ImageFrame) -> np.ndarray:
    image = frame.image
    channels = 1 if image.encoding == "mono8" else 3
    return np.frombuffer(image.data, np.uint8).reshape(image.height, image.width, channels)


def _check_frames(frames: list[ImageFrame], series_uid: str, width: int, height: int) -> None:
    assert_contiguous([f.context.sequence for f in frames])
    for frame in frames:
        assert frame.context.series_instance_uid == series_uid
        assert frame.context.header.frame_id == "endoscope_optical"
        assert (frame.image.width, frame.image.height) == (width, height)
        decoded = decode_band(_pixels(frame))
        assert decoded == (frame.context.sequence, time_to_ns(frame.context.acquisition_time))
        assert time_to_ns(frame.context.header.stamp) >= decoded[1]


@pytest.mark.parametrize("encoding", ["rgb8", "mono8"])
def test_in_process_frames_descriptor_status_and_new_series(encoding: str) -> None:
    with ros_context() as context:
        probe = Probe(context)
        probe.follow(FRAMES, ImageFrame, named_qos("video_recording", 30))
        raw: list[Image] = []
        jpeg: list[CompressedImage] = []
        probe.node.create_subscription(Image, "/or/endoscope/image_raw", raw.append,
                                       named_qos("video", 30))
        probe.node.create_subscription(CompressedImage, "/or/endoscope/image_raw/compressed",
                                       jpeg.append, named_qos("video", 30))
        driver = VideoDriver(context=context, namespace="/or", parameter_overrides=params(
            width=320, height=240, fps=30.0, pixel_format=encoding, publish_compressed=True,
            **RELIABLE))
        probe.executor.add_node(driver)
        try:
            # require_session_context: nothing before a context arrives.
            assert probe.spin_until(
                lambda: driver.stream.publisher.get_subscription_count() >= 1, 10)
            probe.spin_until(lambda: False, 0.3)
            assert probe.samples[FRAMES] == [] and not driver.stream.active
            assert probe.states(FRAMES)[:1] == [DeviceStatus.STATE_STARTING]

            first = make_session()
            probe.publish_session(first)
            assert probe.spin_until(lambda: len(probe.samples[FRAMES]) >= 40)
            descriptor = probe.descriptor(FRAMES)
            assert descriptor.kind == KIND_VIDEO and descriptor.modality == "ES"
            assert descriptor.session == first
            assert (descriptor.rows, descriptor.columns) == (240, 320)
            assert descriptor.pixel_encoding == encoding
            assert descriptor.series_number == 1 and descriptor.topic == FRAMES
            frames = list(probe.samples[FRAMES])
            assert frames[0].context.sequence == 0
            _check_frames(frames, descriptor.series_instance_uid, 320, 240)
            assert probe.spin_until(lambda: DeviceStatus.STATE_LIVE in probe.states(FRAMES))
            assert raw and raw[0].encoding == encoding
            assert jpeg and jpeg[0].format.startswith(f"{encoding}; jpeg compressed")
            by_stamp = {time_to_ns(f.context.acquisition_time): f.context.sequence
                        for f in frames}
            for message in jpeg[:5]:
                pixels = cv2.imdecode(np.frombuffer(message.data, np.uint8),
                                      cv2.IMREAD_UNCHANGED)
                decoded = decode_band(pixels)
                assert decoded is not None and decoded[1] == time_to_ns(message.header.stamp)
                if decoded[1] in by_stamp:
                    assert decoded[0] == by_stamp[decoded[1]]

            # A new study starts a new Series: new UIDs, series number 2, sequence from 0.
            second = make_session("P-0002")
            probe.publish_session(second)
            assert probe.spin_until(lambda: len(probe.descriptors[FRAMES]) >= 2)
            new = probe.descriptor(FRAMES)
            assert new.series_number == 2 and new.session == second
            assert new.series_instance_uid != descriptor.series_instance_uid
            assert new.frame_of_reference_uid != descriptor.frame_of_reference_uid
            assert new.stream_uuid == descriptor.stream_uuid
            count = len(probe.samples[FRAMES])
            assert probe.spin_until(lambda: len(probe.samples[FRAMES]) >= count + 20)
            after = [f for f in probe.samples[FRAMES]
                     if f.context.series_instance_uid == new.series_instance_uid]
            assert after[0].context.sequence == 0
            _check_frames(after, new.series_instance_uid, 320, 240)
        finally:
            driver.close()
            assert probe.spin_until(lambda: DeviceStatus.STATE_STOPPED in probe.states(FRAMES),
                                    5)
            driver.destroy_node()
            probe.close()


def test_file_source_without_loop_ends_in_source_lost(tmp_path) -> None:
    video = write_test_video(tmp_path / "clip.avi", frames=12, width=320, height=240)
    with ros_context() as context:
        probe = Probe(context)
        probe.follow(FRAMES, ImageFrame, named_qos("video_recording", 30))
        driver = VideoDriver(context=context, namespace="/or", parameter_overrides=params(
            source=str(video), width=320, height=240, fps=60.0, loop=False,
            require_session_context=False, **RELIABLE))
        probe.executor.add_node(driver)
        try:
            assert probe.spin_until(
                lambda: DeviceStatus.STATE_SOURCE_LOST in probe.states(FRAMES), 20)
            lost = [s for s in probe.status if s.state == DeviceStatus.STATE_SOURCE_LOST][-1]
            assert "end of video file" in lost.message
            assert driver.stream.samples_published == 12
            # File frame i went out as sequence i: the code band write_test_video put in
            # the file survived MJPEG and matches the stamped sequence on every frame.
            assert probe.spin_until(lambda: len(probe.samples[FRAMES]) >= 6, 5)
            for frame in probe.samples[FRAMES]:
                assert decode_band(_pixels(frame))[0] == frame.context.sequence
        finally:
            driver.close()
            driver.destroy_node()
            probe.close()


def test_network_url_source_streams_frames_from_a_real_http_server(tmp_path) -> None:
    """A URL source through OpenCV's FFmpeg backend, against a real HTTP server on
    loopback serving a clip: frames arrive in order, the pixel code band matching the
    stamped sequence; when the server's stream ends the driver says so and retries."""
    import functools
    import http.server
    import threading

    write_test_video(tmp_path / "clip.avi", frames=12, width=320, height=240)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/clip.avi"
    with ros_context() as context:
        probe = Probe(context)
        probe.follow(FRAMES, ImageFrame, named_qos("video_recording", 30))
        driver = VideoDriver(context=context, namespace="/or", parameter_overrides=params(
            source=url, width=320, height=240, fps=30.0, require_session_context=False,
            reconnect_initial_s=0.05, reconnect_max_s=0.2, **RELIABLE))
        probe.executor.add_node(driver)
        try:
            assert probe.spin_until(lambda: len(probe.samples[FRAMES]) >= 12, 20)
            first = probe.samples[FRAMES][:12]
            assert [f.context.sequence for f in first] == list(range(12))
            for frame in first:
                # file frame i carries code i; the driver stamped it as sequence i
                assert decode_band(_pixels(frame))[0] == frame.context.sequence
            assert probe.spin_until(
                lambda: DeviceStatus.STATE_SOURCE_LOST in probe.states(FRAMES), 20)
        finally:
            driver.close()
            driver.destroy_node()
            probe.close()
            server.shutdown()
            server.server_close()


@pytest.mark.parametrize("source", ["camera:57", "/dev/video57", "url"])
def test_unreachable_source_is_source_lost_and_retried_not_a_crash(source: str) -> None:
    if source == "url":  # nothing listens on a just-freed port: connection refused
        source = f"http://127.0.0.1:{free_tcp_port()}/stream.mjpg"
    with ros_context() as context:
        probe = Probe(context)
        driver = VideoDriver(context=context, namespace="/or", parameter_overrides=params(
            source=source, width=320, height=240, require_session_context=False,
            reconnect_initial_s=0.05, reconnect_max_s=0.2))
        probe.executor.add_node(driver)
        try:
            assert probe.spin_until(
                lambda: sum(s.state == DeviceStatus.STATE_SOURCE_LOST and "retrying" in
                            s.message for s in probe.status) >= 1, 20)
            assert driver._thread.is_alive()
        finally:
            driver.close()
            driver.destroy_node()
            probe.close()


def test_across_processes_no_loss_with_reliable_override() -> None:
    with ros_context() as context:
        probe = Probe(context)
        probe.follow(FRAMES, ImageFrame, named_qos("video_recording", 30))
        try:
            with driver_process("video_driver", "width:=640", "height:=480", "fps:=30.0",
                                "qos_overrides./or/endoscope/frames.publisher.reliability:="
                                "reliable", env=isolated_env(context.domain)):
                # Publish the context only once the driver's publisher has matched us, so
                # the first frame (sequence 0) cannot be missed by a late match.
                assert probe.spin_until(lambda: probe.node.count_publishers(FRAMES) >= 1, 20)
                assert probe.spin_until(lambda: probe.states(FRAMES) != [], 20)
                probe.spin_until(lambda: False, 0.5)
                session = make_session()
                probe.publish_session(session)
                assert probe.spin_until(lambda: len(probe.samples[FRAMES]) >= 60, 30)
                descriptor = probe.descriptor(FRAMES)
                assert descriptor.session.study == session.study
                frames = probe.samples[FRAMES]
                assert frames[0].context.sequence == 0
                _check_frames(frames, descriptor.series_instance_uid, 640, 480)
        finally:
            probe.close()


@pytest.mark.parametrize("arg, name", [
    ("fps:=-5.0", "fps"),
    ("source:=/no/such/video.mp4", "source"),
    ("pixel_format:=yuv422", "pixel_format"),
    ("width:=0", "width"),
    ("equipment.station_name:=THIS_NAME_IS_TOO_LONG_FOR_SH", "equipment.station_name"),
    ("modality:=CT", "modality"),
])
def test_bad_parameter_exits_1_naming_it(arg: str, name: str) -> None:
    with ros_context() as context:
        result = run_bad_parameter("video_driver", arg, env=isolated_env(context.domain))
    assert result.returncode == 1, result.stderr
    assert name in result.stderr and "invalid configuration" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
