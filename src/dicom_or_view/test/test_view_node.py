"""The view node on a DDS domain of its own: the session, the streams' descriptors and
samples, and the recorder's status reach the page's channel; bad parameters are one line."""

import json
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from ament_index_python.packages import get_package_prefix
from dicom_or_test_common.examples import example_descriptor, example_session
from dicom_or_test_common.ros import isolated_env, reserved_domain_id, ros_context, spin_until
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter

from dicom_or_msgs.msg import ImageFrame, RecorderStatus, WaveformChunk
from dicom_or_msgs.msg import SessionContext as SessionContextMsg
from dicom_or_msgs.msg import StreamDescriptor as StreamDescriptorMsg
from dicom_or_ros.convert import to_msg
from dicom_or_ros.graph import SESSION_CONTEXT_TOPIC, descriptor_topic
from dicom_or_ros.image import fill_image
from dicom_or_ros.qos import named_qos
from dicom_or_view import live
from dicom_or_view.or_view_node import OrViewNode


def test_graph_to_page(tmp_path):
    with ros_context() as ctx:
        view = OrViewNode(context=ctx, parameter_overrides=[
            Parameter("port", value=0), Parameter("discovery_period_s", value=0.1),
            Parameter("dicomweb_url", value="http://127.0.0.1:9/dicom-web")])
        sent, frames = [], []
        view.server.publish = lambda kind, data, keep=True: sent.append((kind, data))
        view.server.has_clients = lambda: True
        view.server.wants_video = lambda: True
        view.encoder._wanted = lambda: True
        view.encoder._deliver = lambda series, message: frames.append(message)
        source = Node("source", context=ctx)
        session = example_session()
        video = example_descriptor("video", session, rows=48, columns=64)
        ecg = example_descriptor("ecg", session)
        latched = named_qos("descriptor")
        source.create_publisher(SessionContextMsg, SESSION_CONTEXT_TOPIC, latched).publish(
            to_msg(session))
        publishers = {}
        for d, kind, profile in ((video, ImageFrame, "video"),
                                 (ecg, WaveformChunk, "waveform")):
            publishers[d.topic] = source.create_publisher(kind, d.topic, named_qos(profile))
            source.create_publisher(StreamDescriptorMsg, descriptor_topic(d.topic),
                                    latched).publish(to_msg(d))
        status = source.create_publisher(RecorderStatus, "/or/recorder/status",
                                         named_qos("status"))
        sequence = [0]

        def tick():
            sequence[0] += 1
            frame = ImageFrame()
            frame.context.series_instance_uid = video.series_instance_uid
            frame.context.sequence = sequence[0]
            frame.context.acquisition_time.sec = int(time.time())
            fill_image(frame.image, np.full((48, 64, 3), 90, np.uint8), "rgb8")
            publishers[video.topic].publish(frame)
            chunk = WaveformChunk(channel_count=len(ecg.channels), sample_period=0.002)
            chunk.context.series_instance_uid = ecg.series_instance_uid
            chunk.samples = [100] * (10 * len(ecg.channels))
            publishers[ecg.topic].publish(chunk)
            status.publish(RecorderStatus(instances_final=sequence[0]))

        source.create_timer(0.05, tick)
        executor = SingleThreadedExecutor(context=ctx)
        executor.add_node(view)
        executor.add_node(source)

        def kinds():
            return {kind for kind, _ in sent}

        def streams():
            return [data["streams"] for kind, data in sent if kind == "streams"]

        try:
            assert spin_until(executor, lambda: {"session", "recorder", "wave"} <= kinds()
                              and streams() and len(streams()[-1]) == 2 and frames, 30), \
                (kinds(), streams(), len(frames))
        finally:
            view.close()
            executor.shutdown()
            view.destroy_node()
            source.destroy_node()
    by_kind = {kind: data for kind, data in sent}
    assert by_kind["session"]["study_instance_uid"] == session.study.study_instance_uid
    assert by_kind["recorder"]["instances_final"] >= 1
    wave = by_kind["wave"]
    assert wave["series"] == ecg.series_instance_uid and len(wave["data"]) == len(ecg.channels)
    assert {s["kind"] for s in streams()[-1]} == {"video", "waveform"}
    length = live.FRAME_HEADER.unpack_from(frames[0])[0]
    assert json.loads(frames[0][4:4 + length])["series"] == video.series_instance_uid


def console_script() -> str:
    return str(Path(get_package_prefix("dicom_or_view")) / "lib" / "dicom_or_view" /
               "dicom_or_view")


@pytest.mark.parametrize("args,name", [
    (["-p", "jpeg_quality:=5"], "jpeg_quality"),
    (["-p", "port:=70000"], "port"),
    (["-p", "host:=192.0.2.1"], "port"),          # an address this host does not have
    (["-p", "dicomweb_ca:=/nonexistent.pem"], "dicomweb_ca"),
])
def test_bad_parameters_exit_1_naming_the_parameter(args, name):
    with reserved_domain_id() as domain:
        result = subprocess.run([console_script(), "--ros-args", *args],
                                env=isolated_env(domain), capture_output=True, text=True,
                                timeout=60)
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and name in lines[0] and "Traceback" not in result.stderr, lines


def test_a_watched_h264_stream_is_decoded_and_sent_as_jpeg():
    """A camera-side encoded stream (VideoPacket, video_codec h264) on the graph and a
    browser on the view's WebSocket: the view subscribes while the browser watches, decodes
    from a key frame on and sends each picture as JPEG with the sequence and capture time of
    the access unit it came from."""
    import asyncio
    import threading

    import aiohttp
    import cv2
    from dicom_or_test_common.video_packets import encode, packet_message, read_barcode

    from dicom_or_msgs.msg import VideoPacket
    from dicom_or_ros.qos import named_qos as qos

    packets = encode(60, 240, 320)                      # key frames at 0 and 30
    with ros_context() as ctx:
        view = OrViewNode(context=ctx, parameter_overrides=[
            Parameter("port", value=0), Parameter("discovery_period_s", value=0.1),
            Parameter("video_max_width", value=0),
            Parameter("dicomweb_url", value="http://127.0.0.1:9/dicom-web")])
        source = Node("source", context=ctx)
        d = to_msg(example_descriptor("video", example_session(), rows=240, columns=320))
        d.message_type, d.video_codec = "dicom_or_msgs/msg/VideoPacket", "h264"
        source.create_publisher(StreamDescriptorMsg, descriptor_topic(d.topic),
                                qos("descriptor")).publish(d)
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        pub = source.create_publisher(VideoPacket, d.topic, QoSProfile(
            depth=30, reliability=ReliabilityPolicy.RELIABLE))
        sequence = [0]

        def tick():
            n = sequence[0]
            pub.publish(packet_message(packets[n % 60], n, d.series_instance_uid,
                                       time.time_ns()))
            sequence[0] += 1

        source.create_timer(1 / 30, tick)
        received: list[bytes] = []
        done = threading.Event()

        async def browser():
            async with aiohttp.ClientSession() as http:
                async with http.ws_connect(view.server.url + "ws") as ws:
                    await ws.send_str(json.dumps({"token": "", "want": ["video"]}))
                    while len(received) < 3 and not done.is_set():
                        message = await ws.receive(timeout=30)
                        if message.type == aiohttp.WSMsgType.BINARY:
                            received.append(message.data)

        client = threading.Thread(target=lambda: asyncio.run(browser()), daemon=True)
        client.start()
        executor = SingleThreadedExecutor(context=ctx)
        executor.add_node(view)
        executor.add_node(source)
        try:
            assert spin_until(executor, lambda: len(received) >= 3, 30), len(received)
        finally:
            done.set()
            client.join(10)
            view.close()
            executor.shutdown()
            view.destroy_node()
            source.destroy_node()
    for message in received:
        length = live.FRAME_HEADER.unpack_from(message)[0]
        header = json.loads(message[4:4 + length])
        image = cv2.imdecode(np.frombuffer(message[4 + length:], np.uint8), cv2.IMREAD_COLOR)
        assert header["series"] == d.series_instance_uid
        assert (header["width"], header["height"]) == (320, 240) and image.shape == (240, 320, 3)
        assert read_barcode(image[..., ::-1]) == header["seq"] % 60   # its own access unit
        assert 0 < header["capture_ms"] <= header["encoded_ms"]       # an acquisition time
