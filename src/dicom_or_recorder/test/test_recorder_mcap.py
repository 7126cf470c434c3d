"""mcap_output: the recorder keeps the topics it follows as a rosbag2 MCAP bag beside the
DICOM instances (descriptors and the samples of recording streams, CDR as received); the bag
reads back with rosbags and converts (dicom_or_convert's core) into the same samples the
recorder's own instances hold. Off by default."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from ament_index_python.packages import get_package_share_directory
from dicom_or_test_common.examples import (
    example_descriptor,
    example_session,
    now_ns,
    synthetic_rgb,
    synthetic_waveform,
)
from dicom_or_test_common.ros import ros_context, spin_until
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
from rclpy.serialization import deserialize_message, serialize_message
from recorder_fixtures import StreamPublisher, stream_status

from dicom_or_core.bags.reader import Bag, make_typestore
from dicom_or_core.bags.to_dicom import convert_bag
from dicom_or_core.bags.to_mcap import make_message
from dicom_or_core.iod.pose import read_pose_sr
from dicom_or_core.iod.waveform import read_samples
from dicom_or_core.model.errors import DicomOrError
from dicom_or_msgs.msg import PoseSample, WaveformChunk
from dicom_or_recorder.recorder_node import RecorderNode
from dicom_or_recorder.segments import RecorderOptions, recorder_for

MSG_DIRS = [Path(__file__).resolve().parents[3] / "msg"]


def make(rctx, recordings, descriptors, **params):
    overrides = {"recordings_dir": str(recordings), "discovery_period_s": 0.1,
                 "status_period_s": 0.2, **params}
    pub = StreamPublisher(descriptors, context=rctx)
    rec = RecorderNode(context=rctx, parameter_overrides=[
        Parameter(k, value=v) for k, v in overrides.items()])
    executor = SingleThreadedExecutor(context=rctx)
    executor.add_node(pub)
    executor.add_node(rec)
    return pub, rec, executor


def by_modality(folder: Path) -> dict[str, pydicom.Dataset]:
    return {ds.Modality: ds for ds in map(pydicom.dcmread, sorted(folder.rglob("*.dcm")))}


def test_mcap_output_keeps_the_followed_topics_as_a_convertible_bag(tmp_path):
    session = example_session()
    d = {"video": example_descriptor("video", session),
         "ecg": example_descriptor("ecg", session),
         "pose": example_descriptor("pose", session)}
    data = synthetic_waveform(500, 3)
    with ros_context() as rctx:
        pub, rec, ex = make(rctx, tmp_path / "recordings", d,
                            mcap_output=str(tmp_path / "bags"))
        try:
            assert spin_until(ex, pub.subscribed, 20)
            t0 = now_ns()
            for i in range(10):
                pub.video("video", synthetic_rgb(240, 320, i), t0 + i * 33_333_333, i)
                pub.chunk("ecg", data[i * 50:(i + 1) * 50], t0 + i * 100_000_000, i * 50, i)
                for j, tool in enumerate(d["pose"].tool_ids):
                    pub.pose("pose", tool, t0 + i * 16_666_667, (0.01 * i, 0.0, 0.1 * j),
                             (0.0, 0.0, 0.0, 1.0), True, 2 * i + j)
            assert spin_until(ex, lambda: all(
                stream_status(rec.status(), d[k].topic).get("samples") == n
                for k, n in (("video", 10), ("ecg", 500), ("pose", 20))), 30), rec.status()
        finally:
            rec.close()
            rec.destroy_node()
            pub.destroy_node()
    (bag_dir,) = (tmp_path / "bags").iterdir()
    assert bag_dir.name.startswith("dicom_or_") and (bag_dir / "metadata.yaml").is_file()
    with Bag(bag_dir, MSG_DIRS) as bag:
        counts = {t: i.count for t, i in bag.topics.items()}
        assert counts[d["video"].topic] == 10 and counts[d["ecg"].topic] == 10
        assert counts[d["pose"].topic] == 20
        assert all(counts[x.topic + "/descriptor"] >= 1 for x in d.values())
        assert bag.topics[d["ecg"].topic].msgtype == "dicom_or_msgs/msg/WaveformChunk"
        options = RecorderOptions()
        report = convert_bag(bag, tmp_path / "converted",
                             lambda desc, spool: recorder_for(desc, spool, options))
    assert report.video_frames == 10
    live, converted = by_modality(tmp_path / "recordings"), by_modality(tmp_path / "converted")
    assert np.array_equal(read_samples(converted["ECG"]), read_samples(live["ECG"]))
    assert np.array_equal(read_samples(converted["ECG"]), data)
    assert converted["ECG"].SeriesInstanceUID == d["ecg"].series_instance_uid
    for tool, (stamps, positions, _) in read_pose_sr(live["SR"]).items():
        again = read_pose_sr(converted["SR"])[tool]
        assert np.array_equal(again[0], stamps) and np.array_equal(again[1], positions)
    assert int(converted["ES"].NumberOfFrames) == int(live["ES"].NumberOfFrames) == 10


def test_mcap_output_is_off_by_default_and_a_bad_folder_names_it(tmp_path):
    d = {"pose": example_descriptor("pose")}
    with ros_context() as rctx:
        pub, rec, _ = make(rctx, tmp_path / "recordings", d)
        assert rec.bag is None
        rec.close()
        rec.destroy_node()
        pub.destroy_node()
        (tmp_path / "file").write_text("in the way")
        with pytest.raises(DicomOrError, match="^mcap_output: cannot create the bag"):
            make(rctx, tmp_path / "recordings2", d, mcap_output=str(tmp_path / "file"))


def test_bags_hold_what_rosbag2_would_record():
    """What makes the bags rosbag2's own, checked without a distro: a message serialized by
    rclpy (what rosbag2 stores) decodes to what rosbags writes for the same values and back,
    and
    the RIHS01 type hashes in metadata.yaml are the ones rosidl generated for the build."""
    store = make_typestore(MSG_DIRS)
    chunk = WaveformChunk()
    chunk.context.series_instance_uid = "1.2.3"
    chunk.context.sequence = 7
    chunk.context.acquisition_time.sec = 1_790_000_000
    chunk.first_sample_index = 350
    chunk.sample_period = 0.002
    chunk.channel_count = 2
    chunk.samples = [1, -2, 3, -4]
    pose = PoseSample()
    pose.tool_id = "pointer"
    pose.pose.position.x = 0.25
    pose.pose.orientation.w = 1.0
    pose.visible = True
    pose.tracking_quality = 0.5
    for msg, typename, values in (
            (chunk, "dicom_or_msgs/msg/WaveformChunk", {
                "context": {"series_instance_uid": "1.2.3", "sequence": 7,
                            "acquisition_time": {"sec": 1_790_000_000}},
                "first_sample_index": 350, "sample_period": 0.002, "channel_count": 2,
                "samples": [1, -2, 3, -4]}),
            (pose, "dicom_or_msgs/msg/PoseSample", {
                "tool_id": "pointer", "pose": {"position": {"x": 0.25},
                                               "orientation": {"w": 1.0}},
                "visible": True, "tracking_quality": 0.5})):
        ours = bytes(store.serialize_cdr(make_message(store, typename, values), typename))
        # The same CDR for the same values both ways (Fast CDR leaves its alignment padding
        # uninitialised, so the bytes are compared through each side's decoder).
        assert deserialize_message(ours, type(msg)) == msg, typename
        theirs = store.deserialize_cdr(bytes(serialize_message(msg)), typename)
        assert bytes(store.serialize_cdr(theirs, typename)) == ours, typename
    share = Path(get_package_share_directory("dicom_or_msgs")) / "msg"
    for name in ("ImageFrame", "WaveformChunk", "PoseSample", "StreamDescriptor",
                 "SessionContext"):
        generated = json.loads((share / f"{name}.json").read_text())["type_hashes"]
        typename = f"dicom_or_msgs/msg/{name}"
        (rosidl,) = [h["hash_string"] for h in generated if h["type_name"] == typename]
        assert store.hash_rihs01(typename) == rosidl
