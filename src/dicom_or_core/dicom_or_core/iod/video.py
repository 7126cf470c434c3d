"""Video streams -> Video Endoscopic / Video Photographic Image (PS3.3 A.32.5, A.32.7),
Multi-frame True Color Secondary Capture (A.8.5, lossless mode), and snapshots -> VL
Endoscopic Image (A.32.1) or Secondary Capture (A.8.1).

Compressed video: the MPEG-2 Transport Stream from :mod:`dicom_or_core.iod.codec` is the
whole Pixel Data, encapsulated (PS3.5 A.4) in fragments of at most ``FRAGMENT_BYTES`` with an
empty Basic Offset Table, as PS3.5 8.2.7/8.2.8 require for video (one "frame" = the stream).
The image attributes describe the stream (PS3.5 8.2.7): YBR_PARTIAL_420, 3 samples, 8 bits,
Rows/Columns of the coded picture, NumberOfFrames = frames in the stream.

Frame timing (PS3.3 C.7.6.5 Cine Module): each frame's acquisition stamp, relative to the
first frame, whose stamp is the instance's Acquisition DateTime. When every frame lies within
0.5 ms of a uniform grid the timing is Frame Time (0018,1063); otherwise (a dropped frame, a
jittery source) Frame Time Vector (0018,1065) holds every increment, so a lost frame shows as
a longer increment instead of shifting every later frame.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.valuerep import DSfloat
from pynetdicom.sop_class import (
    MultiFrameTrueColorSecondaryCaptureImageStorage,
    SecondaryCaptureImageStorage,
    VideoEndoscopicImageStorage,
    VideoPhotographicImageStorage,
    VLEndoscopicImageStorage,
)

from dicom_or_core.iod.bulk import FRAGMENT_BYTES
from dicom_or_core.iod.codec import CodecChoice
from dicom_or_core.iod.common import (
    apply_instance_context,
    concept_item,
    drop_frame_of_reference,
    new_dataset,
    require_kind,
)
from dicom_or_core.model.context import KIND_VIDEO, StreamDescriptor
from dicom_or_core.model.errors import DicomOrError

VIDEO_ENDOSCOPIC = VideoEndoscopicImageStorage
VIDEO_PHOTOGRAPHIC = VideoPhotographicImageStorage
VL_ENDOSCOPIC = VLEndoscopicImageStorage
SECONDARY_CAPTURE = SecondaryCaptureImageStorage
MULTIFRAME_TRUE_COLOR_SC = MultiFrameTrueColorSecondaryCaptureImageStorage
# Pixel Data of a native multi-frame instance must stay below 2^32 - 2 bytes (PS3.5 7.1.1).
MAX_NATIVE_PIXEL_BYTES = 2**32 - 2
FRAME_TIME = 0x00181063
FRAME_TIME_VECTOR = 0x00181065


def video_sop_class(stream: StreamDescriptor) -> str:
    """Video Endoscopic for Modality ES, Video Photographic for every other camera."""
    return VIDEO_ENDOSCOPIC if stream.modality == "ES" else VIDEO_PHOTOGRAPHIC


def frame_timing(stamps_ns: Sequence[int], nominal_rate_hz: float) -> dict[str, object]:
    """Cine Module timing of frames acquired at ``stamps_ns`` (ascending).

    Returns FrameTime or FrameTimeVector (ms), the FrameIncrementPointer, CineRate and
    ActualFrameDuration. Increments come from rounded absolute offsets, so the cumulative
    time of frame i is its stamp to within 1 microsecond.
    """
    n = len(stamps_ns)
    if n == 0:
        raise DicomOrError("frames", "an instance needs at least one frame")
    if any(b <= a for a, b in zip(stamps_ns[:-1], stamps_ns[1:], strict=True)):
        raise DicomOrError("frames", "frame stamps must increase strictly")
    offsets_ms = [round((t - stamps_ns[0]) / 1e6, 3) for t in stamps_ns]
    if n > 1:
        period = offsets_ms[-1] / (n - 1)
    else:
        period = 1000.0 / nominal_rate_hz
    timing: dict[str, object] = {
        "CineRate": max(1, round(1000.0 / period)),
        "ActualFrameDuration": max(1, round(period)),
    }
    uniform = all(abs(off - i * period) < 0.5 for i, off in enumerate(offsets_ms))
    if uniform:
        timing["FrameTime"] = DSfloat(round(period, 6), auto_format=True)
        timing["FrameIncrementPointer"] = FRAME_TIME
    else:
        increments = [0.0] + [round(b - a, 3) for a, b in zip(offsets_ms[:-1], offsets_ms[1:],
                                                                strict=True)]
        timing["FrameTimeVector"] = [DSfloat(v, auto_format=True) for v in increments]
        timing["FrameIncrementPointer"] = FRAME_TIME_VECTOR
    return timing


def frame_offsets_ms(ds: Dataset) -> list[float]:
    """Each frame's time (ms) from the first frame, from the Cine Module (the inverse of
    :func:`frame_timing`)."""
    n = int(ds.NumberOfFrames)
    if "FrameTimeVector" in ds:
        vector = [float(v) for v in ds.FrameTimeVector]
        return list(np.cumsum(vector))
    return [i * float(ds.FrameTime) for i in range(n)]


# PS3.16 Annex L / CID 4031: Body Part Examined (CS) -> SNOMED CT anatomic region, from
# pydicom's code dictionary. Two stay the project's own because the dictionary differs and
# recorded instances must keep their codes: pydicom 3.0.2 has Chest as 816094009 (a later
# PS3.16 edition; 51185008 is what every instance so far carries) and 89837001 with the
# meaning "Bladder" (kept: "Urinary bladder").
ANATOMIC_REGIONS: dict[str, Code] = {
    "ABDOMEN": codes.SCT.Abdomen, "CHEST": Code("51185008", "SCT", "Chest"),
    "PELVIS": codes.SCT.Pelvis, "HEAD": codes.SCT.Head, "NECK": codes.SCT.Neck,
    "KNEE": codes.SCT.Knee, "SHOULDER": codes.SCT.Shoulder, "HIP": codes.SCT.Hip,
    "SPINE": codes.SCT.Spine, "COLON": codes.SCT.Colon, "STOMACH": codes.SCT.Stomach,
    "BLADDER": Code("89837001", "SCT", "Urinary bladder"), "UTERUS": codes.SCT.Uterus,
    "LARYNX": codes.SCT.Larynx,
}
WHOLE_BODY = codes.SCT.EntireBody


def apply_vl_anatomy(ds: Dataset, stream: StreamDescriptor) -> None:
    """Anatomic Region Sequence (0008,2218), type 1C in the VL Image Module (PS3.3 C.8.12.1)
    for video, from Body Part
    Examined; a stream that does not name its body part is recorded as "Entire body" (the
    only region that is never wrong)."""
    region = ANATOMIC_REGIONS.get(stream.body_part_examined, WHOLE_BODY)
    # Laterality then belongs to the region's modifiers, not General Series (none known).
    ds.AnatomicRegionSequence = [concept_item(region)]


def apply_unknown_laterality(ds: Dataset, stream: StreamDescriptor) -> None:
    """Laterality (0020,0060), General Series type 2C: required (here empty, unknown) when
    the stream does not name an unpaired Body Part Examined."""
    if not stream.body_part_examined:
        ds.Laterality = ""


def _image_pixel_ybr(ds: Dataset, stream: StreamDescriptor) -> None:
    # PS3.3 C.7.6.3 Image Pixel Module, values PS3.5 8.2.7 requires for MPEG-4 / HEVC /
    # MPEG-2 4:2:0 streams.
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "YBR_PARTIAL_420"
    ds.PlanarConfiguration = 0
    ds.Rows = stream.rows
    ds.Columns = stream.columns
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0


def _apply_timing(ds: Dataset, stamps_ns: Sequence[int], rate: float,
                  constant_rate: bool = False) -> None:
    # PS3.3 C.7.6.6 Multi-frame Module and C.7.6.5 Cine Module.
    ds.NumberOfFrames = len(stamps_ns)
    if constant_rate:
        # MPEG-2 (PS3.5 8.2.5): 25 or 30 Hz, Frame Time 40 or 33.3 ms. The recorder fills a
        # dropped frame's slot by repeating the previous frame, so the grid holds.
        pal = abs(rate - 25.0) < 0.01
        ds.FrameTime = "40" if pal else "33.3"
        ds.FrameIncrementPointer = FRAME_TIME
        ds.CineRate = 25 if pal else 30
        ds.ActualFrameDuration = 40 if pal else 33
    else:
        for keyword, value in frame_timing(stamps_ns, rate).items():
            setattr(ds, keyword, value)
    ds.RecommendedDisplayFrameRate = ds.CineRate
    ds.PreferredPlaybackSequencing = 0  # looping


def build_video(stream: StreamDescriptor, bitstream: bytes, choice: CodecChoice,
                stamps_ns: Sequence[int], sop_instance_uid: str, instance_number: int = 1,
                created_ns: int | None = None) -> Dataset:
    """A Video Endoscopic (ES) / Video Photographic Image instance of an encoded stream
    whose frames were acquired at ``stamps_ns``, Pixel Data in memory (see
    :func:`video_header` for the file-to-file form the recorder uses)."""
    ds = video_header(stream, len(bitstream), choice, stamps_ns, sop_instance_uid,
                      instance_number, created_ns)
    fragments = max(1, math.ceil(len(bitstream) / FRAGMENT_BYTES))
    # One "frame" (the whole stream) split into fragments, empty Basic Offset Table.
    ds.PixelData = encapsulate([bitstream], fragments_per_frame=fragments, has_bot=False)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return ds


def video_header(stream: StreamDescriptor, bitstream_bytes: int, choice: CodecChoice,
                 stamps_ns: Sequence[int], sop_instance_uid: str, instance_number: int = 1,
                 created_ns: int | None = None) -> Dataset:
    """Every attribute of a video instance but Pixel Data, for a stream of
    ``bitstream_bytes`` bytes (Pixel Data then follows from the stream's file, see
    :class:`dicom_or_core.iod.bulk.EncapsulatedFile`)."""
    require_kind(stream, KIND_VIDEO, "video")
    if bitstream_bytes <= 0:
        raise DicomOrError("bitstream", "an instance needs an encoded stream")
    ds = new_dataset(video_sop_class(stream), sop_instance_uid, choice.transfer_syntax_uid)
    apply_instance_context(ds, stream, instance_number, stamps_ns[0], created_ns)
    drop_frame_of_reference(ds)
    apply_vl_anatomy(ds, stream)
    # PS3.3 C.7.6.1 General Image Module: Patient Orientation is type 2C (no patient
    # axes in an endoscope picture): empty.
    ds.PatientOrientation = ""
    # PS3.3 C.8.12.1 VL Image Module.
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.LossyImageCompression = "01"
    raw_bytes = len(stamps_ns) * stream.rows * stream.columns * 3
    ds.LossyImageCompressionRatio = DSfloat(round(raw_bytes / bitstream_bytes, 2),
                                            auto_format=True)
    ds.LossyImageCompressionMethod = choice.compression_method
    _image_pixel_ybr(ds, stream)
    _apply_timing(ds, stamps_ns, stream.nominal_rate_hz, choice.name == "mpeg2")
    # PS3.3 C.7.6.14 Acquisition Context Module (type 2, empty).
    ds.AcquisitionContextSequence = []
    return ds


def _rgb(image: np.ndarray, encoding: str) -> np.ndarray:
    if encoding == "bgr8":
        return np.ascontiguousarray(image[..., ::-1])
    if encoding == "mono8":
        return np.repeat(image[..., None], 3, axis=2)
    return np.ascontiguousarray(image)


def _native_rgb_pixel(ds: Dataset, rows: int, columns: int) -> None:
    # PS3.3 C.7.6.3 Image Pixel Module for native 8-bit RGB, colour-by-pixel.
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0


def build_multiframe_sc(stream: StreamDescriptor, frames: Sequence[np.ndarray],
                        stamps_ns: Sequence[int], sop_instance_uid: str,
                        instance_number: int = 1, created_ns: int | None = None) -> Dataset:
    """Lossless mode: Multi-frame True Color Secondary Capture (PS3.3 A.8.5), native RGB,
    Explicit VR Little Endian, frame timing as for compressed video; Pixel Data in memory
    (see :func:`multiframe_sc_header` for the file-to-file form)."""
    if len(frames) != len(stamps_ns) or not frames:
        raise DicomOrError("frames", "needs one stamp per frame and at least one frame")
    ds = multiframe_sc_header(stream, stamps_ns, sop_instance_uid, instance_number,
                              created_ns)
    ds.PixelData = b"".join(rgb_bytes(f, stream.pixel_encoding) for f in frames)
    return ds


def rgb_bytes(image: np.ndarray, encoding: str) -> bytes:
    """One frame as native RGB colour-by-pixel bytes."""
    return _rgb(image, encoding).tobytes()


def multiframe_sc_header(stream: StreamDescriptor, stamps_ns: Sequence[int],
                         sop_instance_uid: str, instance_number: int = 1,
                         created_ns: int | None = None) -> Dataset:
    """Every attribute of a lossless multi-frame instance of ``len(stamps_ns)`` frames but
    Pixel Data (which follows with :class:`dicom_or_core.iod.bulk.NativeFrames`)."""
    require_kind(stream, KIND_VIDEO, "video")
    if not stamps_ns:
        raise DicomOrError("frames", "an instance needs at least one frame")
    nbytes = len(stamps_ns) * stream.rows * stream.columns * 3
    if nbytes > MAX_NATIVE_PIXEL_BYTES:
        raise DicomOrError("frames", "native Pixel Data must stay below 4 GiB; cut the "
                           "segment shorter", nbytes)
    ds = new_dataset(MULTIFRAME_TRUE_COLOR_SC, sop_instance_uid, ExplicitVRLittleEndian)
    apply_instance_context(ds, stream, instance_number, stamps_ns[0], created_ns)
    drop_frame_of_reference(ds)
    ds.PatientOrientation = ""
    apply_unknown_laterality(ds, stream)
    # PS3.3 C.8.6.1 SC Equipment Module: frames came over a digital interface.
    ds.ConversionType = "DI"
    # PS3.3 C.8.6.3 SC Multi-frame Image Module.
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.BurnedInAnnotation = "NO"
    _native_rgb_pixel(ds, stream.rows, stream.columns)
    _apply_timing(ds, stamps_ns, stream.nominal_rate_hz)
    return ds


def build_snapshot(stream: StreamDescriptor, image: np.ndarray, stamp_ns: int,
                   sop_instance_uid: str, instance_number: int = 1,
                   created_ns: int | None = None) -> Dataset:
    """One frame as VL Endoscopic Image (Modality ES, PS3.3 A.32.1) or Secondary Capture
    Image (A.8.1) for other sources; native RGB, lossless."""
    require_kind(stream, KIND_VIDEO, "video")
    endoscopic = stream.modality == "ES"
    ds = new_dataset(VL_ENDOSCOPIC if endoscopic else SECONDARY_CAPTURE, sop_instance_uid)
    apply_instance_context(ds, stream, instance_number, stamp_ns, created_ns)
    drop_frame_of_reference(ds)
    ds.PatientOrientation = ""
    apply_unknown_laterality(ds, stream)
    ds.ImageType = ["ORIGINAL", "PRIMARY"] if endoscopic else ["DERIVED", "SECONDARY"]
    if endoscopic:
        # PS3.3 C.8.12.1 VL Image Module; C.7.6.14 Acquisition Context (type 2, empty).
        ds.LossyImageCompression = "00"
        ds.AcquisitionContextSequence = []
    else:
        # PS3.3 C.8.6.1 SC Equipment Module.
        ds.ConversionType = "DI"
    _native_rgb_pixel(ds, stream.rows, stream.columns)
    ds.PixelData = _rgb(image, stream.pixel_encoding).tobytes()
    return ds
