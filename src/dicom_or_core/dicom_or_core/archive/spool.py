"""Durable spool: recorded instances on disk, never half-written, tracked in an index.

Layout under the recordings directory ``root`` (the bridge's ``archive_dir``)::

    <root>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm   final instances
    <root>/.spool/index.sqlite                                          instance states
    <root>/.spool/journal/<segment id>/{meta.json, data.jnl}           segments in progress
    <root>/.spool/quarantine/<segment id>/                              journals that could
                                                                        not be finalised

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
* On start, :meth:`Spool.recover_files` settles half-written files (fast, before recording)
  and :meth:`Spool.leftover_journals` lists the journals of the previous run; each is then
  finalised with :meth:`Spool.finalise_leftover` into its instance (same SOP Instance UID,
  allocated when the segment opened, so a crash between the rename and the journal's
  removal cannot create a duplicate), discarded when empty, or moved to ``quarantine/``
  when it cannot be read -- never deleted with acknowledged samples in it. That runs beside
  new recording: journals this process opens are never touched by recovery.
* Instances are written file to file: the header through pydicom, bulk Pixel Data by a
  writer that copies from the segment's files (:class:`PendingInstance`), so finalising
  a long segment never holds it in memory.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from pydicom.dataset import Dataset

from dicom_or_core.model.errors import DicomOrError

WRITING, FINAL, STORED, COMMITTED, FAILED = "writing", "final", "stored", "committed", "failed"
STATES = (WRITING, FINAL, STORED, COMMITTED, FAILED)
SPOOL_DIR = ".spool"
QUARANTINE_DIR = "quarantine"
INDEX_FILE = "index.sqlite"
INSTANCE_SUFFIX = ".dcm"
PARTIAL_SUFFIX = ".partial"
_JOURNAL_MAGIC = b"DORJNL1\n"
_RECORD = struct.Struct("<II")  # payload length, CRC-32 of the payload
MAX_RECORD = 1 << 30


def fsync_dir(path: Path) -> None:
    """Flush (fsync) a directory so a rename or a new entry in it survives a power loss."""
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


def write_atomic(path: Path, data: bytes | Callable[[BinaryIO], None]) -> None:
    """Write ``path`` via ``path.partial`` + fsync + rename + fsync(dir). ``data`` is the
    bytes, or a function that writes them to the open file (streamed, never whole in
    memory). A failure removes the partial file and leaves ``path`` as it was."""
    _makedirs_durable(path.parent)
    tmp = path.with_name(path.name + PARTIAL_SUFFIX)
    try:
        with open(tmp, "wb", buffering=1 << 20) as fp:
            if callable(data):
                data(fp)
            else:
                fp.write(data)
            fp.flush()
            os.fsync(fp.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
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
        self.damaged = ""  # set by records(): why reading stopped before the end
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
        """The segment this journal belongs to (from its meta file)."""
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
        """Flush (fsync) the journal: acknowledged records now also survive a power loss."""
        if self._fd is not None:
            os.fsync(self._fd)
            self._last_sync = time.monotonic()

    def close(self) -> None:
        """Flush and close the journal file (a second close does nothing)."""
        if self._fd is not None:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None

    def records(self) -> Iterator[bytes]:
        """Every intact record in order, read as a stream (one record in memory at a
        time). A record whose bytes fail their CRC is skipped (the ones after it are
        still read); a torn tail, or a length that runs past the end, ends the reading.
        :attr:`damaged` then says which records were lost."""
        self.damaged = ""
        try:
            fp = open(self.data_path, "rb", buffering=1 << 20)
        except FileNotFoundError:
            return
        skipped: list[int] = []
        with fp:
            if fp.read(len(_JOURNAL_MAGIC)) != _JOURNAL_MAGIC:
                self.damaged = "no journal header: every record lost"
                return
            index = 0
            while header := fp.read(_RECORD.size):
                index += 1
                if len(header) < _RECORD.size:
                    self.damaged = f"record {index} torn (power loss mid-write)"
                    break
                length, crc = _RECORD.unpack(header)
                payload = fp.read(length) if length <= MAX_RECORD else b""
                if len(payload) != length:
                    self.damaged = f"record {index} runs past the end: it and any after " \
                                   "it are lost"
                    break
                if zlib.crc32(payload) != crc:
                    skipped.append(index)  # damaged bytes: this record only
                    continue
                yield payload
        if skipped:
            listed = ", ".join(map(str, skipped[:10])) + (" ..." if len(skipped) > 10 else "")
            self.damaged = "; ".join(filter(None, [
                f"{len(skipped)} corrupt record(s) skipped (CRC): {listed}", self.damaged]))

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
    instance_number: int = 0


@dataclass
class RecoveryReport:
    """What :meth:`Spool.recover` did."""

    partial_files_removed: int = 0
    journals_finalised: int = 0
    journals_discarded: int = 0
    journals_quarantined: int = 0
    sop_instance_uids: tuple[str, ...] = ()
    problems: list[str] = field(default_factory=list)


@dataclass
class PendingInstance:
    """An instance ready to be written: its dataset without bulk Pixel Data, and the
    function that appends the Pixel Data element (the last one, PS3.5 7.1) to the file by
    copying from the segment's own files. ``pixel_data`` None: the dataset is complete."""

    dataset: Dataset
    pixel_data: Callable[[BinaryIO], None] | None = None


Finaliser = Callable[[Journal], "Dataset | PendingInstance | None"]


@dataclass
class LeftoverResult:
    """What became of one journal of an earlier run."""

    sop_instance_uid: str = ""
    finalised: bool = False
    quarantined: str = ""      # why it was moved to quarantine (empty: it was not)
    records: int = 0
    damaged: str = ""          # where reading stopped early (records after it are lost)


class Spool:
    """The archive directory, its index and the journals of segments in progress."""

    def __init__(self, root: str | Path, fsync_interval_s: float = 0.5) -> None:
        self.root = Path(root).resolve()
        self.spool_dir = self.root / SPOOL_DIR
        self.journal_dir = self.spool_dir / "journal"
        _makedirs_durable(self.journal_dir)
        self.quarantine_dir = self.spool_dir / QUARANTINE_DIR
        self.fsync_interval_s = fsync_interval_s
        self._own_journals: set[str] = set()  # opened by this process: not leftovers
        self._lock = threading.RLock()
        self.problems: list[str] = []  # what opening found wrong (the node logs them)
        index = self.spool_dir / INDEX_FILE
        try:
            self._db = self._open_index(index)
        except sqlite3.DatabaseError as exc:
            # A damaged index must not stop recording: set it aside for an operator, start
            # a new one and list the archive's finished instances in it again. Their PACS
            # state is lost, so they are sent again (the PACS keeps one copy per SOP UID).
            aside = index.with_name(f"{INDEX_FILE}.damaged-{int(time.time())}")
            for suffix in ("", "-wal", "-shm"):
                damaged = Path(f"{index}{suffix}")
                if damaged.exists():
                    os.replace(damaged, Path(f"{aside}{suffix}"))
            self._db = self._open_index(index)
            rebuilt = self._reindex_archive()
            self.problems.append(
                f"index {index} was unreadable ({exc}); moved to {aside.name}, "
                f"{rebuilt} finished instance(s) listed again as final (they will be sent "
                "to the PACS again)")

    @staticmethod
    def _open_index(path: Path) -> sqlite3.Connection:
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("""CREATE TABLE IF NOT EXISTS instances (
                sop_instance_uid TEXT PRIMARY KEY, sop_class_uid TEXT, study_instance_uid TEXT,
                series_instance_uid TEXT, path TEXT, size INTEGER, state TEXT,
                attempts INTEGER DEFAULT 0, next_attempt REAL DEFAULT 0, last_error TEXT
                DEFAULT '', created REAL, updated REAL)""")
            db.execute("CREATE INDEX IF NOT EXISTS by_state ON instances(state, next_attempt)")
            columns = {row[1] for row in db.execute("PRAGMA table_info(instances)")}
            if "instance_number" not in columns:  # an index written by an earlier version
                db.execute("ALTER TABLE instances ADD COLUMN instance_number INTEGER "
                           "DEFAULT 0")
            db.execute("SELECT COUNT(*) FROM instances").fetchone()
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def _reindex_archive(self) -> int:
        """List every finished ``<Study>/<Series>/<SOP>.dcm`` in the index as ``final``,
        reading only the identifiers at the head of each file."""
        from pydicom.filereader import read_partial

        def stop(tag: Any, vr: Any, length: Any) -> bool:
            return tag > 0x00200013  # past Instance Number: the identifiers are read

        count = 0
        for path in sorted(self.root.glob(f"*/*/*{INSTANCE_SUFFIX}")):
            if path.relative_to(self.root).parts[0] == SPOOL_DIR:
                continue
            try:
                with open(path, "rb") as fp:
                    ds = read_partial(fp, stop_when=stop)
                self._upsert(ds, path, FINAL, path.stat().st_size, path.stat().st_mtime)
                count += 1
            except Exception as exc:  # an unreadable file stays out of the index
                self.problems.append(f"{path.name}: not indexed: {exc}")
        return count

    def close(self) -> None:
        """Close the index database (the spool files stay as they are)."""
        with self._lock:
            self._db.close()

    # -- instances ---------------------------------------------------------------------

    def instance_path(self, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        """Where an instance lives: ``<root>/<Study>/<Series>/<SOP>.dcm`` (the one
        definition of the archive layout; the bridge's index reads the same)."""
        return self.root / study_uid / series_uid / f"{sop_uid}{INSTANCE_SUFFIX}"

    def write_instance(self, instance: Dataset | PendingInstance) -> Path:
        """Write a finished instance durably (file to file) and index it as ``final``."""
        if isinstance(instance, Dataset):
            instance = PendingInstance(instance)
        ds = instance.dataset
        path = self.instance_path(ds.StudyInstanceUID, ds.SeriesInstanceUID,
                                  ds.SOPInstanceUID)
        now = time.time()
        self._upsert(ds, path, WRITING, 0, now)

        def write(fp: BinaryIO) -> None:
            ds.save_as(fp, enforce_file_format=True)
            if instance.pixel_data is not None:
                instance.pixel_data(fp)

        write_atomic(path, write)
        self._set(ds.SOPInstanceUID, state=FINAL, size=path.stat().st_size)
        return path

    def _upsert(self, ds: Dataset, path: Path, state: str, size: int, now: float) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO instances (sop_instance_uid, sop_class_uid, study_instance_uid,"
                " series_instance_uid, path, size, state, created, updated, instance_number)"
                " VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT(sop_instance_uid) DO UPDATE SET "
                "state=excluded.state, size=excluded.size, updated=excluded.updated",
                (str(ds.SOPInstanceUID), str(ds.SOPClassUID), str(ds.StudyInstanceUID),
                 str(ds.SeriesInstanceUID), str(path.relative_to(self.root)), size, state,
                 now, now, int(ds.get("InstanceNumber") or 0)))

    def _set(self, sop_uid: str, **fields: Any) -> None:
        fields["updated"] = time.time()
        cols = ", ".join(f"{k}=?" for k in fields)
        with self._lock:
            self._db.execute(f"UPDATE instances SET {cols} WHERE sop_instance_uid=?",
                             (*fields.values(), sop_uid))

    def get(self, sop_uid: str) -> InstanceRow | None:
        """The index row of one instance, or None when the spool does not hold it."""
        with self._lock:
            row = self._db.execute("SELECT * FROM instances WHERE sop_instance_uid=?",
                                   (sop_uid,)).fetchone()
        return InstanceRow(*row) if row else None

    def rows(self, state: str | None = None) -> list[InstanceRow]:
        """Index rows in the order they were indexed, all or only those in ``state``."""
        with self._lock:
            if state is None:
                cur = self._db.execute("SELECT * FROM instances ORDER BY created")
            else:
                cur = self._db.execute("SELECT * FROM instances WHERE state=? ORDER BY "
                                       "created", (state,))
            return [InstanceRow(*r) for r in cur.fetchall()]

    def last_instance_number(self, series_uid: str) -> int:
        """The highest Instance Number a Series has used: in the index, in its journals (of
        this run and leftovers) and in quarantine. The next instance takes the one after, so
        numbers never repeat, even while leftovers are being finalised beside recording."""
        with self._lock:
            (n,) = self._db.execute("SELECT MAX(instance_number) FROM instances WHERE "
                                    "series_instance_uid=?", (series_uid,)).fetchone()
        highest = int(n or 0)
        for folder in (self.journal_dir, self.quarantine_dir):
            for meta in _metas(folder):
                if meta.get("descriptor", {}).get("series_instance_uid") == series_uid:
                    highest = max(highest, int(meta.get("instance_number") or 0))
        return highest

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
        """The PACS accepted the instance (C-STORE success); Storage Commitment is next."""
        self._set(sop_uid, state=STORED, last_error="")

    def mark_committed(self, sop_uid: str) -> None:
        """The PACS committed to keep the instance: the spool may now reclaim it."""
        self._set(sop_uid, state=COMMITTED, last_error="")

    def mark_failed(self, sop_uid: str, error: str) -> None:
        """The PACS refused the instance for good; ``error`` says why, for the operator."""
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
        """The file of ``row`` on disk (rows store paths relative to the spool root)."""
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
        directory = self.journal_dir / meta["segment_id"]
        with self._lock:
            self._own_journals.add(meta["segment_id"])
        try:
            return Journal(directory, meta, self.fsync_interval_s, create=True)
        except OSError:
            # Disk full or I/O error while creating it: leave no empty folder behind (one
            # per sample while a disk is full once made tens of thousands).
            shutil.rmtree(directory, ignore_errors=True)
            raise

    def journals(self) -> list[Journal]:
        """Journals left by an earlier run, oldest first (never one this process opened:
        a segment being created right now is not a leftover). A folder without a readable
        ``meta.json`` but with samples is quarantined, one without samples removed."""
        found = []
        with self._lock:
            own = set(self._own_journals)
        try:
            folders = sorted((d for d in self.journal_dir.iterdir() if d.name not in own),
                             key=_mtime)
        except FileNotFoundError:
            return []
        for directory in folders:
            try:
                meta = json.loads((directory / "meta.json").read_text())
                if not isinstance(meta, dict) or not meta.get("segment_id"):
                    raise ValueError("meta.json is not a segment description")
            except (OSError, ValueError) as exc:
                data = directory / "data.jnl"
                if data.is_file() and data.stat().st_size > len(_JOURNAL_MAGIC):
                    self.quarantine(directory, f"unreadable meta.json: {exc}")
                else:  # died before its first sample: nothing was acknowledged
                    shutil.rmtree(directory, ignore_errors=True)
                continue
            found.append(Journal(directory, meta, self.fsync_interval_s, create=False))
        return found

    def quarantine(self, directory: Path, reason: str) -> Path:
        """Move a journal folder that cannot be finalised out of the way, with the reason
        beside it, so an operator (or a later version) can still get its samples."""
        _makedirs_durable(self.quarantine_dir)
        target = self.quarantine_dir / directory.name
        if target.exists():
            target = self.quarantine_dir / f"{directory.name}.{uuid.uuid4().hex[:8]}"
        os.replace(directory, target)
        (target / "QUARANTINED.txt").write_text(reason + "\n")
        fsync_dir(self.quarantine_dir)
        fsync_dir(self.journal_dir)
        return target

    def recover_files(self) -> int:
        """Settle files a crash left half-written; fast, run before recording starts.

        Deletes ``*.partial`` instance files and settles ``writing`` rows (final if the
        rename happened, forgotten otherwise: the journal still holds the samples).
        Returns the number of partial files removed."""
        removed = 0
        for study in self.root.iterdir():
            if study.name == SPOOL_DIR or not study.is_dir():
                continue
            for partial in study.rglob(f"*{PARTIAL_SUFFIX}"):
                partial.unlink(missing_ok=True)
                removed += 1
        for row in self.rows(WRITING):
            if self.absolute(row).is_file():
                self._set(row.sop_instance_uid, state=FINAL,
                          size=self.absolute(row).stat().st_size)
            else:
                with self._lock:
                    self._db.execute("DELETE FROM instances WHERE sop_instance_uid=?",
                                     (row.sop_instance_uid,))
        return removed

    def finalise_leftover(self, journal: Journal, finalise: Finaliser) -> LeftoverResult:
        """Turn one journal of an earlier run into its instance, or discard it when it holds
        no sample, or quarantine it when it cannot be finalised (never lose it silently)."""
        result = LeftoverResult(sop_instance_uid=str(journal.meta.get("sop_instance_uid", "")))
        row = self.get(result.sop_instance_uid) if result.sop_instance_uid else None
        if row is not None and row.state != WRITING and self.absolute(row).is_file():
            journal.discard()  # finalised, then killed before the journal went
            return result
        try:
            instance = finalise(journal)
            result.damaged = journal.damaged
            if instance is not None:
                self.write_instance(instance)
                result.finalised = True
        except Exception as exc:  # anything a bad journal can raise: keep its samples
            result.quarantined = f"{type(exc).__name__}: {exc}"
            self.quarantine(journal.directory, result.quarantined)
            return result
        journal.discard()
        return result

    def recover(self, finalise: Finaliser) -> RecoveryReport:
        """All of recovery at once (:meth:`recover_files`, then every leftover journal
        through :meth:`finalise_leftover`): for tools and tests; the recorder runs the
        journals beside recording instead."""
        report = RecoveryReport(partial_files_removed=self.recover_files())
        done = []
        for journal in self.journals():
            result = self.finalise_leftover(journal, finalise)
            if result.finalised:
                done.append(result.sop_instance_uid)
                report.journals_finalised += 1
            elif result.quarantined:
                report.journals_quarantined += 1
                report.problems.append(f"{journal.directory.name}: {result.quarantined}")
            else:
                report.journals_discarded += 1
            if result.damaged:
                report.problems.append(f"{journal.directory.name}: {result.damaged}")
        report.sop_instance_uids = tuple(done)
        return report


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _metas(folder: Path) -> Iterator[dict[str, Any]]:
    """The readable ``meta.json`` of every journal folder under ``folder``."""
    try:
        folders = list(folder.iterdir())
    except FileNotFoundError:
        return
    for directory in folders:
        try:
            meta = json.loads((directory / "meta.json").read_text())
        except (OSError, ValueError):
            continue
        if isinstance(meta, dict):
            yield meta
