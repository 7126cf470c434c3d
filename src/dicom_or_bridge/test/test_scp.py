"""The bridge SCP in-process on a free port, driven by a pynetdicom SCU: services, failure
statuses for malformed and hostile requests, limits, allow-lists and TLS."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from bridge_fixtures import (
    ECG_SERIES,
    PATIENT_ID,
    STUDY,
    VIDEO_SERIES,
    running_scp,
    self_signed_cert,
    write_instance,
)
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import MPEG4HP41, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, StoragePresentationContexts, build_context, build_role, evt
from pynetdicom import sop_class as sc
from pynetdicom.dsutils import split_dataset
from pynetdicom.pdu_primitives import SOPClassExtendedNegotiation

from dicom_or_core.model.errors import DicomOrError
from dicom_or_core.model.ros2_uri import parse

pytestmark = [pytest.mark.filterwarnings("ignore:Invalid value for VR"),
              pytest.mark.filterwarnings("ignore::UserWarning:pydicom")]

STUDY_FIND = sc.StudyRootQueryRetrieveInformationModelFind
PATIENT_FIND = sc.PatientRootQueryRetrieveInformationModelFind


def ident(**kw) -> Dataset:
    ds = Dataset()
    for key, value in kw.items():
        setattr(ds, key, value)
    return ds


def scu(*contexts, ae_title="TEST_SCU") -> AE:
    ae = AE(ae_title=ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    for uid in contexts or (sc.Verification, STUDY_FIND, PATIENT_FIND):
        ae.add_requested_context(uid)
    return ae


def find(port, identifier, model=STUDY_FIND, ae_title="TEST_SCU", ext=None, **assoc_kw):
    """(final status, [answers]) of one C-FIND."""
    ae = scu(sc.Verification, model, ae_title=ae_title)
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOM_OR", ext_neg=ext, **assoc_kw)
    assert assoc.is_established, "association refused"
    answers, final = [], None
    try:
        for status, answer in assoc.send_c_find(identifier, model):
            assert status, "no response (timeout or abort)"
            if status.Status in (0xFF00, 0xFF01):
                answers.append(answer)
            else:
                final = status
    finally:
        assoc.release()
    return final, answers


def echo_ok(port, **kw) -> bool:
    assoc = scu(sc.Verification).associate("127.0.0.1", port, ae_title="DICOM_OR", **kw)
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return bool(status) and status.Status == 0
    finally:
        assoc.release()


def test_echo_and_port_zero_binds_a_real_port():
    with running_scp() as scp:
        assert scp.port > 0
        assert echo_ok(scp.port)


def test_series_find_returns_live_streams_with_ros2_uri():
    with running_scp() as scp:
        status, answers = find(scp.port, ident(
            QueryRetrieveLevel="SERIES", StudyInstanceUID=STUDY, Modality="", RetrieveURL="",
            Rows="", Columns="", RecommendedDisplayFrameRate="", SamplingFrequency="",
            NumberOfWaveformChannels="", SeriesDescription="", Manufacturer=""))
    assert status.Status == 0x0000
    by_uid = {a.SeriesInstanceUID: a for a in answers}
    assert set(by_uid) == {VIDEO_SERIES, ECG_SERIES}
    video, ecg = by_uid[VIDEO_SERIES], by_uid[ECG_SERIES]
    assert (video.Modality, video.Rows, video.Columns, video.RecommendedDisplayFrameRate) == \
        ("ES", 1080, 1920, 30)
    assert video.Manufacturer == "ACME"
    uri = parse(video.RetrieveURL)
    assert (uri.topic, uri.message_type, uri.qos_profile) == \
        ("/or/endoscope/frames", "dicom_or_msgs/msg/ImageFrame", "video")
    assert (ecg.Modality, float(ecg.SamplingFrequency), ecg.NumberOfWaveformChannels) == \
        ("ECG", 500.0, 3)
    assert ecg.SpecificCharacterSet == "ISO_IR 192"
    assert "PatientName" not in ecg  # only requested keys


def test_patient_root_every_level():
    with running_scp() as scp:
        _, patients = find(scp.port, ident(QueryRetrieveLevel="PATIENT", PatientName="doe*"),
                           PATIENT_FIND)
        _, studies = find(scp.port, ident(QueryRetrieveLevel="STUDY", PatientID=PATIENT_ID,
                                          StudyInstanceUID="", ModalitiesInStudy=""),
                          PATIENT_FIND)
        _, series = find(scp.port, ident(QueryRetrieveLevel="SERIES", PatientID=PATIENT_ID,
                                         StudyInstanceUID=STUDY, Modality="ECG"),
                         PATIENT_FIND)
    assert [p.PatientID for p in patients] == [PATIENT_ID]
    assert [s.StudyInstanceUID for s in studies] == [STUDY]
    assert list(studies[0].ModalitiesInStudy) == ["ECG", "ES"]
    assert [s.SeriesInstanceUID for s in series] == [ECG_SERIES]


def test_image_level_from_archive(tmp_path):
    write_instance(tmp_path, sop="1.2.3.4.100", number=7)
    with running_scp(tmp_path) as scp:
        status, images = find(scp.port, ident(QueryRetrieveLevel="IMAGE",
                                              StudyInstanceUID=STUDY,
                                              SeriesInstanceUID=VIDEO_SERIES,
                                              InstanceNumber="", SOPClassUID=""))
    assert status.Status == 0
    assert [(i.SOPInstanceUID, i.InstanceNumber) for i in images] == [("1.2.3.4.100", 7)]


def test_utf8_query_and_answer():
    from bridge_fixtures import video
    stream = video(name="Müller^Jörg")
    with running_scp(streams=[stream]) as scp:
        query = ident(QueryRetrieveLevel="STUDY", PatientName="MÜLLER*", PatientID="")
        query.SpecificCharacterSet = "ISO_IR 192"
        status, answers = find(scp.port, query)
    assert status.Status == 0
    assert [str(a.PatientName) for a in answers] == ["Müller^Jörg"]


def test_series_query_without_study_uid_answers_over_every_study():
    """Open upper levels (like Orthanc, without relational negotiation): the ES series of
    every study; a malformed upper-level key is still refused."""
    from bridge_fixtures import ecg, video
    other_study = video(uid="1.2.826.0.1.3680043.8.498.77.1", topic="/or/other/frames",
                        study_uid="1.2.826.0.1.3680043.8.498.77")
    with running_scp(streams=[video(), ecg(), other_study]) as scp:
        status, answers = find(scp.port, ident(QueryRetrieveLevel="SERIES", Modality="ES",
                                               StudyInstanceUID=""))
        assert status.Status == 0
        assert sorted(a.StudyInstanceUID for a in answers) == sorted(
            [STUDY, "1.2.826.0.1.3680043.8.498.77"])
        status, answers = find(scp.port, ident(QueryRetrieveLevel="SERIES",
                                               StudyInstanceUID="1.2.*"))
        assert status.Status == 0xA900 and answers == []


def test_relational_and_combined_datetime_by_extended_negotiation():
    with running_scp() as scp:
        item = SOPClassExtendedNegotiation()
        item.sop_class_uid = STUDY_FIND
        item.service_class_application_information = b"\x01\x01"
        status, answers = find(scp.port, ident(QueryRetrieveLevel="SERIES", Modality="ES",
                                               StudyDate="20241123-20241124",
                                               StudyTime="2200-0900"), ext=[item])
    assert status.Status == 0
    assert [a.Modality for a in answers] == ["ES"]


@pytest.mark.parametrize("identifier, status", [
    (ident(StudyInstanceUID=STUDY), 0xA900),                          # no level
    (ident(QueryRetrieveLevel="FRAME", StudyInstanceUID=STUDY), 0xA900),
    (ident(QueryRetrieveLevel="PATIENT"), 0xA900),                      # not in Study Root
    (ident(QueryRetrieveLevel="SERIES", StudyInstanceUID="1.2.*"), 0xA900),  # UID wildcard
    (ident(QueryRetrieveLevel="STUDY", StudyDate="2024-99-99"), 0xA900),  # invalid DA
    (ident(QueryRetrieveLevel="STUDY", StudyInstanceUID="1.2.x"), 0xA900),  # invalid UI
])
def test_bad_identifiers_get_failure_statuses_and_bridge_keeps_answering(identifier, status):
    with running_scp() as scp:
        final, answers = find(scp.port, identifier)
        assert answers == []
        assert final.Status == status
        assert final.get("ErrorComment")
        assert echo_ok(scp.port)


def test_oversized_identifier_is_refused():
    with running_scp(max_identifier_bytes=4096) as scp:
        final, _ = find(scp.port, ident(QueryRetrieveLevel="STUDY",
                                        StudyDescription="x" * 60,
                                        PatientComments="y" * 20000))
        assert final.Status == 0xC000
        assert echo_ok(scp.port)


def test_unknown_sop_class_is_not_accepted_and_bridge_keeps_answering():
    with running_scp() as scp:
        ae = scu(sc.ModalityWorklistInformationFind)
        assoc = ae.associate("127.0.0.1", scp.port, ae_title="DICOM_OR")
        if assoc.is_established:
            assert assoc.accepted_contexts == []
            with pytest.raises(ValueError):
                next(assoc.send_c_find(ident(PatientName="*"),
                                       sc.ModalityWorklistInformationFind))
            assoc.release()
        assert echo_ok(scp.port)


def test_peer_dropping_mid_association_and_garbage_pdus():
    with running_scp() as scp:
        # Half an A-ASSOCIATE-RQ, then the peer vanishes.
        with socket.create_connection(("127.0.0.1", scp.port), timeout=5) as sock:
            sock.sendall(b"\x01\x00\x00\x00\x00\xcd\x00\x01")
        # Garbage that is no PDU at all.
        with socket.create_connection(("127.0.0.1", scp.port), timeout=5) as sock:
            sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
            sock.settimeout(5)
            try:
                reply = sock.recv(64)  # an A-ABORT or a closed connection, never a hang
            except OSError:
                reply = b""
            assert reply == b"" or reply[:1] == b"\x07"
        # An established association whose peer closes the socket during a C-FIND.
        ae = scu(STUDY_FIND)
        assoc = ae.associate("127.0.0.1", scp.port, ae_title="DICOM_OR")
        assert assoc.is_established
        assoc.dul.socket.socket.close()
        assoc.abort()
        assert echo_ok(scp.port)


def test_fifty_concurrent_associations_all_answered():
    barrier = threading.Barrier(50, timeout=30)

    def one(port):
        ae = scu(STUDY_FIND)
        assoc = ae.associate("127.0.0.1", port, ae_title="DICOM_OR")
        if not assoc.is_established:
            return -1
        try:
            barrier.wait()  # all 50 associations are open at the same time
            found = [a for s, a in assoc.send_c_find(
                ident(QueryRetrieveLevel="SERIES", StudyInstanceUID=STUDY, Modality=""),
                STUDY_FIND) if s and s.Status == 0xFF00]
            return len(found)
        finally:
            assoc.release()

    with running_scp(max_associations=64) as scp, ThreadPoolExecutor(50) as pool:
        results = list(pool.map(one, [scp.port] * 50))
    assert results == [2] * 50


def test_max_associations_rejects_the_extra_one():
    with running_scp(max_associations=1) as scp:
        ae = scu(sc.Verification)
        first = ae.associate("127.0.0.1", scp.port, ae_title="DICOM_OR")
        assert first.is_established
        second = scu(sc.Verification).associate("127.0.0.1", scp.port, ae_title="DICOM_OR")
        assert second.is_rejected
        first.release()
        assert echo_ok(scp.port)


def test_calling_ae_and_host_allow_lists(caplog):
    # pynetdicom's AE.require_calling_aet holds the list; titles compare without the
    # non-significant spaces (PS3.5 6.2 AE).
    with running_scp(allowed_calling_ae_titles=["GOOD_SCU ", "OTHER"]) as scp:
        ok = scu(sc.Verification, ae_title="GOOD_SCU").associate("127.0.0.1", scp.port,
                                                                  ae_title="DICOM_OR")
        assert ok.is_established
        ok.release()
        with caplog.at_level("WARNING", logger="test.scp"):
            bad = scu(sc.Verification, ae_title="EVIL").associate("127.0.0.1", scp.port,
                                                                  ae_title="DICOM_OR")
            assert bad.is_rejected
            # rejected-permanent, service-user, calling AE title not recognised
            rj = bad.acceptor.primitive
            assert (rj.result, rj.result_source, rj.diagnostic) == (1, 1, 3)
            # The acceptor logs once the reject is on its way: wait for it, bounded.
            deadline = time.monotonic() + 5.0
            while scp.rejected < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
        assert scp.rejected == 1
        assert any("EVIL" in r.getMessage() and "allow-list" in r.getMessage()
                   for r in caplog.records)
    with running_scp(allowed_hosts=["10.1.2.3"]) as scp:
        # Closed at accept, before any PDU (dicom_or_bridge.server; test_server.py).
        bad = scu(sc.Verification).associate("127.0.0.1", scp.port, ae_title="DICOM_OR")
        assert not bad.is_established


def test_calling_ae_allow_list_entry_that_is_no_ae_title_fails_start():
    with pytest.raises(DicomOrError) as raised:
        with running_scp(allowed_calling_ae_titles=["GOOD_SCU", "A_TITLE_OF_20_CHARS"]):
            pass
    assert raised.value.field == "allowed_calling_ae_titles"


def test_tls(tmp_path):
    cert, key = self_signed_cert(tmp_path)
    with running_scp(tls_cert=str(cert), tls_key=str(key)) as scp:
        client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
        assert echo_ok(scp.port, tls_args=(client, "localhost"))
        # A plain-TCP peer gets nothing.
        assert not echo_ok(scp.port)
        # A TLS client that does not trust the certificate fails the handshake.
        untrusting = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        assert not echo_ok(scp.port, tls_args=(untrusting, "localhost"))


def test_c_get_series_and_image(tmp_path):
    sops = [f"1.2.3.4.{n}" for n in range(3)]
    for n, sop in enumerate(sops):
        write_instance(tmp_path, sop=sop, number=n + 1)
    received = []

    def on_store(event):
        received.append(event.dataset.SOPInstanceUID)
        return 0x0000

    with running_scp(tmp_path) as scp:
        ae = scu(sc.StudyRootQueryRetrieveInformationModelGet)
        ae.add_requested_context(sc.SecondaryCaptureImageStorage)
        role = build_role(sc.SecondaryCaptureImageStorage, scp_role=True)
        assoc = ae.associate("127.0.0.1", scp.port, ae_title="DICOM_OR", ext_neg=[role],
                             evt_handlers=[(evt.EVT_C_STORE, on_store)])
        assert assoc.is_established
        statuses = [s.Status for s, _ in assoc.send_c_get(
            ident(QueryRetrieveLevel="SERIES", StudyInstanceUID=STUDY,
                  SeriesInstanceUID=VIDEO_SERIES),
            sc.StudyRootQueryRetrieveInformationModelGet)]
        assert statuses[-1] == 0x0000
        assert sorted(received) == sorted(sops)
        received.clear()
        statuses = [s.Status for s, _ in assoc.send_c_get(
            ident(QueryRetrieveLevel="IMAGE", StudyInstanceUID=STUDY,
                  SeriesInstanceUID=VIDEO_SERIES, SOPInstanceUID=sops[1]),
            sc.StudyRootQueryRetrieveInformationModelGet)]
        assert statuses[-1] == 0x0000 and received == [sops[1]]
        statuses = [s.Status for s, _ in assoc.send_c_get(
            ident(QueryRetrieveLevel="SERIES", StudyInstanceUID=STUDY),
            sc.StudyRootQueryRetrieveInformationModelGet)]
        assert statuses[-1] == 0xA900
        assoc.release()


def test_c_move_to_configured_destination_and_unknown_destination(tmp_path):
    sops = [f"1.2.3.5.{n}" for n in range(2)]
    for sop in sops:
        write_instance(tmp_path, sop=sop)
    received = []
    store_ae = AE(ae_title="STORE_SCP")
    for context in StoragePresentationContexts:
        store_ae.add_supported_context(context.abstract_syntax)
    server = store_ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[
        (evt.EVT_C_STORE, lambda e: received.append(e.dataset.SOPInstanceUID) or 0)])
    dest_port = server.server_address[1]
    try:
        with running_scp(tmp_path,
                         move_destinations={"STORE_SCP": ("127.0.0.1", dest_port)}) as scp:
            ae = scu(sc.PatientRootQueryRetrieveInformationModelMove)
            assoc = ae.associate("127.0.0.1", scp.port, ae_title="DICOM_OR")
            query = ident(QueryRetrieveLevel="SERIES", PatientID=PATIENT_ID,
                          StudyInstanceUID=STUDY, SeriesInstanceUID=VIDEO_SERIES)
            statuses = [s.Status for s, _ in assoc.send_c_move(
                query, "STORE_SCP", sc.PatientRootQueryRetrieveInformationModelMove)]
            assert statuses[-1] == 0x0000
            assert sorted(received) == sorted(sops)
            statuses = [s.Status for s, _ in assoc.send_c_move(
                query, "NOBODY", sc.PatientRootQueryRetrieveInformationModelMove)]
            assert statuses[-1] == 0xA801
            assoc.release()
    finally:
        server.shutdown()


@pytest.mark.parametrize("raw", [
    b"\x08\x00\x52\x00ZZ\x06\x00SERIES",      # an invalid VR
    b"\x08\x00\x52\x00CS\x06\x00SER",          # value shorter than its length
    b"\x08\x00\x52\x00CS\x06\x00SERIES\x20\x00\x0d\x00UI\xff\xff1.2.x",  # absurd length
    b"\xff" * 33,                               # no DICOM at all
])
def test_undecodable_identifiers_get_a_failure_status(raw):
    from io import BytesIO

    from pydicom.uid import ExplicitVRLittleEndian
    from pynetdicom.dimse_primitives import C_FIND

    with running_scp() as scp:
        ae = AE()
        ae.dimse_timeout = 10
        ae.add_requested_context(STUDY_FIND, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", scp.port, ae_title="DICOM_OR")
        request = C_FIND()
        request.MessageID, request.AffectedSOPClassUID, request.Priority = 1, STUDY_FIND, 2
        request.Identifier = BytesIO(raw)
        # Pause the SCU's reactor (as pynetdicom's own send_* do), or it takes the response.
        assoc._reactor_checkpoint.clear()
        while not assoc._is_paused:
            threading.Event().wait(0.001)
        assoc.dimse.send_msg(request, assoc.accepted_contexts[0].context_id)
        _, response = assoc.dimse.get_msg(block=True)
        assoc._reactor_checkpoint.set()
        assert response is not None
        assert response.Status == 0xA900 or 0xC000 <= response.Status <= 0xCFFF
        assoc.release()
        assert echo_ok(scp.port)


def test_silent_peer_is_disconnected_by_the_acse_timeout():
    with running_scp(acse_timeout_s=1.0) as scp:
        with socket.create_connection(("127.0.0.1", scp.port), timeout=10) as sock:
            # Never sends an A-ASSOCIATE-RQ: the bridge must close, not hold a slot forever.
            reply = sock.recv(64)
            assert reply == b"" or reply[:1] == b"\x07"  # closed, or A-ABORT then closed
        assert echo_ok(scp.port)


def test_c_cancel_stops_a_long_c_find_and_the_bridge_keeps_serving():
    """PS3.7 9.3.2.3: a C-CANCEL-RQ during a C-FIND with many matches ends it with status
    Cancel (0xFE00) long before the last match; the association and the bridge go on."""
    from bridge_fixtures import video

    n = 2000
    streams = [video(uid=f"{VIDEO_SERIES}.{i}", topic=f"/or/cam{i}/frames") for i in range(n)]
    with running_scp(streams=streams) as scp:
        ae = scu(sc.Verification, STUDY_FIND)
        assoc = ae.associate("127.0.0.1", scp.port, ae_title="DICOM_OR")
        assert assoc.is_established
        context_id = next(cx.context_id for cx in assoc.accepted_contexts
                          if cx.abstract_syntax == STUDY_FIND)
        query = ident(QueryRetrieveLevel="SERIES", StudyInstanceUID=STUDY,
                      SeriesInstanceUID="", RetrieveURL="")
        pending, final = 0, None
        for status, _ in assoc.send_c_find(query, STUDY_FIND, msg_id=7):
            assert status, "no response (timeout or abort)"
            if status.Status == 0xFF00:
                pending += 1
                if pending == 1:
                    assoc.send_c_cancel(7, context_id)
            else:
                final = status.Status
        assert final == 0xFE00, pending
        assert 1 <= pending < n, pending
        # The same association still answers, completely.
        one = f"{VIDEO_SERIES}.{n - 1}"
        statuses = [(s.Status, a) for s, a in assoc.send_c_find(
            ident(QueryRetrieveLevel="SERIES", StudyInstanceUID=STUDY,
                  SeriesInstanceUID=one), STUDY_FIND, msg_id=8)]
        assert [s for s, _ in statuses] == [0xFF00, 0x0000]
        assert statuses[0][1].SeriesInstanceUID == one
        assert assoc.send_c_echo().Status == 0x0000
        assoc.release()
        # And so does the bridge, to a new association.
        status, answers = find(scp.port, ident(QueryRetrieveLevel="SERIES",
                                               StudyInstanceUID=STUDY,
                                               SeriesInstanceUID=one))
        assert status.Status == 0x0000 and len(answers) == 1


def test_c_move_of_a_live_video_series_without_a_frame_is_a_failed_sub_operation(tmp_path):
    """No current frame (camera silent): the snapshot sub-operation fails, the archived
    instances still arrive, and the final status is Warning 0xB000 (PS3.4 C.4.2.1.5); with
    nothing else to send, Failure 0xC000. The association goes on."""
    from bridge_fixtures import video

    other = f"{VIDEO_SERIES}.2"
    write_instance(tmp_path, sop="1.2.3.6.1")
    received = []
    store_ae = AE(ae_title="STORE_SCP")
    for context in StoragePresentationContexts:
        store_ae.add_supported_context(context.abstract_syntax)
    server = store_ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[
        (evt.EVT_C_STORE, lambda e: received.append(e.dataset.SOPInstanceUID) or 0)])
    move = sc.StudyRootQueryRetrieveInformationModelMove
    try:
        with running_scp(tmp_path, streams=[video(), video(uid=other, topic="/or/cam2/frames")],
                         snapshot=lambda uid: None, move_destinations={
                             "STORE_SCP": ("127.0.0.1", server.server_address[1])}) as scp:
            assoc = scu(sc.Verification, move).associate("127.0.0.1", scp.port,
                                                        ae_title="DICOM_OR")

            def final(series_uid):
                responses = list(assoc.send_c_move(
                    ident(QueryRetrieveLevel="SERIES", StudyInstanceUID=STUDY,
                          SeriesInstanceUID=series_uid), "STORE_SCP", move))
                status = responses[-1][0]
                return (status.Status, status.NumberOfCompletedSuboperations,
                        status.NumberOfFailedSuboperations)

            assert final(VIDEO_SERIES) == (0xB000, 1, 1)
            assert received == ["1.2.3.6.1"]
            assert final(other) == (0xC000, 0, 1)
            assert assoc.send_c_echo().Status == 0x0000
            assoc.release()
    finally:
        server.shutdown()


# --- retrieval: transfer syntaxes, sending from file, live snapshot numbering -------------

GET = sc.StudyRootQueryRetrieveInformationModelGet
MOVE = sc.StudyRootQueryRetrieveInformationModelMove
VIDEO = sc.VideoEndoscopicImageStorage


def write_video(root, sop: str, number: int = 1, size: int = 4096, series: str = VIDEO_SERIES):
    """An archived Video Endoscopic instance as the recorder stores it: H.264 High Profile
    Level 4.1 (1.2.840.10008.1.2.4.102), the bit stream (``size`` random bytes: a transfer
    needs no decodable stream) encapsulated in 4 MiB fragments."""
    import numpy as np

    path = write_instance(root, series=series, sop=sop, number=number)
    ds = dcmread(path)
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = VIDEO
    ds.file_meta.TransferSyntaxUID = MPEG4HP41
    ds.Rows, ds.Columns, ds.NumberOfFrames = 1080, 1920, 30
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 3, "YBR_PARTIAL_420"
    ds.PlanarConfiguration = 0
    stream = np.random.default_rng(number).integers(0, 256, size, np.uint8).tobytes()
    ds.PixelData = encapsulate([stream], fragments_per_frame=max(1, size // 2**22),
                               has_bot=False)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.save_as(path, enforce_file_format=True)
    return path


def stored_bytes(path) -> bytes:
    """The data set of a DICOM file as encoded there (without its File Meta)."""
    _, offset = split_dataset(path)
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read()


def c_get(port, identifier, contexts, roles, on_store, max_pdu=16382):
    """Final status of one C-GET whose requestor proposes exactly ``contexts``."""
    ae = AE(ae_title="TEST_SCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.maximum_pdu_size = max_pdu
    ae.add_requested_context(GET)
    ae.requested_contexts.extend(contexts)  # one context each, as given
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOM_OR",
                         ext_neg=[build_role(uid, scp_role=True) for uid in roles],
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert assoc.is_established
    try:
        responses = list(assoc.send_c_get(identifier, GET))
        assert responses and responses[-1][0], "no final response"
        return responses[-1][0]
    finally:
        assoc.release()


def image(sop: str, series: str = VIDEO_SERIES) -> Dataset:
    return ident(QueryRetrieveLevel="IMAGE", StudyInstanceUID=STUDY,
                 SeriesInstanceUID=series, SOPInstanceUID=sop)


class Received:
    """What a C-STORE SCP got: (SOP Instance UID, transfer syntax, raw data set bytes)."""

    def __init__(self):
        self.items: list[tuple[str, str, bytes]] = []

    def __call__(self, event) -> int:
        self.items.append((str(event.request.AffectedSOPInstanceUID),
                           str(event.context.transfer_syntax),
                           event.request.DataSet.getvalue()))
        return 0x0000


def test_c_get_of_h264_video_offered_with_implicit_explicit_h264_in_one_context(tmp_path):
    """One presentation context [Implicit, Explicit, H.264 .102] for Video Endoscopic: the
    bridge accepts H.264 (video cannot be transcoded) and the instance arrives exactly as
    archived, transfer syntax and bytes (PS3.4 C.4.3.3: sent as stored)."""
    path = write_video(tmp_path, "1.2.3.7.1")
    got = Received()
    with running_scp(tmp_path) as scp:
        final = c_get(scp.port, image("1.2.3.7.1"), [build_context(
            VIDEO, [ImplicitVRLittleEndian, ExplicitVRLittleEndian, MPEG4HP41])], [VIDEO], got)
    assert (final.Status, final.NumberOfCompletedSuboperations) == (0x0000, 1)
    [(sop, syntax, data)] = got.items
    assert (sop, syntax) == ("1.2.3.7.1", MPEG4HP41)
    assert data == stored_bytes(path)  # bit-identical, pixel data included


def test_c_get_of_uncompressed_instance_prefers_explicit_vr_and_converts_only_if_it_must(
        tmp_path):
    """[Implicit, Explicit] in one context: Explicit VR Little Endian, the archive's own
    encoding, wins and the file goes unchanged; a requestor offering Implicit only still
    gets the instance, converted by pynetdicom."""
    path = write_instance(tmp_path, sop="1.2.3.8.1")
    both, implicit = Received(), Received()
    with running_scp(tmp_path) as scp:
        final = c_get(scp.port, image("1.2.3.8.1"), [build_context(
            sc.SecondaryCaptureImageStorage, [ImplicitVRLittleEndian, ExplicitVRLittleEndian])],
            [sc.SecondaryCaptureImageStorage], both)
        assert final.Status == 0x0000
        final = c_get(scp.port, image("1.2.3.8.1"), [build_context(
            sc.SecondaryCaptureImageStorage, [ImplicitVRLittleEndian])],
            [sc.SecondaryCaptureImageStorage], implicit)
        assert final.Status == 0x0000
    [(_, syntax, data)] = both.items
    assert syntax == ExplicitVRLittleEndian and data == stored_bytes(path)
    [(_, syntax, data)] = implicit.items
    assert syntax == ImplicitVRLittleEndian
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import read_dataset

    converted = read_dataset(DicomBytesIO(data), is_implicit_VR=True, is_little_endian=True)
    assert converted.SOPInstanceUID == "1.2.3.8.1"
    assert converted.PixelData == dcmread(path).PixelData


def test_large_instances_are_sent_from_their_files_by_c_get_and_c_move(tmp_path,
                                                                       monkeypatch):
    """A 48 MiB video goes out file to file: the bridge never decodes it (its dcmread is
    made to fail here), C-GET and C-MOVE deliver it bit-identical, and an instance whose
    file vanished before its turn is a failed sub-operation (Warning 0xB000, PS3.4
    C.4.2.1.5) while the other still arrives."""
    import dicom_or_bridge.scp as scp_module

    big = write_video(tmp_path, "1.2.3.9.1", size=48 * 2**20)
    small = write_video(tmp_path, "1.2.3.9.2", number=2)
    big_bytes = stored_bytes(big)

    def no_dcmread(*args, **kwargs):
        raise AssertionError("the bridge read a whole archived file")

    monkeypatch.setattr(scp_module, "dcmread", no_dcmread)
    moved = Received()
    store_ae = AE(ae_title="STORE_SCP")
    store_ae.add_supported_context(VIDEO, MPEG4HP41)
    server = store_ae.start_server(("127.0.0.1", 0), block=False,
                                   evt_handlers=[(evt.EVT_C_STORE, moved)])
    got = Received()
    try:
        with running_scp(tmp_path, move_destinations={
                "STORE_SCP": ("127.0.0.1", server.server_address[1])}) as scp:
            final = c_get(scp.port, image("1.2.3.9.1"),
                          [build_context(VIDEO, [MPEG4HP41])], [VIDEO], got)
            assert final.Status == 0x0000
            assoc = scu(MOVE).associate("127.0.0.1", scp.port, ae_title="DICOM_OR")
            statuses = [s.Status for s, _ in assoc.send_c_move(
                ident(QueryRetrieveLevel="SERIES", StudyInstanceUID=STUDY,
                      SeriesInstanceUID=VIDEO_SERIES), "STORE_SCP", MOVE)]
            assoc.release()
            assert statuses[-1] == 0x0000

            # The other file disappears while the first instance is being stored.
            partial = Received()

            def store_then_lose_the_other(event):
                other = small if event.request.AffectedSOPInstanceUID == "1.2.3.9.1" else big
                other.unlink(missing_ok=True)
                return partial(event)

            final = c_get(scp.port, ident(QueryRetrieveLevel="SERIES", StudyInstanceUID=STUDY,
                                          SeriesInstanceUID=VIDEO_SERIES),
                          [build_context(VIDEO, [MPEG4HP41])], [VIDEO],
                          store_then_lose_the_other)
    finally:
        server.shutdown()
    [(sop, syntax, data)] = got.items
    assert (sop, syntax) == ("1.2.3.9.1", MPEG4HP41)
    assert data == big_bytes
    assert sorted(sop for sop, _, _ in moved.items) == ["1.2.3.9.1", "1.2.3.9.2"]
    assert all(syntax == MPEG4HP41 for _, syntax, _ in moved.items)
    assert (final.Status, final.NumberOfCompletedSuboperations,
            final.NumberOfFailedSuboperations) == (0xB000, 1, 1)
    assert len(partial.items) == 1


def test_live_snapshot_gets_an_instance_number_of_its_own(tmp_path):
    """The snapshot is a new instance of the live Series: its Instance Number is above
    every archived instance's number there (recorded 1 and 4), never a repeat of one."""
    import numpy as np
    from bridge_fixtures import video

    from dicom_or_bridge.snapshot import snapshot_dataset

    write_instance(tmp_path, sop="1.2.3.10.1", number=1)
    write_instance(tmp_path, sop="1.2.3.10.4", number=4)
    write_instance(tmp_path, series=ECG_SERIES, sop="1.2.3.10.9", number=9)  # other series
    pixels = np.zeros((4, 6, 3), np.uint8)
    got = []

    def on_store(event):
        got.append(event.dataset)
        return 0x0000

    with running_scp(tmp_path, snapshot=lambda uid: snapshot_dataset(video(), pixels,
                                                                     "rgb8")) as scp:
        final = c_get(scp.port, ident(QueryRetrieveLevel="SERIES", StudyInstanceUID=STUDY,
                                      SeriesInstanceUID=VIDEO_SERIES),
                      [build_context(sc.SecondaryCaptureImageStorage, [ExplicitVRLittleEndian]),
                       build_context(sc.VLEndoscopicImageStorage, [ExplicitVRLittleEndian])],
                      [sc.SecondaryCaptureImageStorage, sc.VLEndoscopicImageStorage], on_store)
    assert final.Status == 0x0000
    numbers = {str(ds.SOPInstanceUID): int(ds.InstanceNumber) for ds in got}
    assert len(numbers) == 3
    snapshot = [n for sop, n in numbers.items() if not sop.startswith("1.2.3.10.")]
    assert snapshot == [5]


# --- Statuses for malformed C-MOVE requests (fuzz findings) -------------------------------

STUDY_MOVE = sc.StudyRootQueryRetrieveInformationModelMove


def _send_raw(assoc, request, context_id=None):
    """Send a DIMSE request primitive as is (no client-side checks) and return the final
    response primitive, or None when the association ended instead."""
    assoc._reactor_checkpoint.clear()  # pause the SCU's reactor, as pynetdicom's send_* do
    while not assoc._is_paused:
        threading.Event().wait(0.001)
    try:
        assoc.dimse.send_msg(request, context_id or assoc.accepted_contexts[0].context_id)
        while True:
            _, response = assoc.dimse.get_msg(block=True)
            if response is None or response.Status not in (0xFF00, 0xFF01):
                return response
    finally:
        assoc._reactor_checkpoint.set()


def _move_request(identifier: Dataset, destination: str, message_id: int = 1):
    from io import BytesIO

    from pynetdicom.dimse_primitives import C_MOVE
    from pynetdicom.dsutils import encode

    request = C_MOVE()
    request.MessageID, request.AffectedSOPClassUID, request.Priority = \
        message_id, STUDY_MOVE, 2
    request._move_destination = destination  # raw: the SCU side would refuse bad ones
    request.Identifier = BytesIO(encode(identifier, True, True))
    return request


class _Listener:
    """A TCP port that counts connections (a C-MOVE destination that must stay untouched)."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0

    def poll(self):
        try:
            conn, _ = self.sock.accept()
            conn.close()
            self.accepted += 1
        except OSError:
            pass


@pytest.mark.parametrize("identifier, status", [
    (ident(QueryRetrieveLevel="SERIES", StudyInstanceUID=STUDY), 0xA900),  # no Series UID
    (ident(QueryRetrieveLevel="FRAME", StudyInstanceUID=STUDY), 0xA900),
    (ident(StudyInstanceUID=STUDY), 0xA900),                                # no level
    (ident(QueryRetrieveLevel="STUDY", StudyInstanceUID="1.2.x"), 0xA900),  # not a UID
])
def test_c_move_with_a_bad_identifier_is_a900_without_contacting_the_destination(
        tmp_path, identifier, status, caplog):
    """Regression: a bad identifier got 0xC515 (pynetdicom's 'invalid destination') and a
    traceback, because the handler yielded the destination without presentation contexts.
    PS3.4 C.4.2.1.5: 0xA900 Identifier does not match SOP Class, with an Error Comment;
    the destination is never contacted for a request that is refused."""
    write_instance(tmp_path, sop="1.2.3.6.1")
    listener = _Listener()
    try:
        with running_scp(tmp_path, move_destinations={
                "STORE_SCP": ("127.0.0.1", listener.port)}) as scp, \
                caplog.at_level("INFO"):
            assoc = scu(STUDY_MOVE).associate("127.0.0.1", scp.port, ae_title="DICOM_OR")
            assert assoc.is_established
            response = _send_raw(assoc, _move_request(identifier, "STORE_SCP"))
            assert response is not None and response.Status == status
            assert response.ErrorComment
            # The association goes on: a correct request on it still works.
            assert assoc.is_established
            again = _send_raw(assoc, _move_request(identifier, "STORE_SCP", message_id=2))
            assert again.Status == status
            assoc.release()
            listener.poll()
            assert echo_ok(scp.port)
        assert listener.accepted == 0
        assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    finally:
        listener.sock.close()


@pytest.mark.parametrize("destination", ["", "   ", "\x01\x02", "BAD\\AE", "X" * 17,
                                         "UNKNOWN_AE"])
def test_c_move_with_an_empty_or_non_printable_destination_is_a801(destination):
    """Regression: an empty or non-printable Move Destination made pynetdicom's DIMSE layer
    raise while decoding the request: traceback and A-ABORT. PS3.4 C.4.2.1.5: 0xA801 Move
    Destination unknown, and the association stays usable."""
    with running_scp(move_destinations={"STORE_SCP": ("127.0.0.1", 1)}) as scp:
        ae = scu(STUDY_MOVE, sc.Verification)
        assoc = ae.associate("127.0.0.1", scp.port, ae_title="DICOM_OR")
        assert assoc.is_established
        query = ident(QueryRetrieveLevel="STUDY", StudyInstanceUID=STUDY)
        response = _send_raw(assoc, _move_request(query, destination),
                             assoc.accepted_contexts[0].context_id
                             if assoc.accepted_contexts[0].abstract_syntax == STUDY_MOVE
                             else assoc.accepted_contexts[1].context_id)
        assert response is not None, "the association was aborted"
        assert response.Status == 0xA801
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0x0000
        assoc.release()
