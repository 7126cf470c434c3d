"""WADO-RS Retrieve Rendered of a recorded video instance as video/mp4 (PS3.18 8.7.4):
the stored H.264 remuxed (not re-encoded), sent as a file a browser's video element can
seek in (Range -> 206); other media types are refused with 406."""

import contextlib
import io

import av
import pytest
import requests
from dicom_or_test_common.examples import write_recorded_instances

from dicom_or_bridge.dicomweb_server import DicomWebConfig, DicomWebServer
from dicom_or_core.qr.model import ArchiveIndex, ModelStore


@contextlib.contextmanager
def serving(tmp_path):
    files = write_recorded_instances(tmp_path / "archive", frames=30)
    store = ModelStore(ArchiveIndex(tmp_path / "archive"), retrieve_ae_title="DICOM_OR",
                       archive_rescan_s=0.0)
    web = DicomWebServer(store, DicomWebConfig(port=0))
    web.start()
    try:
        yield web, files
    finally:
        web.stop()
        store.close()


def rendered_url(web, path):
    study, series, sop = path.parent.parent.name, path.parent.name, path.stem
    return f"{web.base_url}/studies/{study}/series/{series}/instances/{sop}/rendered"


def test_video_instance_rendered_as_mp4_with_ranges(tmp_path):
    with serving(tmp_path) as (web, files):
        url = rendered_url(web, files["video"])
        whole = requests.get(url, headers={"Accept": "video/mp4"}, timeout=30)
        assert whole.status_code == 200, whole.text
        assert whole.headers["Content-Type"] == "video/mp4"
        assert whole.content[4:8] == b"ftyp"
        with av.open(io.BytesIO(whole.content)) as container:
            assert len(list(container.decode(video=0))) == 30
        part = requests.get(url, headers={"Accept": "*/*", "Range": "bytes=100-199"},
                            timeout=30)
        assert part.status_code == 206
        assert part.content == whole.content[100:200]
        # The player asks again and again: the same (cached) file answers.
        again = requests.get(url, timeout=30)
        assert again.content == whole.content


@pytest.mark.parametrize("accept", ["image/jpeg", "video/mpeg2", "application/dicom"])
def test_video_instance_in_another_media_type_is_406(tmp_path, accept):
    with serving(tmp_path) as (web, files):
        answer = requests.get(rendered_url(web, files["video"]), headers={"Accept": accept},
                              timeout=30)
        assert answer.status_code == 406
        assert "video/mp4" in answer.text


def test_waveform_instance_is_not_rendered_as_video(tmp_path):
    with serving(tmp_path) as (web, files):
        answer = requests.get(rendered_url(web, files["ecg"]),
                              headers={"Accept": "video/mp4"}, timeout=30)
        assert answer.status_code == 406
