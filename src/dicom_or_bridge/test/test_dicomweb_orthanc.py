"""Orthanc with its DICOMweb plugin (Debian orthanc-dicomweb) configured with the bridge as
a remote DICOMweb server: it queries the bridge with QIDO-RS through its REST API and pulls
a recorded instance with WADO-RS into itself, identical to the archived file."""

from __future__ import annotations

from pathlib import Path

import pytest
from bridge_fixtures import ECG_SERIES, STUDY, VIDEO_SERIES
from dicom_or_test_common.peers import ORTHANC_BINARY, ORTHANC_DICOMWEB_PLUGIN, Orthanc
from pydicom import dcmread
from test_dicomweb_server import TOKEN, service

pytestmark = pytest.mark.skipif(
    not (Path(ORTHANC_BINARY).is_file() and Path(ORTHANC_DICOMWEB_PLUGIN).is_file()),
    reason="Orthanc or its DICOMweb plugin is not installed")


def test_orthanc_queries_the_bridge_over_dicomweb_and_pulls_an_instance(tmp_path):
    with service(tmp_path, token=TOKEN) as svc, Orthanc(
            tmp_path / "orthanc", dicomweb=True, dicomweb_servers={"bridge": {
                "Url": svc.url + "/",
                "HttpHeaders": {"Authorization": f"Bearer {TOKEN}"}}}) as orthanc:
        series = orthanc.rest("POST", "/dicom-web/servers/bridge/qido", {
            "Uri": "/series", "Arguments": {"Modality": "ES"}})
        # Orthanc answers its own rendering of the DICOM JSON (Name, Group, Value as text).
        assert [s["0020000E"]["Value"] for s in series] == [VIDEO_SERIES]
        assert series[0]["00081190"]["Value"].startswith("ros2:/or/endoscope/frames")
        in_study = orthanc.rest("POST", "/dicom-web/servers/bridge/qido", {
            "Uri": f"/studies/{STUDY}/series"})
        assert {s["0020000E"]["Value"] for s in in_study} == {VIDEO_SERIES, ECG_SERIES}
        path = svc.files[0]
        sop = dcmread(path, stop_before_pixels=True).SOPInstanceUID
        orthanc.rest("POST", "/dicom-web/servers/bridge/retrieve", {"Resources": [
            {"Study": STUDY, "Series": VIDEO_SERIES, "Instance": sop}]}, timeout_s=60)
        (stored,) = orthanc.rest("GET", "/instances")
        assert orthanc.rest("GET", f"/instances/{stored}/simplified-tags")[
            "SOPInstanceUID"] == sop
        assert orthanc.rest("GET", f"/instances/{stored}/file") == path.read_bytes()
