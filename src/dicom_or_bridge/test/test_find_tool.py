"""dicom_or_find: the table from C-FIND, and the full loop DICOM discovery -> ROS data."""

from __future__ import annotations

import subprocess
import threading

import rclpy
from bridge_fixtures import console_script, running_scp, video
from dicom_or_test_common.ros import isolated_env, ros_context
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter

from dicom_or_bridge import find_tool
from dicom_or_bridge.bridge_node import DicomBridgeNode
from dicom_or_msgs.msg import ImageFrame
from dicom_or_msgs.msg import StreamDescriptor as StreamDescriptorMsg
from dicom_or_ros.convert import to_msg
from dicom_or_ros.graph import descriptor_topic
from dicom_or_ros.qos import named_qos


def test_table_lists_every_series(capsys):
    with running_scp() as scp:
        code = find_tool.main(["--port", str(scp.port)])
    out = capsys.readouterr().out
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["#", "Modality", "Description"]
    assert any("ES" in line and "1920x1080 @ 30 fps" in line and
               "ros2:/or/endoscope/frames?" in line for line in lines)
    assert any("ECG" in line and "3 ch @ 500 Hz" in line for line in lines)


def test_modality_filter_and_errors(capsys):
    with running_scp() as scp:
        assert find_tool.main(["--port", str(scp.port), "--modality", "XC"]) == 1
        assert find_tool.main(["--port", str(scp.port), "--subscribe", "9"]) == 2
    assert find_tool.main(["--port", "1", "--timeout", "2"]) == 2
    assert "no association" in capsys.readouterr().err


def test_discovery_to_data_loop(tmp_path):
    """Bridge + a publishing fake endoscope on one domain; dicom_or_find (another process)
    finds the stream by C-FIND and subscribes through the ros2: URI of the answer."""
    with ros_context() as ctx:
        bridge = DicomBridgeNode(context=ctx, parameter_overrides=[
            Parameter("port", value=0), Parameter("dicomweb_port", value=0),
            Parameter("archive_dir", value=str(tmp_path))])
        driver = rclpy.create_node("fake_endoscope", context=ctx)
        descriptor = video()
        desc_pub = driver.create_publisher(StreamDescriptorMsg,
                                           descriptor_topic(descriptor.topic),
                                           named_qos("descriptor"))
        desc_pub.publish(to_msg(descriptor))
        frames = driver.create_publisher(ImageFrame, descriptor.topic, named_qos("video", 30))
        driver.create_timer(0.05, lambda: frames.publish(ImageFrame()))
        executor = SingleThreadedExecutor(context=ctx)
        executor.add_node(bridge)
        executor.add_node(driver)
        stop = threading.Event()
        thread = threading.Thread(target=lambda: [executor.spin_once(timeout_sec=0.05)
                                                  for _ in iter(stop.is_set, True)])
        thread.start()
        try:
            # The bridge needs a discovery round or two before the stream is listed.
            for _ in range(20):
                result = subprocess.run(
                    [console_script("dicom_or_find"), "--port", str(bridge.scp.port),
                     "--modality", "ES", "--subscribe", "1", "--duration", "1",
                     "--wait", "20"],
                    env=isolated_env(ctx.domain), capture_output=True, text=True, timeout=60)
                if result.returncode != 1 or "ros2:" in result.stdout:
                    break
            assert result.returncode == 0, result.stdout + result.stderr
            assert f"domain={ctx.domain}" in result.stdout
            line = [x for x in result.stdout.splitlines() if x.startswith("received")][0]
            assert int(line.split()[1]) > 0
        finally:
            stop.set()
            thread.join(timeout=5)
            bridge.close()
            executor.shutdown()
            driver.destroy_node()
            bridge.destroy_node()
