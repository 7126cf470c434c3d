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
