"""ROS-free stream recorders: samples in, journaled segments, DICOM instances out.

One :class:`StreamRecorder` per recorded stream. It cuts the stream into *segments* (one
segment = one instance of the stream's Series, bounded by ``max_segment_s`` and, for native
video, by the 4 GiB Pixel Data limit), journals every accepted sample in the segment's
:class:`~dicom_or_core.spool.Journal` before reporting it acknowledged, and finalises a
closed segment into a DICOM instance in the spool. :func:`finalise_journal` rebuilds the
instance from a journal alone, which is what crash recovery runs.

What is journaled per kind:

* video (compressed): each frame's encoded packet with its stamp and sequence number. The
  encoders run in zero-latency mode, so a frame is acknowledged as soon as it is encoded
  (FFmpeg's MPEG-2 encoder holds one frame: with MPEG-2 the newest frame is acknowledged
  when the next one arrives or the segment closes).
* video (lossless): the raw frame.
* waveform: each chunk's int16 samples with its first sample index and time.
* pose: each visible pose (occluded samples are counted, not recorded).

Gaps are recorded, not hidden: a jump in a stream's ``sequence`` counts lost messages; a
waveform whose ``first_sample_index`` jumps closes the instance and opens a new one at the
new first sample (a waveform instance is contiguous); a video keeps the dropped frame's gap
in its frame times (Frame Time Vector).
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from dicom_or_core import context as ctx
from dicom_or_core.errors import DicomOrError
from dicom_or_core.iod.pose import ToolTrack, build_pose_sr
from dicom_or_core.iod.video import (
    MAX_NATIVE_PIXEL_BYTES,
    build_multiframe_sc,
    build_snapshot,
    build_video,
)
from dicom_or_core.iod.waveform import build_waveform, check_constraints
from dicom_or_core.spool import Journal, Spool
from dicom_or_core.uid import new_uid
from dicom_or_core.video_codec import (
    PTS_HZ,
    PacketEncoder,
    choose_codec,
    mux_mpegts,
)
from dicom_or_core.video_codec import EncodedPacket as _Packet

VIDEO_MODES = ("auto", "h264", "hevc", "mpeg2", "lossless")
_VIDEO_REC = struct.Struct("<qQqB")       # stamp ns, sequence, pts, keyframe
_RAW_REC = struct.Struct("<qQ")           # stamp ns, sequence
_WAVE_REC = struct.Struct("<qQQH")        # first sample ns, first index, sequence, channels
_POSE_REC = struct.Struct("<qQH7d")       # stamp ns, sequence, tool index, xyz, qxyzw


@dataclass
class RecorderOptions:
    """How streams are cut and encoded (the node's parameters)."""

    max_segment_s: float = 60.0
    video_mode: str = "auto"
    video_quality: int = 18
    video_preset: str = "superfast"
    max_poses_per_instance: int = 20000

    def validate(self) -> RecorderOptions:
        if not 1.0 <= self.max_segment_s <= 3600.0:
            raise DicomOrError("max_segment_s", "must be 1..3600 seconds", self.max_segment_s)
        if self.video_mode not in VIDEO_MODES:
            raise DicomOrError("video_mode", f"must be one of {', '.join(VIDEO_MODES)}",
                               self.video_mode)
        if not 0 <= self.video_quality <= 51:
            raise DicomOrError("video_quality", "CRF must be 0..51", self.video_quality)
        if self.max_poses_per_instance < 1:
            raise DicomOrError("max_poses_per_instance", "must be >= 1",
                               self.max_poses_per_instance)
        return self


@dataclass
class StreamStats:
    """What the status shows for a person, per stream."""

    topic: str = ""
    kind: str = ""
    series_instance_uid: str = ""
    recording: bool = False
    acknowledged: int = 0          # frames, chunks or poses journaled
    samples: int = 0               # frames, waveform samples per channel, or poses
    lost_messages: int = 0         # from sequence gaps
    out_of_order: int = 0          # dropped: not newer than the previous sample
    occluded: int = 0              # pose samples not recorded (tool not visible)
    bytes_journaled: int = 0
    instances: int = 0
    last_error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class StreamRecorder:
    """Base: segment bookkeeping, sequence-gap accounting and finalisation."""

    kind = ""

    def __init__(self, descriptor: ctx.StreamDescriptor, spool: Spool,
                 options: RecorderOptions) -> None:
        self.descriptor = descriptor.validate()
        self.spool = spool
        self.options = options
        self.journal: Journal | None = None
        self.finaliser: Executor | None = None     # where instances are built (None: here)
        self.on_final: Callable[[], None] | None = None
        # Instance Numbers continue across restarts within the Series.
        self.instance_number = spool.series_instance_count(descriptor.series_instance_uid)
        self.stats = StreamStats(topic=descriptor.topic, kind=self.kind,
                                 series_instance_uid=descriptor.series_instance_uid)
        self._last_sequence: int | None = None

    # -- sequence accounting -------------------------------------------------------------

    def _check_sequence(self, sequence: int, excused: int = 0) -> bool:
        """Count a gap as lost messages; refuse a message that is not newer. ``excused``
        messages of the gap were dropped on purpose (and counted) by the caller, so they are
        not lost on the way."""
        last = self._last_sequence
        if last is not None and sequence <= last:
            self.stats.out_of_order += 1
            return False
        if last is not None and sequence > last + 1:
            self.stats.lost_messages += max(0, sequence - last - 1 - excused)
        self._last_sequence = sequence
        return True

    # -- segments --------------------------------------------------------------------------

    def _open(self, extra: dict[str, Any]) -> Journal:
        self.instance_number += 1
        meta = {"recorder": self.kind, "sop_instance_uid": new_uid(),
                "instance_number": self.instance_number,
                "descriptor": ctx.to_dict(self.descriptor), **extra}
        self.journal = self.spool.open_journal(meta)
        self.stats.recording = True
        return self.journal

    def _append(self, payload: bytes) -> None:
        assert self.journal is not None
        self.journal.append(payload)
        self.stats.acknowledged += 1
        self.stats.bytes_journaled += len(payload)

    def close_segment(self, wait: bool = True) -> list[str]:
        """Close the open segment and finalise it into an instance; return its SOP Instance
        UID. With ``wait`` false (a segment boundary while samples keep flowing) and a
        ``finaliser`` executor, the muxing, dataset building and durable write run there,
        so the stream's callback is not held up; the journal keeps the samples safe until
        the instance is final."""
        journal = self.journal
        if journal is None:
            return []
        self._before_close(journal)
        self.journal = None
        journal.close()
        if self.finaliser is not None:
            future = self.finaliser.submit(self._finalise, journal)
            if wait:
                future.result()
        else:
            self._finalise(journal)
        return [journal.meta["sop_instance_uid"]] if journal.records_acknowledged else []

    def _finalise(self, journal: Journal) -> None:
        try:
            ds = finalise_journal(journal)
            if ds is not None:
                self.spool.write_instance(ds)
                self.stats.instances += 1
        except (DicomOrError, OSError, ValueError) as exc:
            # The journal stays on disk: the next start finalises it (or reports it again).
            self.stats.last_error = f"finalising instance failed: {exc}"
            raise
        journal.discard()
        if self.on_final is not None:
            self.on_final()

    def _before_close(self, journal: Journal) -> None:
        """Hook: write what a subclass still buffers (e.g. delayed encoder packets)."""

    def stop(self) -> list[str]:
        """Stop recording: finalise the open segment and wait until it is final. Messages
        skipped while stopped are not losses: sequence accounting restarts."""
        self.stats.recording = False
        self._last_sequence = None
        return self.close_segment(wait=True)


class VideoRecorder(StreamRecorder):
    """ImageFrame stream -> compressed video instances (or lossless multi-frame SC)."""

    kind = "video"

    def __init__(self, descriptor: ctx.StreamDescriptor, spool: Spool,
                 options: RecorderOptions,
                 encoder_factory: Callable[..., PacketEncoder] = PacketEncoder) -> None:
        super().__init__(descriptor, spool, options)
        # Builds each segment's encoder (PacketEncoder's signature); tests inject slow ones.
        self.encoder_factory = encoder_factory
        d = self.descriptor
        self.lossless = options.video_mode == "lossless"
        self.choice = None if self.lossless else choose_codec(d.rows, d.columns,
                                                              d.nominal_rate_hz,
                                                              options.video_mode)
        self._encoder: PacketEncoder | None = None
        self._first_ns = 0
        self._pending: list[tuple[int, int]] = []  # (stamp, sequence) inside the encoder
        self._frame_bytes = d.rows * d.columns * 3
        self._segment_frames = 0
        self._last_stamp = -1
        self.latest: tuple[np.ndarray, int] | None = None
        self.latest_before: np.ndarray | None = None

    def check_frame(self, image: np.ndarray) -> None:
        """Refuse a frame whose shape is not the descriptor's."""
        d = self.descriptor
        expected = (d.rows, d.columns) if d.pixel_encoding == "mono8" else \
            (d.rows, d.columns, 3)
        if image.shape != expected:
            raise DicomOrError("frame", f"shape must match the descriptor {expected}",
                               image.shape)

    def feed(self, image: np.ndarray, stamp_ns: int, sequence: int,
             dropped_before: int = 0) -> list[str]:
        """Record one frame (rows x columns [x 3] uint8 in the descriptor's encoding).
        ``dropped_before``: frames the caller dropped (and counted) just before this one,
        which are therefore not counted again as lost messages; their time stays a gap."""
        self.check_frame(image)
        d = self.descriptor
        if not self._check_sequence(sequence, dropped_before):
            return []
        if stamp_ns <= self._last_stamp:
            self.stats.out_of_order += 1
            return []
        self.latest = (image, stamp_ns)
        done = []
        if self.journal is not None and (
                stamp_ns - self._first_ns >= self.options.max_segment_s * 1e9
                or (self.lossless and (self._segment_frames + 1) * self._frame_bytes
                    > MAX_NATIVE_PIXEL_BYTES)):
            done = self.close_segment(wait=False)
        if self.journal is None:
            self._first_ns = stamp_ns
            self._segment_frames = 0
            extra: dict[str, Any] = {"first_ns": stamp_ns, "mode": self.options.video_mode}
            self._open(extra)
            if not self.lossless:
                assert self.choice is not None
                self._encoder = self.encoder_factory(self.choice, d.rows, d.columns,
                                                     d.pixel_encoding, d.nominal_rate_hz,
                                                     self.options.video_quality,
                                                     self.options.video_preset)
        if self.choice is not None and self.choice.name == "mpeg2" and self._segment_frames:
            # MPEG-2 has a fixed frame grid (PS3.5 8.2.5): snap to the nearest slot and
            # fill the slots of dropped frames with the previous picture.
            period = 1e9 / self.descriptor.nominal_rate_hz
            slot = round((stamp_ns - self._first_ns) / period)
            if slot < self._segment_frames:
                self.stats.out_of_order += 1
                return done
            previous = self.latest_before
            while self._segment_frames < slot:
                self._encode(previous, self._first_ns + round(self._segment_frames * period),
                             sequence)
                self.stats.extra["repeated_frames"] = \
                    self.stats.extra.get("repeated_frames", 0) + 1
            stamp_ns = self._first_ns + round(slot * period)
        self._last_stamp = stamp_ns
        self.latest_before = image
        if self.lossless:
            self._segment_frames += 1
            self._append(_RAW_REC.pack(stamp_ns, sequence) + np.ascontiguousarray(image)
                         .tobytes())
        else:
            self._encode(image, stamp_ns, sequence)
        self.stats.samples += 1
        return done

    def _encode(self, image: np.ndarray, stamp_ns: int, sequence: int) -> None:
        assert self._encoder is not None
        pts = round((stamp_ns - self._first_ns) * PTS_HZ / 1e9)
        self._pending.append((stamp_ns, sequence))
        try:
            packets = self._encoder.encode(image, pts)
        except BaseException:
            # The encoder did not take the frame: its stamp must not be paired with the
            # next frame's packet.
            self._pending.pop()
            raise
        self._segment_frames += 1
        for packet in packets:
            self._journal_packet(packet)

    def _journal_packet(self, packet: _Packet) -> None:
        stamp, sequence = self._pending.pop(0)
        self._append(_VIDEO_REC.pack(stamp, sequence, packet.pts, packet.keyframe)
                     + packet.data)

    def _before_close(self, journal: Journal) -> None:
        if self._encoder is not None:
            for packet in self._encoder.flush():
                self._journal_packet(packet)
            self._encoder = None
        self._pending.clear()

    def snapshot(self, frame: tuple[np.ndarray, int] | None = None) -> list[str]:
        """Write ``frame`` (image, stamp), by default the latest frame fed, as a single-frame
        instance now."""
        frame = frame or self.latest
        if frame is None:
            raise DicomOrError("snapshot", "no frame received yet", self.descriptor.topic)
        image, stamp = frame
        self.instance_number += 1
        ds = build_snapshot(self.descriptor, image, stamp, new_uid(), self.instance_number,
                            _now_ns())
        self.spool.write_instance(ds)
        self.stats.extra["snapshots"] = self.stats.extra.get("snapshots", 0) + 1
        return [str(ds.SOPInstanceUID)]


class WaveformRecorder(StreamRecorder):
    """WaveformChunk stream -> waveform instances (contiguous samples each)."""

    kind = "waveform"

    def __init__(self, descriptor: ctx.StreamDescriptor, spool: Spool,
                 options: RecorderOptions) -> None:
        super().__init__(descriptor, spool, options)
        check_constraints(self.descriptor)  # refuse an out-of-IOD stream up front
        self._next_index = 0
        self._segment_samples = 0

    def feed(self, samples: np.ndarray, first_sample_ns: int, first_sample_index: int,
             sequence: int) -> list[str]:
        """Record one chunk: int16 (n, channels) samples starting at ``first_sample_index``."""
        channels = len(self.descriptor.channels)
        samples = np.asarray(samples, dtype=np.int16)
        if samples.ndim != 2 or samples.shape[1] != channels:
            raise DicomOrError("samples", f"chunk must have {channels} channels",
                               samples.shape)
        if not self._check_sequence(sequence):
            return []
        done = []
        limit = self.options.max_segment_s * self.descriptor.sampling_frequency_hz
        if self.journal is not None:
            if first_sample_index < self._next_index:
                self.stats.out_of_order += 1
                return []
            if first_sample_index != self._next_index or self._segment_samples >= limit:
                if first_sample_index > self._next_index:
                    self.stats.extra["lost_samples"] = self.stats.extra.get(
                        "lost_samples", 0) + first_sample_index - self._next_index
                done = self.close_segment(wait=False)
        if self.journal is None:
            self._open({"first_ns": first_sample_ns})
            self._segment_samples = 0
        self._append(_WAVE_REC.pack(first_sample_ns, first_sample_index, sequence, channels)
                     + samples.astype("<i2").tobytes())
        self._next_index = first_sample_index + samples.shape[0]
        self._segment_samples += samples.shape[0]
        self.stats.samples += samples.shape[0]
        return done


class PoseRecorder(StreamRecorder):
    """PoseSample stream (all tools on one topic) -> Comprehensive 3D SR instances."""

    kind = "pose"

    def __init__(self, descriptor: ctx.StreamDescriptor, spool: Spool,
                 options: RecorderOptions) -> None:
        super().__init__(descriptor, spool, options)
        self._first_ns = 0
        self._segment_poses = 0
        self._last_stamp: dict[str, int] = {}

    def feed(self, tool_id: str, stamp_ns: int, position: tuple[float, float, float],
             quaternion_xyzw: tuple[float, float, float, float], visible: bool,
             sequence: int) -> list[str]:
        """Record one pose sample."""
        if not self._check_sequence(sequence):
            return []
        if not visible:
            self.stats.occluded += 1
            return []
        if tool_id not in self.descriptor.tool_ids:
            raise DicomOrError("tool_id", "is not one of the descriptor's tool_ids", tool_id)
        if stamp_ns <= self._last_stamp.get(tool_id, -1):
            self.stats.out_of_order += 1
            return []
        if not np.isfinite(position).all() or not np.isfinite(quaternion_xyzw).all() \
                or np.linalg.norm(quaternion_xyzw) < 1e-6:
            raise DicomOrError("pose", "position and orientation must be finite, the "
                               "quaternion non-zero", (position, quaternion_xyzw))
        done = []
        if self.journal is not None and (
                stamp_ns - self._first_ns >= self.options.max_segment_s * 1e9
                or self._segment_poses >= self.options.max_poses_per_instance):
            done = self.close_segment(wait=False)
        if self.journal is None:
            self._first_ns = stamp_ns
            self._segment_poses = 0
            self._open({"first_ns": stamp_ns})
        self._last_stamp[tool_id] = stamp_ns
        self._append(_POSE_REC.pack(stamp_ns, sequence,
                                    self.descriptor.tool_ids.index(tool_id),
                                    *position, *quaternion_xyzw))
        self._segment_poses += 1
        self.stats.samples += 1
        return done


RECORDERS: dict[int, type[StreamRecorder]] = {
    ctx.KIND_VIDEO: VideoRecorder,
    ctx.KIND_WAVEFORM: WaveformRecorder,
    ctx.KIND_POSE: PoseRecorder,
}


def recorder_for(descriptor: ctx.StreamDescriptor, spool: Spool,
                 options: RecorderOptions) -> StreamRecorder:
    """The recorder of a stream's kind."""
    return RECORDERS[descriptor.kind](descriptor, spool, options)


def _now_ns() -> int:
    return time.time_ns()


# -- finalisation (also what crash recovery runs) -------------------------------------------


def finalise_journal(journal: Journal) -> Dataset | None:
    """The instance a journal describes, or None when it holds no sample."""
    meta = journal.meta
    descriptor = ctx.from_dict(ctx.StreamDescriptor, meta["descriptor"])
    sop = meta["sop_instance_uid"]
    number = int(meta["instance_number"])
    created = _now_ns()
    records = list(journal.records())
    if not records:
        return None
    kind = meta["recorder"]
    if kind == "video" and meta.get("mode") == "lossless":
        shape = (descriptor.rows, descriptor.columns) if descriptor.pixel_encoding == \
            "mono8" else (descriptor.rows, descriptor.columns, 3)
        stamps, frames = [], []
        for r in records:
            stamp, _ = _RAW_REC.unpack_from(r)
            stamps.append(stamp)
            frames.append(np.frombuffer(r, np.uint8, offset=_RAW_REC.size).reshape(shape))
        return build_multiframe_sc(descriptor, frames, stamps, sop, number, created)
    if kind == "video":
        choice = choose_codec(descriptor.rows, descriptor.columns, descriptor.nominal_rate_hz,
                              meta.get("mode", "auto"))
        stamps, packets = [], []
        for r in records:
            stamp, _, pts, key = _VIDEO_REC.unpack_from(r)
            stamps.append(stamp)
            packets.append(_Packet(pts, pts, bool(key), r[_VIDEO_REC.size:]))
        bitstream = mux_mpegts(choice, descriptor.rows, descriptor.columns,
                               descriptor.nominal_rate_hz, packets)
        return build_video(descriptor, bitstream, choice, stamps, sop, number, created)
    if kind == "waveform":
        blocks = []
        first_ns = None
        for r in records:
            t0, _, _, channels = _WAVE_REC.unpack_from(r)
            first_ns = t0 if first_ns is None else first_ns
            blocks.append(np.frombuffer(r, "<i2", offset=_WAVE_REC.size).reshape(-1, channels))
        return build_waveform(descriptor, np.concatenate(blocks).astype(np.int16), first_ns,
                              sop, number, created)
    if kind == "pose":
        per_tool: dict[int, list[tuple]] = {}
        for r in records:
            stamp, _, tool, *values = _POSE_REC.unpack(r)
            per_tool.setdefault(tool, []).append((stamp, values))
        tracks = []
        for tool, rows in sorted(per_tool.items()):
            stamps = np.array([s for s, _ in rows], np.int64)
            values = np.array([v for _, v in rows], np.float64)
            tracks.append(ToolTrack(descriptor.tool_ids[tool], stamps, values[:, :3],
                                    values[:, 3:]))
        return build_pose_sr(descriptor, tracks, sop, number, created)
    raise DicomOrError("journal", "unknown recorder kind", kind)
