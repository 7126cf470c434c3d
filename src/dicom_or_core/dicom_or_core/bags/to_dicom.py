"""A bag into a DICOM study, offline, through the recorder's own stream recorders.

The conversion is live recording replayed as fast as the encoder allows: every sample goes
to the same stream recorder the recorder node feeds (``recorder_for``, injected by the
caller: :func:`dicom_or_recorder.segments.recorder_for`), with the same admission rules
(clock, sequence, duplicates), the same segmentation (``max_segment_s``, size, the Frame
Time Vector's length, waveform contiguity) and the same IOD builders
(:mod:`dicom_or_core.iod`). So a converted bag and a live recording of the same streams
are the same kind of study, and a rule changed for one holds for the other.

Instances are built in a spool beside the output (``.<name>.convert-<pid>``) and moved into
``<output>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm`` -- the recorder's
archive layout -- only once the whole conversion succeeded, each by an atomic rename: the
output never holds a half-written file, and a failed conversion leaves nothing behind.
"""

from __future__ import annotations

import os
import queue
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from dicom_or_core.archive.spool import FINAL, Spool
from dicom_or_core.bags.plan import (
    DESCRIPTOR_SUFFIX,
    PLAIN_KINDS,
    PROJECT_KINDS,
    SESSION_CONTEXT,
    SESSION_CONTEXT_TOPIC,
    STREAM_DESCRIPTOR,
    VIDEO_PACKET,
    PlainTopic,
    ProjectTopic,
    Sample,
    TopicPlan,
    estimate_rate,
    from_message,
    new_session,
)
from dicom_or_core.bags.reader import Bag
from dicom_or_core.model import context as ctx
from dicom_or_core.model.errors import DicomOrError

T = TypeVar("T")
# Messages read and decoded ahead of the encoder (a 1080p RGB frame is 6 MB).
PREFETCH = 8
# A plain topic's nominal rate is measured on its first messages.
RATE_SAMPLE_MESSAGES = 100
# (descriptor, spool) -> a stream recorder of the descriptor's kind.
RecorderFactory = Callable[[ctx.StreamDescriptor, Spool], Any]
# (messages done, messages in all, video frames recorded)
ProgressCallback = Callable[[int, int, int], None]


@dataclass
class ConvertOptions:
    """What to convert and in which context."""

    topics: list[str] = field(default_factory=list)   # empty: every convertible topic
    session: ctx.SessionContext | None = None          # the caller's patient and study
    streams: dict[str, dict[str, Any]] = field(default_factory=dict)  # the stream YAML


@dataclass
class TopicReport:
    """What became of one topic."""

    topic: str
    kind: str
    messages: int = 0
    samples: int = 0
    instances: int = 0
    refused: int = 0
    unknown_series: int = 0
    first_error: str = ""


@dataclass
class ConvertReport:
    """The conversion's outcome: the instances written and per-topic counts."""

    output: Path
    instances: list[Path] = field(default_factory=list)
    topics: dict[str, TopicReport] = field(default_factory=dict)
    video_frames: int = 0
    elapsed_s: float = 0.0


def convertible_topics(bag: Bag, options: ConvertOptions) -> dict[str, str]:
    """The sample topics to convert ({topic: message type}); DicomOrError naming a requested
    topic that is not in the bag or not of a supported type."""
    supported = {**PROJECT_KINDS, **PLAIN_KINDS}
    for topic in options.topics:
        if topic not in bag.topics:
            raise DicomOrError("topic", "is not in the bag", topic)
        if bag.topics[topic].msgtype not in supported:
            raise DicomOrError("topic", f"has type {bag.topics[topic].msgtype}, which is not "
                               "convertible (see docs/convert.md)", topic)
    chosen = options.topics or [
        t for t, info in bag.topics.items() if info.msgtype in PROJECT_KINDS
        or (info.msgtype in PLAIN_KINDS and (PLAIN_KINDS[info.msgtype] != ctx.KIND_WAVEFORM
                                             or t in options.streams))]
    if not chosen:
        raise DicomOrError("bag", "holds no convertible topic (see docs/convert.md)",
                           str(bag.path))
    for topic in options.streams:
        if topic not in bag.topics:
            raise DicomOrError(f"streams.{topic}", "is not a topic of the bag")
    for topic in chosen:
        if not bag.decodable(topic):
            raise DicomOrError("topic", f"type {bag.topics[topic].msgtype} has no definition "
                               "in the bag nor in the type store", topic)
    return {t: bag.topics[t].msgtype for t in chosen}


class _Session:
    """The session of plain topics: the caller's, the bag's own, or a new study."""

    def __init__(self, override: ctx.SessionContext | None) -> None:
        self.override = override
        self.from_bag: ctx.SessionContext | None = None
        self.first_ns = time.time_ns()
        self._made: ctx.SessionContext | None = None

    def __call__(self) -> ctx.SessionContext:
        if self.override is not None:
            return self.override
        if self.from_bag is not None:
            return self.from_bag
        if self._made is None:
            self._made = new_session(self.first_ns)
        return self._made


def make_plans(bag: Bag, options: ConvertOptions) -> dict[str, TopicPlan]:
    """One plan per sample topic, with the descriptors and session the bag latched."""
    topics = convertible_topics(bag, options)
    session = _Session(options.session)
    plans: dict[str, TopicPlan] = {}
    number = 1
    for topic, msgtype in topics.items():
        if msgtype in PROJECT_KINDS:
            plans[topic] = ProjectTopic(topic, msgtype, PROJECT_KINDS[msgtype])
            continue
        rate = estimate_rate(bag.log_times(topic, RATE_SAMPLE_MESSAGES))
        plans[topic] = PlainTopic(topic, msgtype, PLAIN_KINDS[msgtype],
                                  options.streams.get(topic, {}), session, rate, number)
        number += 1
    latched = [t for t, info in bag.topics.items()
               if (info.msgtype == STREAM_DESCRIPTOR and t.endswith(DESCRIPTOR_SUFFIX)
                   and t[:-len(DESCRIPTOR_SUFFIX)] in plans)
               or (t == SESSION_CONTEXT_TOPIC and info.msgtype == SESSION_CONTEXT)]
    for topic, log_ns, msg in bag.messages(latched):
        session.first_ns = min(session.first_ns, log_ns)
        if topic == SESSION_CONTEXT_TOPIC:
            session.from_bag = from_message(ctx.SessionContext, msg).validate(
                "session_context")
            continue
        plan = plans[topic[:-len(DESCRIPTOR_SUFFIX)]]
        assert isinstance(plan, ProjectTopic)
        plan.add_descriptor(msg, options.session)
    for plan in plans.values():
        if not isinstance(plan, ProjectTopic) or plan.descriptors:
            continue
        if plan.topic not in options.streams:
            raise DicomOrError("topic", f"has no descriptor latched on {plan.topic}"
                               f"{DESCRIPTOR_SUFFIX} in the bag nor in the stream YAML",
                               plan.topic)
        if plan.msgtype == VIDEO_PACKET:  # geometry, rate and level come from the camera
            raise DicomOrError("topic", f"an H.264 stream needs its descriptor latched on "
                               f"{plan.topic}{DESCRIPTOR_SUFFIX} in the bag", plan.topic)
        plan.fallback = PlainTopic(plan.topic, plan.msgtype, plan.kind,
                                   options.streams[plan.topic], session,
                                   estimate_rate(bag.log_times(plan.topic,
                                                               RATE_SAMPLE_MESSAGES)), number)
        number += 1
    return plans


def _spool_root(output: Path) -> Path:
    return output.parent / f".{output.name}.convert-{os.getpid()}"


def convert_bag(bag: Bag, output: str | Path, recorder_for: RecorderFactory,
                options: ConvertOptions | None = None,
                progress: ProgressCallback | None = None) -> ConvertReport:
    """Convert ``bag`` into DICOM instances under ``output`` (created; an existing archive
    folder receives the new study beside what it holds)."""
    options = options or ConvertOptions()
    output = Path(output).resolve()
    if output.exists() and not output.is_dir():
        raise DicomOrError("output", "exists and is not a directory", str(output))
    plans = make_plans(bag, options)
    report = ConvertReport(output)
    started = time.perf_counter()
    root = _spool_root(output)
    shutil.rmtree(root, ignore_errors=True)
    spool = Spool(root)
    try:
        recorders = _run(bag, plans, spool, recorder_for, report, progress)
        for (topic, _), recorder in recorders.items():
            recorder.stop(wait=True)
            stats = recorder.stats
            if stats.last_error:
                raise DicomOrError("conversion", stats.last_error, topic)
            entry = report.topics[topic]
            entry.samples += stats.samples
            entry.instances += stats.instances
            if stats.kind == "video":
                report.video_frames += stats.samples
        report.instances = _publish(spool, output)
    finally:
        spool.close()
        shutil.rmtree(root, ignore_errors=True)
    report.elapsed_s = time.perf_counter() - started
    return report


def _decoded(bag: Bag, plans: dict[str, TopicPlan]
             ) -> Iterator[tuple[str, Sample | None | Exception]]:
    """(topic, sample | None | the sample's error) of every message, in log-time order."""
    for topic, log_ns, msg in bag.messages(plans):
        try:
            yield topic, plans[topic].sample(log_ns, msg)
        except (DicomOrError, ValueError) as exc:
            yield topic, exc


def prefetched(items: Iterator[T], depth: int = PREFETCH) -> Iterator[T]:
    """``items`` produced on a thread of their own, up to ``depth`` ahead of the consumer:
    reading the bag and decoding the next frames (cv2 and the decompressors release the
    GIL) overlap with encoding the current one. An error of the producer is raised here;
    a consumer that stops early stops the producer."""
    slots: queue.Queue[tuple[bool, Any]] = queue.Queue(depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        slots.put((True, item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            slots.put((False, None))
        except BaseException as exc:  # handed to the consumer, raised there
            slots.put((False, exc))

    thread = threading.Thread(target=produce, name="bag-reader", daemon=True)
    thread.start()
    try:
        while True:
            more, item = slots.get()
            if not more:
                if item is not None:
                    raise item
                return
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


def _run(bag: Bag, plans: dict[str, TopicPlan], spool: Spool, recorder_for: RecorderFactory,
         report: ConvertReport, progress: ProgressCallback | None) -> dict[tuple[str, str],
                                                                           Any]:
    """Feed every sample message to its Series' recorder, in log-time order."""
    recorders: dict[tuple[str, str], Any] = {}
    total = sum(bag.topics[t].count for t in plans)
    for topic, plan in plans.items():
        report.topics[topic] = TopicReport(topic, ctx.KIND_NAMES[ctx.StreamKind(plan.kind)])
    done = frames = 0
    for topic, sample in prefetched(_decoded(bag, plans)):
        entry = report.topics[topic]
        entry.messages += 1
        done += 1
        try:
            if isinstance(sample, Exception):
                raise sample
            if sample is not None:
                key = (topic, sample.series_key)
                recorder = recorders.get(key)
                if recorder is None:
                    recorder = recorders[key] = recorder_for(
                        plans[topic].descriptors[sample.series_key], spool)
                recorder.feed(*sample.args)
                frames += plans[topic].kind == ctx.KIND_VIDEO
            elif isinstance(plans[topic], ProjectTopic):
                entry.unknown_series += 1  # a Series the bag latched no descriptor for
        except (DicomOrError, ValueError) as exc:
            entry.refused += 1
            entry.first_error = entry.first_error or str(exc)
        if progress is not None:
            progress(done, total, frames)
    return recorders


def _publish(spool: Spool, output: Path) -> list[Path]:
    """Move the finished instances into the output's archive layout (atomic renames)."""
    moved = []
    rows = spool.rows()
    pending = [r for r in rows if r.state != FINAL]
    if pending:
        raise DicomOrError("conversion", "instances were not finalised", len(pending))
    for row in rows:
        source = spool.absolute(row)
        target = output / source.relative_to(spool.root)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)
        moved.append(target)
    return moved
