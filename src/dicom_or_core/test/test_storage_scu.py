"""C-STORE SCU against a real Orthanc: every object type the recorder writes is accepted,
indexed and found again by C-FIND; Storage Commitment; backoff while the PACS is down;
permanent refusal; local-only mode."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from dicom_or_test_common.examples import (
    example_descriptor,
    example_session,
    now_ns,
    synthetic_rgb,
    synthetic_waveform,
)
from dicom_or_test_common.peers import ORTHANC_BINARY, Orthanc, free_tcp_port
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

from dicom_or_core.archive.spool import COMMITTED, FAILED, FINAL, STORED, Spool
from dicom_or_core.iod.codec import PTS_HZ, PacketEncoder, choose_codec, mux_mpegts
from dicom_or_core.iod.pose import ToolTrack, build_pose_sr
from dicom_or_core.iod.video import build_multiframe_sc, build_snapshot, build_video
from dicom_or_core.iod.waveform import build_waveform
from dicom_or_core.model.errors import DicomOrError
from dicom_or_core.model.uid import new_uid
from dicom_or_core.scu.storage import PacsConfig, StorageSender

needs_orthanc = pytest.mark.skipif(not Path(ORTHANC_BINARY).is_file(),
                                   reason="Orthanc not installed")


def video_instance(d, codec):
    choice = choose_codec(d.rows, d.columns, d.nominal_rate_hz, codec)
    enc = PacketEncoder(choice, d.rows, d.columns, d.pixel_encoding, d.nominal_rate_hz)
    t0 = now_ns()
    stamps = [t0 + round(i * 1e9 / 30) for i in range(8)]
    packets = []
    for i, t in enumerate(stamps):
        packets += enc.encode(synthetic_rgb(d.rows, d.columns, i), round((t - t0) * PTS_HZ
                                                                         / 1e9))
    packets += enc.flush()
    return build_video(d, mux_mpegts(choice, d.rows, d.columns, 30, packets), choice, stamps,
                       new_uid(), 1, now_ns())


def every_object_type():
    """One instance of every SOP class / transfer syntax the recorder writes, one session."""
    session = example_session()
    d = {k: example_descriptor(k, session) for k in ("ecg", "hd", "resp", "video",
                                                     "video_xc", "pose")}
    t0 = now_ns()
    out = {}
    for k in ("ecg", "hd", "resp"):
        out[k] = build_waveform(d[k], synthetic_waveform(500, len(d[k].channels)), t0,
                                new_uid(), 1, t0)
    resp2 = example_descriptor("resp", session, channels=d["resp"].channels * 2)
    out["resp_multichannel"] = build_waveform(resp2, synthetic_waveform(500, 2), t0,
                                              new_uid(), 1, t0)
    assert out["resp_multichannel"].SOPClassUID == "1.2.840.10008.5.1.4.1.1.9.6.2"
    for codec in ("h264", "hevc", "mpeg2"):
        out[f"video_{codec}"] = video_instance(d["video"], codec)
    out["video_xc"] = video_instance(d["video_xc"], "h264")
    frames = [synthetic_rgb(240, 320, i) for i in range(3)]
    out["lossless"] = build_multiframe_sc(d["video"], frames, [t0, t0 + 33_000_000,
                                                               t0 + 66_000_000], new_uid())
    out["snapshot_es"] = build_snapshot(d["video"], frames[0], t0, new_uid())
    out["snapshot_sc"] = build_snapshot(d["video_xc"], frames[0], t0, new_uid())
    q = np.tile([0.0, 0.0, 0.0, 1.0], (10, 1))
    out["pose"] = build_pose_sr(d["pose"], [ToolTrack(
        "pointer", t0 + np.arange(10) * 10_000_000, np.zeros((10, 3)), q)], new_uid())
    return session, out


def cfind_image(port: int, study_uid: str) -> set[str]:
    """SOP Instance UIDs Orthanc returns for an IMAGE-level C-FIND of the Study."""
    ae = AE(ae_title="FINDSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", port, ae_title="ORTHANC")
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "IMAGE"
    query.StudyInstanceUID = study_uid
    query.SeriesInstanceUID = ""
    query.SOPInstanceUID = ""
    query.SOPClassUID = ""
    found = set()
    for status, identifier in assoc.send_c_find(query,
                                                StudyRootQueryRetrieveInformationModelFind):
        if status and status.Status in (0xFF00, 0xFF01) and identifier is not None:
            found.add(str(identifier.SOPInstanceUID))
    assoc.release()
    return found


@needs_orthanc
def test_orthanc_accepts_indexes_and_commits_every_object_type(tmp_path):
    commitment_port = free_tcp_port()
    session, instances = every_object_type()
    spool = Spool(tmp_path / "rec")
    for ds in instances.values():
        spool.write_instance(ds)
    with Orthanc(tmp_path / "orthanc", modalities={
            "recorder": ("DICOM_OR_REC", "127.0.0.1", commitment_port)}) as orthanc:
        sender = StorageSender(spool, PacsConfig(
            ae_title="ORTHANC", port=orthanc.dicom_port, commitment_port=commitment_port,
            commitment_timeout_s=20))
        try:
            assert sender.run_once()
            # Orthanc reports commitment on its own association to our listener.
            deadline = time.monotonic() + 30
            while spool.counts()[COMMITTED] < len(instances) and time.monotonic() < deadline:
                if not sender.run_once():
                    time.sleep(0.05)  # waiting for Orthanc's N-EVENT-REPORT
        finally:
            sender.stop()
        rows = {r.sop_instance_uid: r for r in spool.rows()}
        assert {r.state for r in rows.values()} == {COMMITTED}, \
            {k: (r.state, r.last_error) for k, r in rows.items()}
        assert orthanc.rest("GET", "/statistics")["CountInstances"] == len(instances)
        found = cfind_image(orthanc.dicom_port, session.study.study_instance_uid)
        assert found == {str(ds.SOPInstanceUID) for ds in instances.values()}


@needs_orthanc
def test_pacs_down_then_up_backs_off_and_delivers_once(tmp_path):
    spool = Spool(tmp_path / "rec")
    d = example_descriptor("ecg")
    for _ in range(3):
        spool.write_instance(build_waveform(d, synthetic_waveform(100, 3), now_ns(),
                                            new_uid()))
    port = free_tcp_port()
    sender = StorageSender(spool, PacsConfig(ae_title="ORTHANC", port=port,
                                             storage_commitment=False,
                                             initial_backoff_s=0.2, max_backoff_s=0.4,
                                             timeout_s=2))
    assert sender.run_once()             # PACS down: every instance deferred
    assert sender.stats.pacs_reachable is False
    rows = spool.rows(FINAL)
    assert len(rows) == 3 and all(r.attempts == 1 and r.next_attempt > time.time() - 1
                                  for r in rows)
    assert spool.due(now=time.time()) == []   # backoff holds them back
    with Orthanc(tmp_path / "orthanc", dicom_port=port) as orthanc:
        deadline = time.monotonic() + 20
        while spool.counts()[STORED] < 3 and time.monotonic() < deadline:
            if not sender.run_once():
                time.sleep(0.05)  # waiting for the backoff to expire (what is tested)
        assert spool.counts()[STORED] == 3
        assert sender.run_once() is False     # nothing is sent twice
        assert orthanc.rest("GET", "/statistics")["CountInstances"] == 3
    sender.stop()


@needs_orthanc
def test_a_sop_class_the_pacs_refuses_is_failed_not_retried(tmp_path):
    spool = Spool(tmp_path / "rec")
    ds = build_waveform(example_descriptor("ecg"), synthetic_waveform(10, 3), now_ns(),
                        new_uid())
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.9.1.4"
    spool.write_instance(ds)  # General 32-bit ECG: Orthanc 1.10 refuses it by default
    with Orthanc(tmp_path / "orthanc") as orthanc:
        sender = StorageSender(spool, PacsConfig(ae_title="ORTHANC", port=orthanc.dicom_port,
                                                 storage_commitment=False))
        sender.run_once()
        sender.stop()
    row = spool.get(ds.SOPInstanceUID)
    assert row.state == FAILED and "does not accept" in row.last_error


def test_local_only_mode_sends_nothing(tmp_path):
    spool = Spool(tmp_path)
    spool.write_instance(build_waveform(example_descriptor("ecg"), synthetic_waveform(10, 3),
                                        now_ns(), new_uid()))
    sender = StorageSender(spool, PacsConfig(port=0))
    sender.start()
    assert sender.run_once() is False
    sender.stop()
    assert spool.counts()[FINAL] == 1


def test_bad_pacs_configuration_names_the_parameter():
    with pytest.raises(DicomOrError, match="pacs_ae_title"):
        PacsConfig(ae_title="", port=104).validate()
    with pytest.raises(DicomOrError, match="pacs_port"):
        PacsConfig(ae_title="X", port=70000).validate()
    with pytest.raises(DicomOrError, match="initial_backoff_s"):
        PacsConfig(ae_title="X", port=104, initial_backoff_s=10, max_backoff_s=1).validate()


@needs_orthanc
@pytest.mark.parametrize("known", [True, False])
def test_missing_commitment_report_keeps_stored_and_asks_again(tmp_path, known):
    """known: Orthanc accepts the N-ACTION but its report cannot reach us (nobody listens
    on the registered port); unknown AE: Orthanc refuses the N-ACTION. Either way the
    instance stays stored (not safe), is not resent, and commitment is asked again only
    after the timeout."""
    spool = Spool(tmp_path / "rec")
    ds = build_waveform(example_descriptor("ecg"), synthetic_waveform(10, 3), now_ns(),
                        new_uid())
    spool.write_instance(ds)
    modalities = {"recorder": ("DICOM_OR_REC", "127.0.0.1", free_tcp_port())} if known \
        else {}
    with Orthanc(tmp_path / "orthanc", modalities=modalities) as orthanc:
        sender = StorageSender(spool, PacsConfig(ae_title="ORTHANC", port=orthanc.dicom_port,
                                                 commitment_timeout_s=2.0))
        try:
            assert sender.run_once()
            assert spool.get(ds.SOPInstanceUID).state == STORED   # stored, not yet safe
            assert len(sender._pending) == 1                     # one request awaiting
            [first] = sender._pending
            if not known:
                assert "refused" in sender.stats.last_error
            assert sender.run_once() is False    # nothing due: no busy loop, no resend
            deadline = time.monotonic() + 10
            while first in sender._pending or not sender._pending:
                assert time.monotonic() < deadline, "commitment was not asked again"
                sender.run_once()
                time.sleep(0.1)  # letting the 2 s commitment timeout expire
            if known:
                assert "timed out" in sender.stats.last_error
            assert spool.get(ds.SOPInstanceUID).state == STORED
            assert orthanc.rest("GET", "/statistics")["CountInstances"] == 1  # not resent
        finally:
            sender.stop()
