"""IOD builders: one converter per stream kind, each returning a pydicom Dataset.

Like ros2_igtl_bridge's converter registry, :data:`CONVERTERS` maps what is recorded to the
function that turns it into a DICOM object, so the recorder dispatches without per-kind
branches and a new kind is one entry:

==================  ==============================================  ======================
key                 builder                                         SOP Class
==================  ==============================================  ======================
``waveform``        :func:`.waveform.build_waveform`                 General ECG /
                                                                    Hemodynamic /
                                                                    Respiratory Waveform
``video``           :func:`.video.build_video`                      Video Endoscopic /
                                                                    Video Photographic
``video_lossless``  :func:`.video.build_multiframe_sc`              Multi-frame True Color
                                                                    Secondary Capture
``snapshot``        :func:`.video.build_snapshot`                   VL Endoscopic Image /
                                                                    Secondary Capture
``pose``            :func:`.pose.build_pose_sr`                     Comprehensive 3D SR
==================  ==============================================  ======================
"""

from __future__ import annotations

from collections.abc import Callable

from pydicom.dataset import Dataset

from dicom_or_core.errors import DicomOrError
from dicom_or_core.iod.pose import build_pose_sr
from dicom_or_core.iod.video import build_multiframe_sc, build_snapshot, build_video
from dicom_or_core.iod.waveform import build_waveform

CONVERTERS: dict[str, Callable[..., Dataset]] = {
    "waveform": build_waveform,
    "video": build_video,
    "video_lossless": build_multiframe_sc,
    "snapshot": build_snapshot,
    "pose": build_pose_sr,
}


def converter(name: str) -> Callable[..., Dataset]:
    """The builder registered under ``name``."""
    try:
        return CONVERTERS[name]
    except KeyError:
        raise DicomOrError("converter", f"unknown; known: {', '.join(CONVERTERS)}",
                           name) from None


__all__ = ["CONVERTERS", "converter"]
