"""Shared test data: descriptors of a video and an ECG stream, archived instances, and a
running ROS-free SCP over a model store."""

from __future__ import annotations

import contextlib
import logging
import subprocess
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from dicom_or_bridge.scp import BridgeScp, ScpConfig, SnapshotProvider
from dicom_or_core.model import context as ctx
from dicom_or_core.qr.model import ArchiveIndex, LiveStream, ModelStore

STUDY = "1.2.826.0.1.3680043.8.498.1"
VIDEO_SERIES = "1.2.826.0.1.3680043.8.498.10"
ECG_SERIES = "1.2.826.0.1.3680043.8.498.11"
PATIENT_ID = "P-001"


def session(study_uid: str = STUDY, patient_id: str = PATIENT_ID,
            name: str = "Doe^Jane") -> ctx.SessionContext:
    return ctx.SessionContext(
        patient=ctx.Patient(patient_id=patient_id, patient_name=name, birth_date="19700101",
                            sex="F"),
        study=ctx.Study(study_instance_uid=study_uid, accession_number="ACC1", study_id="S1",
                        study_date="20241124", study_time="080000",
                        study_description="Lap chole"),
        synchronization_frame_of_reference_uid="1.2.3.4", scheduled_procedure_step_id="SPS1",
        operating_room="OR1")


def video(uid: str = VIDEO_SERIES, topic: str = "/or/endoscope/frames",
          **kw: str) -> ctx.StreamDescriptor:
    return ctx.StreamDescriptor(
        session=session(**kw), stream_uuid="u-" + uid, kind=ctx.KIND_VIDEO, topic=topic,
        message_type="dicom_or_msgs/msg/ImageFrame", qos_profile="video",
        nominal_rate_hz=30.0, series_instance_uid=uid, series_number=1, modality="ES",
        series_description="Endoscope", series_date="20241124", series_time="081500",
        frame_of_reference_uid="1.2.3.5", rows=1080, columns=1920, pixel_encoding="rgb8",
        equipment=ctx.Equipment(manufacturer="ACME", model_name="Scope 1",
                                station_name="OR1"))


def ecg(uid: str = ECG_SERIES, topic: str = "/or/patient_monitor/ecg") -> ctx.StreamDescriptor:
    channels = [ctx.WaveformChannel(label=label, source_code_value=code,
                                    source_coding_scheme="MDC", source_code_meaning=label,
                                    unit_ucum="uV")
                for label, code in (("I", "2:1"), ("II", "2:2"), ("III", "2:61"))]
    return ctx.StreamDescriptor(
        session=session(), stream_uuid="u-" + uid, kind=ctx.KIND_WAVEFORM, topic=topic,
        message_type="dicom_or_msgs/msg/WaveformChunk", qos_profile="waveform",
        nominal_rate_hz=500.0, series_instance_uid=uid, series_number=3, modality="ECG",
        series_description="ECG", series_date="20241124", series_time="081501",
        frame_of_reference_uid="1.2.3.5", sampling_frequency_hz=500.0, channels=channels)


def write_instance(root: Path, study: str = STUDY, series: str = VIDEO_SERIES,
                   sop: str | None = None, number: int = 1) -> Path:
    """A small valid Secondary Capture instance at <root>/<study>/<series>/<sop>.dcm."""
    sop = sop or generate_uid()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    # PS3.3 A.8.1 SC Image IOD: Patient, General Study, General Series, SC Equipment,
    # General Image, Image Pixel, SOP Common.
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, sop
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = \
        "Doe^Jane", PATIENT_ID, "19700101", "F"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20241124", "080000", \
        "S1", "ACC1"
    ds.ReferringPhysicianName = ""
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "ES", 1, number
    ds.ConversionType = "WSD"
    ds.ContentDate, ds.ContentTime = "20241124", "081600"
    ds.PatientOrientation = ""
    ds.Rows = ds.Columns = 4
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = bytes(range(16))
    path = root / study / series / f"{sop}.dcm"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path




@contextlib.contextmanager
def running_scp(archive: Path | None = None, streams: list | None = None,
                snapshot: SnapshotProvider | None = None, **config: object):
    """A started BridgeScp on 127.0.0.1:<free port> over the given streams and archive;
    ``snapshot`` stands in for the node's live-frame grabber."""
    store = ModelStore(ArchiveIndex(archive) if archive else None, domain_id=0,
                       retrieve_ae_title="DICOM_OR", archive_rescan_s=0.0)
    store.set_streams([LiveStream(d) for d in (streams if streams is not None
                                               else [video(), ecg()])])
    scp = BridgeScp(store, ScpConfig(**config), logging.getLogger("test.scp"), snapshot=snapshot)
    scp.start()
    try:
        yield scp
    finally:
        scp.stop()


def console_script(name: str) -> str:
    """Path of one of this package's console scripts in the colcon install space."""
    from ament_index_python.packages import get_package_prefix

    return str(Path(get_package_prefix("dicom_or_bridge")) / "lib" / "dicom_or_bridge" / name)


def self_signed_cert(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate and key for 127.0.0.1 / localhost (the TLS tests' peer)."""
    key, cert = folder / "key.pem", folder / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


H264_SERIES = "1.2.826.0.1.3680043.8.498.12"


def h264_descriptor_msg(uid: str = H264_SERIES, topic: str = "/or/encoded_scope/frames"):
    """The descriptor message of a camera-side encoded endoscope stream (VideoPacket,
    video_codec h264, 320x240 at 30 fps)."""
    from dicom_or_ros.convert import to_msg

    msg = to_msg(video(uid, topic))
    msg.stream_uuid = "u-h264-" + uid
    msg.message_type, msg.video_codec = "dicom_or_msgs/msg/VideoPacket", "h264"
    msg.qos_profile, msg.rows, msg.columns = "video_compressed", 240, 320
    msg.series_description = "Encoded endoscope"
    return msg


def publish_packets(node, descriptor_msg, packets, rate_hz: float = 30.0):
    """Latch ``descriptor_msg`` and publish ``packets`` (dicom_or_test_common.video_packets)
    on its topic at ``rate_hz`` from a timer of ``node``, RELIABLE as a driver's
    video_compressed publisher; the list repeats (it must start with a key frame and hold
    whole GOPs), the sequence keeps counting. Returns (descriptor publisher, publisher,
    timer)."""
    import time

    from dicom_or_test_common.video_packets import packet_message
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    from dicom_or_msgs.msg import StreamDescriptor as StreamDescriptorMsg
    from dicom_or_msgs.msg import VideoPacket
    from dicom_or_ros.graph import descriptor_topic
    from dicom_or_ros.qos import named_qos

    desc_pub = node.create_publisher(StreamDescriptorMsg, descriptor_topic(descriptor_msg.topic),
                                     named_qos("descriptor"))
    desc_pub.publish(descriptor_msg)
    pub = node.create_publisher(VideoPacket, descriptor_msg.topic,
                                QoSProfile(depth=30, reliability=ReliabilityPolicy.RELIABLE))
    sequence = [0]

    def tick() -> None:
        n = sequence[0]
        pub.publish(packet_message(packets[n % len(packets)], n,
                                   descriptor_msg.series_instance_uid, time.time_ns()))
        sequence[0] += 1

    return desc_pub, pub, node.create_timer(1.0 / rate_hz, tick)
