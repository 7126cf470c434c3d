"""The dicom_bridge node on its own DDS domain starts the DICOMweb service: a live stream
published on ROS is listed by QIDO-RS with its ros2: Retrieve URL, its current frame is
served as /rendered, and the base URL is published latched on ~/dicomweb_url."""

from __future__ import annotations

import io
import socket
import subprocess
import threading

import numpy as np
import pytest
import requests
from bridge_fixtures import STUDY, VIDEO_SERIES, console_script, video
from dicom_or_test_common.ros import isolated_env, reserved_domain_id, ros_context
from PIL import Image
from rclpy.executors import SingleThreadedExecutor
from std_msgs.msg import String

from dicom_or_bridge.bridge_node import DicomBridgeNode
from dicom_or_msgs.msg import ImageFrame
from dicom_or_msgs.msg import StreamDescriptor as StreamDescriptorMsg
from dicom_or_ros.convert import to_msg
from dicom_or_ros.graph import descriptor_topic
from dicom_or_ros.qos import named_qos

TOKEN = "node-token"


@pytest.fixture
def graph(tmp_path):
    import rclpy

    with ros_context() as ctx:
        bridge = DicomBridgeNode(context=ctx, parameter_overrides=[
            rclpy.parameter.Parameter("port", value=0),
            rclpy.parameter.Parameter("dicomweb_port", value=0),
            rclpy.parameter.Parameter("dicomweb_token", value=TOKEN),
            rclpy.parameter.Parameter("archive_dir", value=str(tmp_path)),
            rclpy.parameter.Parameter("snapshot_timeout_s", value=8.0),
        ])
        driver = rclpy.create_node("fake_driver", context=ctx)
        executor = SingleThreadedExecutor(context=ctx)
        executor.add_node(bridge)
        executor.add_node(driver)
        stop = threading.Event()

        def spin():
            while not stop.is_set():
                executor.spin_once(timeout_sec=0.05)

        thread = threading.Thread(target=spin, daemon=True)
        thread.start()
        try:
            yield bridge, driver
        finally:
            stop.set()
            thread.join(timeout=5)
            bridge.close()
            executor.shutdown()
            driver.destroy_node()
            bridge.destroy_node()


def test_node_serves_a_live_stream_over_dicomweb(graph):
    bridge, driver = graph
    url = bridge.dicomweb.base_url
    published = threading.Event()
    got: list[str] = []
    driver.create_subscription(String, "/dicom_bridge/dicomweb_url",
                               lambda m: got.append(m.data) or published.set(),
                               named_qos("descriptor"))
    assert published.wait(10) and got[0] == url
    descriptor = video()
    desc_pub = driver.create_publisher(StreamDescriptorMsg, descriptor_topic(descriptor.topic),
                                       named_qos("descriptor"))
    desc_pub.publish(to_msg(descriptor))
    frames = driver.create_publisher(ImageFrame, descriptor.topic, 10)
    pixels = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    frame = ImageFrame()
    frame.image.encoding, frame.image.width, frame.image.height = "rgb8", 5, 4
    frame.image.step, frame.image.data = 15, pixels.tobytes()
    driver.create_timer(0.05, lambda: frames.publish(frame))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    listed = threading.Event()

    def poll() -> None:
        while not listed.is_set():
            answer = requests.get(f"{url}/series?Modality=ES", headers=auth, timeout=5)
            if answer.status_code == 200 and answer.json():
                listed.set()
                got.append(answer.json()[0]["00081190"]["Value"][0])
                return
            listed.wait(0.05)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    assert listed.wait(10), "the live series never appeared in QIDO-RS"
    assert got[-1].startswith(f"ros2:{descriptor.topic}")
    assert requests.get(f"{url}/series", timeout=5).status_code == 401
    rendered = requests.get(f"{url}/studies/{STUDY}/series/{VIDEO_SERIES}/rendered",
                            headers={**auth, "Accept": "image/png"}, timeout=15)
    assert rendered.status_code == 200, rendered.text
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(rendered.content))), pixels)
    assert bridge._health().values["http_refused"] == 1


def test_qido_lists_an_h264_stream_and_wado_renders_its_decoded_picture(graph):
    """An encoded stream (VideoPacket) over DICOMweb: QIDO-RS lists the live Series with a
    ros2: Retrieve URL naming VideoPacket, and /rendered is its decoded current picture."""
    from bridge_fixtures import H264_SERIES, h264_descriptor_msg, publish_packets
    from dicom_or_test_common.video_packets import barcode_frame, encode, read_barcode

    from dicom_or_core.iod.codec import psnr

    bridge, driver = graph
    url = bridge.dicomweb.base_url
    descriptor = h264_descriptor_msg()
    publish_packets(driver, descriptor, encode(60))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    found: list[dict] = []
    listed = threading.Event()

    def poll() -> None:
        while not listed.is_set():
            answer = requests.get(f"{url}/studies/{STUDY}/series", headers=auth, timeout=5)
            if answer.status_code == 200 and answer.json():
                found.extend(answer.json())
                listed.set()
                return
            listed.wait(0.05)

    threading.Thread(target=poll, daemon=True).start()
    assert listed.wait(10), "the live series never appeared in QIDO-RS"
    (series,) = found
    assert series["0020000E"]["Value"] == [H264_SERIES]
    assert series["00081190"]["Value"][0].startswith(
        f"ros2:{descriptor.topic}?type=dicom_or_msgs/msg/VideoPacket&qos=video_compressed")
    rendered = requests.get(f"{url}/studies/{STUDY}/series/{H264_SERIES}/rendered",
                            headers={**auth, "Accept": "image/png"}, timeout=15)
    assert rendered.status_code == 200, rendered.text
    pixels = np.asarray(Image.open(io.BytesIO(rendered.content)).convert("RGB"))
    assert pixels.shape == (240, 320, 3)
    assert psnr(pixels, barcode_frame(read_barcode(pixels))) > 30


def _run_bridge(*args: str) -> subprocess.CompletedProcess:
    with reserved_domain_id() as domain:
        return subprocess.run([console_script("dicom_bridge"), "--ros-args", "-p", "port:=0",
                               *args], env=isolated_env(domain), capture_output=True,
                              text=True, timeout=60)


def test_bad_prefix_and_busy_port_exit_1_naming_the_parameter():
    result = _run_bridge("-p", "dicomweb_prefix:=dicom web")
    assert result.returncode == 1 and "dicomweb_prefix" in result.stderr
    assert "Traceback" not in result.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        result = _run_bridge("-p", f"dicomweb_port:={busy.getsockname()[1]}")
    assert result.returncode == 1, result.stderr
    assert "dicomweb_port: cannot listen on 127.0.0.1" in result.stderr
    assert "Traceback" not in result.stderr
