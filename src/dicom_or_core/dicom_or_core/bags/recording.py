"""The topics a recorder follows, as they arrive, in a rosbag2 bag (MCAP storage).

Beside the DICOM instances, the recorder can keep the raw stream (its ``mcap_output``
parameter): every message it takes -- descriptors and samples -- serialized as received
(CDR, what rosbag2 stores), with the time it arrived as log time. The bag is what
``ros2 bag record -s mcap`` would write (rosbag2 version 9, ``ros2`` MCAP profile,
``ros2msg`` schemas with their dependencies, ``metadata.yaml``): ``ros2 bag play`` replays it
and ``dicom_or_convert`` converts it.

One bag per recorder run, ``<folder>/dicom_or_<UTC date>-<time>``. It is complete when the
recorder closes it (stop, shutdown); a recorder killed mid-run leaves an MCAP without its
summary and no ``metadata.yaml`` (``ros2 bag reindex`` rebuilds them; the DICOM instances are
unaffected). Writes are serialised by a lock: the recorder's streams call from their own
threads.
"""

from __future__ import annotations

import datetime as _dt
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rosbags.rosbag2 import StoragePlugin, Writer, WriterError

from dicom_or_core.bags.reader import make_typestore
from dicom_or_core.bags.to_mcap import ROSBAG2_VERSION
from dicom_or_core.model.errors import DicomOrError


def bag_name(now: _dt.datetime | None = None) -> str:
    """A new bag's directory name, rosbag2's pattern with the UTC time."""
    now = now or _dt.datetime.now(_dt.UTC)
    return now.strftime("dicom_or_%Y_%m_%d-%H_%M_%S")


class BagRecorder:
    """An open bag; :meth:`write` CDR messages, :meth:`close` when done."""

    def __init__(self, folder: str | Path, msg_dirs: Sequence[Path],
                 name: str | None = None) -> None:
        self.path = Path(folder) / (name or bag_name())
        self._store = make_typestore(msg_dirs)
        self._lock = threading.Lock()
        self._connections: dict[str, Any] = {}
        self.messages = 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer: Writer | None = Writer(self.path, version=ROSBAG2_VERSION,
                                                 storage_plugin=StoragePlugin.MCAP)
            self._writer.open()
        except (OSError, WriterError) as exc:
            raise DicomOrError("mcap_output", f"cannot create the bag: {exc}",
                               str(self.path)) from None

    def write(self, topic: str, msgtype: str, log_ns: int, cdr: bytes) -> None:
        """Add one serialized message (``msgtype`` as ``pkg/msg/Type``) of ``topic``."""
        with self._lock:
            if self._writer is None:
                return  # closed: late messages of a stopping stream are not kept
            connection = self._connections.get(topic)
            if connection is None:
                if msgtype not in self._store.fielddefs:
                    raise DicomOrError("mcap_output", "no definition of the message type",
                                       msgtype)
                connection = self._writer.add_connection(topic, msgtype,
                                                         typestore=self._store)
                self._connections[topic] = connection
            self._writer.write(connection, log_ns, cdr)
            self.messages += 1

    def close(self) -> Path:
        """Write the MCAP summary and ``metadata.yaml``; the bag is complete."""
        with self._lock:
            writer, self._writer = self._writer, None
            if writer is not None:
                writer.close()
        return self.path
