"""Example stream descriptors and samples for tests, benchmarks and docs.

They follow the contracts the drivers publish (topic names, Modality per stream, channel
codes and units), so recorder tests need no driver running.
"""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np

from dicom_or_core.model.context import (
    KIND_POSE,
    KIND_VIDEO,
    KIND_WAVEFORM,
    Equipment,
    Patient,
    SessionContext,
    StreamDescriptor,
    Study,
    WaveformChannel,
)
from dicom_or_core.model.uid import new_stream_uuid, new_uid
from dicom_or_core.sim.video import PatternSource


def example_session() -> SessionContext:
    """A session with a patient, a study and a synchronization frame of reference."""
    return SessionContext(
        patient=Patient(patient_id="OR-0001", patient_name="Doe^Jane", birth_date="19700101",
                        sex="F"),
        study=Study(study_instance_uid=new_uid(), accession_number="A1", study_id="1",
                    study_date="20261124", study_time="080000",
                    study_description="Laparoscopic cholecystectomy"),
        synchronization_frame_of_reference_uid=new_uid(),
        operating_room="OR1",
    )


def _stream(session: SessionContext, kind: int, topic: str, modality: str,
            rate: float, **kw: object) -> StreamDescriptor:
    return StreamDescriptor(
        session=session, stream_uuid=new_stream_uuid(), kind=kind, topic=topic,
        nominal_rate_hz=rate, series_instance_uid=new_uid(), series_number=kw.pop("number", 1),
        modality=modality, series_description=kw.pop("description", ""),
        series_date="20261124", series_time="080001", frame_of_reference_uid=new_uid(),
        equipment=Equipment(manufacturer="dicom_or", model_name="synthetic",
                            device_serial_number="0001", station_name="OR1",
                            software_versions="0.1.0"),
        **kw)


def ecg_channels() -> list[WaveformChannel]:
    """Leads I, II, III (PS3.16 CID 3001 ECG Leads, MDC codes), 2.5 uV per digital value."""
    return [WaveformChannel(label=label, source_code_value=code, source_coding_scheme="MDC",
                            source_code_meaning=meaning, unit_ucum="uV", sensitivity=2.5,
                            sensitivity_correction=1.0, baseline=0.0, filter_low_hz=0.05,
                            filter_high_hz=150.0)
            for label, code, meaning in (("I", "2:1", "Lead I"), ("II", "2:2", "Lead II"),
                                         ("III", "2:61", "Lead III"))]


def hemodynamic_channels() -> list[WaveformChannel]:
    """Arterial pressure and plethysmogram."""
    return [
        WaveformChannel(label="ART", source_code_value="2:4104", source_coding_scheme="MDC",
                        source_code_meaning="Arterial pressure", unit_ucum="mm[Hg]",
                        sensitivity=0.1, sensitivity_correction=1.0),
        WaveformChannel(label="PLETH", source_code_value="2:19380",
                        source_coding_scheme="MDC", source_code_meaning="Plethysmogram",
                        unit_ucum="%", sensitivity=0.01, sensitivity_correction=1.0),
    ]


def example_descriptor(kind: str, session: SessionContext | None = None,
                       **overrides: object) -> StreamDescriptor:
    """An example descriptor: kind is "video", "video_xc", "ecg", "hd", "resp" or "pose"."""
    session = session or example_session()
    if kind == "video":
        d = _stream(session, KIND_VIDEO, "/or/endoscope/frames", "ES", 30.0, rows=240,
                    columns=320, pixel_encoding="rgb8", description="Endoscope",
                    body_part_examined="ABDOMEN")
    elif kind == "video_xc":
        d = _stream(session, KIND_VIDEO, "/or/room_camera/frames", "XC", 30.0, rows=240,
                    columns=320, pixel_encoding="bgr8", description="Room camera")
    elif kind == "ecg":
        d = _stream(session, KIND_WAVEFORM, "/or/patient_monitor/ecg", "ECG", 500.0,
                    sampling_frequency_hz=500.0, channels=ecg_channels(), description="ECG")
    elif kind == "hd":
        d = _stream(session, KIND_WAVEFORM, "/or/patient_monitor/hemodynamic", "HD", 250.0,
                    sampling_frequency_hz=250.0, channels=hemodynamic_channels(),
                    description="Hemodynamic")
    elif kind == "resp":
        d = _stream(session, KIND_WAVEFORM, "/or/patient_monitor/resp", "RESP", 50.0,
                    sampling_frequency_hz=50.0, description="Respiration", channels=[
                        WaveformChannel(label="RESP", source_code_value="2:20490",
                                        source_coding_scheme="MDC",
                                        source_code_meaning="Respiration",
                                        unit_ucum="1", sensitivity=1.0)])
    elif kind == "pose":
        d = _stream(session, KIND_POSE, "/or/tracker/poses", "SR", 60.0,
                    tf_frame_id="tracker", tool_ids=["pointer", "patient_reference"],
                    description="Tracked tools", position_reference_indicator="")
    else:
        raise ValueError(kind)
    for key, value in overrides.items():
        setattr(d, key, value)
    return d.validate()


def synthetic_rgb(rows: int, columns: int, index: int) -> np.ndarray:
    """A smooth endoscope-like RGB frame (radial vignette, moving highlight), uint8."""
    y, x = np.mgrid[0:rows, 0:columns].astype(np.float32)
    cy, cx = rows / 2, columns / 2
    r = np.hypot((y - cy) / rows, (x - cx) / columns)
    phase = index * 0.15
    hx = cx + 0.25 * columns * np.cos(phase)
    hy = cy + 0.25 * rows * np.sin(phase)
    highlight = np.exp(-(((x - hx) / (0.12 * columns)) ** 2 + ((y - hy) / (0.12 * rows)) ** 2))
    base = np.clip(1.0 - 1.6 * r, 0, 1)
    red = 60 + 150 * base + 40 * highlight
    green = 30 + 80 * base + 60 * highlight + 10 * np.sin(x / 23.0 + phase)
    blue = 30 + 60 * base + 50 * highlight + 10 * np.cos(y / 19.0 - phase)
    return np.clip(np.stack([red, green, blue], axis=-1), 0, 255).astype(np.uint8)


def synthetic_waveform(n: int, channels: int, start: int = 0) -> np.ndarray:
    """Deterministic int16 samples (n, channels) using the full range, including extremes."""
    idx = np.arange(start, start + n, dtype=np.int64)[:, None]
    ch = np.arange(channels, dtype=np.int64)[None, :]
    values = (np.sin(idx * 0.05 + ch) * 30000).astype(np.int64) + (idx * 7 + ch * 13) % 97
    values[::101] = -32768
    values[50::101] = 32767
    return np.clip(values, -32768, 32767).astype(np.int16)


def now_ns() -> int:
    """The session clock now (host UTC time in nanoseconds)."""
    return time.time_ns()


def write_test_video(path: str | Path, frames: int, width: int = 320, height: int = 240,
                     fps: float = 30.0) -> Path:
    """Write a short MJPEG AVI of the synthetic pattern (the video driver's file source)."""
    path = Path(path)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps,
                             (width, height))
    pattern = PatternSource(width, height, "bgr8")
    for index in range(frames):
        writer.write(pattern.frame(index, time.time_ns()))
    writer.release()
    return path


def write_recorded_instances(root: str | Path, frames: int = 20,
                             seconds: float = 2.0) -> dict[str, Path]:
    """A Video Endoscopic instance (real H.264 in MPEG-TS, as the recorder encodes it) and a
    General ECG instance of one example session, stored at <root>/<study>/<series>/<sop>.dcm
    as the recorder's archive lays them out: {"video": path, "ecg": path}."""
    from dicom_or_core.iod.codec import PTS_HZ, PacketEncoder, choose_codec, mux_mpegts
    from dicom_or_core.iod.video import build_video
    from dicom_or_core.iod.waveform import build_waveform

    session = example_session()
    video, ecg = example_descriptor("video", session), example_descriptor("ecg", session)
    t0 = now_ns()
    stamps = [t0 + round(i * 1e9 / video.nominal_rate_hz) for i in range(frames)]
    choice = choose_codec(video.rows, video.columns, video.nominal_rate_hz)
    encoder = PacketEncoder(choice, video.rows, video.columns, video.pixel_encoding,
                            video.nominal_rate_hz)
    packets = []
    for i, stamp in enumerate(stamps):
        packets += encoder.encode(synthetic_rgb(video.rows, video.columns, i),
                                  round((stamp - t0) * PTS_HZ / 1e9))
    packets += encoder.flush()
    ts = mux_mpegts(choice, video.rows, video.columns, video.nominal_rate_hz, packets)
    n = int(seconds * ecg.sampling_frequency_hz)
    datasets = {
        "video": (video, build_video(video, ts, choice, stamps, new_uid(), 1, t0)),
        "ecg": (ecg, build_waveform(ecg, synthetic_waveform(n, len(ecg.channels)), t0,
                                    new_uid())),
    }
    paths = {}
    for name, (descriptor, ds) in datasets.items():
        path = Path(root) / session.study.study_instance_uid / \
            descriptor.series_instance_uid / f"{ds.SOPInstanceUID}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        paths[name] = path
    return paths
