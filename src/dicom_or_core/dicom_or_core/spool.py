"""Durable spool: recorded instances on disk, never half-written, tracked in an index.

Layout under the recordings directory ``root`` (the bridge's ``archive_dir``)::

    <root>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm   final instances
    <root>/.spool/index.sqlite                                          instance states
    <root>/.spool/journal/<segment id>/{meta.json, data.jnl}           segments in progress

Rules that make a SIGKILL at any moment safe:

* An instance is written as ``<SOP>.dcm.partial``, fsync'd, atomically renamed to
  ``<SOP>.dcm`` and its directory fsync'd. So **every ``*.dcm`` under ``root`` is complete
  and final**; a ``*.partial`` is garbage from a crash and is deleted on start.
* The samples of the segment in progress are appended to its journal as length + CRC-32
  framed records with one ``os.write`` each. **Acknowledged** means: the record's write
  returned. From then on it survives the recorder process dying (SIGKILL, crash, OOM kill):
  the bytes are in the kernel. The journal is also fsync'd at least every
  ``fsync_interval_s`` (and when a segment closes), which bounds what a power loss can take
  to that interval. A torn last record (power loss mid-write) fails its CRC and is dropped.
* On start, :meth:`Spool.recover` finalises every journal into its instance (same SOP
  Instance UID, allocated when the segment opened, so a crash between the rename and the
  journal's removal cannot create a duplicate) or discards an empty one.

Index states (``instances.state``): ``writing`` -> ``final`` (file complete, in the archive)
-> ``stored`` (C-STORE accepted by the PACS) -> ``committed`` (Storage Commitment confirmed),
or ``failed`` (the PACS refused it permanently; kept on disk for an operator).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import struct
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from dicom_or_core.errors import DicomOrError

WRITING, FINAL, STORED, COMMITTED, FAILED = "writing", "final", "stored", "committed", "failed"
STATES = (WRITING, FINAL, STORED, COMMITTED, FAILED)
SPOOL_DIR = ".spool"
PARTIAL_SUFFIX = ".partial"
_JOURNAL_MAGIC = b"DORJNL1\n"
_RECORD = struct.Struct("<II")  # payload length, CRC-32 of the payload
MAX_RECORD = 1 << 30


def fsync_dir(path: Path) -> None:
    """fsync a directory so a rename or a new entry in it survives a power loss."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _makedirs_durable(path: Path) -> None:
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    path.mkdir(parents=True, exist_ok=True)
    for created in reversed(missing):
        fsync_dir(created.parent)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via ``path.partial`` + fsync + rename + fsync(dir)."""
    _makedirs_durable(path.parent)
    tmp = path.with_name(path.name + PARTIAL_SUFFIX)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


class Journal:
    """The append-only record log of one segment in progress."""

    def __init__(self, directory: Path, meta: dict[str, Any], fsync_interval_s: float,
                 create: bool) -> None:
        self.directory = directory
        self.meta = meta
        self.fsync_interval_s = fsync_interval_s
        self.data_path = directory / "data.jnl"
        self.records_acknowledged = 0
        self.bytes_acknowledged = 0
        self._last_sync = time.monotonic()
        self._fd: int | None = None
        self._size = 0
        if create:
            _makedirs_durable(directory)
            write_atomic(directory / "meta.json", json.dumps(meta).encode())
            self._fd = os.open(self.data_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.write(self._fd, _JOURNAL_MAGIC)
            self._size = len(_JOURNAL_MAGIC)
            os.fsync(self._fd)
            fsync_dir(directory)

    @property
    def segment_id(self) -> str:
        return self.meta["segment_id"]

    def append(self, payload: bytes) -> None:
        """Append one record with a single write; it is acknowledged when this returns."""
        if self._fd is None:
            raise DicomOrError("journal", "is closed", self.segment_id)
        if len(payload) > MAX_RECORD:
            raise DicomOrError("journal", "record too large", len(payload))
        record = _RECORD.pack(len(payload), zlib.crc32(payload)) + payload
        view = memoryview(record)
        try:
            while view:
                view = view[os.write(self._fd, view):]
        except OSError:
            # Disk full or I/O error mid-record: cut the torn record off, so the records
            # after it (once space is back) are not hidden behind a bad CRC.
            os.ftruncate(self._fd, self._size)
            raise
        self._size += len(record)
        self.records_acknowledged += 1
        self.bytes_acknowledged += len(record)
        if time.monotonic() - self._last_sync >= self.fsync_interval_s:
            self.sync()

    def sync(self) -> None:
        """fsync the journal: acknowledged records now also survive a power loss."""
        if self._fd is not None:
            os.fsync(self._fd)
            self._last_sync = time.monotonic()

    def close(self) -> None:
        if self._fd is not None:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None

    def records(self) -> Iterator[bytes]:
        """Every intact record in order; stops at a torn or corrupt tail."""
        try:
            data = self.data_path.read_bytes()
        except FileNotFoundError:
            return
        if not data.startswith(_JOURNAL_MAGIC):
            return
        pos = len(_JOURNAL_MAGIC)
        while pos + _RECORD.size <= len(data):
            length, crc = _RECORD.unpack_from(data, pos)
            start = pos + _RECORD.size
            payload = data[start:start + length]
            if len(payload) != length or zlib.crc32(payload) != crc:
                return
            yield payload
            pos = start + length

    def discard(self) -> None:
        """Remove the journal (after its instance is final, or when it holds nothing)."""
        self.close()
        shutil.rmtree(self.directory, ignore_errors=True)
        fsync_dir(self.directory.parent)


@dataclass
class InstanceRow:
    """One row of the spool index."""

    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    path: str
    size: int
    state: str
    attempts: int
    next_attempt: float
    last_error: str
    created: float
    updated: float


@dataclass
class RecoveryReport:
    """What :meth:`Spool.recover` did."""

    partial_files_removed: int = 0
    journals_finalised: int = 0
    journals_discarded: int = 0
    sop_instance_uids: tuple[str, ...] = ()


Finaliser = Callable[[Journal], "Dataset | None"]


class Spool:
    """The archive directory, its index and the journals of segments in progress."""

    def __init__(self, root: str | Path, fsync_interval_s: float = 0.5) -> None:
        self.root = Path(root).resolve()
        self.spool_dir = self.root / SPOOL_DIR
        self.journal_dir = self.spool_dir / "journal"
        _makedirs_durable(self.journal_dir)
        self.fsync_interval_s = fsync_interval_s
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.spool_dir / "index.sqlite", check_same_thread=False,
                                   isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("""CREATE TABLE IF NOT EXISTS instances (
            sop_instance_uid TEXT PRIMARY KEY, sop_class_uid TEXT, study_instance_uid TEXT,
            series_instance_uid TEXT, path TEXT, size INTEGER, state TEXT,
            attempts INTEGER DEFAULT 0, next_attempt REAL DEFAULT 0, last_error TEXT
            DEFAULT '', created REAL, updated REAL)""")
        self._db.execute("CREATE INDEX IF NOT EXISTS by_state ON instances(state, "
                         "next_attempt)")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- instances ---------------------------------------------------------------------

    def instance_path(self, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        return self.root / study_uid / series_uid / f"{sop_uid}.dcm"

    def write_instance(self, ds: Dataset) -> Path:
        """Write a finished instance durably and index it as ``final``."""
        path = self.instance_path(ds.StudyInstanceUID, ds.SeriesInstanceUID,
                                  ds.SOPInstanceUID)
        now = time.time()
        self._upsert(ds, path, WRITING, 0, now)
        from io import BytesIO
        buffer = BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        write_atomic(path, buffer.getvalue())
        self._set(ds.SOPInstanceUID, state=FINAL, size=path.stat().st_size)
        return path

    def _upsert(self, ds: Dataset, path: Path, state: str, size: int, now: float) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO instances (sop_instance_uid, sop_class_uid, study_instance_uid,"
                " series_instance_uid, path, size, state, created, updated) VALUES "
                "(?,?,?,?,?,?,?,?,?) ON CONFLICT(sop_instance_uid) DO UPDATE SET "
                "state=excluded.state, size=excluded.size, updated=excluded.updated",
                (str(ds.SOPInstanceUID), str(ds.SOPClassUID), str(ds.StudyInstanceUID),
                 str(ds.SeriesInstanceUID), str(path.relative_to(self.root)), size, state,
                 now, now))

    def _set(self, sop_uid: str, **fields: Any) -> None:
        fields["updated"] = time.time()
        cols = ", ".join(f"{k}=?" for k in fields)
        with self._lock:
            self._db.execute(f"UPDATE instances SET {cols} WHERE sop_instance_uid=?",
                             (*fields.values(), sop_uid))

    def get(self, sop_uid: str) -> InstanceRow | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM instances WHERE sop_instance_uid=?",
                                   (sop_uid,)).fetchone()
        return InstanceRow(*row) if row else None

    def rows(self, state: str | None = None) -> list[InstanceRow]:
        with self._lock:
            if state is None:
                cur = self._db.execute("SELECT * FROM instances ORDER BY created")
            else:
                cur = self._db.execute("SELECT * FROM instances WHERE state=? ORDER BY "
                                       "created", (state,))
            return [InstanceRow(*r) for r in cur.fetchall()]

    def series_instance_count(self, series_uid: str) -> int:
        """Instances of a Series in the index plus its journals (next Instance Number - 1)."""
        with self._lock:
            (n,) = self._db.execute("SELECT COUNT(*) FROM instances WHERE "
                                    "series_instance_uid=?", (series_uid,)).fetchone()
        return n + sum(1 for j in self.journals()
                       if j.meta.get("descriptor", {}).get("series_instance_uid") == series_uid)

    def counts(self) -> dict[str, int]:
        """Instances per state."""
        with self._lock:
            found = dict(self._db.execute(
                "SELECT state, COUNT(*) FROM instances GROUP BY state").fetchall())
        return {s: found.get(s, 0) for s in STATES}

    def due(self, limit: int = 50, now: float | None = None) -> list[InstanceRow]:
        """``final`` instances whose next send attempt is due, oldest first."""
        now = time.time() if now is None else now
        with self._lock:
            cur = self._db.execute(
                "SELECT * FROM instances WHERE state=? AND next_attempt<=? ORDER BY created "
                "LIMIT ?", (FINAL, now, limit))
            return [InstanceRow(*r) for r in cur.fetchall()]

    def mark_stored(self, sop_uid: str) -> None:
        self._set(sop_uid, state=STORED, last_error="")

    def mark_committed(self, sop_uid: str) -> None:
        self._set(sop_uid, state=COMMITTED, last_error="")

    def mark_failed(self, sop_uid: str, error: str) -> None:
        self._set(sop_uid, state=FAILED, last_error=error)

    def reset_to_final(self, sop_uid: str, error: str) -> None:
        """A stored instance the PACS did not commit: send it again."""
        self._set(sop_uid, state=FINAL, last_error=error)

    def defer(self, sop_uid: str, error: str, next_attempt: float) -> None:
        """A failed attempt: count it and schedule the next one."""
        with self._lock:
            self._db.execute(
                "UPDATE instances SET attempts=attempts+1, last_error=?, next_attempt=?, "
                "updated=? WHERE sop_instance_uid=?",
                (error, next_attempt, time.time(), sop_uid))

    def absolute(self, row: InstanceRow) -> Path:
        return self.root / row.path

    def apply_retention(self, max_age_s: float, states: tuple[str, ...] = (COMMITTED,),
                        now: float | None = None) -> list[str]:
        """Delete local files of instances in ``states`` last updated more than
        ``max_age_s`` ago (they are safe in the PACS); their rows are removed."""
        now = time.time() if now is None else now
        removed = []
        for state in states:
            for row in self.rows(state):
                if now - row.updated < max_age_s:
                    continue
                try:
                    self.absolute(row).unlink()
                except FileNotFoundError:
                    pass
                with self._lock:
                    self._db.execute("DELETE FROM instances WHERE sop_instance_uid=?",
                                     (row.sop_instance_uid,))
                removed.append(row.sop_instance_uid)
        return removed

    # -- journals ----------------------------------------------------------------------

    def open_journal(self, meta: dict[str, Any]) -> Journal:
        """Start the journal of a new segment; ``meta`` must be JSON-serialisable and
        hold everything needed to finalise it (descriptor, SOP Instance UID, ...)."""
        meta = dict(meta)
        meta.setdefault("segment_id", uuid.uuid4().hex)
        return Journal(self.journal_dir / meta["segment_id"], meta, self.fsync_interval_s,
                       create=True)

    def journals(self) -> list[Journal]:
        """Journals left by a previous run, oldest first."""
        found = []
        for directory in sorted(self.journal_dir.iterdir(),
                                key=lambda p: p.stat().st_mtime):
            try:
                meta = json.loads((directory / "meta.json").read_text())
            except (OSError, ValueError):
                shutil.rmtree(directory, ignore_errors=True)  # died before meta was final
                continue
            found.append(Journal(directory, meta, self.fsync_interval_s, create=False))
        return found

    def recover(self, finalise: Finaliser) -> RecoveryReport:
        """Make the archive consistent after a crash; call before recording.

        Deletes ``*.partial`` files, settles ``writing`` rows (final if the rename
        happened, forgotten otherwise: the journal still holds the samples), and turns
        each left-over journal into its instance with ``finalise(journal)`` (the
        Dataset, or None when the journal holds no sample) or discards it.
        """
        report = RecoveryReport()
        done = []
        for partial in self.root.rglob(f"*{PARTIAL_SUFFIX}"):
            if SPOOL_DIR not in partial.relative_to(self.root).parts[:1]:
                partial.unlink(missing_ok=True)
                report.partial_files_removed += 1
        for row in self.rows(WRITING):
            if self.absolute(row).is_file():
                self._set(row.sop_instance_uid, state=FINAL,
                          size=self.absolute(row).stat().st_size)
            else:
                with self._lock:
                    self._db.execute("DELETE FROM instances WHERE sop_instance_uid=?",
                                     (row.sop_instance_uid,))
        for journal in self.journals():
            sop = journal.meta.get("sop_instance_uid", "")
            row = self.get(sop) if sop else None
            if row is not None and row.state != WRITING and self.absolute(row).is_file():
                journal.discard()  # finalised, then killed before the journal went
                report.journals_discarded += 1
                continue
            ds = finalise(journal)
            if ds is None:
                report.journals_discarded += 1
            else:
                self.write_instance(ds)
                done.append(str(ds.SOPInstanceUID))
                report.journals_finalised += 1
            journal.discard()
        report.sop_instance_uids = tuple(done)
        return report
