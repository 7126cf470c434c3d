"""A live video frame as a DICOM image (ROS-free): what a C-GET or C-MOVE of a live video
Series returns, so any PACS viewer can show "what the endoscope sees now".

The image is built exactly as the recorder's SNAPSHOT builds it
(:func:`dicom_or_core.iod.video.build_snapshot`): a single-frame VL Endoscopic Image
(PS3.3 A.32.1) for an endoscope (Modality ES), a Secondary Capture Image (A.8.1) for other
cameras, in the stream's own Series, native RGB.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
from pydicom.dataset import Dataset

from dicom_or_core.iod.video import build_snapshot
from dicom_or_core.model import context as ctx
from dicom_or_core.model.uid import new_uid


def snapshot_dataset(descriptor: ctx.StreamDescriptor, pixels: np.ndarray, encoding: str,
                     acquired_ns: int | None = None, instance_number: int = 1) -> Dataset:
    """The frame ``pixels`` (in ``encoding``) of ``descriptor``'s stream as a new instance of
    its Series; the frame's own size wins over the descriptor's nominal geometry."""
    stream = dataclasses.replace(descriptor, rows=int(pixels.shape[0]),
                                 columns=int(pixels.shape[1]), pixel_encoding=encoding)
    return build_snapshot(stream, pixels, acquired_ns or time.time_ns(), new_uid(),
                          instance_number)
