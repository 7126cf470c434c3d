"""The recorder's archive as the bridge sees it: finished instances, header only.

The recorder (:mod:`.spool`) writes ``<root>/<Study>/<Series>/<SOP>.dcm``; this module lists
that layout and reads each file's header only up to Content Sequence (0040,A730), so a
C-FIND never pays for Pixel Data or an SR content tree (PS3.4 C.6: no matching key lives
after it). The Query/Retrieve model (:mod:`dicom_or_core.qr.model`) builds records from it.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_partial
from pydicom.tag import BaseTag
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian

from dicom_or_core.archive.spool import INSTANCE_SUFFIX, PARTIAL_SUFFIX, SPOOL_DIR

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class ArchivedInstance:
    """One finished ``*.dcm`` of the archive: its path and header (no bulk data).

    Identity is the object: the index returns the same object for an unchanged file, which
    is how the store notices that nothing changed and how IMAGE records are reused.
    """

    path: Path
    header: Dataset
    # IMAGE records already built from this header, per Retrieve AE Title: rebuilding the
    # model (every stream change) then costs a dict lookup per instance, not a header copy.
    _records: dict[str, Dataset] = field(default_factory=dict, repr=False)




# --- reading one archived instance -----------------------------------------------------

# The indexed header ends at the first top-level element at or after Content Sequence
# (0040,A730). Every bulk or content element a recorded object carries sorts there or
# later: the SR content tree (PS3.3 C.17.3, (0040,A730)), Waveform Sequence (C.10.9,
# (5400,0100)), functional groups (C.7.6.16, group 5200), overlays (C.9.2, 60xx), Pixel Data
# (C.7.6.3, (7FE0,0010)), Digital Signatures (C.12.1.1.3, (FFFA,FFFA)); and no C-FIND key of
# PS3.4 C.6.1.1 / C.6.2.1 (patient, study, series, instance levels) lives after it.
HEADER_END = BaseTag(0x0040A730)
# A top-level value before HEADER_END larger than this is not loaded (pydicom skips it with
# a seek): Frame Time Vector (0018,1065) of an hour of video is ~1 MB, and no value that
# large belongs in a C-FIND answer (the bridge refuses identifiers over 64 KiB anyway).
DEFER_BYTES = 8192
_LONG_LENGTH_VRS = frozenset((b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC",
                              b"UN", b"UR", b"UT", b"UV"))
_UNDEFINED = 0xFFFFFFFF
_ITEM = (0xFFFE, 0xE000)
_SEQUENCE_DELIMITER = (0xFFFE, 0xE0DD)
_PIXEL_DATA = (0x7FE0, 0x0010)

FileOpener = Callable[[Path], BinaryIO]
InstanceReader = Callable[[Path], "ArchivedInstance | None"]


def _stop_at_bulk(tag: BaseTag, vr: str | None, length: int) -> bool:
    return tag >= HEADER_END


class _Truncated(Exception):
    """The file ends inside an element (a partial copy, a full disk)."""


def _skip_elements(fp: BinaryIO, size: int, little: bool, implicit: bool,
                   until_group: int | None = None) -> int:
    """Walk top-level elements from the current position by their headers alone, seeking
    over every value (PS3.5 7.1: tag, VR, length). Stops at EOF, or before the first
    element whose group is not ``until_group`` (file meta), and returns that offset.

    Raises :class:`_Truncated` when a value runs past the end of the file. An undefined
    length value (PS3.5 7.5) cannot be skipped without parsing it; encapsulated Pixel Data
    is skipped fragment by fragment (PS3.5 A.4: items of defined length), any other one
    (a sequence of undefined length, not written by pydicom) must end the file with a
    Sequence Delimitation Item, checked at the tail, and ends the walk.
    """
    end = "<" if little else ">"
    while True:
        pos = fp.tell()
        if pos == size:
            return pos
        head = fp.read(8)
        if len(head) < 8:
            raise _Truncated(f"element header cut at byte {pos}")
        group, element = struct.unpack(end + "HH", head[:4])
        if until_group is not None and group != until_group:
            fp.seek(pos)
            return pos
        if implicit:
            (length,) = struct.unpack(end + "L", head[4:])
        elif head[4:6] in _LONG_LENGTH_VRS:
            more = fp.read(4)
            if len(more) < 4:
                raise _Truncated(f"element header cut at byte {pos}")
            (length,) = struct.unpack(end + "L", more)
        else:
            (length,) = struct.unpack(end + "H", head[6:])
        if length != _UNDEFINED:
            if fp.tell() + length > size:
                raise _Truncated(f"({group:04X},{element:04X}) needs {length} bytes, "
                                 f"{size - fp.tell()} left")
            fp.seek(length, os.SEEK_CUR)
        elif (group, element) == _PIXEL_DATA:
            _skip_fragments(fp, size, end)
        else:
            fp.seek(size - 8)
            if fp.read(8) != struct.pack(end + "HHL", *_SEQUENCE_DELIMITER, 0):
                raise _Truncated(f"({group:04X},{element:04X}) of undefined length is not "
                                 "closed at the end of the file")
            return size


def _skip_fragments(fp: BinaryIO, size: int, end: str) -> None:
    while True:
        head = fp.read(8)
        if len(head) < 8:
            raise _Truncated("encapsulated Pixel Data cut")
        group, element, length = struct.unpack(end + "HHL", head)
        if (group, element) == _SEQUENCE_DELIMITER:
            return
        if (group, element) != _ITEM or length == _UNDEFINED or fp.tell() + length > size:
            raise _Truncated("encapsulated Pixel Data cut or malformed")
        fp.seek(length, os.SEEK_CUR)


def _check_complete(fp: BinaryIO, size: int, transfer_syntax: str | None) -> None:
    """Raise :class:`_Truncated` unless every top-level element of the file is whole.

    Cost: one header read per top-level element (tens), whatever the bulk size.
    """
    fp.seek(0)
    if fp.read(132)[128:] != b"DICM":   # PS3.10 7.1: 128-byte preamble, then "DICM"
        fp.seek(0)
    # PS3.10 7.1: File Meta Information, group 0002, always Explicit VR Little Endian.
    _skip_elements(fp, size, little=True, implicit=False, until_group=0x0002)
    if transfer_syntax == DeflatedExplicitVRLittleEndian:
        return  # a deflated data set has no element structure on disk; pydicom read it
    _skip_elements(fp, size, little=transfer_syntax != ExplicitVRBigEndian,
                   implicit=transfer_syntax == ImplicitVRLittleEndian)


def read_instance(path: Path, *, open_file: FileOpener | None = None) -> ArchivedInstance:
    """Index one archived file: its header up to :data:`HEADER_END`, public elements only.

    Reads the elements before Content Sequence (values over :data:`DEFER_BYTES` skipped),
    then checks the file's top-level structure by element headers, so the cost does not
    depend on the Pixel Data, the waveform samples or the SR content tree. Private
    elements (odd groups, PS3.5 7.8) are dropped at the top level only: nothing is walked.
    Raises ``InvalidDicomError`` (not DICOM, cut, no SOP Instance UID) or ``OSError``.
    """
    opener = open_file or (lambda p: open(p, "rb"))  # noqa: SIM115 - closed below
    with opener(path) as fp:
        size = os.fstat(fp.fileno()).st_size if hasattr(fp, "fileno") else None
        try:
            full = read_partial(fp, stop_when=_stop_at_bulk, defer_size=DEFER_BYTES)
        except (EOFError, struct.error, ValueError) as exc:
            raise InvalidDicomError(f"unreadable header: {exc}") from None
        if size is None:
            size = fp.seek(0, os.SEEK_END)
        transfer_syntax = full.file_meta.get("TransferSyntaxUID")
        try:
            _check_complete(fp, size, str(transfer_syntax) if transfer_syntax else None)
        except _Truncated as exc:
            raise InvalidDicomError(f"truncated: {exc}") from None
    header = Dataset()
    for tag in list(full.keys()):
        raw = full.get_item(tag, keep_deferred=True)
        deferred = isinstance(raw, RawDataElement) and raw.value is None \
            and raw.length > DEFER_BYTES
        if tag.is_private or raw is None or deferred:
            continue  # private, or deferred bulk (never read: the file is closed)
        header[tag] = full[tag]
    if not header.get("SOPInstanceUID"):
        raise InvalidDicomError("no SOP Instance UID")
    return ArchivedInstance(path, header)


def _safe_read(reader: InstanceReader, path: Path) -> ArchivedInstance | None:
    try:
        return reader(path)
    except Exception as exc:  # one bad file must not end the scan of the others
        log.warning("archive: skipping %s: %s", os.fspath(path), exc)
        return None


def _in_layout(inst: ArchivedInstance) -> bool:
    """Whether the file sits where the recorder puts it: <Study>/<Series>/<SOP>.dcm."""
    h = inst.header
    return (inst.path.stem, inst.path.parent.name, inst.path.parent.parent.name) == \
        (str(h.get("SOPInstanceUID", "")), str(h.get("SeriesInstanceUID", "")),
         str(h.get("StudyInstanceUID", "")))


@dataclass
class _Entry:
    stamp: tuple[int, int, int]      # (inode, mtime_ns, size)
    instance: ArchivedInstance | None


class ArchiveIndex:
    """The finished instances under ``root``, in the recorder's layout
    ``<root>/<Study>/<Series>/<SOP>.dcm`` (:mod:`.spool`).

    Only that depth is listed and the recorder's own ``<root>/.spool`` (journals, SQLite
    index) is never entered; ``*.partial`` files are the spool's unfinished writes and are
    ignored. Each file is read once (:func:`read_instance`, cost independent of its bulk
    content) and cached by (inode, mtime, size), so a rescan costs one ``stat`` per file.
    Unreadable or truncated files are skipped and logged once per version. The same SOP
    Instance UID in two files is listed once (PS3.4 C.4.1.3: a SOP Instance is unique),
    preferring the file in its layout place, then the newest; logged once.

    ``reader`` reads one file (tests inject a slow or counting one).
    """

    def __init__(self, root: str | Path, *, reader: InstanceReader = read_instance) -> None:
        self.root = Path(root)
        self.reader = reader
        self._entries: dict[Path, _Entry] = {}
        self._scan_lock = threading.Lock()     # one scan at a time
        self._entries_lock = threading.Lock()  # short: guards _entries for indexed()
        self._warned_duplicates: set[tuple[Path, ...]] = set()

    def _list(self) -> dict[Path, tuple[int, int, int]]:
        """Every ``<Study>/<Series>/<SOP>.dcm`` under root with its stamp (no reads)."""
        found: dict[Path, tuple[int, int, int]] = {}
        for study in _subdirs(self.root):
            if study.name == SPOOL_DIR or study.name.startswith("."):
                continue  # the recorder's spool state; hidden folders are nobody's series
            for series in _subdirs(Path(study.path)):
                try:
                    files = list(os.scandir(series.path))
                except OSError:
                    continue
                for entry in files:
                    if not entry.name.endswith(INSTANCE_SUFFIX) or \
                            entry.name.endswith(PARTIAL_SUFFIX):
                        continue
                    try:
                        st = entry.stat()
                    except OSError:
                        continue  # removed since listed
                    if entry.is_file():
                        found[Path(entry.path)] = (st.st_ino, st.st_mtime_ns, st.st_size)
        return found

    def scan(self) -> list[ArchivedInstance]:
        """Rescan the folder; return every valid instance (one per SOP Instance UID)."""
        with self._scan_lock:
            listed = self._list() if self.root.is_dir() else {}
            with self._entries_lock:
                for gone in set(self._entries) - set(listed):
                    del self._entries[gone]
            for path in sorted(listed):
                entry = self._entries.get(path)
                if entry is not None and entry.stamp == listed[path]:
                    continue
                new = _Entry(listed[path], _safe_read(self.reader, path))
                with self._entries_lock:
                    self._entries[path] = new
            return self.indexed()

    def indexed(self) -> list[ArchivedInstance]:
        """What is indexed so far (during a scan: the files read until now), deduplicated,
        in path order."""
        with self._entries_lock:
            entries = sorted(self._entries.items())
        best: dict[str, tuple[tuple[bool, int], ArchivedInstance]] = {}
        duplicates: dict[str, list[Path]] = {}
        for path, entry in entries:
            inst = entry.instance
            if inst is None:
                continue
            uid = str(inst.header.SOPInstanceUID)
            rank = (_in_layout(inst), entry.stamp[1])
            if uid in best:
                duplicates.setdefault(uid, [best[uid][1].path]).append(path)
                if rank <= best[uid][0]:
                    continue
            best[uid] = (rank, inst)
        for uid, paths in duplicates.items():
            key = tuple(paths)
            if key not in self._warned_duplicates:
                self._warned_duplicates.add(key)
                log.warning("archive: SOP Instance UID %s in %d files (%s); listing %s", uid,
                            len(paths), ", ".join(map(os.fspath, paths)),
                            os.fspath(best[uid][1].path))
        return sorted((inst for _, inst in best.values()), key=lambda i: i.path)


def _subdirs(path: Path) -> list[os.DirEntry[str]]:
    try:
        return [e for e in os.scandir(path) if e.is_dir(follow_symlinks=False)]
    except OSError:
        return []


