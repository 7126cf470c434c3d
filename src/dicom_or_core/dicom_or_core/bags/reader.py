"""Read rosbag2 and MCAP recordings without a ROS distro (``rosbags``).

Accepted inputs:

* a rosbag2 directory (``metadata.yaml`` beside ``*.db3`` or ``*.mcap`` files), or the
  path of one of its storage files;
* a bare ``.mcap`` file of the ``ros2`` profile (CDR messages, ``ros2msg`` schemas).

Messages are decoded with a type store holding ROS 2 Kilted's standard interfaces, the
project's own ``dicom_or_msgs`` definitions (read from their ``.msg`` files, so no generated
code is needed) and whatever definitions the bag carries itself (rosbag2 and MCAP embed
them). Every failure to open or decode is one :class:`DicomOrError` naming the bag.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rosbags.interfaces import Connection, MessageDefinitionFormat
from rosbags.rosbag2 import Reader, ReaderError
from rosbags.rosbag2.storage_mcap import McapReader
from rosbags.serde import SerdeError
from rosbags.typesys import Stores, TypesysError, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

from dicom_or_core.model.errors import DicomOrError

PROJECT_PACKAGE = "dicom_or_msgs"
# What rosbags raises for a damaged or foreign file: its own errors are subclasses of
# these, and a truncated file can surface as struct/zstd/lz4 decoding errors.
_READ_ERRORS = (ReaderError, SerdeError, TypesysError, OSError, ValueError, KeyError,
                IndexError, EOFError, AssertionError, RuntimeError, TypeError)


def project_types(msg_dir: Path) -> dict[str, Any]:
    """The field definitions of every ``<msg_dir>/*.msg`` as ``dicom_or_msgs/msg/<Name>``."""
    types: dict[str, Any] = {}
    for path in sorted(Path(msg_dir).glob("*.msg")):
        types.update(get_types_from_msg(path.read_text(),
                                        f"{PROJECT_PACKAGE}/msg/{path.stem}"))
    return types


def make_typestore(msg_dirs: Sequence[Path] = ()) -> Typestore:
    """ROS 2 Kilted's standard interfaces plus the ``.msg`` files of ``msg_dirs``."""
    store = get_typestore(Stores.ROS2_KILTED)
    for msg_dir in msg_dirs:
        store.register(project_types(msg_dir))
    return store


@dataclass(frozen=True)
class BagTopic:
    """One topic of a bag: its name, message type and message count."""

    name: str
    msgtype: str
    count: int


def _storage_path(path: Path) -> Path:
    """The path rosbags opens: the rosbag2 directory of a storage file, else ``path``."""
    if path.is_file() and path.suffix in (".db3", ".mcap") and \
            (path.parent / "metadata.yaml").is_file():
        return path.parent
    return path


class Bag:
    """An open recording; use as a context manager. ``topics`` lists what it holds."""

    def __init__(self, path: str | Path, msg_dirs: Sequence[Path] = ()) -> None:
        self.path = _storage_path(Path(path))
        if not self.path.exists():
            raise DicomOrError("bag", "does not exist", str(path))
        self.typestore = make_typestore(msg_dirs)
        self._reader: Any
        try:
            if self.path.is_dir():
                self._reader = Reader(self.path)
            elif self.path.suffix == ".mcap":
                self._reader = McapReader(self.path)
            else:
                raise DicomOrError("bag", "is neither a rosbag2 directory nor an .mcap file",
                                   str(path))
            self._reader.open()
        except DicomOrError:
            raise
        except _READ_ERRORS as exc:
            raise DicomOrError("bag", f"cannot be read: {exc}", str(path)) from None
        self.connections: list[Connection] = list(self._reader.connections)
        self._learn_types()
        counts: dict[str, int] = {}
        types: dict[str, str] = {}
        for c in self.connections:
            counts[c.topic] = counts.get(c.topic, 0) + c.msgcount
            types[c.topic] = c.msgtype
        self.topics = {t: BagTopic(t, types[t], counts[t]) for t in sorted(types)}

    def _learn_types(self) -> None:
        """Register the definitions the bag embeds for types the store does not know."""
        for c in self.connections:
            if c.msgtype in self.typestore.fielddefs:
                continue
            if c.msgdef.format == MessageDefinitionFormat.MSG and c.msgdef.data:
                try:
                    self.typestore.register(get_types_from_msg(c.msgdef.data, c.msgtype))
                except _READ_ERRORS:
                    pass  # an unreadable definition: the topic is reported as undecodable

    @property
    def message_count(self) -> int:
        """Messages in the bag, over every topic."""
        return sum(t.count for t in self.topics.values())

    def decodable(self, topic: str) -> bool:
        """Whether the messages of ``topic`` can be decoded."""
        return self.topics[topic].msgtype in self.typestore.fielddefs

    def messages(self, topics: Collection[str]) -> Iterator[tuple[str, int, Any]]:
        """(topic, log time ns, decoded message) of ``topics``, in log-time order."""
        connections = [c for c in self.connections if c.topic in topics]
        if not connections:
            return  # rosbags reads every topic for an empty selection
        try:
            for connection, log_ns, raw in self._reader.messages(connections=connections):
                yield (connection.topic, log_ns,
                       self.typestore.deserialize_cdr(raw, connection.msgtype))
        except _READ_ERRORS as exc:
            raise DicomOrError("bag", f"cannot be read: {exc}", str(self.path)) from None

    def log_times(self, topic: str, limit: int) -> list[int]:
        """The log times of the first ``limit`` messages of ``topic`` (not decoded)."""
        connections = [c for c in self.connections if c.topic == topic]
        times: list[int] = []
        if not connections:
            return times
        try:
            for _, log_ns, _ in self._reader.messages(connections=connections):
                times.append(log_ns)
                if len(times) >= limit:
                    break
        except _READ_ERRORS as exc:
            raise DicomOrError("bag", f"cannot be read: {exc}", str(self.path)) from None
        return times

    def close(self) -> None:
        """Close the storage files."""
        self._reader.close()

    def __enter__(self) -> Bag:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
