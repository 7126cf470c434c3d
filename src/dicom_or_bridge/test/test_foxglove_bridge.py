"""Foxglove bridge: ros2msg schemas and encoders in memory; the node with a tracker and a
video driver against a client that speaks the Foxglove WebSocket protocol (foxglove_client,
written from the spec on aiohttp): every channel received and decoded, a late viewer gets the
latched context and a keyframe, an abruptly killed viewer disturbs nothing; bad parameters."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import rclpy
from dicom_or_test_common.ros import isolated_env, reserved_domain_id, ros_context
from foxglove_client import FoxgloveClient, compressed_image, compressed_video, frame_transforms
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
from rclpy.serialization import deserialize_message

from dicom_or_bridge.foxglove_bridge_node import FoxgloveBridge, message_class
from dicom_or_bridge.foxglove_io import (
    DELIMITER,
    H264Encoder,
    JpegEncoder,
    RateCap,
    full_type_name,
    installed_msg_text,
    ros2msg_definition,
    scaled_size,
)
from dicom_or_core.iod.packet_decoder import PacketDecoder
from dicom_or_core.model import context as ctx
from dicom_or_core.model.uid import new_uid
from dicom_or_drivers.tracker_node import TrackerDriver
from dicom_or_drivers.video_node import VideoDriver
from dicom_or_msgs.msg import (
    DeviceStatus,
    PoseSample,
    SessionContext,
    StreamDescriptor,
    VideoPacket,
)
from dicom_or_ros.convert import time_to_ns, to_msg
from dicom_or_ros.graph import DEVICE_STATUS_TOPIC, SESSION_CONTEXT_TOPIC
from dicom_or_ros.qos import named_qos

ROOT = Path(__file__).resolve().parents[3]
POSES = "/or/tracker/poses"
FRAMES = "/or/endoscope/frames"
TOOLS = {"pointer", "patient_reference"}
RAW_TOPICS = {SESSION_CONTEXT_TOPIC: "dicom_or_msgs/msg/SessionContext",
              DEVICE_STATUS_TOPIC: "dicom_or_msgs/msg/DeviceStatus",
              POSES: "dicom_or_msgs/msg/PoseSample",
              POSES + "/descriptor": "dicom_or_msgs/msg/StreamDescriptor",
              FRAMES: "dicom_or_msgs/msg/ImageFrame",
              FRAMES + "/descriptor": "dicom_or_msgs/msg/StreamDescriptor"}
ENCODED = "/or/encoded_scope/frames"   # a camera-side encoded stream (VideoPacket, h264)
ENCODED_TOPICS = {ENCODED: "dicom_or_msgs/msg/VideoPacket",
                  ENCODED + "/descriptor": "dicom_or_msgs/msg/StreamDescriptor"}


# --- in memory -----------------------------------------------------------------------------

def test_full_type_names_of_msg_fields() -> None:
    assert full_type_name("float64", "p") is None
    assert full_type_name("string<=8[]", "p") is None
    assert full_type_name("uint8[16]", "p") is None
    assert full_type_name("Equipment", "dicom_or_msgs") == "dicom_or_msgs/msg/Equipment"
    assert full_type_name("geometry_msgs/Pose[]", "x") == "geometry_msgs/msg/Pose"
    assert full_type_name("std_msgs/msg/Header", "x") == "std_msgs/msg/Header"


def test_ros2msg_definition_is_the_msg_then_each_dependency_once() -> None:
    text = ros2msg_definition("dicom_or_msgs/msg/PoseSample", installed_msg_text)
    sections = text.split(DELIMITER + "\n")
    # The top-level definition first, as the workspace's msg/ folder has it.
    assert sections[0].rstrip("\n") == (ROOT / "msg" / "PoseSample.msg").read_text().rstrip()
    names = [s.split("\n", 1)[0] for s in sections[1:]]
    assert names == ["MSG: dicom_or_msgs/msg/SampleContext", "MSG: geometry_msgs/msg/Pose",
                     "MSG: std_msgs/msg/Header", "MSG: builtin_interfaces/msg/Time",
                     "MSG: geometry_msgs/msg/Point", "MSG: geometry_msgs/msg/Quaternion"]
    # builtin_interfaces/Time is used twice (Header.stamp, acquisition_time): listed once.
    assert text.count("MSG: builtin_interfaces/msg/Time") == 1
    descriptor = ros2msg_definition("dicom_or_msgs/msg/StreamDescriptor", installed_msg_text)
    for needed in ("Equipment", "WaveformChannel", "SessionContext", "Patient", "Study",
                   "RequestAttributes"):
        assert f"MSG: dicom_or_msgs/msg/{needed}\n" in descriptor


def test_rate_cap_and_scaled_sizes() -> None:
    cap = RateCap(10.0)
    passed = [t / 100 for t in range(100) if cap.ready(t / 100)]  # 100 Hz offered for 1 s
    assert len(passed) == 10 and passed[:2] == [0.0, 0.1]
    assert scaled_size(1920, 1080, 0.5, even=True) == (960, 540)
    assert scaled_size(321, 241, 0.5, even=True) == (160, 120)
    assert scaled_size(321, 241, 0.5, even=False) == (160, 120)
    assert scaled_size(10, 10, 0.05, even=False) == (2, 2)


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "mono8"])
def test_encoders_keep_colours_and_scale(encoding: str) -> None:
    red_rgb = np.zeros((240, 320, 3), np.uint8)
    red_rgb[..., 0] = 200
    pixels = {"rgb8": red_rgb, "bgr8": red_rgb[..., ::-1].copy(),
              "mono8": np.full((240, 320), 200, np.uint8)}[encoding]
    jpeg = JpegEncoder(90, 0.5).encode(pixels, encoding)
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    expected_bgr = [200, 200, 200] if encoding == "mono8" else [0, 0, 200]
    assert image.shape == (120, 160, 3)
    np.testing.assert_allclose(image[60, 80], expected_bgr, atol=6)
    h264 = H264Encoder(10.0, 1000, 0.5)
    units = [h264.encode(pixels, encoding, keyframe=(i == 0)) for i in range(3)]
    assert units[0].startswith(b"\x00\x00\x00\x01\x67")  # SPS first: a keyframe
    decoded = _decode_h264(units)
    assert len(decoded) == 3 and decoded[0].shape == (120, 160, 3)
    np.testing.assert_allclose(decoded[-1][60, 80], expected_bgr[::-1], atol=8)  # RGB out


# --- the node --------------------------------------------------------------------------------

def _session() -> SessionContext:
    session = ctx.SessionContext(
        patient=ctx.Patient(patient_id="P-FOX", patient_name="Doe^Jane", sex="F",
                            birth_date="19700101"),
        study=ctx.Study(study_instance_uid=new_uid(), study_date="20261126",
                        study_time="010000", accession_number="ACC7", study_id="S7"),
        synchronization_frame_of_reference_uid=new_uid(), operating_room="OR3").validate()
    return to_msg(session)


@dataclass
class Graph:
    """The running graph: the bridge, what the test published and saw."""

    bridge: FoxgloveBridge
    session: SessionContext
    poses: list[PoseSample]
    domain: int


def _params(**values: object) -> list[Parameter]:
    return [Parameter(name, value=value) for name, value in values.items()]


@contextmanager
def _graph(encoded: bool = False, **bridge_params: object) -> Iterator[Graph]:
    """Tracker (2 tools, 50 Hz), video (320x240, 10 fps) and the bridge in one process on
    a reserved domain, spun on a thread while the test's clients talk to the bridge;
    ``encoded``: also a video driver with ``video_transport: h264`` (VideoPackets, 320x240,
    10 fps, a key frame a second) on ENCODED."""
    with ros_context() as context:
        probe = rclpy.create_node("probe", context=context)
        session = _session()
        probe.create_publisher(SessionContext, SESSION_CONTEXT_TOPIC,
                               named_qos("descriptor")).publish(session)
        poses: list[PoseSample] = []
        probe.create_subscription(PoseSample, POSES, poses.append, named_qos("pose"))
        nodes = [probe, TrackerDriver(context=context, namespace="/or", parameter_overrides=
                                      _params(rate_hz=50.0, tool_count=2,
                                              marker_rate_hz=0.0)),
                 VideoDriver(context=context, namespace="/or", parameter_overrides=_params(
                     width=320, height=240, fps=10.0, publish_image_raw=False))]
        if encoded:   # the video driver encoding at the camera, as a second endoscope
            nodes.append(VideoDriver(
                context=context, namespace="/or",
                cli_args=["--ros-args", "-r", "__node:=encoded_scope"],
                parameter_overrides=_params(width=320, height=240, fps=10.0,
                                            publish_image_raw=False, video_transport="h264")))
        bridge = FoxgloveBridge(context=context, namespace="/or", parameter_overrides=_params(
            port=0, discovery_period_s=0.5, video_max_rate_hz=5.0, video_scale=0.5,
            **bridge_params))
        nodes.append(bridge)
        executor = SingleThreadedExecutor(context=context)
        for node in nodes:
            executor.add_node(node)
        spinner = threading.Thread(target=executor.spin, daemon=True)
        spinner.start()
        try:
            yield Graph(bridge, session, poses, context.domain)
        finally:
            executor.shutdown(timeout_sec=5)
            spinner.join(timeout=10)
            for node in reversed(nodes):  # as run_node stops a node: close(), then destroy
                if hasattr(node, "close"):
                    node.close()
                node.destroy_node()


def _advertised(client: FoxgloveClient, topics: set[str]) -> bool:
    return topics <= {c["topic"] for c in client.channels.values()}


def _received_on_all(client: FoxgloveClient, topics: set[str], enough: dict[str, int]) -> bool:
    counts: dict[str, int] = {}
    for m in client.messages:
        counts[m.topic] = counts.get(m.topic, 0) + 1
    return all(counts.get(t, 0) >= enough.get(t, 1) for t in topics)


def _check_raw_channels(client: FoxgloveClient) -> None:
    by_topic = {c["topic"]: c for c in client.channels.values()}
    for topic, type_name in RAW_TOPICS.items():
        channel = by_topic[topic]
        assert (channel["encoding"], channel["schemaEncoding"], channel["schemaName"]) == \
            ("cdr", "ros2msg", type_name), channel
        assert channel["schema"] == ros2msg_definition(type_name, installed_msg_text)
    pose_schema = by_topic[POSES]["schema"]
    assert pose_schema.startswith((ROOT / "msg" / "PoseSample.msg").read_text().rstrip())
    assert "MSG: geometry_msgs/msg/Pose\n" in pose_schema


def _check_poses(client: FoxgloveClient, graph: Graph) -> None:
    """Raw CDR decodes to what the tracker published; FrameTransforms match it in metres."""
    published = {(p.tool_id, p.context.sequence): p for p in list(graph.poses)}
    received = client.on(POSES)
    decoded = [deserialize_message(m.payload, PoseSample) for m in received]
    latency_ms = [m.received_s * 1e3 - time_to_ns(d.context.acquisition_time) / 1e6
                  for m, d in zip(received, decoded, strict=True)]
    p50, p99 = np.percentile(latency_ms, [50, 99])
    print(f"\nFoxglove {POSES}: {len(received)} PoseSample, latency acquisition -> client "
          f"p50 {p50:.2f} ms, p99 {p99:.2f} ms")
    assert 0 < p50 and p99 < 500.0
    matched = [d for d in decoded if (d.tool_id, d.context.sequence) in published]
    assert len(matched) >= 20, (len(decoded), len(published))
    for sample in matched:
        assert sample == published[(sample.tool_id, sample.context.sequence)]
    by_time = {(p.tool_id, time_to_ns(p.context.acquisition_time)): p
               for p in published.values()}
    transforms = [t for m in client.on(POSES + "/transforms")
                  for t in frame_transforms(m.payload)]
    assert {t["child"] for t in transforms} == TOOLS
    assert {t["parent"] for t in transforms} == {"tracker"}
    checked = 0
    for t in transforms:
        pose = by_time.get((t["child"], t["timestamp_ns"]))
        if pose is None:
            continue
        p, q = pose.pose.position, pose.pose.orientation
        np.testing.assert_allclose(t["translation"], [p.x, p.y, p.z], atol=1e-12)
        np.testing.assert_allclose(t["rotation"], [q.x, q.y, q.z, q.w], atol=1e-12)
        checked += 1
    assert checked >= 20
    # Metres: the simulated tools move within a metre or two of the camera.
    assert all(0.01 < np.linalg.norm(t["translation"]) < 5.0 for t in transforms)


def _check_video(client: FoxgloveClient) -> None:
    frames = [compressed_image(m.payload) for m in client.on(FRAMES + "/compressed")]
    assert {f["format"] for f in frames} == {"jpeg"}
    descriptor = deserialize_message(client.on(FRAMES + "/descriptor")[-1].payload,
                                     StreamDescriptor)
    assert {f["frame_id"] for f in frames} == {descriptor.tf_frame_id}
    for frame in frames:
        image = cv2.imdecode(np.frombuffer(frame["data"], np.uint8), cv2.IMREAD_COLOR)
        assert image is not None and image.shape == (120, 160, 3)  # 320x240 at 0.5
    # 10 fps offered, 5 per second sent: acquisition times about 0.2 s apart.
    gaps = np.diff(sorted(f["timestamp_ns"] for f in frames)) / 1e9
    assert np.median(gaps) == pytest.approx(0.2, abs=0.05), gaps


def _check_encoded_video(client: FoxgloveClient) -> None:
    """The VideoPacket stream: its raw CDR channel with the ros2msg schema, and the same
    access units, byte for byte, as CompressedVideo from a key frame on, all decodable."""
    by_topic = {c["topic"]: c for c in client.channels.values()}
    for topic, type_name in ENCODED_TOPICS.items():
        assert (by_topic[topic]["encoding"], by_topic[topic]["schemaName"]) == \
            ("cdr", type_name)
        assert by_topic[topic]["schema"] == ros2msg_definition(type_name, installed_msg_text)
    raw = {time_to_ns(p.context.acquisition_time): p for p in
           (deserialize_message(m.payload, VideoPacket) for m in client.on(ENCODED))}
    frames = [compressed_video(m.payload) for m in client.on(ENCODED + "/h264")]
    assert {f["format"] for f in frames} == {"h264"}
    assert raw[frames[0]["timestamp_ns"]].key_frame        # a viewer starts at a key frame
    same = [f for f in frames if f["timestamp_ns"] in raw]
    assert len(same) >= 10 and all(f["data"] == bytes(raw[f["timestamp_ns"]].data)
                                   for f in same)          # passed through, not re-encoded
    decoder = PacketDecoder()
    pictures = [p for i, f in enumerate(frames) for p in decoder.decode(
        f["data"], raw[f["timestamp_ns"]].key_frame if f["timestamp_ns"] in raw else
        i == 0, i)]
    assert len(pictures) == len(frames) and decoder.counts.errors == 0
    assert (pictures[0].width, pictures[0].height) == (320, 240)


def test_every_channel_reaches_a_foxglove_client() -> None:
    derived = {POSES + "/transforms": "foxglove.FrameTransforms",
               FRAMES + "/compressed": "foxglove.CompressedImage",
               ENCODED + "/h264": "foxglove.CompressedVideo"}
    topics = set(RAW_TOPICS) | set(ENCODED_TOPICS) | set(derived)
    with _graph(encoded=True, raw_images=True) as graph:
        client = FoxgloveClient(graph.bridge.url)
        try:
            assert client.protocol == "foxglove.sdk.v1"
            assert client.wait_for(lambda c: bool(c.server_info), 10)
            assert client.server_info["name"] == "dicom_or"
            assert client.wait_for(lambda c: _advertised(c, topics), 30), client.channels
            _check_raw_channels(client)
            for channel in client.channels.values():
                if channel["topic"] in derived:
                    assert (channel["encoding"], channel["schemaName"]) == \
                        ("protobuf", derived[channel["topic"]])
            # Nothing is decoded or encoded for a channel nobody subscribed to.
            assert graph.bridge._counters.frames == graph.bridge._counters.transforms == 0
            client.subscribe(client.channel_ids(topics))
            enough = {POSES: 60, POSES + "/transforms": 60, FRAMES + "/compressed": 6,
                      ENCODED + "/h264": 15}
            assert client.wait_for(lambda c: _received_on_all(c, topics, enough), 30), \
                {t: len(client.on(t)) for t in topics}
            assert not client.errors, client.errors
            assert deserialize_message(client.on(SESSION_CONTEXT_TOPIC)[0].payload,
                                       SessionContext) == graph.session
            descriptor = deserialize_message(client.on(POSES + "/descriptor")[-1].payload,
                                             StreamDescriptor)
            assert descriptor.topic == POSES and set(descriptor.tool_ids) == TOOLS
            assert descriptor.session == graph.session
            status = [deserialize_message(m.payload, DeviceStatus)
                      for m in client.on(DEVICE_STATUS_TOPIC)]
            assert {s.topic for s in status} >= {POSES, FRAMES}
            _check_poses(client, graph)
            _check_video(client)
            _check_encoded_video(client)
            health = graph.bridge._health()
            assert health.values["viewers"] == 1 and health.values["messages"] > 100
            assert health.values["channels"] == len(topics)
        finally:
            client.close()


def _decode_h264(payloads: list[bytes]) -> list[np.ndarray]:
    """Each message as one access unit, as a viewer feeds its decoder (WebCodecs in
    Foxglove): a frame out per message, from the first (a keyframe) on."""
    decoder = av.CodecContext.create("h264", "r")
    images = []
    for payload in payloads:
        frames = decoder.decode(av.Packet(payload))
        images += [f.to_ndarray(format="rgb24") for f in frames]
    return images


def test_late_viewer_gets_context_and_keyframe_and_a_killed_viewer_disturbs_nothing() -> None:
    video = FRAMES + "/h264"
    expected = set(RAW_TOPICS) - {FRAMES} | {video, POSES + "/transforms"}
    with _graph(video_format="h264") as graph:
        first = FoxgloveClient(graph.bridge.url)
        try:
            assert first.wait_for(lambda c: _advertised(c, expected), 30)
            # raw_images false (the default): no raw frames channel.
            assert {c["topic"] for c in first.channels.values()} == expected
            first.subscribe(first.channel_ids({POSES}))
            assert first.wait_for(lambda c: len(c.on(POSES)) >= 50, 20)
            # A viewer that subscribes to everything, then is killed (no close frame).
            killed = subprocess.Popen(
                [sys.executable, str(Path(__file__).with_name("foxglove_client.py")),
                 graph.bridge.url, str(len(first.channels))],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            try:
                assert killed.stdout is not None and killed.stdout.readline() == "READY\n"
                assert graph.bridge._health().values["viewers"] == 2
            finally:
                killed.send_signal(signal.SIGKILL)
                killed.wait(timeout=10)
            # Late: everything was published before this viewer connected.
            late = FoxgloveClient(graph.bridge.url)
            try:
                context_topics = {SESSION_CONTEXT_TOPIC, POSES + "/descriptor",
                                  FRAMES + "/descriptor"}
                assert late.wait_for(lambda c: _advertised(c, context_topics | {video}), 20)
                late.subscribe(late.channel_ids(context_topics | {video}))
                assert late.wait_for(lambda c: _received_on_all(c, context_topics | {video},
                                                                {video: 3}), 20)
                assert deserialize_message(late.on(SESSION_CONTEXT_TOPIC)[0].payload,
                                           SessionContext) == graph.session
                descriptor = deserialize_message(late.on(FRAMES + "/descriptor")[0].payload,
                                                 StreamDescriptor)
                assert descriptor.session.study.study_instance_uid == \
                    graph.session.study.study_instance_uid
                # Its first frame is a keyframe: every frame it got decodes, at 160x120.
                frames = [compressed_video(m.payload) for m in late.on(video)]
                assert {f["format"] for f in frames} == {"h264"}
                images = _decode_h264([f["data"] for f in frames])
                assert len(images) == len(frames) and images[0].shape == (120, 160, 3)
                # The first viewer never noticed: poses keep coming; the killed one is gone.
                count = len(first.on(POSES))
                assert first.wait_for(lambda c: len(c.on(POSES)) >= count + 50, 10)
                assert late.wait_for(
                    lambda c: graph.bridge._health().values["viewers"] == 2, 10)
                assert not first.errors and not late.errors, (first.errors, late.errors)
            finally:
                late.close()
        finally:
            first.close()


def test_topics_given_are_the_only_channels_and_any_installed_type_works() -> None:
    measured = "/or/tracker/pointer/measured_cp"  # geometry_msgs/PoseStamped, for rviz2
    with _graph(topics=[POSES, measured], frame_transforms=False) as graph:
        client = FoxgloveClient(graph.bridge.url)
        try:
            assert client.wait_for(lambda c: _advertised(c, {POSES, measured}), 30)
            client.subscribe(list(client.channels))
            assert client.wait_for(lambda c: len(c.on(measured)) >= 5, 20)
            assert {c["topic"] for c in client.channels.values()} == {POSES, measured}
            channel = next(c for c in client.channels.values() if c["topic"] == measured)
            assert channel["schemaName"] == "geometry_msgs/msg/PoseStamped"
            assert "MSG: std_msgs/msg/Header\n" in channel["schema"]
            stamped = deserialize_message(client.on(measured)[-1].payload,
                                          message_class(channel["schemaName"]))
            assert stamped.header.frame_id == "tracker"
        finally:
            client.close()


def _run(*parameters: str, domain: int) -> subprocess.CompletedProcess:
    from ament_index_python.packages import get_package_prefix

    executable = Path(get_package_prefix("dicom_or_bridge")) / "lib" / "dicom_or_bridge" / \
        "dicom_or_foxglove"
    assert executable.is_file(), f"{executable} missing: run make build"
    words = [w for p in parameters for w in ("-p", p)]
    return subprocess.run([str(executable), "--ros-args", *words], capture_output=True,
                          text=True, timeout=60, env=isolated_env(domain))


def test_a_port_in_use_and_a_bad_parameter_are_one_error_line() -> None:
    with reserved_domain_id() as domain, socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        for parameters, named in (((f"port:={port}",), "port"),
                                  (("video_format:=mjpeg",), "video_format"),
                                  (("topics:=[or/poses]",), "topics")):
            result = _run(*parameters, domain=domain)
            assert result.returncode == 1, result
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
            assert lines[0].startswith("[ERROR] invalid configuration: ") and named in lines[0]
