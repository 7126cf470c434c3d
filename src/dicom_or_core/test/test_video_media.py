"""A recorded video instance as video/mp4: the stored coded pictures remuxed, not re-encoded
(every decoded frame of the MP4 equals the same frame decoded from the stored stream)."""

import io

import av
import numpy as np
import pytest
from dicom_or_test_common.examples import write_recorded_instances

from dicom_or_core.iod.video_media import extract_stream, is_video, render_mp4
from dicom_or_core.model.errors import DicomOrError


def decoded(source) -> list[np.ndarray]:
    with av.open(source) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def test_mp4_holds_the_stored_pictures_bit_for_bit(tmp_path):
    files = write_recorded_instances(tmp_path / "archive", frames=20)
    assert is_video(files["video"]) and not is_video(files["ecg"])
    stored = io.BytesIO()
    assert extract_stream(files["video"], stored) > 0
    stored.seek(0)
    mp4 = render_mp4(files["video"], tmp_path)
    assert mp4.read_bytes()[4:8] == b"ftyp"
    head = mp4.read_bytes()[:4096]
    assert head.find(b"moov") < head.find(b"mdat") or b"mdat" not in head, \
        "moov first (faststart): playable before the last byte"
    assert not list(tmp_path.glob("*.ts")), "the intermediate stream is removed"
    original, remuxed = decoded(stored), decoded(str(mp4))
    assert len(remuxed) == len(original) == 20
    assert all(np.array_equal(a, b) for a, b in zip(original, remuxed, strict=True))
    with av.open(str(mp4)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert abs(float(stream.duration * stream.time_base) - 20 / 30) < 0.05


def test_a_non_video_or_damaged_instance_is_refused(tmp_path):
    files = write_recorded_instances(tmp_path / "archive", frames=10)
    with pytest.raises(DicomOrError, match="not a video transfer syntax"):
        render_mp4(files["ecg"], tmp_path)
    damaged = tmp_path / "damaged.dcm"
    data = files["video"].read_bytes()
    damaged.write_bytes(data[:len(data) - 300])
    with pytest.raises(DicomOrError):
        render_mp4(damaged, tmp_path)
    assert not list(tmp_path.glob("*.ts"))
