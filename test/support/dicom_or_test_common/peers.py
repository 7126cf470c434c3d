"""Real DICOM peers for tests and benchmarks: Orthanc and dcmtk, run for real.

Nothing here mocks a peer: :class:`Orthanc` starts the Debian ``Orthanc`` binary on free
loopback ports with a configuration written to a temporary folder, and :func:`run_tool`
runs a dcmtk / dicom3tools command with a timeout, so a hung peer fails a test instead of
hanging it.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dicom_or_bringup.peer_tools import (  # noqa: F401  (the tests' one import place)
    DCMTK_TOOLS,
    dciodvfy,
    free_tcp_port,
    have,
    run_tool,
    tool_path,
)

ORTHANC_BINARY = "/usr/sbin/Orthanc"
# Debian orthanc-dicomweb: QIDO-RS / WADO-RS / STOW-RS server and a DICOMweb client.
ORTHANC_DICOMWEB_PLUGIN = "/usr/lib/orthanc/libOrthancDicomWeb.so.1.7"


@dataclass
class Orthanc:
    """An Orthanc PACS on loopback, for one test or benchmark.

    ``modalities`` maps a name to (AE title, host, port) of peers Orthanc may talk to
    (C-MOVE destinations, query targets). With ``dicomweb`` the Debian DICOMweb plugin is
    loaded: Orthanc serves ``/dicom-web/`` (QIDO-RS, WADO-RS, STOW-RS) and can query the
    DICOMweb servers of ``dicomweb_servers`` (name -> the plugin's server entry: a base URL,
    or a dict with ``Url`` and ``HttpHeaders``) through its REST API. Use as a context manager.
    """

    workdir: Path
    aet: str = "ORTHANC"
    modalities: dict[str, tuple[str, str, int]] = field(default_factory=dict)
    extra_config: dict[str, Any] = field(default_factory=dict)
    dicomweb: bool = False
    dicomweb_servers: dict[str, Any] = field(default_factory=dict)
    dicom_port: int = 0
    http_port: int = 0
    process: subprocess.Popen | None = None

    def config(self) -> dict[str, Any]:
        storage = str(self.workdir / "storage")
        config = {
            "Name": "dicom_or-test",
            "StorageDirectory": storage,
            "IndexDirectory": storage,
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "HttpServerEnabled": True,
            "DicomServerEnabled": True,
            "Plugins": [],
            "DicomModalities": {name: [aet, host, port]
                                for name, (aet, host, port) in self.modalities.items()},
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowFind": True,
            "DicomAlwaysAllowGet": True,
            "DicomAlwaysAllowMove": True,
            "DicomCheckCalledAet": False,
            "StableAge": 1,
            "ConcurrentJobs": 2,
            "DicomScuTimeout": 30,
        }
        if self.dicomweb:
            config["Plugins"] = [ORTHANC_DICOMWEB_PLUGIN]
            config["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/",
                                  "Servers": self.dicomweb_servers}
        config.update(self.extra_config)
        return config

    def start(self, timeout_s: float = 30.0) -> Orthanc:
        """Write the configuration, start Orthanc and wait until its REST API answers.
        Already running: nothing to do (``with Orthanc(...).start() as o`` would otherwise
        start a second server and leave the first one running after the test)."""
        if self.process is not None and self.process.poll() is None:
            return self
        if not Path(ORTHANC_BINARY).is_file():
            raise FileNotFoundError(f"{ORTHANC_BINARY} is not installed (apt-get install "
                                    "orthanc)")
        if self.dicomweb and not Path(ORTHANC_DICOMWEB_PLUGIN).is_file():
            raise FileNotFoundError(f"{ORTHANC_DICOMWEB_PLUGIN} is not installed (apt-get "
                                    "install orthanc-dicomweb)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.dicom_port = self.dicom_port or free_tcp_port()
        self.http_port = self.http_port or free_tcp_port()
        config_path = self.workdir / "orthanc.json"
        config_path.write_text(json.dumps(self.config(), indent=2))
        self._log = open(self.workdir / "orthanc.log", "w")
        self.process = subprocess.Popen([ORTHANC_BINARY, str(config_path)],
                                        stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.process.returncode}; see "
                                   f"{self.workdir / 'orthanc.log'}")
            try:
                self.rest("GET", "/system")
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"Orthanc did not answer on port {self.http_port} in {timeout_s}s")

    def rest(self, method: str, path: str, body: Any = None, timeout_s: float = 30.0) -> Any:
        """Call Orthanc's REST API; JSON in, JSON (or bytes) out."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}",
                                         data=data, method=method)
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            payload = response.read()
        try:
            return json.loads(payload)
        except ValueError:
            return payload

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if getattr(self, "_log", None):
            self._log.close()

    def __enter__(self) -> Orthanc:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


STORESCP_AE = "STORESCP"


@contextmanager
def storescp(out: Path, ae_title: str = STORESCP_AE) -> Iterator[int]:
    """dcmtk's storescp writing what it receives into ``out``; yields its port once it
    answers C-ECHO (fails the test if it exits or does not answer within 10 s)."""
    port = free_tcp_port()
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([tool_path("storescp"), "-aet", ae_title, "-od", str(out),
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while run_tool(["echoscu", "-aec", ae_title, "127.0.0.1", str(port)],
                       timeout_s=10).returncode != 0:
            assert proc.poll() is None, "storescp exited"
            assert time.monotonic() < deadline, "storescp did not start"
            time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)
