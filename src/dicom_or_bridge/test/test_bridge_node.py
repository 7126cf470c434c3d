"""The dicom_bridge node on its own DDS domain: streams appear and disappear in C-FIND
answers within a second, device status marks them, and bad parameters exit 1."""

from __future__ import annotations

import subprocess
import threading
import time

import pytest
from bridge_fixtures import STUDY, VIDEO_SERIES, console_script, ecg, video
from dicom_or_test_common.peers import have, run_tool, storescp
from dicom_or_test_common.peers import tool_path as tool  # dcmtk's, not pynetdicom's scripts
from dicom_or_test_common.ros import isolated_env, reserved_domain_id, ros_context
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom import sop_class as sc
from rclpy.executors import SingleThreadedExecutor

from dicom_or_bridge.bridge_node import DicomBridgeNode
from dicom_or_msgs.msg import DeviceStatus, ImageFrame, WaveformChunk
from dicom_or_msgs.msg import StreamDescriptor as StreamDescriptorMsg
from dicom_or_ros.convert import to_msg
from dicom_or_ros.graph import DEVICE_STATUS_TOPIC, descriptor_topic
from dicom_or_ros.qos import named_qos

FIND = sc.StudyRootQueryRetrieveInformationModelFind


def series_descriptions(port: int) -> dict[str, str]:
    ae = AE(ae_title="TEST_SCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(FIND)
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOM_OR")
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "SERIES"
    query.StudyInstanceUID = STUDY
    query.SeriesDescription = ""
    query.RetrieveURL = ""
    found = {}
    for status, answer in assoc.send_c_find(query, FIND):
        if status and status.Status == 0xFF00:
            found[answer.SeriesInstanceUID] = str(answer.SeriesDescription)
    assoc.release()
    return found


def wait_for(predicate, timeout_s: float) -> float | None:
    """Seconds until predicate() held, or None after timeout_s (polls C-FIND, which is the
    observable under test)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.05)
    return None


@pytest.fixture
def graph(tmp_path):
    import rclpy

    with ros_context() as ctx:
        bridge = DicomBridgeNode(context=ctx, parameter_overrides=[
            rclpy.parameter.Parameter("port", value=0),
            rclpy.parameter.Parameter("dicomweb_port", value=0),
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


def start_stream(driver, descriptor, msg_type):
    desc_pub = driver.create_publisher(StreamDescriptorMsg, descriptor_topic(descriptor.topic),
                                       named_qos("descriptor"))
    desc_pub.publish(to_msg(descriptor))
    sample_pub = driver.create_publisher(msg_type, descriptor.topic, 10)
    return desc_pub, sample_pub


def test_streams_appear_and_disappear_within_one_second(graph):
    bridge, driver = graph
    assert bridge.scp.port > 0
    # List parameters default to real empty lists (no [""] stand-in): allow any peer.
    config = bridge.scp.config
    assert (config.allowed_calling_ae_titles, config.allowed_hosts,
            config.move_destinations) == ([], [], {})
    from std_msgs.msg import UInt16
    ports = []
    driver.create_subscription(UInt16, "/dicom_bridge/port", lambda m: ports.append(m.data),
                               named_qos("descriptor"))
    assert wait_for(lambda: ports == [bridge.scp.port], 10.0) is not None  # latched
    assert series_descriptions(bridge.scp.port) == {}
    video_pubs = start_stream(driver, video(), ImageFrame)
    start_stream(driver, ecg(), WaveformChunk)
    # Discovery of a brand-new participant's topics is DDS's job; once seen, the bridge
    # answers within one discovery period.
    assert wait_for(lambda: len(series_descriptions(bridge.scp.port)) == 2, 10.0) is not None
    for pub in video_pubs:
        driver.destroy_publisher(pub)
    gone = wait_for(lambda: VIDEO_SERIES not in series_descriptions(bridge.scp.port), 5.0)
    assert gone is not None and gone < 1.0, gone
    assert len(series_descriptions(bridge.scp.port)) == 1
    # ...and back again.
    start_stream(driver, video(), ImageFrame)
    back = wait_for(lambda: VIDEO_SERIES in series_descriptions(bridge.scp.port), 5.0)
    assert back is not None and back < 1.0, back


def test_device_status_marks_stale_and_lost_streams(graph):
    bridge, driver = graph
    descriptor = video()
    start_stream(driver, descriptor, ImageFrame)
    assert wait_for(lambda: VIDEO_SERIES in series_descriptions(bridge.scp.port), 10.0) \
        is not None
    status_pub = driver.create_publisher(DeviceStatus, DEVICE_STATUS_TOPIC, named_qos("status"))
    for state, text in ((DeviceStatus.STATE_STALE, "Endoscope [STALE]"),
                        (DeviceStatus.STATE_SOURCE_LOST, "Endoscope [SOURCE LOST]"),
                        (DeviceStatus.STATE_LIVE, "Endoscope")):
        status_pub.publish(DeviceStatus(stream_uuid=descriptor.stream_uuid,
                                        series_instance_uid=VIDEO_SERIES,
                                        topic=descriptor.topic, state=state))
        assert wait_for(lambda t=text: series_descriptions(bridge.scp.port).get(VIDEO_SERIES)
                        == t, 5.0) is not None, text
    status_pub.publish(DeviceStatus(stream_uuid=descriptor.stream_uuid,
                                    topic=descriptor.topic, state=DeviceStatus.STATE_STOPPED))
    assert wait_for(lambda: VIDEO_SERIES not in series_descriptions(bridge.scp.port), 5.0) \
        is not None


@pytest.mark.parametrize("args, name", [
    (["-p", "port:=70000"], "port"),
    (["-p", "ae_title:=THIS_AE_TITLE_IS_TOO_LONG"], "ae_title"),
    (["-p", "move_destinations:=[nonsense]"], "move_destinations"),
    (["-p", "allowed_calling_ae_titles:=['']"], "allowed_calling_ae_titles"),
    (["-p", "allowed_hosts:=[' ']"], "allowed_hosts"),
    (["-p", "allowed_hosts:=['no-such-host.invalid']"], "allowed_hosts"),  # resolved at start
    (["-p", "max_message_bytes:=4096"], "max_message_bytes"),  # < max_identifier_bytes
    (["-p", "max_associations:=0"], "max_associations"),
    (["-p", "tls_cert:=/nonexistent.pem", "-p", "tls_key:=/nonexistent.pem"], "tls_cert"),
])
def test_bad_parameters_exit_1_naming_the_parameter(args, name):
    with reserved_domain_id() as domain:
        result = subprocess.run([console_script("dicom_bridge"), "--ros-args", "-p", "port:=0",
                                 *args], env=isolated_env(domain), capture_output=True,
                                text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    assert name in result.stderr
    assert "Traceback" not in result.stderr


def test_shipped_parameter_file_loads_and_port_is_reported(tmp_path):
    from dicom_or_core.config.paths import config_dir

    with reserved_domain_id() as domain:
        child = subprocess.Popen(
            [console_script("dicom_bridge"), "--ros-args", "--params-file",
             str(config_dir() / "dicom_bridge.yaml"), "-p", "port:=0", "-p", "dicomweb_port:=0",
             "-p", f"archive_dir:={tmp_path}"],
            env=isolated_env(domain), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True)
        try:
            line = ""
            for line in child.stdout:  # ends when the process exits: never hangs the test
                if "listening on port" in line:
                    break
            assert "listening on port" in line, line
            port = int(line.split("listening on port")[1].split()[0])
            assert port > 0 and series_descriptions(port) == {}
        finally:
            child.terminate()
            assert child.wait(timeout=20) == 0


def test_c_get_of_a_live_video_series_returns_a_snapshot_of_the_current_frame(graph):
    import numpy as np
    from pynetdicom import build_role, evt

    bridge, driver = graph
    descriptor = video()
    _, frames = start_stream(driver, descriptor, ImageFrame)
    pixels = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    frame = ImageFrame()
    frame.image.encoding, frame.image.width, frame.image.height = "rgb8", 5, 4
    frame.image.step, frame.image.data = 15, pixels.tobytes()
    driver.create_timer(0.05, lambda: frames.publish(frame))
    assert wait_for(lambda: VIDEO_SERIES in series_descriptions(bridge.scp.port), 10.0) \
        is not None
    received = []
    get = sc.StudyRootQueryRetrieveInformationModelGet
    ae = AE(ae_title="TEST_SCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(get)
    ae.add_requested_context(sc.VLEndoscopicImageStorage)   # the ES live snapshot's class
    assoc = ae.associate("127.0.0.1", bridge.scp.port, ae_title="DICOM_OR",
                         ext_neg=[build_role(sc.VLEndoscopicImageStorage, scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE,
                                        lambda e: received.append(e.dataset) or 0)])
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "SERIES"
    query.StudyInstanceUID = STUDY
    query.SeriesInstanceUID = VIDEO_SERIES
    statuses = [s.Status for s, _ in assoc.send_c_get(query, get)]
    assoc.release()
    assert statuses[-1] == 0x0000
    (image,) = received
    assert image.SeriesInstanceUID == VIDEO_SERIES
    assert (image.Rows, image.Columns, image.PhotometricInterpretation) == (4, 5, "RGB")
    assert image.PixelData == pixels.tobytes()


def test_c_move_of_a_live_video_series_delivers_the_current_frame_to_storescp(graph, tmp_path):
    """The full loop with real peers: a frame published on ROS reaches dcmtk's storescp as a
    DICOM image through a dcmtk movescu C-MOVE of the live Series."""
    import numpy as np
    from pydicom import dcmread

    if not have(tool("movescu")):
        pytest.skip("dcmtk is not installed")
    bridge, driver = graph
    _, frames = start_stream(driver, video(), ImageFrame)
    pixels = np.arange(6 * 8, dtype=np.uint8).reshape(6, 8)
    frame = ImageFrame()
    frame.image.encoding, frame.image.width, frame.image.height = "mono8", 8, 6
    frame.image.step, frame.image.data = 8, pixels.tobytes()
    driver.create_timer(0.05, lambda: frames.publish(frame))
    assert wait_for(lambda: VIDEO_SERIES in series_descriptions(bridge.scp.port), 10.0) \
        is not None
    received = tmp_path / "received"
    with storescp(received) as store_port:
        bridge.scp.config.move_destinations["STORESCP"] = ("127.0.0.1", store_port)
        result = run_tool([tool("movescu"), "-S", "-aec", "DICOM_OR", "-aem", "STORESCP",
                           "-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={STUDY}",
                           "-k", f"SeriesInstanceUID={VIDEO_SERIES}", "127.0.0.1",
                           str(bridge.scp.port)], timeout_s=60)
    assert result.returncode == 0, result.stderr
    (image,) = [dcmread(p) for p in received.iterdir()]
    assert image.SeriesInstanceUID == VIDEO_SERIES and image.Modality == "ES"
    # A VL Endoscopic Image is colour (PS3.3 A.32.1): a mono8 frame is stored as grey RGB.
    assert (image.Rows, image.Columns, image.PhotometricInterpretation) == (6, 8, "RGB")
    assert image.PixelData == np.repeat(pixels[..., None], 3, axis=2).tobytes()


def test_an_h264_stream_is_listed_and_its_snapshot_is_decoded(graph):
    """A camera-side encoded stream (VideoPacket, video_codec h264) is a Series like a raw
    one: C-FIND lists it with a Retrieve URL naming VideoPacket, and C-GET decodes the
    access units from the next key frame into a VL Endoscopic Image of the stream's size."""
    import numpy as np
    from bridge_fixtures import H264_SERIES, h264_descriptor_msg, publish_packets
    from dicom_or_test_common.video_packets import barcode_frame, encode, read_barcode
    from pynetdicom import build_role, evt

    from dicom_or_core.iod.codec import psnr
    from dicom_or_core.model.ros2_uri import parse

    bridge, driver = graph
    descriptor = h264_descriptor_msg()
    publish_packets(driver, descriptor, encode(60))   # key frames at 0 and 30
    assert wait_for(lambda: H264_SERIES in series_descriptions(bridge.scp.port), 10.0) \
        is not None
    ae = AE(ae_title="TEST_SCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(FIND)
    get = sc.StudyRootQueryRetrieveInformationModelGet
    ae.add_requested_context(get)
    ae.add_requested_context(sc.VLEndoscopicImageStorage)
    received = []
    assoc = ae.associate("127.0.0.1", bridge.scp.port, ae_title="DICOM_OR",
                         ext_neg=[build_role(sc.VLEndoscopicImageStorage, scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE,
                                        lambda e: received.append(e.dataset) or 0)])
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "SERIES"
    query.StudyInstanceUID = STUDY
    query.SeriesInstanceUID = H264_SERIES
    query.RetrieveURL = ""
    (url,) = [str(a.RetrieveURL) for s, a in assoc.send_c_find(query, FIND)
              if s and s.Status == 0xFF00]
    uri = parse(url)
    assert (uri.topic, uri.message_type, uri.qos_profile) == \
        (descriptor.topic, "dicom_or_msgs/msg/VideoPacket", "video_compressed")
    del query.RetrieveURL
    statuses = [s.Status for s, _ in assoc.send_c_get(query, get)]
    assoc.release()
    assert statuses[-1] == 0x0000
    (image,) = received
    assert image.SeriesInstanceUID == H264_SERIES
    assert (image.Rows, image.Columns, image.PhotometricInterpretation) == (240, 320, "RGB")
    pixels = np.frombuffer(image.PixelData, np.uint8).reshape(240, 320, 3)   # native RGB
    shown = read_barcode(pixels)
    assert psnr(pixels, barcode_frame(shown)) > 30   # a clean picture, not a corrupted one


def _driver_script(name: str) -> str:
    from pathlib import Path

    from ament_index_python.packages import PackageNotFoundError, get_package_prefix

    try:
        path = Path(get_package_prefix("dicom_or_drivers")) / "lib" / "dicom_or_drivers" / name
    except PackageNotFoundError:
        pytest.skip("dicom_or_drivers is not built")
    if not path.exists():
        pytest.skip(f"{name} is not built")
    return str(path)


def test_real_drivers_start_and_stop(tmp_path):
    """The real session_context and waveform_driver processes: the bridge lists the
    driver's ECG and HD series, with the session's study, and drops them within a second
    of the driver's clean stop."""
    import signal

    import rclpy

    waveform = _driver_script("waveform_driver")
    with ros_context() as ctx:
        env = isolated_env(ctx.domain)
        context_proc = subprocess.Popen(
            [console_script("session_context"), "--ros-args", "-r", "__ns:=/or", "-p",
             "patient.patient_id:=P-REAL", "-p",
             f"study.study_instance_uid:={STUDY}"], env=env, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        driver = subprocess.Popen([waveform, "--ros-args", "-r", "__ns:=/or", "-r",
                                   "__node:=patient_monitor"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        bridge = DicomBridgeNode(context=ctx, parameter_overrides=[
            rclpy.parameter.Parameter("port", value=0),
            rclpy.parameter.Parameter("archive_dir", value=str(tmp_path))])
        executor = SingleThreadedExecutor(context=ctx)
        executor.add_node(bridge)
        stop = threading.Event()
        thread = threading.Thread(target=lambda: [executor.spin_once(timeout_sec=0.05)
                                                  for _ in iter(stop.is_set, True)])
        thread.start()

        def modalities() -> dict[str, str]:
            ae = AE(ae_title="TEST_SCU")
            ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
            ae.add_requested_context(FIND)
            assoc = ae.associate("127.0.0.1", bridge.scp.port, ae_title="DICOM_OR")
            query = Dataset()
            query.QueryRetrieveLevel = "SERIES"
            query.StudyInstanceUID = STUDY
            query.Modality = ""
            query.RetrieveURL = ""
            found = {str(a.Modality): str(a.RetrieveURL)
                     for s, a in assoc.send_c_find(query, FIND) if s and s.Status == 0xFF00}
            assoc.release()
            return found

        try:
            assert wait_for(lambda: {"ECG", "HD"} <= set(modalities()), 30.0) is not None
            found = modalities()
            assert found["ECG"].startswith("ros2:/or/patient_monitor/ecg?")
            assert found["HD"].startswith("ros2:/or/patient_monitor/hemodynamic?")
            driver.send_signal(signal.SIGINT)
            assert driver.wait(timeout=30) == 0
            gone = wait_for(lambda: not modalities(), 10.0)
            assert gone is not None and gone < 1.0, gone
        finally:
            for proc in (driver, context_proc):
                if proc.poll() is None:
                    proc.terminate()
                    proc.wait(timeout=20)
            stop.set()
            thread.join(timeout=5)
            bridge.close()
            executor.shutdown()
            bridge.destroy_node()
