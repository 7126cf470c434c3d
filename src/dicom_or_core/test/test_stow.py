"""STOW-RS transport of the storage sender: the multipart body streamed from files, the
response read per instance (pure, in memory); then the sender against a real Orthanc with its
DICOMweb plugin: every instance exactly once and bit-identical, refusals with their Failure
Reason, and a PACS outage of ``DICOM_OR_STOW_OUTAGE_S`` seconds (60 by default) in the middle
of a delivery."""

from __future__ import annotations

import email.parser
import http.server
import io
import json
import logging
import os
import ssl
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_or_test_common.examples import (
    example_descriptor,
    example_session,
    now_ns,
    synthetic_rgb,
    synthetic_waveform,
)
from dicom_or_test_common.peers import ORTHANC_BINARY, ORTHANC_DICOMWEB_PLUGIN, Orthanc
from pydicom.dataset import Dataset

from dicom_or_core.archive.spool import FAILED, FINAL, STORED, Spool
from dicom_or_core.iod.pose import ToolTrack, build_pose_sr
from dicom_or_core.iod.video import build_multiframe_sc, build_snapshot
from dicom_or_core.iod.waveform import build_waveform
from dicom_or_core.model.errors import DicomOrError
from dicom_or_core.model.uid import new_uid
from dicom_or_core.scu import stow
from dicom_or_core.scu.storage import STOWRS, PacsConfig, StorageSender
from dicom_or_core.scu.stow import MultipartBody, StowConfig, batches, judge, parse_response
from dicom_or_core.scu.transport import FAILED as FAILED_FATE
from dicom_or_core.scu.transport import RETRY, PacsUnreachable, classify_status
from dicom_or_core.scu.transport import STORED as STORED_FATE

needs_orthanc = pytest.mark.skipif(
    not (Path(ORTHANC_BINARY).is_file() and Path(ORTHANC_DICOMWEB_PLUGIN).is_file()),
    reason="Orthanc or its DICOMweb plugin not installed")
OUTAGE_S = float(os.environ.get("DICOM_OR_STOW_OUTAGE_S", "60"))


# -- pure: the request body ---------------------------------------------------------------

def test_multipart_body_streams_the_files_in_bounded_chunks_with_exact_length(tmp_path):
    sizes = [0, 5, 3 * stow.CHUNK_BYTES + 17]
    paths = []
    for i, size in enumerate(sizes):
        path = tmp_path / f"{i}.dcm"
        path.write_bytes(os.urandom(size))
        paths.append(path)
    body = MultipartBody(paths, boundary="b0undary")
    chunks = list(body)
    assert max(len(c) for c in chunks) <= stow.CHUNK_BYTES  # never a whole file in memory
    data = b"".join(chunks)
    assert len(data) == len(body)                             # the Content-Length is exact
    assert body.content_type == \
        'multipart/related; type="application/dicom"; boundary=b0undary'
    # A MIME parser nobody here wrote finds each file, byte for byte, as application/dicom.
    message = email.parser.BytesParser().parsebytes(
        f"Content-Type: {body.content_type}\r\n\r\n".encode() + data)
    parts = message.get_payload()
    assert [p.get_content_type() for p in parts] == ["application/dicom"] * 3
    assert [p.get_payload(decode=True) for p in parts] == [p.read_bytes() for p in paths]


def test_multipart_body_refuses_a_file_that_changed_size(tmp_path):
    path = tmp_path / "a.dcm"
    path.write_bytes(b"x" * 100)
    body = MultipartBody([path])
    path.write_bytes(b"x" * 50)
    with pytest.raises(OSError, match="changed size"):
        b"".join(body)


def test_batches_bound_instances_and_bytes():
    class Row:
        def __init__(self, size):
            self.size = size
    rows = [Row(s) for s in (10, 10, 10, 100, 10, 10, 10)]
    cut = batches(rows, max_instances=3, max_bytes=30)
    assert [[r.size for r in b] for b in cut] == [[10, 10, 10], [100], [10, 10, 10]]
    assert [len(b) for b in batches(rows, 2, 10**9)] == [2, 2, 2, 1]


# -- pure: the response -------------------------------------------------------------------

def response(referenced=(), failed=(), warnings=None) -> bytes:
    """A Store Instances response as DICOM JSON (PS3.18 Table 10.5.3-1)."""
    ds = Dataset()
    items = []
    for uid in referenced:
        item = Dataset()
        item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.9.1.2"
        item.ReferencedSOPInstanceUID = uid
        if warnings and uid in warnings:
            item.WarningReason = warnings[uid]
        items.append(item)
    ds.ReferencedSOPSequence = items
    bad = []
    for uid, reason in failed:
        item = Dataset()
        item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.9.1.2"
        item.ReferencedSOPInstanceUID = uid
        item.FailureReason = reason
        bad.append(item)
    ds.FailedSOPSequence = bad
    return json.dumps(ds.to_json_dict()).encode()


def test_status_codes_are_classified_like_c_store():
    assert classify_status(0x0000) == STORED_FATE
    assert classify_status(0xB000) == STORED_FATE
    assert classify_status(0x0111) == STORED_FATE  # duplicate: the PACS has it already
    assert classify_status(0xA700) == RETRY
    assert classify_status(0xA7FF) == RETRY
    for code in (0xA900, 0xC000, 0x0122, 0x0110, 0xC122):
        assert classify_status(code) == FAILED_FATE


def test_each_instance_gets_the_fate_its_response_item_says():
    sent = ["1.1", "1.2", "1.3", "1.4", "1.5", "1.6"]
    body = response(referenced=["1.1", "1.2"], warnings={"1.2": 0xB000},
                    failed=[("1.3", 0xA700), ("1.4", 0xC000), ("1.5", 0x0111)])
    verdict = judge(202, body, sent)
    assert verdict.fates["1.1"] == (STORED_FATE, "")
    assert verdict.fates["1.2"] == (STORED_FATE, "warning 0xB000")
    assert verdict.fates["1.3"][0] == RETRY and "0xA700" in verdict.fates["1.3"][1]
    assert verdict.fates["1.4"][0] == FAILED_FATE and "0xC000" in verdict.fates["1.4"][1]
    assert verdict.fates["1.5"][0] == STORED_FATE
    assert verdict.alone == ["1.6"]           # not mentioned: sent again on its own
    assert judge(409, response(failed=[("1.1", 0xA900)]), ["1.1"]).fates["1.1"][0] == \
        FAILED_FATE


@pytest.mark.parametrize("status,fate", [(200, RETRY), (400, FAILED_FATE), (413, FAILED_FATE),
                                         (409, FAILED_FATE)])
def test_an_instance_alone_and_unmentioned_follows_the_http_status(status, fate):
    for body in (response(), b"<html>not json</html>", b""):
        verdict = judge(status, body, ["1.1"])
        assert verdict.fates["1.1"][0] == fate and f"HTTP {status}" in verdict.fates["1.1"][1]
    # Several instances refused as a whole (413, 400 for one bad part): each goes alone.
    assert judge(status, b"", ["1.1", "1.2"]).alone == ["1.1", "1.2"]


@pytest.mark.parametrize("status,words", [
    (500, "unavailable"), (503, "unavailable"), (429, "unavailable"), (408, "unavailable"),
    (401, "pacs_token"), (403, "credentials"), (404, "pacs_stow_url"), (405, "pacs_stow_url"),
    (302, "pacs_stow_url")])
def test_answers_to_the_whole_request_are_an_outage_not_a_refusal(status, words):
    with pytest.raises(PacsUnreachable, match=words) as caught:
        judge(status, response(failed=[("1.1", 0xC000)]), ["1.1"], "http://x/dicom-web")
    assert f"HTTP {status}" in str(caught.value)


def test_an_unreadable_response_has_no_instance_in_it():
    for body in (b"", b"\xff\xfe", b"[1, 2]", b'{"00081199": {"vr": "SQ", "Value": [1]}}'):
        answer = parse_response(body)
        assert not answer.referenced and not answer.failed


def test_bad_stow_configuration_names_the_parameter(tmp_path):
    with pytest.raises(DicomOrError, match="pacs_protocol"):
        PacsConfig(protocol="ftp").validate()
    for url in ("127.0.0.1:8042/dicom-web", "ftp://pacs/dicom-web", "http:///dicom-web",
                "http://pacs/dicom-web?x=1"):
        with pytest.raises(DicomOrError, match="pacs_stow_url"):
            PacsConfig(protocol=STOWRS, stow_url=url).validate()
    with pytest.raises(DicomOrError, match="pacs_tls_ca_file"):
        PacsConfig(protocol=STOWRS, stow_url="https://pacs/dw",
                   tls_ca_file=str(tmp_path / "missing.pem")).validate()
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    with pytest.raises(DicomOrError, match="pacs_stow_url"):  # TLS files for http://
        PacsConfig(protocol=STOWRS, stow_url="http://pacs/dw",
                   tls_cert_file=str(cert)).validate()
    with pytest.raises(DicomOrError, match="pacs_tls_key_file"):
        PacsConfig(protocol=STOWRS, stow_url="https://pacs/dw",
                   tls_key_file=str(cert)).validate()
    with pytest.raises(DicomOrError, match="pacs_token"):
        PacsConfig(protocol=STOWRS, stow_url="https://pacs/dw", token="a\nb").validate()
    # Valid: no AE title needed; empty URL = local only; Storage Commitment is DIMSE only.
    config = PacsConfig(protocol=STOWRS, stow_url="https://pacs/dicom-web", token="t",
                        tls_cert_file=str(cert)).validate()
    assert config.enabled and not config.commitment
    assert config.stow().studies_url == "https://pacs/dicom-web/studies"
    assert not PacsConfig(protocol=STOWRS).validate().enabled
    assert StowConfig(url="http://pacs/dw/").studies_url == "http://pacs/dw/studies"


# -- against a real Orthanc with its DICOMweb plugin ----------------------------------------

def sample_instances(n_waveforms: int = 6) -> list[Dataset]:
    """Instances of several SOP classes and sizes (waveforms, SC images, a pose SR)."""
    session = example_session()
    ecg, video = example_descriptor("ecg", session), example_descriptor("video", session)
    hd, pose = example_descriptor("hd", session), example_descriptor("pose", session)
    t0 = now_ns()
    out = [build_waveform(ecg if i % 2 else hd, synthetic_waveform(2000 * (i + 1), 2 if i % 2
                                                                   == 0 else 3), t0,
                          new_uid(), i + 1) for i in range(n_waveforms)]
    frames = [synthetic_rgb(240, 320, i) for i in range(3)]
    out.append(build_snapshot(video, frames[0], t0, new_uid()))
    out.append(build_multiframe_sc(video, frames, [t0, t0 + 33_000_000, t0 + 66_000_000],
                                   new_uid()))
    q = np.tile([0.0, 0.0, 0.0, 1.0], (50, 1))
    out.append(build_pose_sr(pose, [ToolTrack("pointer", t0 + np.arange(50) * 10_000_000,
                                              np.zeros((50, 3)), q)], new_uid()))
    return out


def stow_config(orthanc: Orthanc, **kw) -> PacsConfig:
    return PacsConfig(protocol=STOWRS,
                      stow_url=f"http://127.0.0.1:{orthanc.http_port}/dicom-web", **kw)


def orthanc_instances(orthanc: Orthanc) -> dict[str, str]:
    """SOP Instance UID -> Orthanc's instance id, for every instance Orthanc holds."""
    found = orthanc.rest("GET", "/instances?expand")
    return {i["MainDicomTags"]["SOPInstanceUID"]: i["ID"] for i in found}


def assert_delivered_once_and_identical(orthanc: Orthanc, spool: Spool) -> None:
    rows = spool.rows()
    assert {r.state for r in rows} == {STORED}, {r.sop_instance_uid: (r.state, r.last_error)
                                                 for r in rows if r.state != STORED}
    held = orthanc_instances(orthanc)
    assert orthanc.rest("GET", "/statistics")["CountInstances"] == len(rows)
    assert set(held) == {r.sop_instance_uid for r in rows}
    for row in rows:
        copy = orthanc.rest("GET", f"/instances/{held[row.sop_instance_uid]}/file")
        assert copy == spool.absolute(row).read_bytes(), row.sop_instance_uid


@needs_orthanc
def test_stow_delivers_every_instance_once_bit_identical(tmp_path):
    spool = Spool(tmp_path / "rec")
    instances = sample_instances()
    for ds in instances:
        spool.write_instance(ds)
    with Orthanc(tmp_path / "orthanc", dicomweb=True) as orthanc:
        # 3 instances and 64 KiB per request: the round is cut into several requests.
        sender = StorageSender(spool, stow_config(orthanc, batch_size=3,
                                                  max_request_bytes=64 << 10))
        try:
            while sender.run_once():
                pass
            assert sender.run_once() is False          # nothing is sent twice
            assert_delivered_once_and_identical(orthanc, spool)
            stats = sender.stats
            assert stats.stored == len(instances) and stats.failed == stats.retries == 0
            assert stats.pacs_reachable is True and stats.committed == 0
            assert stats.bytes_sent == sum(r.size for r in spool.rows())
        finally:
            sender.stop()


@needs_orthanc
def test_stow_refusals_fail_with_their_reason_and_the_rest_is_stored(tmp_path):
    """Orthanc answers HTTP 400: a file without Study Instance UID with Failure Reason C000
    in the Failed SOP Sequence; a file without SOP Instance UID not at all (it cannot name
    it), so it is sent again alone and then fails; the good instance of the same request is
    stored."""
    spool = Spool(tmp_path / "rec")
    good, no_study, no_sop = sample_instances(3)[:3]
    for ds in (good, no_study, no_sop):
        spool.write_instance(ds)
    for ds, keyword in ((no_study, "StudyInstanceUID"), (no_sop, "SOPInstanceUID")):
        path = spool.absolute(spool.get(ds.SOPInstanceUID))
        damaged = pydicom.dcmread(path)
        delattr(damaged, keyword)
        damaged.save_as(path)   # the file on disk damaged after it was archived
    with Orthanc(tmp_path / "orthanc", dicomweb=True) as orthanc:
        sender = StorageSender(spool, stow_config(orthanc))
        try:
            assert sender.run_once()
            assert sender.run_once() is False
        finally:
            sender.stop()
        held = orthanc_instances(orthanc)
    assert set(held) == {good.SOPInstanceUID}
    assert spool.get(good.SOPInstanceUID).state == STORED
    refused = spool.get(no_study.SOPInstanceUID)
    assert refused.state == FAILED and "failure reason 0xC000" in refused.last_error
    assert "HTTP 400" in refused.last_error
    unnamed = spool.get(no_sop.SOPInstanceUID)
    assert unnamed.state == FAILED and "without a reason" in unnamed.last_error
    assert sender.stats.failed == 2 and sender.stats.stored == 1


@needs_orthanc
def test_stow_wrong_url_waits_with_backoff_and_says_which_parameter(tmp_path):
    spool = Spool(tmp_path / "rec")
    ds = sample_instances(1)[0]
    spool.write_instance(ds)
    with Orthanc(tmp_path / "orthanc", dicomweb=True) as orthanc:
        config = PacsConfig(protocol=STOWRS, initial_backoff_s=30, max_backoff_s=60,
                            stow_url=f"http://127.0.0.1:{orthanc.http_port}/no-dicom-web")
        sender = StorageSender(spool, config)
        assert sender.run_once()
        sender.stop()
    row = spool.get(ds.SOPInstanceUID)
    assert row.state == FINAL and row.attempts == 1 and row.next_attempt > time.time() + 20
    assert "HTTP 404" in row.last_error and "pacs_stow_url" in row.last_error
    assert sender.stats.pacs_reachable is False


@needs_orthanc
def test_stow_across_a_pacs_outage_delivers_every_instance_exactly_once(tmp_path):
    """The recording goes on while the PACS is stopped in the middle of a delivery, stays
    down ``OUTAGE_S`` seconds and comes back on the same ports and storage: every instance
    is delivered once, none failed, and the retries were spaced by the backoff."""
    spool = Spool(tmp_path / "rec")
    template = build_waveform(example_descriptor("ecg"), synthetic_waveform(20000, 3),
                              now_ns(), new_uid())   # ~120 KB per instance
    written: list[str] = []
    stop_writing = threading.Event()

    def record(count: int, period_s: float) -> None:
        """The recorder's side: a new final instance every period_s."""
        for _ in range(count):
            if stop_writing.is_set():
                return
            uid = new_uid()
            template.SOPInstanceUID = template.file_meta.MediaStorageSOPInstanceUID = uid
            spool.write_instance(template)
            written.append(uid)
            time.sleep(period_s)  # the pace of a recording, not a wait for a result

    orthanc = Orthanc(tmp_path / "orthanc", dicomweb=True).start()
    ports = {"dicom_port": orthanc.dicom_port, "http_port": orthanc.http_port}
    max_backoff_s = 8.0
    sender = StorageSender(spool, stow_config(orthanc, batch_size=5, initial_backoff_s=0.5,
                                              max_backoff_s=max_backoff_s, timeout_s=10))
    writer = threading.Thread(target=record, args=(400, 0.02), daemon=True)
    try:
        sender.start()
        writer.start()
        deadline = time.monotonic() + 60
        while sender.stats.stored < 30:
            assert time.monotonic() < deadline, "nothing delivered before the outage"
            time.sleep(0.01)
        orthanc.stop()                       # mid-delivery: requests are in flight
        down_at = time.monotonic()
        stored_before = sender.stats.stored
        while time.monotonic() - down_at < OUTAGE_S:
            time.sleep(0.5)                  # the outage itself is what is tested
            if time.monotonic() - down_at > OUTAGE_S / 4:
                stop_writing.set()           # the case ends during the outage
        writer.join(10)
        assert sender.stats.pacs_reachable is False
        assert "cannot connect" in sender.stats.last_error, sender.stats.last_error
        waiting = spool.rows(FINAL)
        assert waiting, "the outage left nothing to deliver"
        # Backoff: an instance waiting since the start of the outage was tried about
        # log2(max/initial) + (outage - sum of the doubling delays) / max times, not every
        # round (0.5 s polls would be 2 per second).
        most = max(r.attempts for r in waiting)
        assert 3 <= most <= 6 + OUTAGE_S / max_backoff_s, most
        retries_during_outage = sender.stats.retries
        orthanc = Orthanc(tmp_path / "orthanc", dicomweb=True, **ports).start()
        back_at = time.monotonic()
        deadline = back_at + max_backoff_s + 60
        while spool.counts()[STORED] < len(written):
            assert time.monotonic() < deadline, spool.counts()
            time.sleep(0.1)
        resumed_s = time.monotonic() - back_at
        sender.stop()
        assert_delivered_once_and_identical(orthanc, spool)
        assert sender.stats.failed == 0 and spool.counts()[FAILED] == 0
        assert sender.stats.stored == len(written)   # each confirmed once
        print(f"\n{len(written)} instances, {stored_before} stored before a {OUTAGE_S:.0f} s "
              f"outage, {len(waiting)} waiting through it (at most {most} attempts each, "
              f"{retries_during_outage} retries in all); all stored {resumed_s:.1f} s after "
              f"the PACS came back; {sender.stats.stored} stored responses")
    finally:
        stop_writing.set()
        sender.stop()
        orthanc.stop()


# -- security: bearer token, https, client certificate (an in-process STOW-RS server) ---------

def self_signed(tmp_path: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key (openssl)."""
    cert, key = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", f"/CN={name}", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True,
                   timeout=60)
    return cert, key


class StowHandler(http.server.BaseHTTPRequestHandler):
    """Stores nothing: answers each part with its SOP Instance UID in the Referenced SOP
    Sequence, after checking the bearer token; records each request's headers."""

    def do_POST(self):  # noqa: N802  (http.server's name)
        server = self.server
        server.seen.append(dict(self.headers))
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Authorization") != f"Bearer {server.token}":
            self.send_response(401)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        message = email.parser.BytesParser().parsebytes(
            f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode() + body)
        uids = [pydicom.dcmread(io.BytesIO(p.get_payload(decode=True))).SOPInstanceUID
                for p in message.get_payload()]
        answer = response(referenced=uids)
        self.send_response(200)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


class TlsServer(http.server.ThreadingHTTPServer):
    """TLS per connection, its handshake in the connection's thread (a client refused at
    the handshake never holds up the next one)."""

    context: ssl.SSLContext

    def get_request(self):
        sock, address = self.socket.accept()
        return self.context.wrap_socket(sock, server_side=True), address

    def handle_error(self, request, client_address):
        pass   # refused handshakes are what some tests provoke


@pytest.fixture
def https_stow(tmp_path):
    """An https STOW-RS server requiring a token and a client certificate."""
    server_cert, server_key = self_signed(tmp_path, "server")
    client_cert, client_key = self_signed(tmp_path, "client")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(server_cert, server_key)
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(client_cert)
    server = TlsServer(("127.0.0.1", 0), StowHandler)
    server.context = context
    server.token, server.seen = "s3cret", []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.url = f"https://127.0.0.1:{server.server_address[1]}/dicom-web"
    server.files = {"ca": server_cert, "cert": client_cert, "key": client_key}
    yield server
    server.shutdown()
    server.server_close()


def test_stow_over_https_with_token_and_client_certificate(tmp_path, https_stow, caplog):
    spool = Spool(tmp_path / "rec")
    instances = sample_instances(2)[:2]
    for ds in instances:
        spool.write_instance(ds)
    files = https_stow.files

    def attempt(**kw) -> StorageSender:
        config = PacsConfig(protocol=STOWRS, stow_url=https_stow.url, initial_backoff_s=0.01,
                            max_backoff_s=0.01, **kw)
        sender = StorageSender(spool, config)
        time.sleep(0.02)   # the 10 ms backoff of the previous attempt
        sender.run_once()
        sender.stop()
        return sender

    # The server's certificate is not among the system's CAs: TLS fails, nothing is lost.
    sender = attempt(token="s3cret", tls_cert_file=str(files["cert"]),
                     tls_key_file=str(files["key"]))
    assert "TLS" in sender.stats.last_error and "pacs_tls_ca_file" in sender.stats.last_error
    # TLS right, token wrong: 401 is an outage that needs an operator, logged as an error.
    with caplog.at_level(logging.ERROR, logger="dicom_or.storage_scu"):
        sender = attempt(token="wrong", tls_ca_file=str(files["ca"]),
                         tls_cert_file=str(files["cert"]), tls_key_file=str(files["key"]))
    assert "HTTP 401" in sender.stats.last_error and "pacs_token" in sender.stats.last_error
    assert any("pacs_token" in r.getMessage() for r in caplog.records)
    assert spool.counts()[FINAL] == 2 and sender.stats.failed == 0
    assert all(r.attempts == 2 for r in spool.rows())
    # The operator fixes the token: delivered.
    sender = attempt(token="s3cret", tls_ca_file=str(files["ca"]),
                     tls_cert_file=str(files["cert"]), tls_key_file=str(files["key"]))
    assert spool.counts()[STORED] == 2 and sender.stats.stored == 2
    headers = https_stow.seen[-1]
    assert headers["Authorization"] == "Bearer s3cret"
    assert headers["Accept"] == "application/dicom+json"
    assert headers["Content-Type"].startswith('multipart/related; type="application/dicom"; '
                                              "boundary=")
    assert int(headers["Content-Length"]) > sum(r.size for r in spool.rows())
    assert "Transfer-Encoding" not in headers
    # Verified server, no client certificate: the server refuses the connection.
    other = Spool(tmp_path / "rec2")
    other.write_instance(sample_instances(1)[0])
    sender = StorageSender(other, PacsConfig(protocol=STOWRS, stow_url=https_stow.url,
                                             token="s3cret", tls_ca_file=str(files["ca"])))
    sender.run_once()
    sender.stop()
    assert other.counts()[FINAL] == 1 and sender.stats.pacs_reachable is False
