"""A live frame as a DICOM image (VL Endoscopic for ES, else Secondary Capture): pixel
layout rules and dciodvfy."""

from __future__ import annotations

import numpy as np
import pytest
from bridge_fixtures import VIDEO_SERIES, video
from dicom_or_test_common.peers import dciodvfy, have
from pydicom import dcmread

from dicom_or_bridge.snapshot import snapshot_dataset
from dicom_or_core.model.errors import DicomOrError
from dicom_or_core.model.pixels import frame_pixels


def test_rgb_bgr_mono_and_row_padding():
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    assert (frame_pixels("rgb8", 3, 2, 9, rgb.tobytes()) == rgb).all()
    assert (frame_pixels("bgr8", 3, 2, 9, rgb.tobytes()) == rgb).all()  # own channel order
    padded = np.zeros((2, 12), np.uint8)
    padded[:, :9] = rgb.reshape(2, 9)
    assert (frame_pixels("rgb8", 3, 2, 12, padded.tobytes()) == rgb).all()
    mono = np.arange(6, dtype=np.uint8).reshape(2, 3)
    assert (frame_pixels("mono8", 3, 2, 3, mono.tobytes()) == mono).all()


@pytest.mark.parametrize("args", [("yuv422", 3, 2, 6, bytes(12)), ("rgb8", 3, 2, 9, bytes(10)),
                                  ("rgb8", 3, 2, 8, bytes(18)), ("rgb8", 0, 2, 9, bytes(18))])
def test_bad_frames_are_errors(args):
    with pytest.raises(DicomOrError):
        frame_pixels(*args)


@pytest.mark.skipif(not have("dciodvfy"), reason="dicom3tools is not installed")
@pytest.mark.parametrize("modality,sop_class", [
    ("ES", "1.2.840.10008.5.1.4.1.1.77.1.1"),   # VL Endoscopic Image
    ("XC", "1.2.840.10008.5.1.4.1.1.7"),        # Secondary Capture Image
])
def test_snapshot_is_a_valid_image_in_the_live_series(tmp_path, modality, sop_class):
    pixels = np.random.default_rng(1).integers(0, 255, (8, 6, 3), dtype=np.uint8)
    descriptor = video()
    descriptor.modality = modality
    ds = snapshot_dataset(descriptor, pixels[:, :, ::-1], "bgr8", 1_795_550_000_000_000_000)
    path = tmp_path / "snap.dcm"
    ds.save_as(path, enforce_file_format=True)
    back = dcmread(path)
    assert back.SOPClassUID == sop_class
    assert back.SeriesInstanceUID == VIDEO_SERIES and back.Modality == modality
    assert (back.Rows, back.Columns, back.PhotometricInterpretation) == (8, 6, "RGB")
    assert (back.pixel_array == pixels).all()  # BGR frame stored as RGB
    errors, lines = dciodvfy(path)
    assert errors == 0, lines
