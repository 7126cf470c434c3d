"""Fuzz suite of the bridge SCP: hostile bytes and identifiers against a child-process SCP.

The SCP runs in a child process (``python test_fuzz.py serve <config>``) so that a crash is
seen as a crash and its RSS can be measured; its log goes to a file, in which no traceback
may appear. Case families (seeded, reproducible):

* ``raw``: random bytes and mutated valid A-ASSOCIATE-RQ / P-DATA-TF PDUs over raw sockets;
* ``identifier``: malformed C-FIND / C-GET / C-MOVE identifiers (wrong VRs, huge values,
  bad UIDs, nested sequences, unknown and private tags, every level and model, bad Move
  Destinations), each answered with a final status from the documented set;
* ``wildcard``: hostile ``*`` / ``?`` patterns on every wild-card VR;
* ``half_open``: part of a PDU (or of a TLS handshake), then a stall or a close;
* ``flood``: bursts of connections opened and dropped at once.

After every batch a C-ECHO and a correct C-FIND must be answered (correct answers, within a
generous timeout; the answer time is recorded, the report prints its maximum). Defaults: a
few hundred cases; ``DICOM_OR_FUZZ_CASES`` sets the number of cases per family (times TLS
on / off), ``bench/fuzz_bridge.py`` runs thousands and reports the RSS plateau.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from bridge_fixtures import (  # noqa: E402
    ECG_SERIES,
    PATIENT_ID,
    STUDY,
    VIDEO_SERIES,
    self_signed_cert,
)

DEFAULT_CASES = 40           # per family and TLS mode: ~400 cases in make test
BATCH = 10                   # cases between two health probes
PROBE_LIMIT_S = 1.0          # a probe answer is expected within this ...
PROBE_TIMEOUT_S = 10.0       # ... and must come within this (shared 2-core machine)
SEED = int(os.environ.get("DICOM_OR_FUZZ_SEED", "20241124"))

# Final statuses a malformed request may get (PS3.4 C.4.1.1.4, C.4.2.1.5, C.4.3.1.4).
ALLOWED_FINAL = {0x0000, 0xA700, 0xA701, 0xA702, 0xA801, 0xA900, 0xB000, 0xC000, 0xFE00}

FIND_MODELS = {"PATIENT": "1.2.840.10008.5.1.4.1.2.1.1", "STUDY": "1.2.840.10008.5.1.4.1.2.2.1"}
MOVE_MODELS = {"PATIENT": "1.2.840.10008.5.1.4.1.2.1.2", "STUDY": "1.2.840.10008.5.1.4.1.2.2.2"}
GET_MODELS = {"PATIENT": "1.2.840.10008.5.1.4.1.2.1.3", "STUDY": "1.2.840.10008.5.1.4.1.2.2.3"}
VERIFICATION = "1.2.840.10008.1.1"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"


def cases_per_family() -> int:
    return max(1, int(os.environ.get("DICOM_OR_FUZZ_CASES", DEFAULT_CASES)))


# --- the SCP in a child process --------------------------------------------------------


def serve(config: dict) -> None:
    """Child side: a BridgeScp over the fixtures' two live streams and an archive of two
    instances; prints the port, serves until stdin closes."""
    from bridge_fixtures import ecg, video, write_instance

    from dicom_or_bridge.scp import BridgeScp, ScpConfig
    from dicom_or_core.qr.model import ArchiveIndex, LiveStream, ModelStore

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # its INFO is per PDU
    archive = Path(config.pop("archive"))
    for n in range(2):
        write_instance(archive, sop=f"1.2.826.0.1.3680043.8.498.77.{n}", number=n + 1)
    store = ModelStore(ArchiveIndex(archive), domain_id=0, retrieve_ae_title="DICOM_OR",
                       archive_rescan_s=0.0)
    store.set_streams([LiveStream(video()), LiveStream(ecg())])
    config["move_destinations"] = {k: tuple(v) for k, v in
                                   config.get("move_destinations", {}).items()}
    scp = BridgeScp(store, ScpConfig(**config), logging.getLogger("fuzz.scp"))
    print(scp.start(), flush=True)
    sys.stdin.read()  # the parent closes stdin to stop us
    scp.stop()


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB (Linux /proc)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


@dataclass
class ChildScp:
    """The running child SCP: port, log file, TLS client context (None without TLS)."""

    proc: subprocess.Popen
    port: int
    log_path: Path
    client_tls: ssl.SSLContext | None
    rss: list[int] = field(default_factory=list)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def sample_rss(self) -> None:
        if self.alive():
            self.rss.append(rss_kib(self.proc.pid))

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def tracebacks(self) -> list[str]:
        """Each traceback logged by the project's code (or by pynetdicom about an exception
        in one of its handlers), with the log line before it (what failed)."""
        return [trace for trace, internal in self._tracebacks() if not internal]

    def pynetdicom_tracebacks(self) -> dict[str, int]:
        """Tracebacks pynetdicom logs about its own decoding of malformed PDUs / DIMSE
        messages (before any handler runs), by the log line that introduces them."""
        counts: dict[str, int] = {}
        for trace, internal in self._tracebacks():
            if internal:
                head = trace.splitlines()[0][24:][:90]
                counts[head] = counts.get(head, 0) + 1
        return counts

    def _tracebacks(self) -> list[tuple[str, bool]]:
        lines = self.log_text().splitlines()
        found = []
        for i, line in enumerate(lines):
            if not line.startswith("Traceback") and not line.startswith("Exception in thread"):
                continue
            if line.startswith("Traceback") and i and \
                    lines[i - 1].startswith("Exception in thread"):
                continue  # the thread's own traceback line: counted once
            before = lines[i - 1] if i else ""
            internal = line.startswith("Exception in thread") and "run_reactor" in line or \
                (" pynetdicom." in before and "Exception in handler" not in before
                 and "pynetdicom.service_class" not in before)
            found.append(("\n".join(lines[max(0, i - 1):i + 14]), internal))
        return found


@contextlib.contextmanager
def child_scp(folder: Path, tls: bool, **config: object) -> Iterator[ChildScp]:
    """Start the SCP in a child process; stop it (and check it did not crash) on exit."""
    folder.mkdir(parents=True, exist_ok=True)
    cfg: dict = {"archive": str(folder / "archive"), "acse_timeout_s": 5.0,
                 "dimse_timeout_s": 5.0, "network_timeout_s": 10.0,
                 "move_destinations": {"STORE_SCP": ["127.0.0.1", 1]}, **config}
    client = None
    if tls:
        cert, key = self_signed_cert(folder)
        cfg.update(tls_cert=str(cert), tls_key=str(key))
        client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
    log_path = folder / f"scp-{'tls' if tls else 'tcp'}.log"
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen([sys.executable, __file__, "serve", json.dumps(cfg)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=log_file, text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip().isdigit(), f"the SCP did not start: {log_path.read_text()}"
        child = ChildScp(proc, int(line), log_path, client)
        child.sample_rss()
        yield child
        assert child.alive(), f"the SCP crashed: {child.log_text()[-3000:]}"
    finally:
        with contextlib.suppress(OSError):
            proc.stdin.close()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- raw sockets and PDUs --------------------------------------------------------------


def connect(child: ChildScp, timeout: float = 2.0) -> socket.socket:
    """A connected socket (TLS-wrapped when the SCP uses TLS)."""
    sock = socket.create_connection(("127.0.0.1", child.port), timeout=timeout)
    _PENDING.pop(id(sock), None)
    if child.client_tls is not None:
        try:
            return child.client_tls.wrap_socket(sock, server_hostname="localhost")
        except BaseException:
            sock.close()
            raise
    return sock


def _item(kind: int, body: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(body)) + body


def _uid(uid: str) -> bytes:
    return uid.encode() + (b"\x00" if len(uid) % 2 else b"")


def associate_rq(contexts: list[tuple[str, list[str]]], calling: bytes = b"FUZZ",
                 called: bytes = b"DICOM_OR", max_pdu: int = 16384) -> bytes:
    """A valid A-ASSOCIATE-RQ PDU (PS3.8 9.3.2)."""
    body = struct.pack(">HH", 1, 0) + called.ljust(16) + calling.ljust(16) + bytes(32)
    body += _item(0x10, b"1.2.840.10008.3.1.1.1")
    for n, (abstract, syntaxes) in enumerate(contexts):
        sub = _item(0x30, _uid(abstract)) + b"".join(_item(0x40, _uid(ts)) for ts in syntaxes)
        body += _item(0x20, struct.pack(">BBBB", 2 * n + 1, 0, 0, 0) + sub)
    user = _item(0x51, struct.pack(">I", max_pdu)) + _item(0x52, b"1.2.826.0.1.3680043.9.1")
    body += _item(0x50, user)
    return struct.pack(">BBI", 0x01, 0, len(body)) + body


def p_data(context_id: int, payload: bytes, command: bool, last: bool = True) -> bytes:
    """One P-DATA-TF PDU with one PDV (PS3.8 9.3.5, E.2)."""
    header = (0x01 if command else 0x00) | (0x02 if last else 0x00)
    pdv = struct.pack(">IB", len(payload) + 2, context_id) + bytes([header]) + payload
    return struct.pack(">BBI", 0x04, 0, len(pdv)) + pdv


_PENDING: dict[int, bytes] = {}  # bytes read past the last PDU, per socket


def recv_pdu(sock: socket.socket, timeout: float = 3.0) -> bytes:
    """One PDU (type, length, body) or whatever arrived before close / timeout; bytes of
    the next PDU stay buffered for the next call."""
    sock.settimeout(timeout)
    data = _PENDING.pop(id(sock), b"")
    try:
        while len(data) < 6 or len(data) < 6 + struct.unpack(">I", data[2:6])[0]:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except (OSError, ssl.SSLError):
        pass
    if len(data) >= 6:
        end = 6 + struct.unpack(">I", data[2:6])[0]
        if len(data) > end:
            _PENDING[id(sock)] = data[end:]
            data = data[:end]
    return data


def _element(tag: int, vr: str, value: bytes) -> bytes:
    """One Explicit VR Little Endian element, length as given (PS3.5 7.1.2)."""
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr.encode("latin-1")[:2].ljust(2)
    if vr in ("OB", "OW", "OF", "SQ", "UT", "UN", "UC", "UR", "OD", "OL", "OV", "SV", "UV"):
        return head + b"\x00\x00" + struct.pack("<I", len(value) & 0xFFFFFFFF) + value
    return head + struct.pack("<H", len(value) & 0xFFFF) + value


def _implicit(tag: int, value: bytes) -> bytes:
    return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(value)) + value


def command_set(fields: list[tuple[int, bytes]]) -> bytes:
    """A DIMSE command set (Implicit VR LE, PS3.7 6.3.1) with its group length."""
    body = b"".join(_implicit(tag, value) for tag, value in fields)
    return _implicit(0x00000000, struct.pack("<I", len(body))) + body


def _us(n: int) -> bytes:
    return struct.pack("<H", n)


def request_command(kind: str, sop_class: str, message_id: int,
                    destination: bytes | None = None) -> bytes:
    """C-FIND-RQ / C-GET-RQ / C-MOVE-RQ / C-ECHO-RQ command set with a data set."""
    field_code = {"find": 0x0020, "get": 0x0010, "move": 0x0021, "echo": 0x0030}[kind]
    fields = [(0x00000002, _uid(sop_class)), (0x00000100, _us(field_code)),
              (0x00000110, _us(message_id))]
    if kind != "echo":
        fields.append((0x00000700, _us(2)))
    if destination is not None:
        fields.append((0x00000600, destination + (b" " if len(destination) % 2 else b"")))
    fields.append((0x00000800, _us(0x0101 if kind == "echo" else 0x0000)))
    return command_set(sorted(fields))


# --- identifiers -----------------------------------------------------------------------

WILDCARD_KEYS = {  # one key per VR of PS3.4 C.2.2.2.4
    "AE": 0x00080054, "CS": 0x00080060, "LO": 0x00081030, "LT": 0x00204000,
    "PN": 0x00100010, "SH": 0x00080050, "ST": 0x00080081, "UC": 0x00080119,
    "UR": 0x00081190, "UT": 0x0040A160}
KEYS = [0x00100010, 0x00100020, 0x00100030, 0x00100040, 0x0020000D, 0x00080020, 0x00080030,
        0x00080050, 0x00081030, 0x00080061, 0x0020000E, 0x00080060, 0x00200011, 0x0008103E,
        0x00080021, 0x00080031, 0x00081190, 0x00280010, 0x00080018, 0x00200013, 0x00080023,
        0x0008002A, 0x0040A370, 0x00400275, 0x00081111, 0x00200052, 0x00180040, 0x00091001,
        0x7FE00010, 0x00311234, 0x00080054, 0x00204000, 0x0040A160, 0x00080005]
VRS = ["AE", "AS", "AT", "CS", "DA", "DS", "DT", "FL", "FD", "IS", "LO", "LT", "OB", "OW",
       "PN", "SH", "SL", "SQ", "SS", "ST", "TM", "UC", "UI", "UL", "UN", "UR", "US", "UT",
       "ZZ", "\x00\x00", "xx"]
LEVELS = ["PATIENT", "STUDY", "SERIES", "IMAGE", "FRAME", "", "series", "STUDY\\SERIES"]


def _random_value(rng: random.Random) -> bytes:
    choice = rng.randrange(12)
    if choice == 0:
        return b""
    if choice == 1:
        return rng.randbytes(rng.randint(1, 64))
    if choice == 2:
        return b"x" * rng.choice([65, 1024, 20000, 60000])
    if choice == 3:
        return rng.choice([b"1.2.x", b"..", b"1" * 80, b"1.2.840.10008\\" * 50, b"\x00\x01"])
    if choice == 4:
        return rng.choice([b"2024-99-99", b"20241124-20231124", b"-", b"--", b"2" * 300,
                           b"20241124\\20241125", b"20241124 ", b"1015-0900", b"99"])
    if choice == 5:
        return rng.choice([b"\xff\xfe", b"\xc3\x28", "M\u00fcller".encode("utf-16")])
    if choice == 6:
        return "*".join(rng.choice(["", "a", "?", "**"]) for _ in range(rng.randint(2, 60)))\
            .encode()
    if choice == 7:
        return rng.choice([STUDY, VIDEO_SERIES, ECG_SERIES, PATIENT_ID]).encode()
    if choice == 8:
        return b"\\".join(rng.randbytes(3) for _ in range(rng.randint(2, 300)))
    if choice == 9:
        return struct.pack("<I", rng.getrandbits(32))
    if choice == 10:
        return b"Doe^Jane=" + rng.randbytes(8)
    return b"*"


def _sequence(rng: random.Random, depth: int) -> bytes:
    items = b""
    for _ in range(rng.choice([0, 1, 1, 2, 3])):
        body = b"".join(_random_element(rng, depth + 1) for _ in range(rng.randint(0, 3)))
        if rng.random() < 0.5:  # undefined length item with delimiter
            items += struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF) + body + \
                struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
        else:
            items += struct.pack("<HHI", 0xFFFE, 0xE000, len(body)) + body
    return items


def _random_element(rng: random.Random, depth: int = 0) -> bytes:
    tag = rng.choice(KEYS) if rng.random() < 0.85 else rng.getrandbits(32)
    vr = rng.choice(VRS) if rng.random() < 0.3 else None
    if vr is None:
        from pydicom.datadict import dictionary_VR
        try:
            vr = dictionary_VR(tag).split(" ")[0]
        except KeyError:
            vr = "UN"
    if vr == "SQ" and depth < 6:
        return _element(tag, "SQ", _sequence(rng, depth))
    value = _random_value(rng)
    if rng.random() < 0.05:  # a length that lies
        return _element(tag, vr, value)[:-max(1, len(value) // 2)] if value else \
            _element(tag, vr, b"abcd")[:-2]
    return _element(tag, vr, value + (b" " if len(value) % 2 else b""))


def random_identifier(rng: random.Random) -> bytes:
    """Explicit VR LE bytes of a random, usually malformed identifier (sorted or not)."""
    parts = []
    if rng.random() < 0.9:
        parts.append(_element(0x00080052, "CS", rng.choice(LEVELS).encode().ljust(
            8 if rng.random() < 0.5 else 0)))
    for _ in range(rng.randint(0, 8)):
        parts.append(_random_element(rng))
    if rng.random() < 0.3:  # a deeply nested sequence
        nested = b""
        for _ in range(rng.choice([5, 40, 200])):
            nested = _element(0x00081111, "SQ", struct.pack("<HHI", 0xFFFE, 0xE000,
                                                             len(nested)) + nested)
        parts.append(nested)
    if rng.random() < 0.8:  # mostly in tag order, as PS3.5 7.1 requires
        parts.sort(key=lambda p: struct.unpack("<HH", p[:4]))
    return b"".join(parts)


def wildcard_identifier(rng: random.Random) -> bytes:
    """A STUDY or SERIES C-FIND identifier with one hostile wild-card pattern."""
    vr = rng.choice(sorted(WILDCARD_KEYS))
    stars = rng.choice([16, 24, 40, 100, 1000])
    pattern = rng.choice([
        "*" * stars + "x", "*?" * stars + "x", "?*" * stars, "*a" * stars + "*",
        ("*" + "?" * 3) * stars + "Z", "*" * stars, "L*a*p*" * stars + "q"])[:30000]
    level = rng.choice(["STUDY", "SERIES"])
    elements = [(0x00080052, "CS", level.encode().ljust(6)),
                (WILDCARD_KEYS[vr], vr, pattern.encode())]
    if level == "SERIES":
        elements.append((0x0020000D, "UI", _uid(STUDY)))
    return b"".join(_element(tag, v, value + (b" " if len(value) % 2 else b""))
                    for tag, v, value in sorted(elements))


# --- one association over a raw socket --------------------------------------------------


class RawAssociation:
    """An association driven byte by byte: the fuzzer decides every PDU."""

    def __init__(self, child: ChildScp, contexts: list[tuple[str, list[str]]]) -> None:
        self.sock = connect(child, timeout=PROBE_TIMEOUT_S)
        self.sock.sendall(associate_rq(contexts))
        reply = recv_pdu(self.sock, PROBE_TIMEOUT_S)
        if not reply or reply[0] != 0x02:
            self.close()
            raise ConnectionError(f"association not accepted: {reply[:8]!r}")
        self.accepted = self._accepted(reply)

    @staticmethod
    def _accepted(reply: bytes) -> dict[int, bytes]:
        """Accepted presentation context ids of an A-ASSOCIATE-AC."""
        ids, pos = {}, 6 + 68
        while pos + 4 <= len(reply):
            kind, length = reply[pos], struct.unpack(">H", reply[pos + 2:pos + 4])[0]
            if kind == 0x21 and reply[pos + 6] == 0:
                ids[reply[pos + 4]] = reply[pos + 8:pos + 4 + length]
            pos += 4 + length
        return ids

    def request(self, context_id: int, command: bytes, dataset: bytes | None,
                timeout: float = PROBE_TIMEOUT_S) -> tuple[int | None, float, bytes]:
        """Send a request, read responses until a final one: (status, seconds, last PDU)."""
        start = time.monotonic()
        self.sock.sendall(p_data(context_id, command, command=True))
        if dataset is not None:
            # Fragments within the acceptor's maximum PDU length (PS3.8 9.3.5): a longer
            # PDU is a protocol violation the bridge rightly aborts.
            size = 16000
            for start_at in range(0, max(len(dataset), 1), size):
                self.sock.sendall(p_data(context_id, dataset[start_at:start_at + size],
                                         command=False,
                                         last=start_at + size >= len(dataset)))
        deadline = start + timeout
        while time.monotonic() < deadline:
            pdu = recv_pdu(self.sock, max(0.05, deadline - time.monotonic()))
            if not pdu or pdu[0] != 0x04:
                return None, time.monotonic() - start, pdu
            status = _status_of(pdu)
            if status is not None and status not in (0xFF00, 0xFF01):
                return status, time.monotonic() - start, pdu
        return None, time.monotonic() - start, b""

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(bytes([0x05, 0, 0, 0, 0, 4, 0, 0, 0, 0]))  # A-RELEASE-RQ
            recv_pdu(self.sock, 0.5)
        with contextlib.suppress(OSError):
            self.sock.close()
        _PENDING.pop(id(self.sock), None)


def _status_of(pdu: bytes) -> int | None:
    """Status (0000,0900) of the command PDV in a P-DATA-TF, if any."""
    pos = 6
    while pos + 6 <= len(pdu):
        length = struct.unpack(">I", pdu[pos:pos + 4])[0]
        header, payload = pdu[pos + 5], pdu[pos + 6:pos + 4 + length]
        if header & 0x01:
            index = payload.find(b"\x00\x00\x00\x09\x02\x00\x00\x00")
            if index >= 0:
                return struct.unpack("<H", payload[index + 8:index + 10])[0]
        pos += 4 + length
    return None


def qr_contexts() -> list[tuple[str, list[str]]]:
    return [(VERIFICATION, [IMPLICIT_LE]),
            *[(uid, [EXPLICIT_LE]) for models in (FIND_MODELS, GET_MODELS, MOVE_MODELS)
              for uid in models.values()]]


# --- health probe ------------------------------------------------------------------------


def probe(child: ChildScp) -> float:
    """C-ECHO, then a Study Root SERIES C-FIND that must return exactly the two live
    Series; returns the slower answer time (s). Fails when either is wrong or late."""
    assert child.alive(), f"the SCP died: {child.log_text()[-3000:]}"
    assoc = RawAssociation(child, [(VERIFICATION, [IMPLICIT_LE]),
                                   (FIND_MODELS["STUDY"], [EXPLICIT_LE])])
    try:
        status, echo_s, _ = assoc.request(1, request_command("echo", VERIFICATION, 1), None)
        assert status == 0x0000, f"C-ECHO answered {status}"
        identifier = b"".join([_element(0x00080052, "CS", b"SERIES"),
                               _element(0x0020000D, "UI", _uid(STUDY)),
                               _element(0x0020000E, "UI", b"")])
        start = time.monotonic()
        assoc.sock.sendall(p_data(3, request_command("find", FIND_MODELS["STUDY"], 2),
                                  command=True))
        assoc.sock.sendall(p_data(3, identifier, command=False))
        found, final = set(), None
        data = b""
        while final is None and time.monotonic() - start < PROBE_TIMEOUT_S:
            pdu = recv_pdu(assoc.sock, PROBE_TIMEOUT_S)
            assert pdu and pdu[0] == 0x04, f"C-FIND: no answer ({pdu[:8]!r})"
            status = _status_of(pdu)
            if status is None:
                data += pdu
                found.update(uid for uid in (VIDEO_SERIES, ECG_SERIES)
                             if uid.encode() in pdu)
            elif status not in (0xFF00, 0xFF01):
                final = status
        find_s = time.monotonic() - start
        assert final == 0x0000, f"C-FIND final status {final}"
        assert found == {VIDEO_SERIES, ECG_SERIES}, f"C-FIND answered {found}"
        return max(echo_s, find_s)
    finally:
        assoc.close()


# --- case families ------------------------------------------------------------------------


def case_raw(child: ChildScp, rng: random.Random) -> None:
    """Random bytes, or a valid A-ASSOCIATE-RQ / P-DATA-TF with mutations."""
    kind = rng.randrange(4)
    if kind == 0:
        payload = rng.randbytes(rng.randint(1, 2048))
        if rng.random() < 0.5:  # a plausible PDU header over random bytes
            payload = bytes([rng.randint(1, 7), 0]) + struct.pack(">I", len(payload)) + payload
        with contextlib.suppress(OSError, ssl.SSLError), connect(child) as sock:
            sock.sendall(payload)
            recv_pdu(sock, 0.3)
        return
    if kind == 1:  # mutated A-ASSOCIATE-RQ
        pdu = bytearray(associate_rq(qr_contexts()))
        _mutate(rng, pdu)
        with contextlib.suppress(OSError, ssl.SSLError), connect(child) as sock:
            sock.sendall(bytes(pdu))
            reply = recv_pdu(sock, 1.0)
            if reply[:1] == b"\x02":
                sock.sendall(bytes([0x05, 0, 0, 0, 0, 4, 0, 0, 0, 0]))
                recv_pdu(sock, 0.5)
        return
    # A valid association, then mutated P-DATA-TF (command and/or data set).
    try:
        assoc = RawAssociation(child, qr_contexts())
    except (OSError, ssl.SSLError, ConnectionError):
        return
    try:
        model = rng.choice([FIND_MODELS, GET_MODELS, MOVE_MODELS])
        kind_name = {id(FIND_MODELS): "find", id(GET_MODELS): "get",
                     id(MOVE_MODELS): "move"}[id(model)]
        cx = 3 + 2 * [FIND_MODELS, GET_MODELS, MOVE_MODELS].index(model) * 2 + \
            2 * (rng.random() < 0.5)
        command = bytearray(request_command(kind_name, rng.choice(list(model.values())), 7,
                                            b"STORE_SCP" if kind_name == "move" else None))
        dataset = bytearray(random_identifier(rng))
        target = rng.choice([command, dataset])
        _mutate(rng, target)
        pdus = [p_data(cx, bytes(command), True), p_data(cx, bytes(dataset), False)]
        if rng.random() < 0.3:
            raw = bytearray(rng.choice(pdus))
            _mutate(rng, raw)
            pdus[rng.randrange(2)] = bytes(raw)
        if rng.random() < 0.1:  # a PDU that is illegal in this state
            pdus.append(rng.choice([associate_rq(qr_contexts()), b"\x02\x00" + bytes(10),
                                    b"\x06\x00\x00\x00\x00\x04\x00\x00\x00\x00"]))
        with contextlib.suppress(OSError, ssl.SSLError):
            for pdu in pdus:
                assoc.sock.sendall(pdu)
            recv_pdu(assoc.sock, 0.5)
    finally:
        assoc.close()


def _mutate(rng: random.Random, data: bytearray) -> None:
    """Flip, overwrite, insert, delete or truncate a few bytes in place."""
    for _ in range(rng.randint(1, 4)):
        if not data:
            data.extend(rng.randbytes(4))
        op = rng.randrange(6)
        i = rng.randrange(len(data))
        if op == 0:
            data[i] ^= 1 << rng.randrange(8)
        elif op == 1:
            data[i] = rng.choice([0x00, 0xFF, 0x7F, 0x80, rng.randrange(256)])
        elif op == 2:
            data[i:i] = rng.randbytes(rng.randint(1, 16))
        elif op == 3:
            del data[i:i + rng.randint(1, 16)]
        elif op == 4:
            del data[i:]
        else:  # a length field
            j = i & ~1
            data[j:j + 2] = rng.choice([b"\xff\xff", b"\x00\x00", b"\x7f\xff", b"\x00\x01"])


def case_identifier(child: ChildScp, rng: random.Random) -> float:
    """A malformed identifier in a C-FIND / C-GET / C-MOVE over a valid association: the
    final status must come, from the documented set. Returns the answer time."""
    assoc = RawAssociation(child, qr_contexts())
    try:
        kind = rng.choice(["find", "find", "get", "move"])
        model = {"find": FIND_MODELS, "get": GET_MODELS, "move": MOVE_MODELS}[kind]
        root = rng.choice(["PATIENT", "STUDY"])
        cx = {("find", "PATIENT"): 3, ("find", "STUDY"): 5, ("get", "PATIENT"): 7,
              ("get", "STUDY"): 9, ("move", "PATIENT"): 11, ("move", "STUDY"): 13}[(kind, root)]
        destination = None
        if kind == "move":
            destination = rng.choice([b"STORE_SCP", b"", b"  ", b"\x01\x02", b"A\\B",
                                      b"X" * 17, b"NOBODY", b"\xff\xfe"])
        status, seconds, last = assoc.request(
            cx, request_command(kind, model[root], 9, destination), random_identifier(rng))
        assert status is not None, f"{kind}: no final status (got {last[:12]!r})"
        assert status in ALLOWED_FINAL, f"{kind}: status 0x{status:04X}"
        return seconds
    finally:
        assoc.close()


def case_wildcard(child: ChildScp, rng: random.Random) -> float:
    """A hostile wild-card C-FIND: answered (Success, or A900 for a value no rule takes)."""
    assoc = RawAssociation(child, qr_contexts())
    try:
        status, seconds, _ = assoc.request(
            5, request_command("find", FIND_MODELS["STUDY"], 11), wildcard_identifier(rng))
        assert status in (0x0000, 0xA900), f"wild-card C-FIND: status {status}"
        return seconds
    finally:
        assoc.close()


def case_half_open(child: ChildScp, rng: random.Random) -> None:
    """Part of a PDU (or a bare TCP connection to a TLS port), then a stall or a close."""
    stall = rng.choice([0.0, 0.0, 0.2, 1.0])
    sock = socket.create_connection(("127.0.0.1", child.port), timeout=2)
    try:
        if child.client_tls is not None and rng.random() < 0.5:
            sock.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[:rng.randint(0, 11)])
        else:
            if child.client_tls is not None:
                sock = child.client_tls.wrap_socket(sock, server_hostname="localhost")
            pdu = associate_rq(qr_contexts())
            if rng.random() < 0.5:
                sock.sendall(pdu[:rng.randint(1, len(pdu) - 1)])
            else:  # a whole association, then half a P-DATA
                sock.sendall(pdu)
                recv_pdu(sock, 1.0)
                data = p_data(5, request_command("find", FIND_MODELS["STUDY"], 3), True)
                sock.sendall(data[:rng.randint(1, len(data) - 1)])
        time.sleep(stall)
    except (OSError, ssl.SSLError):
        pass
    finally:
        sock.close()


def case_stalled_peers_while_probing(child: ChildScp, rng: random.Random) -> float:
    """Several peers that connected and stalled mid-PDU (or mid-TLS-handshake) stay
    connected while the probe runs: the bridge must still answer in time."""
    stalled = []
    try:
        for _ in range(rng.randint(2, 6)):
            sock = socket.create_connection(("127.0.0.1", child.port), timeout=2)
            sock.sendall(rng.choice([b"\x01\x00\x00\x00", b"\x16\x03\x01", b""]))
            stalled.append(sock)
        return probe(child)
    finally:
        for sock in stalled:
            sock.close()


def case_flood(child: ChildScp, rng: random.Random) -> None:
    """A burst of connections that open and drop at once (half of them after a byte)."""
    socks = []
    try:
        for _ in range(rng.choice([20, 40])):
            with contextlib.suppress(OSError):
                sock = socket.create_connection(("127.0.0.1", child.port), timeout=2)
                if rng.random() < 0.5:
                    sock.sendall(b"\x01")
                socks.append(sock)
    finally:
        for sock in socks:
            sock.close()


FAMILIES: dict[str, Callable[[ChildScp, random.Random], object]] = {
    "raw": case_raw, "identifier": case_identifier, "wildcard": case_wildcard,
    "half_open": case_half_open, "stalled": case_stalled_peers_while_probing,
    "flood": case_flood}


@dataclass
class Report:
    cases: int = 0
    probes: int = 0
    max_answer_s: float = 0.0
    max_probe_s: float = 0.0
    late_probes: int = 0
    failures: list[str] = field(default_factory=list)

    def line(self, child: ChildScp, label: str) -> str:
        rss = child.rss or [0]
        tail = rss[len(rss) * 3 // 4:] or rss
        return (f"{label}: {self.cases} cases, {self.probes} probes, max answer "
                f"{self.max_answer_s * 1000:.0f} ms, max probe {self.max_probe_s * 1000:.0f} "
                f"ms ({self.late_probes} over {PROBE_LIMIT_S:.0f} s), RSS start "
                f"{rss[0] / 1024:.1f} MiB, max {max(rss) / 1024:.1f} MiB, last quarter "
                f"{min(tail) / 1024:.1f}-{max(tail) / 1024:.1f} MiB")


def run_family(child: ChildScp, family: str, cases: int, seed: int,
               report: Report | None = None, fail_fast: bool = True) -> Report:
    """``cases`` cases of ``family``, a probe after every batch; raises on the first
    failure unless ``fail_fast`` is False (then failures are collected)."""
    report = report or Report()
    rng = random.Random(f"{seed}-{family}")
    for n in range(cases):
        case_seed = rng.getrandbits(32)
        try:
            seconds = FAMILIES[family](child, random.Random(case_seed))
            if isinstance(seconds, float):
                report.max_answer_s = max(report.max_answer_s, seconds)
        except AssertionError as exc:
            message = f"{family} case {n} (seed {case_seed}): {exc}"
            if fail_fast:
                raise AssertionError(message) from None
            report.failures.append(message)
        except (OSError, ssl.SSLError, ConnectionError) as exc:
            if family in ("identifier", "wildcard"):  # these need a working association
                message = f"{family} case {n} (seed {case_seed}): {exc!r}"
                if fail_fast:
                    raise AssertionError(message) from None
                report.failures.append(message)
        report.cases += 1
        if (n + 1) % BATCH == 0 or n + 1 == cases:
            child.sample_rss()
            try:
                seconds = probe(child)
            except (AssertionError, OSError, ssl.SSLError, ConnectionError) as exc:
                message = f"probe after {family} case {n}: {exc!r}"
                if fail_fast:
                    raise AssertionError(message) from None
                report.failures.append(message)
                continue
            report.probes += 1
            report.max_probe_s = max(report.max_probe_s, seconds)
            report.late_probes += seconds > PROBE_LIMIT_S
    return report


# --- the tests ------------------------------------------------------------------------

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module", params=[False, True], ids=["tcp", "tls"])
def child(request):
    with tempfile.TemporaryDirectory(prefix="dicom_or_fuzz_") as folder, \
            child_scp(Path(folder), tls=request.param) as scp:
        scp.tls = request.param
        yield scp
        traces = scp.tracebacks()
        assert not traces, f"{len(traces)} tracebacks in the SCP log, first:\n{traces[0]}"


def _run(child: ChildScp, family: str, capsys) -> None:
    report = run_family(child, family, cases_per_family(), SEED)
    with capsys.disabled():
        print("\n" + report.line(child, f"fuzz {family} {'tls' if child.tls else 'tcp'}"))
    assert report.max_probe_s < PROBE_TIMEOUT_S


def test_fuzz_raw_pdus(child, capsys):
    _run(child, "raw", capsys)


def test_fuzz_malformed_identifiers(child, capsys):
    _run(child, "identifier", capsys)


def test_fuzz_hostile_wildcards(child, capsys):
    _run(child, "wildcard", capsys)


def test_fuzz_half_open_connections(child, capsys):
    _run(child, "half_open", capsys)


def test_fuzz_stalled_peers_do_not_block_answers(child, capsys):
    _run(child, "stalled", capsys)


def test_fuzz_connection_floods(child, capsys):
    _run(child, "flood", capsys)


def test_no_traceback_in_the_scp_log(child, capsys):
    """Every refusal by the project's handlers was a status plus a one-line log, never a
    traceback. pynetdicom 3.0.4 itself logs a traceback when it cannot decode a PDU or a
    DIMSE command set (before any handler runs; it then aborts the association): those are
    counted and printed, not failed (docs/conformance_statement.md, 2.2)."""
    with capsys.disabled():
        for head, count in sorted(child.pynetdicom_tracebacks().items()):
            print(f"\n  pynetdicom-internal traceback x{count}: {head}", end="")
    traces = child.tracebacks()
    assert not traces, f"{len(traces)} tracebacks in the SCP log, first:\n{traces[0]}"


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "serve":
    serve(json.loads(sys.argv[2]))
