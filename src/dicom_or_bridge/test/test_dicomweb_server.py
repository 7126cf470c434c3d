"""The DICOMweb service in-process on a free port, over the same model store as the DIMSE
SCP: dicomweb-client (a client nobody here wrote) lists the live series with QIDO-RS and
retrieves a recorded instance with WADO-RS bit for bit; QIDO and C-FIND answer the same
query with the same series; errors, limits, token and TLS."""

from __future__ import annotations

import contextlib
import io
import logging
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests
from bridge_fixtures import (
    ECG_SERIES,
    STUDY,
    VIDEO_SERIES,
    ecg,
    self_signed_cert,
    video,
    write_instance,
)
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom import sop_class as sc

from dicom_or_bridge.dicomweb_server import DicomWebConfig, DicomWebServer
from dicom_or_bridge.scp import BridgeScp, ScpConfig, tls_context
from dicom_or_bridge.snapshot import snapshot_dataset
from dicom_or_core.iod.video import build_snapshot
from dicom_or_core.model.uid import new_uid
from dicom_or_core.qr.model import ArchiveIndex, LiveStream, ModelStore

TOKEN = "s3cret-token"
FRAME = np.arange(6 * 8 * 3, dtype=np.uint8).reshape(6, 8, 3)


def archive_recorded_frame(root: Path, number: int) -> Path:
    """An instance as the recorder builds it (VL Endoscopic Image of the live endoscope's
    series), stored at <root>/<study>/<series>/<sop>.dcm."""
    descriptor = video()
    descriptor.rows, descriptor.columns = FRAME.shape[:2]
    sop = new_uid()
    ds = build_snapshot(descriptor, FRAME, 1_790_000_000_000_000_000, sop, number)
    path = root / STUDY / VIDEO_SERIES / f"{sop}.dcm"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


@dataclass
class Service:
    web: DicomWebServer
    scp: BridgeScp
    files: list[Path]
    renders: list[str]

    @property
    def url(self) -> str:
        return self.web.base_url


@contextlib.contextmanager
def service(tmp_path: Path, tls: bool | ScpConfig = False, **config: object):
    """The service over a store of the two live streams and two archived instances, beside
    a plain SCP on the same store; ``tls``: a self-signed certificate, or the TLS fields
    of an ScpConfig."""
    archive = tmp_path / "archive"
    files = [archive_recorded_frame(archive, 1), write_instance(archive, number=2)]
    store = ModelStore(ArchiveIndex(archive), retrieve_ae_title="DICOM_OR",
                       archive_rescan_s=0.0)
    store.set_streams([LiveStream(video()), LiveStream(ecg())])
    assert store.rescan(10)
    renders: list[str] = []

    def render(series_uid: str) -> Dataset | None:
        renders.append(series_uid)
        return snapshot_dataset(video(), FRAME, "rgb8")

    scp_config = tls if isinstance(tls, ScpConfig) else ScpConfig()
    if tls is True:
        cert, key = self_signed_cert(tmp_path)
        scp_config = ScpConfig(tls_cert=str(cert), tls_key=str(key))
    scp = BridgeScp(store, ScpConfig(), logging.getLogger("test.scp"))
    scp.start()
    web = DicomWebServer(store, DicomWebConfig(tls=tls_context(scp_config), **config),
                         logging.getLogger("test.dicomweb"), render=render)
    web.start()
    try:
        yield Service(web, scp, files, renders)
    finally:
        web.stop()
        scp.stop()
        store.close()


@pytest.fixture
def svc(tmp_path):
    with service(tmp_path) as s:
        yield s


def c_find_series(port: int, **keys: str) -> set[str]:
    ae = AE(ae_title="TEST_SCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(sc.StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOM_OR")
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "SERIES"
    query.StudyInstanceUID = ""
    for keyword, value in keys.items():
        setattr(query, keyword, value)
    found = {str(a.SeriesInstanceUID) for s, a in assoc.send_c_find(
        query, sc.StudyRootQueryRetrieveInformationModelFind) if s and s.Status == 0xFF00}
    assoc.release()
    return found


def test_dicomweb_client_lists_live_series_as_c_find_does(svc):
    client = DICOMwebClient(svc.url)
    every = client.search_for_series()
    assert {a["0020000E"]["Value"][0] for a in every} == {VIDEO_SERIES, ECG_SERIES} \
        == c_find_series(svc.scp.port)
    es = client.search_for_series(search_filters={"Modality": "ES"})
    in_study = client.search_for_series(STUDY, search_filters={"Modality": "ES"})
    assert [a["0020000E"]["Value"][0] for a in es] == \
        [a["0020000E"]["Value"][0] for a in in_study] == [VIDEO_SERIES]
    assert c_find_series(svc.scp.port, Modality="ES") == {VIDEO_SERIES}
    (answer,) = es
    assert answer["00081190"]["Value"][0].startswith("ros2:/or/endoscope/frames")
    assert answer["00100010"]["Value"] == [{"Alphabetic": "Doe^Jane"}]
    assert answer["00201209"]["Value"] == [2]   # NumberOfSeriesRelatedInstances
    studies = client.search_for_studies(search_filters={"PatientID": "P-001"})
    assert [s["0020000D"]["Value"][0] for s in studies] == [STUDY]
    instances = client.search_for_instances(STUDY, VIDEO_SERIES)
    assert len(instances) == 2


def test_dicomweb_client_retrieves_a_recorded_instance_bit_for_bit(svc):
    client = DICOMwebClient(svc.url)
    path = svc.files[0]
    sop = dcmread(path, stop_before_pixels=True).SOPInstanceUID
    instance = client.retrieve_instance(STUDY, VIDEO_SERIES, sop)
    assert instance.SOPInstanceUID == sop
    assert instance.PixelData == FRAME.tobytes()
    url = f"{svc.url}/studies/{STUDY}/series/{VIDEO_SERIES}/instances/{sop}"
    (raw,) = client.retrieve_bulkdata(url)      # the part itself, undecoded
    assert raw == path.read_bytes()
    series = client.retrieve_series(STUDY, VIDEO_SERIES)
    assert sorted(i.SOPInstanceUID for i in series) == sorted(
        dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in svc.files)
    metadata = client.retrieve_instance_metadata(STUDY, VIDEO_SERIES, sop)  # one object
    assert "7FE00010" not in metadata and metadata["00080018"]["Value"] == [sop]
    assert len(client.retrieve_series_metadata(STUDY, VIDEO_SERIES)) == 2
    assert len(client.retrieve_study_metadata(STUDY)) == 2


def test_rendered_live_series_is_the_current_frame(svc):
    url = f"{svc.url}/studies/{STUDY}/series/{VIDEO_SERIES}/rendered"
    png = requests.get(url, headers={"Accept": "image/png"}, timeout=10)
    assert png.status_code == 200 and png.headers["Content-Type"] == "image/png"
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png.content))), FRAME)
    jpeg = requests.get(url, timeout=10)
    assert jpeg.headers["Content-Type"] == "image/jpeg"
    assert Image.open(io.BytesIO(jpeg.content)).size == (8, 6)
    assert svc.renders == [VIDEO_SERIES, VIDEO_SERIES]
    ecg_url = f"{svc.url}/studies/{STUDY}/series/{ECG_SERIES}/rendered"
    assert requests.get(ecg_url, timeout=10).status_code == 404
    assert requests.get(url, headers={"Accept": "image/gif"}, timeout=10).status_code == 406
    sop = dcmread(svc.files[0], stop_before_pixels=True).SOPInstanceUID
    archived = requests.get(f"{svc.url}/studies/{STUDY}/series/{VIDEO_SERIES}/instances/"
                            f"{sop}/rendered", headers={"Accept": "image/png"}, timeout=10)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(archived.content))), FRAME)


@pytest.mark.parametrize("path, status, reason", [
    ("/series?Foo=1", 400, "unknown attribute 'Foo'"),
    ("/studies?StudyDate=2024x", 400, "StudyDate: not a DA value: '2024x'"),
    ("/studies?limit=x", 400, "limit must be one non-negative integer"),
    (f"/studies/{STUDY}/series/1.2.3/instances/4.5.6", 404, "no such study, series or "
     "instance"),
    ("/studies/9.9.9", 404, "no such study, series or instance"),
    (f"/studies/{STUDY}/series/{ECG_SERIES}", 404, "no archived instance there"),
    ("/studies/not-a-uid", 404, "404: Not Found"),   # no route: not a UID
])
def test_errors_say_why(svc, path, status, reason):
    answer = requests.get(svc.url + path, timeout=10)
    assert (answer.status_code, answer.text) == (status, reason)


def test_accept_that_cannot_be_honoured_is_406(svc):
    jpeg = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50'
    answer = requests.get(f"{svc.url}/studies/{STUDY}", headers={"Accept": jpeg}, timeout=10)
    assert answer.status_code == 406
    answer = requests.get(f"{svc.url}/studies", headers={"Accept": "application/dicom+xml"},
                          timeout=10)
    assert answer.status_code == 406


def test_fuzzymatching_true_is_ignored_with_a_warning(svc):
    answer = requests.get(f"{svc.url}/series?fuzzymatching=true&PatientName=doe", timeout=10)
    assert answer.status_code == 200 and answer.json() == []
    assert answer.headers["Warning"].startswith("299 ")


def test_too_many_matches_is_413_and_limit_pages(tmp_path):
    with service(tmp_path, max_matches=1) as svc:
        answer = requests.get(f"{svc.url}/series", timeout=10)
        assert (answer.status_code, answer.text) == (413, "more than 1 matches; narrow the "
                                                     "query")
        pages = [requests.get(f"{svc.url}/series?limit=1&offset={n}", timeout=10).json()
                 for n in range(3)]
        assert [len(p) for p in pages] == [1, 1, 0]


def test_token_is_required_and_refusals_are_logged(tmp_path, caplog):
    with service(tmp_path, token=TOKEN) as svc, caplog.at_level(logging.WARNING):
        assert requests.get(f"{svc.url}/studies", timeout=10).status_code == 401
        wrong = requests.get(f"{svc.url}/studies", timeout=10,
                             headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert "Bearer" in wrong.headers["WWW-Authenticate"]
        client = DICOMwebClient(svc.url, headers={"Authorization": f"Bearer {TOKEN}"})
        assert len(client.search_for_series(search_filters={"Modality": "ES"})) == 1
    refusals = [r for r in caplog.records if "bearer token" in r.getMessage()]
    assert len(refusals) == 1   # rate limited: the second refusal is held back


def test_too_many_concurrent_requests_get_503(tmp_path):
    gate = threading.Event()
    with service(tmp_path, max_concurrent_requests=1) as svc:
        svc.web.render = lambda uid: gate.wait(10) and None
        url = f"{svc.url}/studies/{STUDY}/series/{VIDEO_SERIES}/rendered"
        slow = threading.Thread(target=requests.get, args=(url,), kwargs={"timeout": 10})
        slow.start()
        deadline = time.monotonic() + 10
        while svc.web.counts["http_requests"] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        busy = requests.get(f"{svc.url}/studies", timeout=10)
        gate.set()
        slow.join(10)
    assert busy.status_code == 503 and busy.headers["Retry-After"] == "1"


def test_long_request_lines_and_headers_are_refused_without_a_traceback(svc, caplog):
    with caplog.at_level(logging.DEBUG):
        long_line = requests.get(f"{svc.url}/studies?PatientName={'x' * 20000}", timeout=10)
        long_header = requests.get(f"{svc.url}/studies", headers={"X-A": "y" * 9000},
                                   timeout=10)
    assert long_line.status_code == long_header.status_code == 400
    assert requests.get(f"{svc.url}/studies", timeout=10).status_code == 200
    (line,) = [r for r in caplog.records if "LineTooLong" in r.getMessage()]  # rate limited
    assert line.levelno == logging.WARNING and line.exc_info is None
    assert not [r for r in caplog.records if r.exc_info]


def test_tls(tmp_path):
    with service(tmp_path, tls=True) as svc:
        assert svc.url.startswith("https://")
        answer = requests.get(f"{svc.url}/studies", timeout=10,
                              verify=str(tmp_path / "cert.pem"))
        assert answer.status_code == 200 and len(answer.json()) == 1
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(svc.url.replace("https", "http") + "/studies", timeout=10)


def test_tls_with_a_ca_requires_a_client_certificate(tmp_path):
    from test_dcmtk_interop import _make_pki

    pki = _make_pki(tmp_path)
    with service(tmp_path, tls=ScpConfig(tls_cert=str(pki["server"]),
                                         tls_key=str(pki["server_key"]),
                                         tls_ca=str(pki["ca"]))) as svc:
        # TLS 1.3: the server checks the client's certificate after the client considers the
        # handshake done, so the refusal is a dropped connection (SSLError or reset).
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(f"{svc.url}/studies", timeout=10, verify=str(pki["ca"]))
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(f"{svc.url}/studies", timeout=10, verify=str(pki["ca"]),
                         cert=(str(pki["rogue"]), str(pki["rogue_key"])))
        session = requests.Session()
        session.trust_env = False   # a REQUESTS_CA_BUNDLE would override session.verify
        session.verify = str(pki["ca"])
        session.cert = (str(pki["client"]), str(pki["client_key"]))
        client = DICOMwebClient(svc.url, session=session)
        assert len(client.search_for_series(search_filters={"Modality": "ES"})) == 1


def test_qido_latency_beside_c_find(svc):
    """Measured, not asserted tightly: the same one-step series query both ways (QIDO on a
    kept-alive HTTP connection, C-FIND on one open association)."""
    client = DICOMwebClient(svc.url)
    runs = 50
    client.search_for_series(search_filters={"Modality": "ES"})   # connection up
    start = time.perf_counter()
    for _ in range(runs):
        client.search_for_series(search_filters={"Modality": "ES"})
    qido = (time.perf_counter() - start) / runs
    ae = AE(ae_title="TEST_SCU")
    ae.add_requested_context(sc.StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", svc.scp.port, ae_title="DICOM_OR")
    query = Dataset()
    query.QueryRetrieveLevel, query.StudyInstanceUID, query.Modality = "SERIES", "", "ES"
    start = time.perf_counter()
    for _ in range(runs):
        answers = list(assoc.send_c_find(query, sc.StudyRootQueryRetrieveInformationModelFind))
    c_find = (time.perf_counter() - start) / runs
    assoc.release()
    assert len(answers) == 2   # one match, then success
    print(f"QIDO-RS /series?Modality=ES {qido * 1000:.1f} ms, C-FIND on an open "
          f"association {c_find * 1000:.1f} ms")
    assert qido < 1.0


def _start_retrieval(url: str) -> socket.socket:
    """A raw WADO-RS retrieval of the whole study whose body is never read."""
    host_port = url.split("//")[1].split("/")[0]
    host, port = host_port.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    path = "/" + url.split("/", 3)[3]
    sock.sendall(f"GET {path}/studies/{STUDY} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert sock.recv(64).startswith(b"HTTP/1.1 200")
    return sock


def test_client_leaving_mid_retrieval_and_stop_mid_retrieval_end_cleanly(tmp_path, caplog):
    """A large instance (16 MiB) is streamed: a client that leaves, or the service stopping,
    with the body half sent logs no error and leaves the service answering / stopped."""
    with caplog.at_level(logging.INFO), service(tmp_path) as svc:
        big = dcmread(svc.files[1])
        big.Rows = big.Columns = 4096
        big.PixelData = bytes(4096 * 4096)
        big.save_as(svc.files[1])
        _start_retrieval(svc.url).close()
        assert requests.get(f"{svc.url}/studies", timeout=10).status_code == 200
        in_flight = _start_retrieval(svc.url)
        start = time.monotonic()
        svc.web.stop()
        stopped_in = time.monotonic() - start
        in_flight.close()
    assert stopped_in < 5.0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("client closed the connection" in r.getMessage() for r in caplog.records)


def test_a_large_instance_is_streamed_not_held(tmp_path):
    """A 64 MiB instance goes out in chunks: the Python heap (server and streaming client in
    this process) grows by a few chunks, not by the instance."""
    import tracemalloc

    with service(tmp_path) as svc:
        big = dcmread(svc.files[1])
        big.Rows = big.Columns = 8192
        big.PixelData = bytes(8192 * 8192)
        big.save_as(svc.files[1])
        del big
        sop = dcmread(svc.files[1], stop_before_pixels=True).SOPInstanceUID
        url = f"{svc.url}/studies/{STUDY}/series/{VIDEO_SERIES}/instances/{sop}"
        tracemalloc.start()
        start = time.perf_counter()
        with requests.get(url, stream=True, timeout=30) as answer:
            received = sum(len(c) for c in answer.iter_content(1 << 16))
        seconds = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert received == int(answer.headers["Content-Length"]) > 64 << 20
    print(f"WADO-RS 64 MiB instance: {received / seconds / 1e6:.0f} MB/s, Python heap peak "
          f"{peak / 1e6:.1f} MB")
    assert peak < 8 << 20
