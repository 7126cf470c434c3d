"""Bags in, samples out; a recorded study out as a rosbag2 MCAP bag (pure core, in memory and
tmp files). Bags are written here with ``rosbags``; the exported bag is read back with an
independent MCAP reader (``mcap`` + ``mcap-ros2-support``, which parses the ros2msg
schemas itself) as well as with ``rosbags``. The conversion into DICOM through the recorder's
stream recorders, with dciodvfy and Orthanc, is tested in dicom_or_bringup (test_convert*)."""

from __future__ import annotations

import io
import shutil
import threading
import time

import numpy as np
import pytest
import yaml
from dicom_or_test_common import bags as b
from dicom_or_test_common.examples import example_descriptor, example_session
from mcap.reader import make_reader
from mcap_ros2.decoder import DecoderFactory
from pydicom import dcmwrite

from dicom_or_core.bags.plan import estimate_rate, load_stream_specs
from dicom_or_core.bags.progress import ProgressBar
from dicom_or_core.bags.reader import Bag
from dicom_or_core.bags.recording import BagRecorder
from dicom_or_core.bags.to_dicom import ConvertOptions, make_plans, prefetched
from dicom_or_core.bags.to_mcap import export_study
from dicom_or_core.iod.pose import ToolTrack, build_pose_sr
from dicom_or_core.iod.waveform import build_waveform
from dicom_or_core.model import context as ctx
from dicom_or_core.model.errors import DicomOrError
from dicom_or_core.model.uid import new_uid

T0 = time.time_ns() - 3600 * 10**9   # an hour ago: a wall-clock time, not in the future
PERIOD = 33_333_333

ECG_SPEC = {"modality": "ECG", "series_description": "ECG from a bag",
            "sampling_frequency_hz": 500.0,
            "channels": [{"label": lead, "source_code_value": code,
                          "source_coding_scheme": "MDC", "source_code_meaning": meaning,
                          "unit_ucum": "uV", "sensitivity": 2.5}
                         for lead, code, meaning in (("I", "2:1", "Lead I"),
                                                     ("II", "2:2", "Lead II"))]}


def plain_messages(frames: int = 10) -> list[b.Message]:
    """Video (raw and JPEG), a tracked tool and a 2-lead ECG at 500 Hz in 50 ms chunks."""
    out = []
    for i, pixels in enumerate(b.moving_pattern(240, 320, frames)):
        t = T0 + i * PERIOD
        out.append(b.image("/cam/image", t, pixels))
        out.append(b.compressed("/cam/compressed", t, b.jpeg(pixels[:, :, ::-1])))
        out.append(b.pose_stamped("/tracker/pointer", t, (0.1, 0.0, i * 0.001),
                                  (0.0, 0.0, 0.0, 1.0)))
    for k in range(4):
        values = np.arange(50 * 2, dtype=np.float32).reshape(50, 2) * 2.5 + k
        out.append(b.float_array("/monitor/ecg", T0 + k * 50_000_000, values))
    return sorted(out, key=lambda m: m[2])


@pytest.fixture
def plain_bag(tmp_path):
    return b.write_bag(tmp_path / "plain", plain_messages())


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_reads_rosbag2_of_either_storage(tmp_path, storage):
    path = b.write_bag(tmp_path / storage, plain_messages(), storage)
    with Bag(path, b.MSG_DIRS) as bag:
        assert {t: i.count for t, i in bag.topics.items()} == {
            "/cam/image": 10, "/cam/compressed": 10, "/tracker/pointer": 10,
            "/monitor/ecg": 4}
        decoded = list(bag.messages(["/cam/image"]))
    assert [log for _, log, _ in decoded] == [T0 + i * PERIOD for i in range(10)]
    assert decoded[3][2].width == 320 and decoded[3][2].encoding == "rgb8"


def test_reads_a_bare_mcap_file_and_a_storage_file_path(tmp_path, plain_bag):
    inner = next(plain_bag.glob("*.mcap"))
    bare = tmp_path / "bare.mcap"
    shutil.copy(inner, bare)
    for path in (bare, inner):
        with Bag(path, b.MSG_DIRS) as bag:
            assert bag.topics["/tracker/pointer"].msgtype == "geometry_msgs/msg/PoseStamped"
            assert len(list(bag.messages(["/tracker/pointer"]))) == 10


def test_missing_foreign_or_damaged_bags_are_one_error(tmp_path, plain_bag):
    (tmp_path / "noise.mcap").write_bytes(np.random.default_rng(1).bytes(4096))
    damaged = tmp_path / "damaged"
    shutil.copytree(plain_bag, damaged)
    inner = next(damaged.glob("*.mcap"))
    inner.write_bytes(inner.read_bytes()[:len(inner.read_bytes()) // 2])
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "notes.txt").write_text("not a bag")
    for path in ("missing", "noise.mcap", "damaged", "empty_dir", "notes.txt"):
        with pytest.raises(DicomOrError, match="^bag: "):
            Bag(tmp_path / path, b.MSG_DIRS)


def samples_by_topic(bag, plans):
    out = {t: [] for t in plans}
    for topic, log_ns, msg in bag.messages(plans):
        sample = plans[topic].sample(log_ns, msg)
        if sample is not None:
            out[topic].append(sample)
    return out


def test_plain_topics_become_descriptors_and_recorder_samples(plain_bag):
    frames = list(b.moving_pattern(240, 320, 10))
    with Bag(plain_bag, b.MSG_DIRS) as bag:
        plans = make_plans(bag, ConvertOptions(streams={"/monitor/ecg": ECG_SPEC}))
        samples = samples_by_topic(bag, plans)
    assert set(plans) == {"/cam/image", "/cam/compressed", "/tracker/pointer", "/monitor/ecg"}
    raw = samples["/cam/image"]
    assert [s.args[1:] for s in raw] == [(T0 + i * PERIOD, i) for i in range(10)]
    assert all(np.array_equal(s.args[0], f) for s, f in zip(raw, frames, strict=True))
    jpeg = samples["/cam/compressed"]
    assert jpeg[4].args[0].shape == (240, 320, 3)
    # JPEG decodes to BGR: the descriptor says so, and the picture is the same one.
    assert np.abs(jpeg[4].args[0][:, :, ::-1].astype(int) - frames[4]).mean() < 4
    pose = samples["/tracker/pointer"][7].args
    assert pose == ("pointer", T0 + 7 * PERIOD, (0.1, 0.0, 0.007), (0.0, 0.0, 0.0, 1.0),
                    True, 7)
    ecg = samples["/monitor/ecg"]
    # Physical values / sensitivity = digital; contiguous on the 500 Hz sampling clock.
    assert [s.args[2] for s in ecg] == [0, 50, 100, 150]
    assert [s.args[1] for s in ecg] == [T0 + k * 100_000_000 for k in range(4)]
    assert ecg[2].args[0].dtype == np.int16
    assert np.array_equal(ecg[2].args[0], np.rint(
        (np.arange(100).reshape(50, 2) * 2.5 + 2) / 2.5).astype(np.int16))
    d = {t: next(iter(p.descriptors.values())) for t, p in plans.items()}
    assert (d["/cam/image"].rows, d["/cam/image"].columns) == (240, 320)
    assert d["/cam/image"].pixel_encoding == "rgb8"
    assert d["/cam/compressed"].pixel_encoding == "bgr8"
    assert d["/cam/image"].nominal_rate_hz == pytest.approx(30.0, abs=0.01)
    assert d["/tracker/pointer"].tool_ids == ["pointer"]
    assert d["/tracker/pointer"].tf_frame_id == "tracker"
    assert d["/monitor/ecg"].modality == "ECG"
    assert [c.label for c in d["/monitor/ecg"].channels] == ["I", "II"]
    # One new study for every plain topic of the bag, each topic its own Series.
    assert len({x.session.study.study_instance_uid for x in d.values()}) == 1
    assert len({x.series_instance_uid for x in d.values()}) == 4


def test_caller_session_wins(plain_bag):
    session = example_session()
    with Bag(plain_bag, b.MSG_DIRS) as bag:
        plans = make_plans(bag, ConvertOptions(topics=["/tracker/pointer"], session=session))
        samples_by_topic(bag, plans)
    assert list(plans) == ["/tracker/pointer"]
    d = plans["/tracker/pointer"].descriptors["plain"]
    assert d.session.patient.patient_id == "OR-0001"
    assert d.session.study.study_instance_uid == session.study.study_instance_uid


def project_messages():
    session = example_session()
    video = example_descriptor("video", session)
    ecg = example_descriptor("ecg", session)
    pose = example_descriptor("pose", session)
    out = [b.session_message(session, T0 - 1), b.descriptor_message(video, T0 - 1),
           b.descriptor_message(ecg, T0 - 1), b.descriptor_message(pose, T0 - 1)]
    for i, pixels in enumerate(b.moving_pattern(240, 320, 5)):
        out.append(b.image_frame(video, T0 + i * PERIOD, i, pixels))
        out.append(b.pose_sample(pose, T0 + i * PERIOD, i, "pointer", (0.0, 0.1, 0.2),
                                 (0.0, 0.0, 0.0, 1.0)))
    out.append(b.waveform_chunk(ecg, T0, 0, 0, np.ones((50, 3), np.int16)))
    stranger = example_descriptor("pose", session)  # a Series the bag has no descriptor of
    out.append(b.pose_sample(stranger, T0 + 1, 0, "pointer", (0, 0, 0), (0, 0, 0, 1)))
    return session, (video, ecg, pose), sorted(out, key=lambda m: m[2])


def test_project_topics_use_their_latched_descriptors(tmp_path):
    session, (video, ecg, pose), messages = project_messages()
    path = b.write_bag(tmp_path / "own", messages, "sqlite3")
    with Bag(path, b.MSG_DIRS) as bag:
        plans = make_plans(bag, ConvertOptions())
        samples = samples_by_topic(bag, plans)
        other = example_session()
        renamed = make_plans(bag, ConvertOptions(session=other))
    assert plans[video.topic].descriptors == {video.series_instance_uid: video}
    assert plans[ecg.topic].descriptors[ecg.series_instance_uid] == ecg
    assert len(samples[pose.topic]) == 5   # the stranger's sample is not recorded
    image, stamp, sequence = samples[video.topic][2].args
    assert (stamp, sequence, image.shape) == (T0 + 2 * PERIOD, 2, (240, 320, 3))
    chunk = samples[ecg.topic][0].args
    assert chunk[0].shape == (50, 3) and chunk[1:] == (T0, 0, 0)
    # A caller's study: the same streams as new Series of that study (derived UIDs).
    moved = renamed[video.topic].descriptors[video.series_instance_uid]
    assert moved.session == other
    assert moved.series_instance_uid not in (video.series_instance_uid, "")
    assert moved.rows == video.rows and moved.stream_uuid == video.stream_uuid


def test_topics_that_cannot_be_converted_are_named(tmp_path, plain_bag):
    with Bag(plain_bag, b.MSG_DIRS) as bag:
        with pytest.raises(DicomOrError, match="topic: is not in the bag.*'/nope'"):
            make_plans(bag, ConvertOptions(topics=["/nope"]))
        with pytest.raises(DicomOrError, match="needs sampling_frequency_hz and channels"):
            make_plans(bag, ConvertOptions(streams={"/monitor/ecg": {"modality": "ECG"}}))
        with pytest.raises(DicomOrError, match=r"streams\./elsewhere: is not a topic"):
            make_plans(bag, ConvertOptions(streams={"/elsewhere": {}}))
        # A waveform array without its channel description is not guessed.
        plans = make_plans(bag, ConvertOptions())
        assert "/monitor/ecg" not in plans
    text = b.write_bag(tmp_path / "text", [("/chatter", "std_msgs/msg/String", T0,
                                            {"data": "hello"})])
    with Bag(text, b.MSG_DIRS) as bag:
        with pytest.raises(DicomOrError, match="holds no convertible topic"):
            make_plans(bag, ConvertOptions())
        with pytest.raises(DicomOrError, match="std_msgs/msg/String, which is not"):
            make_plans(bag, ConvertOptions(topics=["/chatter"]))
    _, (video, _, _), messages = project_messages()
    no_descriptor = [m for m in messages if not m[0].endswith("/descriptor")]
    with Bag(b.write_bag(tmp_path / "bare_own", no_descriptor), b.MSG_DIRS) as bag:
        with pytest.raises(DicomOrError, match="has no descriptor latched on"):
            make_plans(bag, ConvertOptions(topics=[video.topic]))


def test_stream_yaml_and_rate(tmp_path):
    path = tmp_path / "streams.yaml"
    path.write_text(yaml.safe_dump({"/monitor/ecg": ECG_SPEC}))
    assert load_stream_specs(path)["/monitor/ecg"]["sampling_frequency_hz"] == 500.0
    path.write_text("- just a list\n")
    with pytest.raises(DicomOrError, match="^streams: must map"):
        load_stream_specs(path)
    with pytest.raises(DicomOrError, match="^streams: cannot be read"):
        load_stream_specs(tmp_path / "absent.yaml")
    # The median interval: one stall does not change a 30 Hz topic's rate.
    times = [i * PERIOD for i in range(20)] + [20 * PERIOD + 5 * 10**9]
    assert estimate_rate(times) == pytest.approx(30.0)
    assert estimate_rate([]) == 1.0


def recorded_study(folder):
    """A study folder in the recorder's layout: one ECG and one pose instance."""
    session = example_session()
    ecg = example_descriptor("ecg", session)
    pose = example_descriptor("pose", session)
    samples = (np.arange(1500, dtype=np.int16).reshape(500, 3) - 700)
    t = np.array([T0 + i * 10_000_000 for i in range(100)], np.int64)
    positions = np.column_stack([np.linspace(0, 0.1, 100), np.zeros(100), np.ones(100)])
    quaternions = np.tile([0.0, 0.0, 0.0, 1.0], (100, 1))
    for d, ds in ((ecg, build_waveform(ecg, samples, T0, new_uid())),
                  (pose, build_pose_sr(pose, [ToolTrack("pointer", t, positions, quaternions)],
                                       new_uid()))):
        target = folder / session.study.study_instance_uid / d.series_instance_uid
        target.mkdir(parents=True)
        dcmwrite(target / f"{ds.SOPInstanceUID}.dcm", ds, enforce_file_format=True)
    return ecg, pose, samples, positions


def test_study_exports_as_a_rosbag2_mcap_bag(tmp_path):
    ecg, pose, samples, positions = recorded_study(tmp_path / "study")
    out = tmp_path / "exported"
    report = export_study(tmp_path / "study", out, b.MSG_DIRS)
    assert report.messages[pose.topic] == 100
    assert (out / "metadata.yaml").is_file()
    meta = yaml.safe_load((out / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert meta["storage_identifier"] == "mcap" and meta["version"] == 9
    assert {t["topic_metadata"]["name"] for t in meta["topics_with_message_count"]} == {
        "/or/session_context", ecg.topic, ecg.topic + "/descriptor", pose.topic,
        pose.topic + "/descriptor"}
    # An independent reader: MCAP profile ros2, CDR, ros2msg schemas with their
    # dependencies concatenated as rosbag2 does, decoded by mcap_ros2's own parser.
    (mcap_file,) = out.glob("*.mcap")
    decoded: dict[str, list] = {}
    with open(mcap_file, "rb") as fp:
        reader = make_reader(fp, decoder_factories=[DecoderFactory()])
        assert reader.get_header().profile == "ros2"
        summary = reader.get_summary()
        for channel in summary.channels.values():
            schema = summary.schemas[channel.schema_id]
            assert channel.message_encoding == "cdr" and schema.encoding == "ros2msg"
            if schema.name == "dicom_or_msgs/msg/PoseSample":
                assert "\n" + "=" * 80 + "\nMSG: dicom_or_msgs/SampleContext\n" in \
                    schema.data.decode()
        assert any(m.name == "rosbag2" for m in reader.iter_metadata())
        for _, channel, _, msg in reader.iter_decoded_messages():
            decoded.setdefault(channel.topic, []).append(msg)
    chunks = decoded[ecg.topic]
    got = np.concatenate([np.asarray(c.samples, np.int16).reshape(-1, c.channel_count)
                          for c in chunks])
    assert np.array_equal(got, samples)
    assert chunks[0].first_sample_index == 0
    assert chunks[0].context.series_instance_uid == ecg.series_instance_uid
    poses = decoded[pose.topic]
    assert [p.context.sequence for p in poses] == list(range(100))
    got_positions = np.array([[p.pose.position.x, p.pose.position.y, p.pose.position.z]
                              for p in poses])
    assert np.allclose(got_positions, positions.astype(np.float32), atol=1e-7)
    descriptor = decoded[pose.topic + "/descriptor"][0]
    assert descriptor.series_instance_uid == pose.series_instance_uid
    assert list(descriptor.tool_ids) == ["pointer"]
    # And rosbags reads it as a bag to convert.
    with Bag(out, b.MSG_DIRS) as bag:
        plans = make_plans(bag, ConvertOptions())
    assert plans[ecg.topic].descriptors[ecg.series_instance_uid].channels == ecg.channels
    assert plans[ecg.topic].descriptors[ecg.series_instance_uid].kind == ctx.KIND_WAVEFORM


def test_export_refuses_to_overwrite_and_leaves_nothing_on_failure(tmp_path):
    recorded_study(tmp_path / "study")
    (tmp_path / "taken").mkdir()
    with pytest.raises(DicomOrError, match="^output: exists already"):
        export_study(tmp_path / "study", tmp_path / "taken", b.MSG_DIRS)
    with pytest.raises(DicomOrError, match="^input: "):
        export_study(tmp_path / "nothing", tmp_path / "out", b.MSG_DIRS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study", "taken"]


def test_prefetch_hands_over_errors_and_stops_with_its_consumer():
    def failing():
        yield 1
        yield 2
        raise DicomOrError("bag", "cannot be read: truncated")

    got = []
    with pytest.raises(DicomOrError, match="truncated"):
        for item in prefetched(failing(), depth=1):
            got.append(item)
    assert got == [1, 2]
    produced = []

    def endless():
        n = 0
        while True:
            produced.append(n)
            yield n
            n += 1

    before = threading.active_count()
    stream = prefetched(endless(), depth=2)
    assert [next(stream) for _ in range(3)] == [0, 1, 2]
    stream.close()   # joins the producer: it stopped at its bounded lead
    assert threading.active_count() == before
    assert len(produced) <= 3 + 2 + 1


def test_live_bag_recorder_writes_a_rosbag2_mcap_from_several_threads(tmp_path):
    session, (video, ecg, pose), messages = project_messages()
    recorder = BagRecorder(tmp_path / "bags", b.MSG_DIRS, name="run1")
    groups = {}
    for m in messages:
        groups.setdefault(m[0], []).append(m)

    def write(topic_messages):
        for topic, msgtype, log_ns, values in topic_messages:
            recorder.write(topic, msgtype, log_ns, bytes(b.STORE.serialize_cdr(
                b.make_message(b.STORE, msgtype, values), msgtype)))

    threads = [threading.Thread(target=write, args=(g,)) for g in groups.values()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    with pytest.raises(DicomOrError, match="no definition of the message type"):
        recorder.write("/x", "nobody/msg/Unknown", T0, b"\0\1\0\0")
    assert recorder.close() == tmp_path / "bags" / "run1"
    recorder.write(pose.topic, "dicom_or_msgs/msg/PoseSample", T0, b"")  # after close: dropped
    assert recorder.messages == len(messages)
    with Bag(tmp_path / "bags" / "run1", b.MSG_DIRS) as bag:
        assert {t: i.count for t, i in bag.topics.items()} == {
            t: len(g) for t, g in groups.items()}
        plans = make_plans(bag, ConvertOptions())
        assert samples_by_topic(bag, plans)[video.topic][4].args[1] == T0 + 4 * PERIOD
    (mcap_file,) = (tmp_path / "bags" / "run1").glob("*.mcap")
    with open(mcap_file, "rb") as fp:
        reader = make_reader(fp, decoder_factories=[DecoderFactory()])
        decoded = [(c.topic, m) for _, c, _, m in reader.iter_decoded_messages()]
    assert len(decoded) == len(messages)
    assert [m.tool_id for t, m in decoded if t == pose.topic][:1] == ["pointer"]
    (tmp_path / "file").write_text("in the way")
    with pytest.raises(DicomOrError, match="^mcap_output: cannot create the bag"):
        BagRecorder(tmp_path / "file", b.MSG_DIRS)


def test_project_topic_without_descriptor_is_described_by_the_stream_yaml(tmp_path):
    _, (video, ecg, pose), messages = project_messages()
    bare = [m for m in messages if not m[0].endswith("/descriptor")
            and m[0] != "/or/session_context"]
    spec = {"modality": "ECG", "sampling_frequency_hz": 500.0,
            "channels": [{"label": f"L{k}", "source_code_value": "2:1",
                          "source_coding_scheme": "MDC", "unit_ucum": "uV",
                          "sensitivity": 1.0} for k in range(3)]}
    with Bag(b.write_bag(tmp_path / "bare", bare), b.MSG_DIRS) as bag:
        plans = make_plans(bag, ConvertOptions(topics=[ecg.topic, video.topic],
                                               streams={ecg.topic: spec,
                                                        video.topic: {"modality": "ES"}}))
        samples = samples_by_topic(bag, plans)
    (d,) = plans[ecg.topic].descriptors.values()
    # The chunk's own Series UID, the YAML's channels and rate.
    assert d.series_instance_uid == ecg.series_instance_uid
    assert [c.label for c in d.channels] == ["L0", "L1", "L2"]
    assert d.sampling_frequency_hz == 500.0 and d.kind == ctx.KIND_WAVEFORM
    assert samples[ecg.topic][0].args[0].shape == (50, 3)
    (v,) = plans[video.topic].descriptors.values()
    assert (v.modality, v.rows, v.columns, v.pixel_encoding) == ("ES", 240, 320, "rgb8")
    assert len(samples[video.topic]) == 5


def test_progress_bar_lines_without_a_terminal():
    out = io.StringIO()
    bar = ProgressBar("convert", out)
    for done in range(1, 101):
        bar(done, 100, done)
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 11   # 1 %, then every 10 %
    assert lines[-1].startswith("convert [" + "#" * 30 + "] 100% 100/100 msgs")
    unknown = io.StringIO()
    counter = ProgressBar("export", unknown)
    for done in range(1, 12001):
        counter(done, 0, 0)
    assert [line.split()[1] for line in unknown.getvalue().splitlines()] == [
        "1", "5000", "10000"]
