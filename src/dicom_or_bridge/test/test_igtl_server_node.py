"""The OpenIGTLink server node on a graph of its own (own DDS domain): the tracker driver
(simulated, 100 Hz, two tools) and a small video driver as their installed console scripts,
the node as its console script, and an OpenIGTLink client here: TRANSFORMs at the tracker's
rate with their latency (OpenIGTLink timestamp = acquisition time vs receive time, both the
host clock), IMAGEs at the downscaled size; bad parameters."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np
import pytest
from dicom_or_test_common.peers import free_tcp_port
from dicom_or_test_common.ros import isolated_env, reserved_domain_id
from igtl_clients import RawClient, percentile

TRACKER_RATE_HZ = 100.0
TOOLS = ("pointer", "patient_reference")


def _executable(package: str, name: str) -> str:
    from ament_index_python.packages import get_package_prefix

    path = Path(get_package_prefix(package)) / "lib" / package / name
    assert path.is_file(), f"{path} missing: run make build"
    return str(path)


@contextmanager
def _process(package: str, name: str, parameters: list[str],
             env: dict[str, str]) -> Iterator[subprocess.Popen]:
    """A console script in /or, as a launcher starts it; terminated on leaving, and it must
    not have printed a traceback."""
    words = [word for parameter in parameters for word in ("-p", parameter)]
    child = subprocess.Popen([_executable(package, name), "--ros-args", "-r", "__ns:=/or",
                              *words], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        yield child
    finally:
        child.terminate()
        output, _ = child.communicate(timeout=20)
        assert "Traceback" not in output, output


def _connect(port: int, timeout_s: float = 20.0) -> RawClient:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return RawClient(port)
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)  # the node is still starting: poll its port


def test_tools_at_the_tracker_rate_and_video_at_the_scaled_size() -> None:
    with reserved_domain_id() as domain, ExitStack() as stack:
        env = isolated_env(domain)
        port = free_tcp_port()
        stack.enter_context(_process("dicom_or_drivers", "tracker_driver", [
            f"rate_hz:={TRACKER_RATE_HZ}", "tool_count:=2", "marker_rate_hz:=0.0",
            "require_session_context:=false"], env))
        stack.enter_context(_process("dicom_or_drivers", "video_driver", [
            "width:=320", "height:=240", "fps:=10.0", "publish_image_raw:=false",
            "publish_compressed:=false", "require_session_context:=false"], env))
        stack.enter_context(_process("dicom_or_bridge", "dicom_or_igtl_server", [
            f"port:={port}", "discovery_period_s:=0.5", "image_max_rate_hz:=0.0",
            "image_scale:=0.5"], env))
        client = _connect(port)
        stack.callback(client.close)
        # Both streams found and flowing, then a 3 s window of TRANSFORMs.
        assert client.wait_for(lambda m: {x.message_type for x in m} == {"TRANSFORM", "IMAGE"},
                               30.0), [(x.message_type, x.device_name) for x in client.messages]
        start = len(client.messages)
        window_s = 3.0
        end_at = time.time() + window_s
        assert client.wait_for(lambda m: m[-1].received_s >= end_at, window_s + 10.0)
        window = client.messages[start:]
        transforms = [m for m in window if m.message_type == "TRANSFORM"]
        assert {m.device_name for m in transforms} == set(TOOLS)
        lines = []
        for tool in TOOLS:
            stamps = [m.timestamp_s for m in transforms if m.device_name == tool]
            assert all(b > a for a, b in zip(stamps, stamps[1:], strict=False)), tool
            rate = (len(stamps) - 1) / (stamps[-1] - stamps[0])
            # Every tracker tick of the window arrived: the acquisition times are 1/rate apart.
            assert rate == pytest.approx(TRACKER_RATE_HZ, rel=0.05), (tool, rate)
            gaps = np.diff(stamps)
            assert gaps.max() < 3.0 / TRACKER_RATE_HZ, (tool, gaps.max())
            lines.append(f"{tool}: {len(stamps)} TRANSFORMs, {rate:.1f}/s")
        latency_ms = [(m.received_s - m.timestamp_s) * 1000 for m in transforms]
        p50, p99 = percentile(latency_ms, 50), percentile(latency_ms, 99)
        print(f"\nOpenIGTLink TRANSFORM (tracker {TRACKER_RATE_HZ:g} Hz, 2 tools): "
              f"{'; '.join(lines)}; latency acquisition -> client p50 {p50:.2f} ms, "
              f"p99 {p99:.2f} ms, max {max(latency_ms):.2f} ms")
        assert 0 < p50 and p99 < 500.0
        # Translation in mm: the simulated tools move within a metre or two of the camera.
        matrix = transforms[-1].matrix
        assert 10.0 < np.linalg.norm(matrix[:3, 3]) < 5000.0
        np.testing.assert_allclose(matrix[:3, :3] @ matrix[:3, :3].T, np.eye(3), atol=1e-5)
        images = [m for m in client.messages if m.message_type == "IMAGE"]
        assert images and {m.device_name for m in images} == {"endoscope"}
        image = images[-1].decode()
        assert image.image.shape == (1, 120, 160, 3)
        np.testing.assert_allclose(np.linalg.norm(image.ijk_to_world_matrix[:3, 0]), 2.0,
                                   rtol=1e-5)  # 1 mm per source pixel, halved frame
        image_rate = (len([m for m in window if m.message_type == "IMAGE"])) / window_s
        print(f"OpenIGTLink IMAGE 160x120 RGB (320x240 at 10 fps, image_scale 0.5): "
              f"{image_rate:.1f}/s")
        assert image_rate >= 5.0
        health = _igtl_health(domain)
        assert health["clients"] == "1" and health["streams"] == "2", health
        assert float(health["messages_sent_per_s"]) > 100.0, health


def _igtl_health(domain: int) -> dict[str, str]:
    """The node's ``igtl_server`` /diagnostics entry, read on its domain."""
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from dicom_or_test_common.ros import spin_until
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor

    context = Context()
    rclpy.init(context=context, domain_id=domain)
    try:
        node = rclpy.create_node("igtl_probe", context=context)
        found: dict[str, str] = {}

        def on_array(array: DiagnosticArray) -> None:
            for status in array.status:
                if status.name == "/or/igtl_server: igtl_server":
                    found.clear()
                    found.update({kv.key: kv.value for kv in status.values})

        node.create_subscription(DiagnosticArray, "/diagnostics", on_array, 10)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        # The rates are per period: the second report after subscribing is a whole one.
        assert spin_until(executor, lambda: bool(found), 10.0)
        found.clear()
        assert spin_until(executor, lambda: bool(found), 10.0)
        executor.shutdown()
        node.destroy_node()
        return found
    finally:
        context.try_shutdown()


def test_video_device_names_and_frames_as_images() -> None:
    from dicom_or_bridge.igtl_server_node import frame_image, image_device_name
    from dicom_or_msgs.msg import ImageFrame
    from dicom_or_ros.convert import ns_to_time
    from dicom_or_ros.image import fill_image

    assert image_device_name("/or/endoscope/frames") == "endoscope"
    assert image_device_name("/or/microscope_left/image_raw") == "microscope_left"
    assert image_device_name("/frames") == "frames"
    assert image_device_name("/or/a_very_long_camera_name_here/frames") == \
        "a_very_long_camera_n"
    msg = ImageFrame()
    bgr = np.zeros((240, 320, 3), np.uint8)
    bgr[..., 0] = 200  # blue
    fill_image(msg.image, bgr, "bgr8")
    msg.context.acquisition_time = ns_to_time(1_790_000_000_123_456_789)
    image = frame_image(msg, 0.25)
    assert image.pixels.shape == (60, 80, 3) and image.spacing_mm == 4.0
    assert image.pixels[..., 2].min() == 200 and image.pixels[..., :2].max() == 0  # RGB
    assert image.timestamp_s == pytest.approx(1_790_000_000.123456789, abs=1e-6)
    whole = frame_image(msg, 1.0)
    assert whole.pixels.shape == (240, 320, 3) and whole.spacing_mm == 1.0


def test_a_port_in_use_and_a_bad_parameter_are_one_error_line() -> None:
    with reserved_domain_id() as domain, socket.create_server(("127.0.0.1", 0)) as taken:
        env = isolated_env(domain)
        for parameter, message in ((f"port:={taken.getsockname()[1]}", "port: cannot listen"),
                                   ("image_max_rate_hz:=-1.0", "image_max_rate_hz: must be"),
                                   ("topics:=[frames]", "topics: entries must be fully")):
            done = subprocess.run([_executable("dicom_or_bridge", "dicom_or_igtl_server"),
                                   "--ros-args", "-p", parameter], env=env,
                                  capture_output=True, text=True, timeout=60)
            assert done.returncode == 1, done
            assert message in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_an_encoded_video_stream_is_skipped_with_one_log_line() -> None:
    """A VideoPacket stream (H.264 access units) is not an OpenIGTLink IMAGE source: the
    node says so once and serves nothing for it, and keeps running."""
    import rclpy
    from bridge_fixtures import h264_descriptor_msg, publish_packets
    from dicom_or_test_common.ros import ros_context, spin_until
    from dicom_or_test_common.video_packets import encode
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter

    from dicom_or_bridge.igtl_server_node import IgtlServerNode

    with ros_context() as ctx:
        node = IgtlServerNode(context=ctx, parameter_overrides=[
            Parameter("port", value=0), Parameter("discovery_period_s", value=0.1)])
        probe = rclpy.create_node("probe", context=ctx)
        descriptor = h264_descriptor_msg()
        publish_packets(probe, descriptor, encode(10, rate_hz=10.0), rate_hz=10.0)
        executor = SingleThreadedExecutor(context=ctx)
        executor.add_node(node)
        executor.add_node(probe)
        try:
            assert spin_until(executor, lambda: descriptor.topic in node._not_served, 20)
            spin_until(executor, lambda: False, 0.5)   # a few more discovery periods
            assert descriptor.topic not in node._served and node._not_served == \
                {descriptor.topic}
        finally:
            node.close()
            executor.shutdown()
            probe.destroy_node()
            node.destroy_node()
