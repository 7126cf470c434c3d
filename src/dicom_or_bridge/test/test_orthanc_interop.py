"""Orthanc with the bridge configured as a modality: it queries the bridge (C-FIND through
its REST API) and pulls an archived series into itself with C-MOVE."""

from __future__ import annotations

from pathlib import Path

import pytest
from bridge_fixtures import STUDY, VIDEO_SERIES, running_scp, write_instance
from dicom_or_test_common.peers import ORTHANC_BINARY, Orthanc, free_tcp_port

pytestmark = pytest.mark.skipif(not Path(ORTHANC_BINARY).is_file(),
                                reason="Orthanc is not installed")


def test_orthanc_queries_the_bridge_and_pulls_a_series(tmp_path):
    archive = tmp_path / "archive"
    sops = [f"1.2.826.0.1.3680043.8.498.600.{n}" for n in range(3)]
    for n, sop in enumerate(sops):
        write_instance(archive, sop=sop, number=n + 1)
    orthanc_port = free_tcp_port()
    with running_scp(archive, move_destinations={"ORTHANC": ("127.0.0.1", orthanc_port)}) \
            as scp, Orthanc(tmp_path / "orthanc", dicom_port=orthanc_port,
                            modalities={"bridge": ("DICOM_OR", "127.0.0.1", scp.port)}) \
            as orthanc:
        assert orthanc.rest("POST", "/modalities/bridge/echo", {}) == {}
        query = orthanc.rest("POST", "/modalities/bridge/query", {
            "Level": "Series",
            "Query": {"StudyInstanceUID": STUDY, "Modality": "", "SeriesDescription": "",
                      "NumberOfSeriesRelatedInstances": ""}})
        answers = orthanc.rest("GET", f"/queries/{query['ID']}/answers?expand&simplify")
        by_modality = {a["Modality"]: a for a in answers}
        assert set(by_modality) == {"ES", "ECG"}
        assert by_modality["ES"]["SeriesInstanceUID"] == VIDEO_SERIES
        assert by_modality["ES"]["NumberOfSeriesRelatedInstances"] == "3"
        index = [a["SeriesInstanceUID"] for a in answers].index(VIDEO_SERIES)
        orthanc.rest("POST", f"/queries/{query['ID']}/answers/{index}/retrieve",
                     {"TargetAet": "ORTHANC", "Synchronous": True}, timeout_s=60)
        stored = sorted(orthanc.rest("GET", f"/instances/{i}/simplified-tags")
                        ["SOPInstanceUID"] for i in orthanc.rest("GET", "/instances"))
        assert stored == sops
