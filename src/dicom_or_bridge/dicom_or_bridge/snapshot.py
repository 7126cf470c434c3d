"""A live video frame as a DICOM image (ROS-free): what a C-GET of a live video Series
returns, so any PACS viewer can show "what the endoscope sees now".

The frame becomes a Secondary Capture Image (PS3.3 A.8.1; SOP Class 1.2.840.10008.5.1.4.1.1.7)
in the stream's own Series, Conversion Type ``DV`` (digitized video): it is a capture of a
video signal, not an acquisition with the full VL Endoscopic Image IOD context.
"""

from __future__ import annotations

import datetime as _dt

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

from dicom_or_core import context as ctx
from dicom_or_core import vr
from dicom_or_core.errors import DicomOrError
from dicom_or_core.uid import new_uid

_CHANNELS = {"rgb8": 3, "bgr8": 3, "mono8": 1}


def frame_pixels(encoding: str, width: int, height: int, step: int, data: bytes) -> np.ndarray:
    """sensor_msgs/Image bytes as an (rows, columns[, 3]) uint8 RGB or grey array; a row
    ``step`` larger than width * channels (padding) is honoured, BGR is swapped to RGB."""
    if encoding not in _CHANNELS:
        raise DicomOrError("image.encoding", f"must be one of {', '.join(_CHANNELS)}",
                           encoding)
    channels = _CHANNELS[encoding]
    row_bytes = width * channels
    if width <= 0 or height <= 0 or step < row_bytes or len(data) < step * height:
        raise DicomOrError("image", "width/height/step do not match the data",
                           (width, height, step, len(data)))
    rows = np.frombuffer(data, np.uint8, count=step * height).reshape(height, step)
    pixels = rows[:, :row_bytes]
    if channels == 1:
        return np.ascontiguousarray(pixels)
    pixels = pixels.reshape(height, width, 3)
    if encoding == "bgr8":
        pixels = pixels[:, :, ::-1]
    return np.ascontiguousarray(pixels)


def snapshot_dataset(descriptor: ctx.StreamDescriptor, pixels: np.ndarray,
                     acquired: _dt.datetime | None = None,
                     instance_number: int = 1) -> Dataset:
    """A Secondary Capture instance of one frame of ``descriptor``'s stream."""
    acquired = acquired or _dt.datetime.now()
    sop_uid = new_uid()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    # PS3.3 C.12.1 SOP Common.
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = sop_uid
    now_da, now_tm = vr.format_da(_dt.datetime.now()), vr.format_tm(_dt.datetime.now())
    ds.InstanceCreationDate, ds.InstanceCreationTime = now_da, now_tm
    # Patient, General Study, General Series, General Equipment (C.7.1.1, C.7.2.1, C.7.3.1,
    # C.7.5.1) from the stream's context: the snapshot joins the live Series.
    ctx.apply_patient_module(ds, descriptor.session.patient)
    ctx.apply_general_study_module(ds, descriptor.session.study)
    ctx.apply_general_series_module(ds, descriptor)
    ctx.apply_general_equipment_module(ds, descriptor.equipment)
    # C.8.6.1 SC Equipment: a capture of a video signal.
    ds.ConversionType = "DV"
    # C.7.6.1 General Image.
    ds.InstanceNumber = instance_number
    ds.PatientOrientation = ""
    ds.ContentDate, ds.ContentTime = vr.format_da(acquired), vr.format_tm(acquired)
    ds.AcquisitionDateTime = vr.format_dt(acquired)
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.BurnedInAnnotation = "NO"
    # Laterality (0020,0060) is type 2C in General Series; written empty (unpaired/unknown).
    ds.Laterality = ""
    # C.8.6.2 SC Image.
    ds.DateOfSecondaryCapture, ds.TimeOfSecondaryCapture = now_da, now_tm
    # C.7.6.3 Image Pixel.
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    color = pixels.ndim == 3
    ds.SamplesPerPixel = 3 if color else 1
    ds.PhotometricInterpretation = "RGB" if color else "MONOCHROME2"
    if color:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()
    return ds
