"""A recorded DICOM study back into a rosbag2 bag (MCAP storage) of the project's messages.

The study is read by the replay domain (:func:`dicom_or_core.replay.sources.load_study`: the
descriptors and timed samples rebuilt from the instances), so an exported bag holds what a
replay would publish: ``/or/session_context``, each stream's descriptor on
``<topic>/descriptor`` and its samples (``ImageFrame`` rgb8, ``WaveformChunk``,
``PoseSample``) on ``<topic>``, with log time = the time each sample was acquired (a chunk's
first sample) and sequence numbers from 0 per stream. Such a bag converts back into DICOM
with :mod:`.to_dicom`.

The bag is what rosbag2 writes (``rosbags``' rosbag2 writer, version 9): a directory with
``metadata.yaml`` and one ``.mcap`` file of profile ``ros2``; every channel has CDR
messages and a ``ros2msg`` schema holding the type's definition followed by its
dependencies, each after a line of 80 ``=`` and ``MSG: <pkg>/<Type>`` (rosbag2's own
concatenation), and the MCAP carries rosbag2's ``serialized_metadata`` record, so
``ros2 bag info`` reads the directory or the file alone. The bag is written under a
temporary name and renamed when complete.
"""

from __future__ import annotations

import heapq
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from rosbags.interfaces import Nodetype
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys.store import Typestore

from dicom_or_core.bags.plan import (
    DESCRIPTOR_SUFFIX,
    SESSION_CONTEXT,
    SESSION_CONTEXT_TOPIC,
    STREAM_DESCRIPTOR,
)
from dicom_or_core.bags.reader import make_typestore
from dicom_or_core.model import context as ctx
from dicom_or_core.model.errors import DicomOrError
from dicom_or_core.replay.sources import (
    PoseSample,
    RecordedSeries,
    Sample,
    VideoSample,
    WaveformSample,
    load_study,
)

ROSBAG2_VERSION: Literal[9] = 9
_NUMPY = {"bool": np.bool_, "byte": np.uint8, "char": np.uint8, "int8": np.int8,
          "uint8": np.uint8, "int16": np.int16, "uint16": np.uint16, "int32": np.int32,
          "uint32": np.uint32, "int64": np.int64, "uint64": np.uint64,
          "float32": np.float32, "float64": np.float64}
_ZERO: dict[str, Any] = {"string": "", "wstring": "", "bool": False,
                         "float32": 0.0, "float64": 0.0}


def make_message(store: Typestore, typename: str, values: dict[str, Any]) -> Any:
    """A message of ``typename`` from a nested dict (absent fields: their zero value)."""
    _, fields = store.fielddefs[typename]
    cls = store.types[typename]
    return cls(**{name: _field(store, node, values.get(name)) for name, node in fields})


def _field(store: Typestore, node: tuple[Any, Any], value: Any) -> Any:
    kind, detail = node
    if kind == Nodetype.BASE:
        base = detail[0]
        if value is None:
            return _ZERO.get(base, 0)
        return value if base in ("string", "wstring") else _NUMPY[base](value).item()
    if kind == Nodetype.NAME:
        return make_message(store, detail, value or {})
    element, _length = detail
    items = [] if value is None else value
    if element[0] == Nodetype.BASE and element[1][0] in _NUMPY:
        return np.asarray(items, dtype=_NUMPY[element[1][0]])
    return [_field(store, element, v) for v in items]


def _time(ns: int) -> dict[str, int]:
    return {"sec": ns // 1_000_000_000, "nanosec": ns % 1_000_000_000}


@dataclass
class ExportReport:
    """What the export wrote: the bag directory and messages per topic."""

    output: Path
    messages: dict[str, int]


class _Streams:
    """Each stream's message fields, and its sequence counter."""

    def __init__(self, series: Sequence[RecordedSeries]) -> None:
        self.series = list(series)
        self.sequence = [0] * len(self.series)

    def context(self, index: int, sample: Sample) -> dict[str, Any]:
        d = self.series[index].descriptor
        seq = self.sequence[index]
        self.sequence[index] += 1
        return {"header": {"stamp": _time(sample.acquisition_ns), "frame_id": d.tf_frame_id},
                "series_instance_uid": d.series_instance_uid, "sequence": seq,
                "acquisition_time": _time(sample.acquisition_ns)}

    def fields(self, index: int, sample: Sample) -> dict[str, Any]:
        """The sample message's fields."""
        context = self.context(index, sample)
        if isinstance(sample, VideoSample):
            image = np.ascontiguousarray(sample.image)
            encoding = "mono8" if image.ndim == 2 else "rgb8"
            rows, columns = image.shape[:2]
            return {"context": context, "image": {
                "header": context["header"], "height": rows, "width": columns,
                "encoding": encoding, "step": image.strides[0],
                "data": image.reshape(-1)}}
        if isinstance(sample, WaveformSample):
            return {"context": context, "first_sample_time": _time(sample.acquisition_ns),
                    "sample_period": 1.0 / sample.sampling_frequency_hz,
                    "first_sample_index": sample.first_sample_index,
                    "channel_count": sample.samples.shape[1],
                    "samples": np.ascontiguousarray(sample.samples, np.int16).reshape(-1)}
        assert isinstance(sample, PoseSample)
        p, q = sample.position, sample.orientation
        return {"context": context, "tool_id": sample.tool_id, "visible": True,
                "tracking_quality": 1.0,
                "pose": {"position": dict(zip("xyz", p, strict=True)),
                         "orientation": dict(zip("xyzw", q, strict=True))}}


def _merged(series: Sequence[RecordedSeries]) -> Iterator[tuple[int, int, Sample]]:
    """(log time, series index, sample) of every stream, in acquisition order."""
    def stream(index: int, s: RecordedSeries) -> Iterator[tuple[int, int, Sample]]:
        for sample in s.samples():
            yield sample.acquisition_ns, index, sample
    return heapq.merge(*(stream(i, s) for i, s in enumerate(series)),
                       key=lambda item: (item[0], item[1]))


def export_study(folder: str | Path, output: str | Path, msg_dirs: Sequence[Path],
                 study_instance_uid: str = "",
                 progress: Callable[[int, int, int], None] | None = None) -> ExportReport:
    """Write the study recorded under ``folder`` as the rosbag2 directory ``output``."""
    study = load_study(folder, study_instance_uid)
    output = Path(output).resolve()
    if output.exists():
        raise DicomOrError("output", "exists already; not overwriting", str(output))
    store = make_typestore(msg_dirs)
    staging = output.parent / f".{output.name}.export-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    counts: dict[str, int] = {}
    try:
        _write(store, study.session, study.series, staging / output.name, counts, progress)
        os.replace(staging / output.name, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ExportReport(output, counts)


def _write(store: Typestore, session: ctx.SessionContext, series: Sequence[RecordedSeries],
           bag: Path, counts: dict[str, int],
           progress: Callable[[int, int, int], None] | None) -> None:
    start = min(s.start_ns for s in series)
    with Writer(bag, version=ROSBAG2_VERSION, storage_plugin=StoragePlugin.MCAP) as writer:
        def put(topic: str, msgtype: str, log_ns: int, values: dict[str, Any]) -> None:
            if topic not in connections:
                connections[topic] = writer.add_connection(topic, msgtype, typestore=store)
            writer.write(connections[topic], log_ns, store.serialize_cdr(
                make_message(store, msgtype, values), msgtype))
            counts[topic] = counts.get(topic, 0) + 1

        connections: dict[str, Any] = {}
        put(SESSION_CONTEXT_TOPIC, SESSION_CONTEXT, start, ctx.to_dict(session))
        for s in series:
            d = s.descriptor
            put(d.topic + DESCRIPTOR_SUFFIX, STREAM_DESCRIPTOR, start,
                {**ctx.to_dict(d), "header": {"stamp": _time(s.start_ns),
                                              "frame_id": d.tf_frame_id}})
        streams = _Streams(series)
        done = frames = 0
        for log_ns, index, sample in _merged(series):
            d = series[index].descriptor
            put(d.topic, d.message_type, log_ns, streams.fields(index, sample))
            done += 1
            frames += isinstance(sample, VideoSample)
            if progress is not None:
                progress(done, 0, frames)
