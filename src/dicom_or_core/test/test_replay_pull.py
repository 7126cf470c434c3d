"""Pulling a recorded study by C-GET (an in-process pynetdicom Query/Retrieve SCP on a free
port serving a recording): the files land in the recorder's layout element for element and replay
like the original; an unknown study, an unreachable PACS: one error naming ``pacs``."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from dicom_or_test_common.peers import free_tcp_port
from pynetdicom import AE, StoragePresentationContexts, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet
from test_replay_sources import recording  # noqa: F401 (the module fixture)

from dicom_or_core.model.errors import DicomOrError
from dicom_or_core.replay.pull import REQUESTED_CLASSES, TRANSFER_SYNTAXES, pull_study
from dicom_or_core.replay.sources import load_study


@pytest.fixture
def pacs(recording):  # noqa: F811
    """A C-GET SCP (AE PACS) holding the recording's instances."""
    files = sorted(Path(recording["root"]).rglob("*.dcm"))

    def on_get(event):
        uid = str(event.identifier.StudyInstanceUID)
        matches = [p for p in files if p.parts[-3] == uid]
        yield len(matches)
        for path in matches:
            if event.is_cancelled:
                yield 0xFE00, None
                return
            yield 0xFF00, pydicom.dcmread(path)

    ae = AE(ae_title="PACS")
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelGet)
    for context in StoragePresentationContexts:
        if context.abstract_syntax in REQUESTED_CLASSES:
            ae.add_supported_context(context.abstract_syntax, TRANSFER_SYNTAXES,
                                     scu_role=True, scp_role=True)
    port = free_tcp_port()
    server = ae.start_server(("127.0.0.1", port), block=False,
                             evt_handlers=[(evt.EVT_C_GET, on_get)])
    try:
        yield port, files
    finally:
        server.shutdown()


def test_a_study_is_pulled_file_for_file_and_replays(pacs, recording, tmp_path):  # noqa: F811
    port, files = pacs
    study_uid = recording["session"].study.study_instance_uid
    result = pull_study("127.0.0.1", port, "PACS", study_uid, tmp_path / "pulled")
    # Every instance of the study, the video's snapshot included.
    assert len(result.files) == len(files) == result.completed and result.status == 0
    for original in files:
        copy = tmp_path / "pulled" / original.relative_to(recording["root"])
        assert copy.is_file()
        assert pydicom.dcmread(original) == pydicom.dcmread(copy)  # Pixel Data included
    original, pulled = load_study(recording["root"]), load_study(tmp_path / "pulled")
    assert [s.descriptor for s in original.series] == [s.descriptor for s in pulled.series]


def test_unknown_study_or_absent_pacs_is_one_error(pacs, tmp_path):
    port, _ = pacs
    with pytest.raises(DicomOrError, match="pacs: C-GET of the study ended with status"):
        pull_study("127.0.0.1", port, "PACS", "1.2.3.4", tmp_path)
    with pytest.raises(DicomOrError, match="pacs: cannot pull the study"):
        pull_study("127.0.0.1", free_tcp_port(), "PACS", "1.2.3.4", tmp_path, timeout_s=2)
    with pytest.raises(DicomOrError, match="study_instance_uid"):
        pull_study("127.0.0.1", port, "PACS", "", tmp_path)


def test_a_study_is_pulled_from_orthanc_and_replays(recording, tmp_path):  # noqa: F811
    """End to end against a real PACS: Orthanc's C-GET SCP."""
    import urllib.request

    from dicom_or_test_common.peers import Orthanc

    with Orthanc(tmp_path / "orthanc") as orthanc:
        for path in sorted(Path(recording["root"]).rglob("*.dcm")):
            request = urllib.request.Request(
                f"http://127.0.0.1:{orthanc.http_port}/instances", data=path.read_bytes(),
                method="POST")
            with urllib.request.urlopen(request, timeout=30) as response:
                assert response.status == 200
        study_uid = recording["session"].study.study_instance_uid
        result = pull_study("127.0.0.1", orthanc.dicom_port, orthanc.aet, study_uid,
                            tmp_path / "pulled")
    original, pulled = load_study(recording["root"]), load_study(tmp_path / "pulled")
    assert len(result.files) == sum(len(s.instances) for s in original.series) + 1
    assert result.failed == 0
    assert [s.descriptor for s in original.series] == [s.descriptor for s in pulled.series]
    first = next(s for s in pulled.series if s.descriptor.modality == "ES")
    assert len(list(first.samples())) == len(list(original.series[
        [s.descriptor.modality for s in original.series].index("ES")].samples()))
