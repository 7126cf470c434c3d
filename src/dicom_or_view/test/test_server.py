"""The view's web service in-process on free ports, in front of a real bridge DICOMweb
service (dicom_or_bridge's DicomWebServer over an archive with a recorded video and ECG):
the page and its assets, the live WebSocket, the DICOMweb proxy, recorded waveforms as
traces, the RecordControl endpoint and the access rule."""

import asyncio
import contextlib
import json
import re
import ssl
import subprocess
from concurrent.futures import Future

import aiohttp
import pytest
import requests
from dicom_or_test_common.examples import write_recorded_instances

from dicom_or_bridge.dicomweb_server import DicomWebConfig, DicomWebServer
from dicom_or_core.model.errors import DicomOrError
from dicom_or_core.qr.model import ArchiveIndex, ModelStore
from dicom_or_view import live
from dicom_or_view.server import WEB_DIR, ViewConfig, ViewServer, client_tls

TOKEN = "view-token"


@contextlib.contextmanager
def bridge(tmp_path, token=""):
    files = write_recorded_instances(tmp_path / "archive", frames=15)
    store = ModelStore(ArchiveIndex(tmp_path / "archive"), retrieve_ae_title="DICOM_OR",
                       archive_rescan_s=0.0)
    web = DicomWebServer(store, DicomWebConfig(port=0, token=token))
    web.start()
    try:
        yield web, files
    finally:
        web.stop()
        store.close()


@contextlib.contextmanager
def view(control=None, **config):
    server = ViewServer(ViewConfig(port=0, **config), control=control)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def instance_path(path):
    return f"{path.parent.parent.name}/{path.parent.name}/{path.stem}"


def test_page_and_assets_are_served_and_need_nothing_from_the_internet():
    with view() as server:
        page = requests.get(server.url, timeout=10)
        assert page.status_code == 200 and "<title>" in page.text
        for asset in re.findall(r'(?:src|href)="(/static/[^"]+)"', page.text):
            answer = requests.get(server.url.rstrip("/") + asset, timeout=10)
            assert answer.status_code == 200, asset
    for path in WEB_DIR.iterdir():
        text = path.read_text()
        assert not re.search(r"https?://(?!\$)", text), f"{path.name} names a remote URL"
        assert "import " not in text or path.suffix != ".js", "no modules to fetch"


def test_live_websocket_sends_kept_state_then_updates_and_frames():
    async def scenario(server):
        server.publish("session", {"patient_id": "P1"})
        server.publish("streams", {"streams": []})
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(server.url + "ws") as ws:
                await ws.send_str(json.dumps({"token": ""}))
                first = [json.loads((await ws.receive(timeout=5)).data) for _ in range(2)]
                assert {m["type"] for m in first} == {"session", "streams"}
                assert server.has_clients()
                server.publish("wave", {"series": "1.2", "data": [[1.0]]}, keep=False)
                assert json.loads((await ws.receive(timeout=5)).data)["type"] == "wave"
                message = live.frame_message({"series": "1.2", "seq": 9}, b"\xff\xd8jpeg")
                server.publish_frame("1.2", message)
                got = await ws.receive(timeout=5)
                assert got.type == aiohttp.WSMsgType.BINARY and got.data == message
        for _ in range(50):
            if not server.has_clients():
                break
            await asyncio.sleep(0.05)
        assert not server.has_clients()

    with view() as server:
        asyncio.run(scenario(server))
        assert server.counts["frames_sent"] == 1


def test_data_and_video_on_separate_connections():
    async def scenario(server):
        server.publish("session", {"patient_id": "P1"})
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(server.url + "ws") as data, \
                    http.ws_connect(server.url + "ws") as video:
                await data.send_str(json.dumps({"want": ["data"]}))
                await video.send_str(json.dumps({"want": ["video"]}))
                assert json.loads((await data.receive(timeout=5)).data)["type"] == "session"
                for _ in range(50):
                    if server.wants_video() and server.has_clients():
                        break
                    await asyncio.sleep(0.02)
                server.publish("wave", {"series": "1.2"}, keep=False)
                server.publish_frame("1.2", live.frame_message({"seq": 1}, b"x"))
                assert (await video.receive(timeout=5)).type == aiohttp.WSMsgType.BINARY
                assert json.loads((await data.receive(timeout=5)).data)["type"] == "wave"
                with pytest.raises(asyncio.TimeoutError):
                    await video.receive(timeout=0.3)      # no texts on the video one
                with pytest.raises(asyncio.TimeoutError):
                    await data.receive(timeout=0.3)       # no frames on the data one
        for _ in range(100):   # both connections are dropped by the server, in any order
            if not server.wants_video() and not server.has_clients():
                break
            await asyncio.sleep(0.05)
        assert not server.wants_video() and not server.has_clients()

    with view() as server:
        asyncio.run(scenario(server))


def test_a_slow_client_gets_the_newest_frame_not_a_queue():
    async def scenario(server):
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(server.url + "ws") as ws:
                await ws.send_str("{}")
                for _ in range(50):
                    if server.has_clients():
                        break
                    await asyncio.sleep(0.02)
                loop = asyncio.get_running_loop()
                # Offered from another thread, faster than anybody reads them.
                await loop.run_in_executor(None, lambda: [server.publish_frame(
                    "s", live.frame_message({"seq": i}, b"x")) for i in range(200)])
                seqs = []
                while True:
                    try:
                        got = await ws.receive(timeout=1)
                    except TimeoutError:
                        break
                    header = json.loads(got.data[4:-1])
                    seqs.append(header["seq"])
                assert seqs[-1] == 199 and len(seqs) < 200

    with view() as server:
        asyncio.run(scenario(server))


def test_dicomweb_is_proxied_with_the_bridges_token_kept_on_the_server(tmp_path):
    with bridge(tmp_path, token="bridge-secret") as (web, files), \
            view(dicomweb_token="bridge-secret") as server:
        assert requests.get(server.url + "dicom-web/studies", timeout=10).status_code == 503
        server.set_dicomweb_url(web.base_url)
        studies = requests.get(server.url + "dicom-web/studies", timeout=10)
        assert studies.status_code == 200
        assert studies.headers["Content-Type"].startswith("application/dicom+json")
        assert len(studies.json()) == 1
        instances = requests.get(server.url + "dicom-web/instances",
                                 params={"includefield": "all"}, timeout=10).json()
        assert len(instances) == 2
        bad = requests.get(server.url + "dicom-web/studies?StudyDate=2024x", timeout=10)
        assert bad.status_code == 400 and "StudyDate" in bad.text   # the bridge's answer
        video = files["video"]
        study, series, sop = instance_path(video).split("/")
        mp4 = f"{server.url}dicom-web/studies/{study}/series/{series}/instances/{sop}/rendered"
        whole = requests.get(mp4, headers={"Accept": "video/mp4"}, timeout=30)
        assert whole.status_code == 200 and whole.headers["Content-Type"] == "video/mp4"
        part = requests.get(mp4, headers={"Range": "bytes=0-99"}, timeout=30)
        assert part.status_code == 206 and part.content == whole.content[:100]


def test_a_recorded_waveform_is_sent_as_traces_in_its_units(tmp_path):
    with bridge(tmp_path) as (web, files), view(dicomweb_url=web.base_url) as server:
        traces = requests.get(server.url + "api/waveform/" + instance_path(files["ecg"]),
                              timeout=30)
        assert traces.status_code == 200, traces.text
        data = traces.json()
        assert data["modality"] == "ECG"
        (group,) = data["groups"]
        assert group["sampling_hz"] == 500.0 and group["samples"] == 1000
        assert [c["unit"] for c in group["channels"]] == ["uV"] * len(group["channels"])
        assert all(len(c["values"]) == 1000 for c in group["channels"])
        assert max(abs(v) for v in group["channels"][0]["values"]) > 100
        video = requests.get(server.url + "api/waveform/" + instance_path(files["video"]),
                             timeout=30)
        assert video.status_code == 406
        missing = requests.get(server.url + "api/waveform/1.2/3.4/5.6", timeout=30)
        assert missing.status_code == 404
        server.config.max_waveform_bytes = 10000   # never held whole in memory beyond it
        big = requests.get(server.url + "api/waveform/" + instance_path(files["video"]),
                           timeout=30)
        assert big.status_code == 413


def test_record_control_buttons():
    calls = []

    def control(command, series):
        calls.append((command, series))
        future = Future()
        future.set_result({"success": True, "message": "stopped 4 stream(s)",
                           "sop_instance_uids": ["1.2.3"]})
        return future

    def unavailable(command, series):
        future = Future()
        future.set_exception(RuntimeError("no recorder answers /or/recorder/control"))
        return future

    with view(control=control) as server:
        answer = requests.post(server.url + "api/record", json={"command": "stop"},
                               timeout=10)
        assert answer.status_code == 200 and answer.json()["sop_instance_uids"] == ["1.2.3"]
        assert calls == [(2, [])]
        for body in ({"command": "PAUSE"}, {"series": []}, [1]):
            assert requests.post(server.url + "api/record", json=body,
                                 timeout=10).status_code == 400
        assert requests.post(server.url + "api/record", data="{", timeout=10).status_code == 400
    with view(control=unavailable) as server:
        answer = requests.post(server.url + "api/record", json={"command": "SNAPSHOT"},
                               timeout=10)
        assert answer.status_code == 503 and "no recorder" in answer.text


@pytest.mark.parametrize("path,method", [
    ("dicom-web/studies", "GET"), ("api/waveform/1.2/3.4/5.6", "GET"),
    ("api/record", "POST")])
def test_the_access_token_guards_data_and_controls(path, method):
    with view(control=lambda *_: Future(), token=TOKEN, dicomweb_url="http://127.0.0.1:9") \
            as server:
        assert requests.get(server.url, timeout=10).status_code == 200      # the page
        assert requests.get(server.url + "api/config", timeout=10).json() == {
            "token_required": True, "dicomweb": "/dicom-web"}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            answer = requests.request(method, server.url + path, headers=headers,
                                      json={"command": "STOP"}, timeout=10)
            assert answer.status_code == 401
            assert answer.headers["WWW-Authenticate"].startswith("Bearer")
        right = requests.request(method, server.url + path, json={"command": "PAUSE"},
                                 headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
        assert right.status_code != 401


def test_the_websocket_needs_the_token_too():
    async def scenario(server):
        async with aiohttp.ClientSession() as http:
            for hello in ("{}", json.dumps({"token": "wrong"}), "not json"):
                async with http.ws_connect(server.url + "ws") as ws:
                    await ws.send_str(hello)
                    got = await ws.receive(timeout=5)
                    assert got.type == aiohttp.WSMsgType.CLOSE and ws.close_code == 4401
            assert not server.has_clients()
            async with http.ws_connect(server.url + "ws") as ws:
                await ws.send_str(json.dumps({"token": TOKEN}))
                got = await ws.receive(timeout=5)
                assert json.loads(got.data)["type"] == "session"

    with view(token=TOKEN) as server:
        server.publish("session", {"patient_id": "P1"})
        asyncio.run(scenario(server))
        assert server.counts["refused"] == 3


def test_port_in_use_is_an_oserror():
    with view() as server, pytest.raises(OSError):
        ViewServer(ViewConfig(port=server.port)).start()


def self_signed_cert(folder):
    key, cert = folder / "key.pem", folder / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True, timeout=60)
    return str(cert), str(key)


def test_an_https_bridge_requiring_client_certificates(tmp_path):
    cert, key = self_signed_cert(tmp_path)
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)
    server_tls.load_verify_locations(cert)        # clients need a certificate it signed
    server_tls.verify_mode = ssl.CERT_REQUIRED
    files = write_recorded_instances(tmp_path / "archive", frames=5)
    store = ModelStore(ArchiveIndex(tmp_path / "archive"), retrieve_ae_title="DICOM_OR",
                       archive_rescan_s=0.0)
    web = DicomWebServer(store, DicomWebConfig(port=0, tls=server_tls))
    web.start()
    try:
        assert web.base_url.startswith("https://")
        with view(dicomweb_url=web.base_url,
                  dicomweb_tls=client_tls(ca=cert, cert=cert, key=key)) as server:
            answer = requests.get(server.url + "dicom-web/studies", timeout=10)
            assert answer.status_code == 200 and len(answer.json()) == 1
        with view(dicomweb_url=web.base_url, dicomweb_tls=client_tls(ca=cert)) as server:
            answer = requests.get(server.url + "dicom-web/studies", timeout=10)
            assert answer.status_code == 502     # no client certificate: refused
        assert files
    finally:
        web.stop()
        store.close()


@pytest.mark.parametrize("kwargs,name", [
    ({"ca": "/nonexistent.pem"}, "dicomweb_ca"), ({"cert": "/x.pem"}, "dicomweb_cert"),
    ({"cert": "/nonexistent.pem", "key": "/nonexistent.pem"}, "dicomweb_cert")])
def test_bad_tls_files_name_the_parameter(kwargs, name):
    with pytest.raises(DicomOrError, match=name):
        client_tls(**kwargs)
