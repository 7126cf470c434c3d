"""ROS-free stream recorders: samples in, journaled segments, DICOM instances out.

One :class:`StreamRecorder` per recorded stream. It cuts the stream into *segments* (one
segment = one instance of the stream's Series, bounded by ``max_segment_s`` and, for native
video, by the 4 GiB Pixel Data limit), journals every accepted sample in the segment's
:class:`~dicom_or_core.archive.spool.Journal` before reporting it acknowledged, and finalises a
closed segment into a DICOM instance in the spool. :func:`finalise_journal` rebuilds the
instance from a journal alone, which is what crash recovery runs.

What is journaled per kind:

* video (compressed): each frame's encoded packet with its stamp and sequence number. The
  encoders run in zero-latency mode, so a frame is acknowledged as soon as it is encoded
  (FFmpeg's MPEG-2 encoder holds one frame: with MPEG-2 the newest frame is acknowledged
  when the next one arrives or the segment closes).
* video (lossless): the raw frame.
* video (passthrough, descriptor ``video_codec`` "h264"): each H.264 access unit exactly as
  the driver published it (:class:`PassthroughVideoRecorder`); nothing is re-encoded, so the
  elementary stream in the instance's Pixel Data is the published bytes.
* waveform: each chunk's int16 samples with its first sample index and time.
* pose: visible poses in batches of up to ``POSE_BATCH_ROWS`` poses or ``POSE_BATCH_S``
  of time, one record per batch (occluded samples are counted, not recorded). A pose is
  acknowledged when its batch is journaled; a crash can cost the poses of the open batch
  (at most 0.1 s of tracking), never an acknowledged one.

Work is done while recording, not at the stop: a compressed video's packets are muxed into
the segment's Transport Stream file as they are journaled, and the frame stamps are kept,
so closing a segment only writes the instance's header and copies that file into
encapsulated Pixel Data (:mod:`dicom_or_core.iod.bulk`); nothing of an instance is held in
memory whole. Crash recovery, which has only the journal, muxes again from it (streamed).
Segments are cut by duration (``max_segment_s``) and size (``max_segment_bytes``), with
continuous timing: the sample that would overflow a segment opens the next one.

Gaps are recorded, not hidden: a jump in a stream's ``sequence`` counts lost messages; a
waveform whose ``first_sample_index`` jumps closes the instance and opens a new one at the
new first sample (a waveform instance is contiguous); a video keeps the dropped frame's gap
in its frame times (Frame Time Vector).

One bad sample never stops a stream (:meth:`StreamRecorder._admit`). The acquisition time
orders samples; the sequence only counts losses:

* a time before 2000 or more than ``max_clock_skew_s`` ahead of this host's clock is not a
  clock reading: the sample is refused (``DicomOrError``, counted by reason), and nothing
  about the stream's state changes, so the next valid sample is recorded;
* a sequence that jumps further than any message rate could explain (e.g. 2^63) is not
  counted as lost messages (``sequence_jumps``); a sequence that restarts while time goes
  on is a publisher that restarted its counter (``sequence_resets``): both recorded;
* the next message stamped earlier than the previous one is a clock stepped back: the open
  segment is closed (its instance stays consistent) and the next one starts at the new
  time (``clock_steps``); a message that is neither newer in sequence nor in time is a
  duplicate or reordered one, dropped (``out_of_order``);
* a waveform ``first_sample_index`` that jumps ahead of what its time allows is refused; one
  that goes back while time goes on is a device that restarted its count: a new instance.

A full disk (or any write error) is waited out, never spun on: the failing sample is
refused, later ones are counted as ``dropped_disk_full`` while the stream backs off (0.5 s,
doubling to 10 s) before it tries again; a video segment is abandoned at its first failed
packet (its instance holds what was written, and the next segment starts with a new encoder,
so at a key frame: no instance without a decodable start); a closed segment whose instance
could not be written is kept as a journal and written again by :meth:`retry_unwritten` when
space is back (and at the latest by the next start); ``last_error`` clears once writing works.
"""

from __future__ import annotations

import math
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import numpy as np
from pydicom.valuerep import DSfloat

from dicom_or_core.archive.spool import Journal, PendingInstance, Spool
from dicom_or_core.iod.bulk import EncapsulatedFile, NativeFrames
from dicom_or_core.iod.codec import (
    PTS_HZ,
    PacketEncoder,
    TsMuxer,
    choose_codec,
)
from dicom_or_core.iod.codec import EncodedPacket as _Packet
from dicom_or_core.iod.h264 import (
    LEVEL_IDC,
    SpsInfo,
    inspect,
    is_idr,
    transfer_syntax_for,
)
from dicom_or_core.iod.packet_decoder import DecodedPicture, PacketDecoder
from dicom_or_core.iod.pose import ToolTrack, build_pose_sr
from dicom_or_core.iod.video import (
    MAX_NATIVE_PIXEL_BYTES,
    build_snapshot,
    multiframe_sc_header,
    rgb_bytes,
    video_header,
)
from dicom_or_core.iod.waveform import build_waveform, check_constraints
from dicom_or_core.model import context as ctx
from dicom_or_core.model.errors import DicomOrError
from dicom_or_core.model.uid import new_uid

VIDEO_MODES = ("auto", "h264", "hevc", "mpeg2", "lossless")
EARLIEST_NS = 946_684_800 * 10**9      # 2000-01-01T00:00:00Z: older is not a clock reading
# No stream sends more messages per second than this: a larger sequence jump is not a loss.
MAX_MESSAGE_RATE_HZ = 10_000.0
MAX_POSITION_M = 1.0e4                 # a tracked tool 10 km from the camera is not a pose
DISK_RETRY_INITIAL_S = 0.5
DISK_RETRY_MAX_S = 10.0
_VIDEO_REC = struct.Struct("<qQqB")       # stamp ns, sequence, pts, keyframe
_RAW_REC = struct.Struct("<qQ")           # stamp ns, sequence
_WAVE_REC = struct.Struct("<qQQH")        # first sample ns, first index, sequence, channels
_POSE_REC = struct.Struct("<qQH7d")       # stamp ns, sequence, tool index, xyz, qxyzw
# The same row as a numpy record (packed, no alignment): a batch record is N rows.
_POSE_ROW = np.dtype([("stamp", "<i8"), ("sequence", "<u8"), ("tool", "<u2"),
                      ("values", "<f8", (7,))])
POSE_BATCH_ROWS = 256
POSE_BATCH_S = 0.1
# The segment's Transport Stream, muxed while recording; renamed from .partial when whole.
TS_FILE = "stream.ts"
GIB = 1 << 30
# Frame Time Vector (0018,1065) is DS: in Explicit VR its value length is 16 bits (PS3.5
# 7.1.2), so a segment's increments must fit in 65534 bytes (about 9,300 frames: 2.6 min at
# 60 fps). A video segment is cut before it would not fit, whether or not the finished
# instance turns out to need the vector (a uniform stream writes Frame Time instead).
FRAME_TIME_VECTOR_MAX_BYTES = 0xFFFE
_DS_MAX_CHARS = 16


@dataclass
class RecorderOptions:
    """How streams are cut and encoded (the node's parameters)."""

    max_segment_s: float = 300.0
    max_segment_bytes: int = 2 * GIB
    video_mode: str = "auto"
    video_quality: int = 18
    video_preset: str = "superfast"
    max_poses_per_instance: int = 0  # 0: bounded by duration and size only
    max_clock_skew_s: float = 30.0

    def validate(self) -> RecorderOptions:
        """Self, or DicomOrError naming the first option outside its allowed range."""
        if not 1.0 <= self.max_segment_s <= 3600.0:
            raise DicomOrError("max_segment_s", "must be 1..3600 seconds", self.max_segment_s)
        if not 1 << 20 <= self.max_segment_bytes <= 4 * GIB - 2:
            raise DicomOrError("max_segment_bytes", "must be 1 MiB..4 GiB",
                               self.max_segment_bytes)
        if self.video_mode not in VIDEO_MODES:
            raise DicomOrError("video_mode", f"must be one of {', '.join(VIDEO_MODES)}",
                               self.video_mode)
        if not 0 <= self.video_quality <= 51:
            raise DicomOrError("video_quality", "CRF must be 0..51", self.video_quality)
        if not 0.001 <= self.max_clock_skew_s <= 86400.0:
            raise DicomOrError("max_clock_skew_s", "must be 0.001..86400 s",
                               self.max_clock_skew_s)
        if self.max_poses_per_instance < 0:
            raise DicomOrError("max_poses_per_instance", "must be >= 0 (0: no limit)",
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
    finalising: int = 0            # closed segments not yet written as instances
    last_error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


ACCEPT, NEW_SEGMENT, DROP = "accept", "new segment", "drop"


class StreamRecorder:
    """Base: segment bookkeeping, sequence-gap accounting and finalisation."""

    kind = ""
    # Called with a video frame's acquisition time (ns) once it is journaled; benchmarks set
    # it (bench/video_compressed.py: capture -> journal latency). None: no cost.
    journal_hook: ClassVar[Callable[[int], None] | None] = None

    def __init__(self, descriptor: ctx.StreamDescriptor, spool: Spool,
                 options: RecorderOptions) -> None:
        self.descriptor = descriptor.validate()
        self.spool = spool
        self.options = options
        self.journal: Journal | None = None
        self.finaliser: Executor | None = None     # where instances are built (None: here)
        self.on_final: Callable[[], None] | None = None
        # Instance Numbers continue across restarts within the Series, never repeating.
        self.instance_number = spool.last_instance_number(descriptor.series_instance_uid)
        self.stats = StreamStats(topic=descriptor.topic, kind=self.kind,
                                 series_instance_uid=descriptor.series_instance_uid)
        self._last_sequence: int | None = None
        self._last_sequence_ns = 0      # acquisition time of the message _last_sequence
        self._segment_bytes = 0
        self._stats_lock = threading.Lock()
        # Write errors (a full disk): back off instead of failing every sample.
        self._disk_error = False
        self._disk_wait_until = 0.0
        self._disk_backoff_s = DISK_RETRY_INITIAL_S
        # Closed segments whose instance could not be written yet: (journal, stamps).
        self._unwritten: list[tuple[Journal, list[int] | None]] = []

    # -- sequence accounting -------------------------------------------------------------

    def _count(self, key: str, n: int = 1) -> None:
        self.stats.extra[key] = self.stats.extra.get(key, 0) + n

    def _check_time(self, stamp_ns: int) -> None:
        """Refuse an acquisition time that cannot be a reading of the session clock."""
        if stamp_ns < EARLIEST_NS:
            raise DicomOrError("acquisition_time", "is before 2000: not a clock reading",
                               stamp_ns)
        ahead_s = (stamp_ns - time.time_ns()) / 1e9
        if ahead_s > self.options.max_clock_skew_s:
            raise DicomOrError("acquisition_time", f"is {ahead_s:.0f} s ahead of this host's "
                               f"clock (max_clock_skew_s {self.options.max_clock_skew_s:g})")

    def _admit(self, stamp_ns: int, sequence: int, last_stamp_ns: int,
               excused: int = 0) -> str:
        """Decide what one message is: ``ACCEPT``, ``NEW_SEGMENT`` (the clock stepped back:
        record it in a new instance) or ``DROP`` (a duplicate or reordered message, counted).
        Raises DicomOrError, changing nothing, for a time that is not a clock reading.
        ``last_stamp_ns``: the newest time recorded where order matters (the stream's, or
        the tool's); ``excused`` messages of a gap were dropped on purpose by the caller."""
        self._check_time(stamp_ns)
        last = self._last_sequence
        verdict = ACCEPT
        if last is not None:
            if sequence > last:
                if stamp_ns < last_stamp_ns:
                    self._count("clock_steps")
                    verdict = NEW_SEGMENT
                gap = sequence - last - 1
                if gap:
                    elapsed_s = max(0, stamp_ns - self._last_sequence_ns) / 1e9
                    if gap <= 1000 + elapsed_s * MAX_MESSAGE_RATE_HZ:
                        self.stats.lost_messages += max(0, gap - excused)
                    else:
                        self._count("sequence_jumps")
            elif stamp_ns > self._last_sequence_ns:
                self._count("sequence_resets")  # the publisher restarted its counter
            else:
                self.stats.out_of_order += 1
                return DROP
        self._last_sequence = sequence
        self._last_sequence_ns = stamp_ns
        return verdict

    # -- segments --------------------------------------------------------------------------

    def _open(self, extra: dict[str, Any]) -> Journal:
        meta = {"recorder": self.kind, "sop_instance_uid": new_uid(),
                "instance_number": self.instance_number + 1,
                "descriptor": ctx.to_dict(self.descriptor), **extra}
        try:
            self.journal = self.spool.open_journal(meta)
        except OSError as exc:
            self._disk_failed(exc)
            raise
        self.instance_number += 1
        self._segment_bytes = 0
        self.stats.recording = True
        return self.journal

    def _append(self, payload: bytes, samples: int = 1) -> None:
        """Journal one record holding ``samples`` messages; they are acknowledged now."""
        assert self.journal is not None
        try:
            self.journal.append(payload)
        except OSError as exc:
            self._disk_failed(exc)
            self._append_failed()
            raise
        self._disk_ok()
        self.stats.acknowledged += samples
        self.stats.bytes_journaled += len(payload)
        self._segment_bytes += len(payload)

    def _append_failed(self) -> None:
        """Hook: what a subclass must do when a record could not be written."""

    # -- write errors (a full disk) ------------------------------------------------------

    def _disk_ready(self, samples: int = 1) -> bool:
        """False while a write error is being waited out: the samples are counted as
        ``dropped_disk_full`` instead of each trying (and failing) again."""
        if self._disk_error and time.monotonic() < self._disk_wait_until:
            self._count("dropped_disk_full", samples)
            return False
        return True

    def _disk_failed(self, exc: OSError) -> None:
        self._disk_error = True
        self._disk_wait_until = time.monotonic() + self._disk_backoff_s
        self.stats.last_error = (f"cannot write the journal: {exc.strerror or exc}; trying "
                                 f"again in {self._disk_backoff_s:g} s")
        self._disk_backoff_s = min(DISK_RETRY_MAX_S, 2 * self._disk_backoff_s)

    def _disk_ok(self) -> None:
        if self._disk_error:
            self._disk_error = False
            self._disk_backoff_s = DISK_RETRY_INITIAL_S
            self.stats.last_error = ""
            self._count("disk_recoveries")

    @property
    def unwritten(self) -> int:
        """Closed segments whose instance is waiting to be written again."""
        with self._stats_lock:
            return len(self._unwritten)

    def retry_unwritten(self) -> None:
        """Write again the instances that failed (a full disk), now that it may have room;
        each that fails again waits for the next call."""
        if self._disk_error and time.monotonic() < self._disk_wait_until:
            return
        with self._stats_lock:
            pending, self._unwritten = self._unwritten, []
            self.stats.finalising += len(pending)
        for journal, stamps in pending:
            if self.finaliser is not None:
                self.finaliser.submit(self._finalise, journal, stamps)
            else:
                self._finalise(journal, stamps)

    def _segment_full(self, elapsed_ns: int) -> bool:
        """Whether the open segment has reached its duration or size bound."""
        return (elapsed_ns >= self.options.max_segment_s * 1e9
                or self._segment_bytes >= self.options.max_segment_bytes)

    def close_segment(self, wait: bool = True) -> list[str]:
        """Close the open segment and finalise it into an instance; return its SOP Instance
        UID. With ``wait`` false and a ``finaliser`` executor, the header and the file copy
        run there (a segment boundary while samples keep flowing, a STOP that must answer at
        once); the journal keeps the samples safe until the instance is final."""
        journal = self.journal
        if journal is None:
            return []
        self._before_close(journal)
        self.journal = None
        journal.close()
        stamps = self._closed_stamps()
        with self._stats_lock:
            self.stats.finalising += 1
        if self.finaliser is not None:
            future = self.finaliser.submit(self._finalise, journal, stamps)
            if wait:
                future.result()
        else:
            self._finalise(journal, stamps)
        return [journal.meta["sop_instance_uid"]] if journal.records_acknowledged else []

    def _closed_stamps(self) -> list[int] | None:
        """Hook: what the recorder kept of the closed segment (video frame stamps) so the
        finaliser need not read the journal again; None: read it."""
        return None

    def _finalise(self, journal: Journal, stamps: list[int] | None = None) -> None:
        try:
            instance = finalise_journal(journal, stamps)
            if instance is not None:
                self.spool.write_instance(instance)
                self.stats.instances += 1
        except OSError as exc:
            # No room (or an I/O error): the journal keeps every sample; written again by
            # retry_unwritten() once the disk has room, or by the next start.
            self.stats.last_error = f"writing instance failed: {exc.strerror or exc}; " \
                                    "will retry"
            with self._stats_lock:
                self._unwritten.append((journal, stamps))
            return
        except (DicomOrError, ValueError) as exc:
            # The journal's content cannot make an instance: keep it for an operator.
            self.stats.last_error = f"segment quarantined: {exc}"
            self._count("quarantined")
            self.spool.quarantine(journal.directory, f"{type(exc).__name__}: {exc}")
            return
        finally:
            with self._stats_lock:
                self.stats.finalising -= 1
        journal.discard()
        if self.on_final is not None:
            self.on_final()

    def _before_close(self, journal: Journal) -> None:
        """Hook: write what a subclass still buffers (e.g. delayed encoder packets)."""

    def stop(self, wait: bool = True) -> list[str]:
        """Stop recording: close the open segment (and with ``wait``, wait until its
        instance is final). Messages skipped while stopped are not losses: sequence
        accounting restarts."""
        self.stats.recording = False
        self._last_sequence = None
        return self.close_segment(wait=wait)


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
        self._muxer: TsMuxer | None = None
        self._stamps: list[int] = []               # the open segment's frame stamps
        self._vector_bytes = 0                     # its Frame Time Vector's length so far
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
        verdict = self._admit(stamp_ns, sequence, self._last_stamp, dropped_before)
        if verdict == DROP:
            return []
        if verdict == ACCEPT and stamp_ns == self._last_stamp:
            self.stats.out_of_order += 1  # frame times must increase strictly (C.7.6.5)
            return []
        self.latest = (image, stamp_ns)
        if not self._disk_ready():
            return []
        done = []
        if self.journal is not None and (verdict == NEW_SEGMENT
                                         or self._segment_cannot_take(stamp_ns)):
            done = self.close_segment(wait=False)
        if self.journal is None:
            self._open_segment(stamp_ns)
        if self.choice is not None and self.choice.name == "mpeg2" and self._segment_frames:
            snapped = self._fill_mpeg2_grid(stamp_ns, sequence)
            if snapped is None:
                return done
            stamp_ns = snapped
        self._last_stamp = stamp_ns
        self.latest_before = image
        if self.lossless:
            self._segment_frames += 1
            self._append(_RAW_REC.pack(stamp_ns, sequence) + np.ascontiguousarray(image)
                         .tobytes())
            self._note_stamp(stamp_ns)
        else:
            self._encode(image, stamp_ns, sequence)
        self.stats.samples += 1
        return done

    def _segment_cannot_take(self, stamp_ns: int) -> bool:
        """The open segment is full: by duration, by the Frame Time Vector's length, or (for
        native pixels) by the pixel data size one instance can hold."""
        return (self._segment_full(stamp_ns - self._first_ns)
                or self._vector_bytes + 2 * (_DS_MAX_CHARS + 1) > FRAME_TIME_VECTOR_MAX_BYTES
                or (self.lossless and (self._segment_frames + 1) * self._frame_bytes
                    > MAX_NATIVE_PIXEL_BYTES))

    def _open_segment(self, stamp_ns: int) -> None:
        """Start a segment at ``stamp_ns``: its journal, and the encoder and muxer when lossy."""
        d = self.descriptor
        self._first_ns = stamp_ns
        self._segment_frames = 0
        self._stamps = []
        self._vector_bytes = 0
        extra: dict[str, Any] = {"first_ns": stamp_ns, "mode": self.options.video_mode}
        journal = self._open(extra)
        if not self.lossless:
            assert self.choice is not None
            self._encoder = self.encoder_factory(self.choice, d.rows, d.columns,
                                                 d.pixel_encoding, d.nominal_rate_hz,
                                                 self.options.video_quality,
                                                 self.options.video_preset)
            self._muxer = TsMuxer(journal.directory / (TS_FILE + ".partial"),
                                  self.choice, d.rows, d.columns, d.nominal_rate_hz)

    def _fill_mpeg2_grid(self, stamp_ns: int, sequence: int) -> int | None:
        """MPEG-2 has a fixed frame grid (PS3.5 8.2.5): the frame's time snapped to the nearest
        slot, after filling the slots of dropped frames with the previous picture; None when
        that slot is already taken (counted out of order)."""
        period = 1e9 / self.descriptor.nominal_rate_hz
        slot = round((stamp_ns - self._first_ns) / period)
        if slot < self._segment_frames:
            self.stats.out_of_order += 1
            return None
        previous = self.latest_before
        assert previous is not None  # the segment has frames, so a picture came before
        while self._segment_frames < slot:
            self._encode(previous, self._first_ns + round(self._segment_frames * period),
                         sequence)
            self.stats.extra["repeated_frames"] = \
                self.stats.extra.get("repeated_frames", 0) + 1
        return self._first_ns + round(slot * period)

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
        self._note_stamp(stamp)
        if self._muxer is not None:
            try:
                self._muxer.mux(packet)
            except (OSError, ValueError) as exc:  # PyAV's errors are both
                # The journal has the packet: the finaliser muxes again from it.
                self._muxer = None
                self.stats.last_error = f"muxing while recording failed: {exc}"

    def _before_close(self, journal: Journal) -> None:
        if self._encoder is not None:
            for packet in self._encoder.flush():
                self._journal_packet(packet)
            self._encoder = None
        self._pending.clear()
        muxer, self._muxer = self._muxer, None
        if muxer is not None:
            partial = journal.directory / (TS_FILE + ".partial")
            try:
                muxer.close()
                os.replace(partial, journal.directory / TS_FILE)
            except (OSError, ValueError) as exc:
                self.stats.last_error = f"muxing while recording failed: {exc}"

    def _closed_stamps(self) -> list[int] | None:
        stamps, self._stamps = self._stamps, []
        return stamps

    def _append_failed(self) -> None:
        """A packet could not be journaled: later packets of this encoder would reference
        it, so the segment ends here (its instance holds what was written, decodable from
        its key frame) and the next frame opens a new segment with a new encoder."""
        if self.lossless or self.journal is None:
            return
        self._encoder = None      # its buffered packets belong to the broken segment
        self._pending.clear()
        self.close_segment(wait=False)

    def _note_stamp(self, stamp_ns: int) -> None:
        """Keep a journaled frame's stamp, and the length its Frame Time Vector entry takes
        (the increment as :func:`~dicom_or_core.iod.video.frame_timing` writes it, with its
        backslash separator)."""
        hook = StreamRecorder.journal_hook
        if hook is not None:
            hook(stamp_ns)
        if self._stamps:
            offset = round((stamp_ns - self._stamps[0]) / 1e6, 3)
            previous = round((self._stamps[-1] - self._stamps[0]) / 1e6, 3)
            self._vector_bytes += len(str(DSfloat(round(offset - previous, 3),
                                                  auto_format=True))) + 1
        else:
            self._vector_bytes = 1  # the first increment, 0
        self._stamps.append(stamp_ns)

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


PASSTHROUGH = "passthrough"   # journal meta "mode" of a passthrough video segment
# A segment due to close waits for the next key frame; one that has waited this long past its
# bounds (a stream without key frames) is closed anyway, and recording resumes at an IDR.
KEY_FRAME_WAIT_S = 10.0


class PassthroughVideoRecorder(VideoRecorder):
    """VideoPacket stream (H.264 access units encoded by the driver) -> compressed video
    instances, without re-encoding.

    * Each access unit is journaled as it arrives (record: stamp, sequence, PTS, key frame,
      the unit's bytes unchanged) and muxed into the segment's Transport Stream, so the
      elementary stream demuxed from the instance is the concatenation of the published
      packets, byte for byte (the live encoder writes an AUD in every unit, so FFmpeg's
      muxer adds none).
    * An instance starts at an IDR: a segment due to close (duration, size, Frame Time
      Vector length) stays open until the next key frame, and closes just before it.
    * Packets that cannot be decoded are not stored: those before the first IDR, and after
      a sequence gap (or a refused packet) until the next IDR. They are counted as lost
      (``lost_messages``, and ``dropped_until_key_frame``), and their time stays a gap in
      the Frame Time Vector, as lost raw frames do.
    * The transfer syntax follows the SPS of the segment's first IDR (High Profile Level
      4.1 or 4.2, :func:`~dicom_or_core.iod.h264.transfer_syntax_for`); an SPS that fits
      neither is refused (DicomOrError) with the packets that depend on it.
    * PTS in the instance comes from the acquisition stamps (90 kHz, zero at its first
      frame), as for the recorder's own encoder.
    """

    def __init__(self, descriptor: ctx.StreamDescriptor, spool: Spool,
                 options: RecorderOptions) -> None:
        if descriptor.video_codec != "h264":
            raise DicomOrError("descriptor.video_codec", "a passthrough recorder needs "
                               "h264 packets", descriptor.video_codec)
        # The geometry must fit an H.264 level whatever video_mode says (no re-encoding).
        super().__init__(descriptor, spool, replace(options, video_mode="h264"))
        self._need_key_frame = True       # nothing decodable until an IDR
        self._sps: SpsInfo | None = None  # the newest SPS seen
        self._segment_level = 0           # level_idc of the open segment
        self._gop: list[bytes] = []       # access units since the newest IDR (snapshot)
        self._gop_stamp = 0
        self._gop_lock = threading.Lock()
        self.stats.extra.update(dropped_until_key_frame=0)

    def check_frame(self, image: Any) -> None:
        """Refuse a packet that is not bytes."""
        if not isinstance(image, (bytes, bytearray, memoryview)):
            raise DicomOrError("video_packet.data", "must be bytes", type(image).__name__)

    # -- snapshot source (kept whether or not recording) ---------------------------------

    def remember(self, data: bytes, stamp_ns: int) -> None:
        """Keep an access unit for SNAPSHOT: the units since the newest IDR (at most a
        second of packets), from the subscription, recording or not."""
        try:
            key = inspect(data).key_frame
        except DicomOrError:
            return
        with self._gop_lock:
            if key:
                self._gop = [data]
            elif self._gop:
                self._gop.append(data)
            self._gop_stamp = stamp_ns

    def snapshot(self, frame: tuple[np.ndarray, int] | None = None) -> list[str]:
        """Decode the packets since the newest IDR; write the newest picture as a
        single-frame instance (``frame``, a decoded picture and its stamp, overrides)."""
        if frame is None:
            with self._gop_lock:
                units, stamp = list(self._gop), self._gop_stamp
            if not units:
                raise DicomOrError("snapshot", "no key frame received yet",
                                   self.descriptor.topic)
            decoder = PacketDecoder()
            newest: DecodedPicture | None = None  # only the GOP's last picture is converted
            for index, unit in enumerate(units):
                pictures = decoder.decode(unit, is_idr(unit), index)
                if pictures:
                    newest = pictures[-1]
            if newest is None:
                raise DicomOrError("snapshot", "the H.264 packets hold no picture",
                                   self.descriptor.topic)
            frame = (newest.to_ndarray(self.descriptor.pixel_encoding), stamp)
        return super().snapshot(frame)

    # -- recording ---------------------------------------------------------------------------

    def _drop_undecodable(self) -> None:
        self._need_key_frame = True
        self.stats.lost_messages += 1
        self._count("dropped_until_key_frame")

    def feed(self, image: Any, stamp_ns: int, sequence: int,
             dropped_before: int = 0) -> list[str]:
        """Record one access unit (``image``: its bytes). ``dropped_before``: packets the
        caller dropped just before it (counted there): the chain is broken, so recording
        resumes at the next IDR."""
        self.check_frame(image)
        data = bytes(image)
        unit = inspect(data)            # not Annex B: refused, nothing changes
        previous = self._last_sequence
        verdict = self._admit(stamp_ns, sequence, self._last_stamp, dropped_before)
        if verdict == DROP:
            return []
        if previous is not None and sequence != previous + 1 or dropped_before:
            self._need_key_frame = True  # a packet this one may depend on never came
        if verdict == ACCEPT and stamp_ns == self._last_stamp:
            self.stats.out_of_order += 1
            self._need_key_frame = True
            return []
        if unit.sps is not None:
            try:
                transfer_syntax_for(unit.sps, self.descriptor.rows, self.descriptor.columns,
                                    self.descriptor.nominal_rate_hz)
            except DicomOrError:
                self._need_key_frame = True  # its pictures cannot be stored unchanged
                self._sps = None
                raise
            self._sps = unit.sps
        if not unit.key_frame and self._need_key_frame:
            self._drop_undecodable()
            return []
        if not self._disk_ready():
            self._need_key_frame = True  # a unit not stored breaks the chain until an IDR
            return []
        done: list[str] = []
        if self.journal is not None and self._must_close(unit.key_frame, stamp_ns, verdict):
            done = self.close_segment(wait=False)
        if self.journal is None:
            if not unit.key_frame:
                self._drop_undecodable()
                return done
            if self._sps is None:
                self._drop_undecodable()
                raise DicomOrError("video_packet.data", "a key frame without a sequence "
                                   "parameter set (the driver must repeat SPS/PPS at every "
                                   "IDR): its transfer syntax is unknown")
            self._open_passthrough(stamp_ns)
        self._need_key_frame = False
        self._last_stamp = stamp_ns
        pts = round((stamp_ns - self._first_ns) * PTS_HZ / 1e9)
        self._pending.append((stamp_ns, sequence))
        self._segment_frames += 1
        self._journal_packet(_Packet(pts, pts, unit.key_frame, data))
        self.stats.samples += 1
        return done

    def _must_close(self, key_frame: bool, stamp_ns: int, verdict: str) -> bool:
        """Whether the open segment ends before this access unit: at a key frame once it is
        due (or the SPS level changed, or the clock stepped back); without a key frame only
        when it is overdue by KEY_FRAME_WAIT_S (then recording waits for the next IDR)."""
        if key_frame:
            level = self._sps.level_idc if self._sps is not None else 0
            return (verdict == NEW_SEGMENT or self._due(stamp_ns)
                    or self._choice_level(level) != self._choice_level(self._segment_level))
        overdue = (verdict == NEW_SEGMENT
                   or self._segment_full(stamp_ns - self._first_ns
                                         - round(KEY_FRAME_WAIT_S * 1e9))
                   or self._vector_bytes + 2 * (_DS_MAX_CHARS + 1)
                   > FRAME_TIME_VECTOR_MAX_BYTES)
        if overdue:
            self._need_key_frame = True
        return overdue

    def _due(self, stamp_ns: int) -> bool:
        """The open segment has reached a bound: it closes at this key frame. The Frame
        Time Vector keeps room for the key-frame interval it may still have to wait."""
        room = (round(2 * self.descriptor.nominal_rate_hz) + 2) * (_DS_MAX_CHARS + 1)
        return (self._segment_full(stamp_ns - self._first_ns)
                or self._vector_bytes + room > FRAME_TIME_VECTOR_MAX_BYTES)

    def _choice_level(self, level_idc: int) -> str:
        d = self.descriptor
        return transfer_syntax_for(SpsInfo(100, 0, level_idc), d.rows, d.columns,
                                   d.nominal_rate_hz).transfer_syntax_uid

    def _open_passthrough(self, stamp_ns: int) -> None:
        """Start a segment at a key frame: its journal (meta: the SPS level) and muxer."""
        assert self._sps is not None
        d = self.descriptor
        choice = transfer_syntax_for(self._sps, d.rows, d.columns, d.nominal_rate_hz)
        self._segment_level = LEVEL_IDC[choice.transfer_syntax_uid]
        self._first_ns = stamp_ns
        self._segment_frames = 0
        self._stamps = []
        self._vector_bytes = 0
        journal = self._open({"first_ns": stamp_ns, "mode": PASSTHROUGH,
                              "level_idc": self._segment_level})
        self._muxer = TsMuxer(journal.directory / (TS_FILE + ".partial"), choice, d.rows,
                              d.columns, d.nominal_rate_hz)

    def _append_failed(self) -> None:
        """A packet could not be journaled: later packets depend on it, so the segment ends
        here and recording resumes at the next IDR."""
        self._pending.clear()
        self._need_key_frame = True
        if self.journal is not None:
            self.close_segment(wait=False)

    def stop(self, wait: bool = True) -> list[str]:
        """Stop recording; the next recording starts at a key frame."""
        self._need_key_frame = True
        return super().stop(wait)


class WaveformRecorder(StreamRecorder):
    """WaveformChunk stream -> waveform instances (contiguous samples each)."""

    kind = "waveform"

    def __init__(self, descriptor: ctx.StreamDescriptor, spool: Spool,
                 options: RecorderOptions) -> None:
        super().__init__(descriptor, spool, options)
        check_constraints(self.descriptor)  # refuse an out-of-IOD stream up front
        self._next_index = 0
        self._next_ns = 0
        self._segment_samples = 0

    def feed(self, samples: np.ndarray, first_sample_ns: int, first_sample_index: int,
             sequence: int) -> list[str]:
        """Record one chunk: int16 (n, channels) samples starting at ``first_sample_index``."""
        channels = len(self.descriptor.channels)
        samples = np.asarray(samples, dtype=np.int16)
        if samples.ndim != 2 or samples.shape[1] != channels:
            raise DicomOrError("samples", f"chunk must have {channels} channels",
                               samples.shape)
        if not 0 <= first_sample_index < 2**53:
            raise DicomOrError("first_sample_index", "must be 0..2^53", first_sample_index)
        self._check_time(first_sample_ns)
        fs = self.descriptor.sampling_frequency_hz
        restart = self._index_restart(first_sample_index, first_sample_ns)
        if restart is None:
            return []
        verdict = self._admit(first_sample_ns, sequence, -1)
        if verdict == DROP or not self._disk_ready(samples.shape[0]):
            return []
        done = []
        limit = self.options.max_segment_s * fs
        if self.journal is not None and (restart or first_sample_index != self._next_index
                                         or self._segment_samples >= limit
                                         or self._segment_full(0)):
            if first_sample_index > self._next_index and not restart:
                self._count("lost_samples", first_sample_index - self._next_index)
            done = self.close_segment(wait=False)
        if self.journal is None:
            self._open({"first_ns": first_sample_ns})
            self._segment_samples = 0
        self._append(_WAVE_REC.pack(first_sample_ns, first_sample_index, sequence, channels)
                     + samples.astype("<i2").tobytes())
        self._next_index = first_sample_index + samples.shape[0]
        self._next_ns = first_sample_ns + round(samples.shape[0] * 1e9 / fs)
        self._segment_samples += samples.shape[0]
        self.stats.samples += samples.shape[0]
        return done


    def _index_restart(self, first_sample_index: int, first_sample_ns: int) -> bool | None:
        """Hold a chunk's sample index against the time the next sample was due: True when
        the device restarted its count, None for a duplicate or reordered chunk (counted out
        of order), False otherwise; a jump ahead its time does not allow is refused."""
        if self.journal is None:
            return False
        due_ns = self._next_ns
        if first_sample_index < self._next_index:
            if first_sample_ns <= due_ns - 0.5e9:
                self.stats.out_of_order += 1
                return None
            self._count("index_resets")
            return True
        gap = first_sample_index - self._next_index
        fs = self.descriptor.sampling_frequency_hz
        if gap > max(0.0, (first_sample_ns - due_ns) / 1e9) * fs + fs:
            raise DicomOrError("first_sample_index", f"jumps {gap} samples ahead, "
                               "more than its time allows", first_sample_index)
        return False


def _check_pose(position: tuple[float, float, float],
                quaternion_xyzw: tuple[float, float, float, float]) -> None:
    """A pose an SR file holds faithfully (float32 GraphicData, PS3.3 C.18.9): a finite
    position within MAX_POSITION_M, a finite non-zero quaternion; else DicomOrError."""
    if not all(math.isfinite(v) and abs(v) <= MAX_POSITION_M for v in position):
        raise DicomOrError("pose.position", f"must be finite and within "
                           f"{MAX_POSITION_M:g} m", position)
    norm = math.fsum(v * v for v in quaternion_xyzw)
    if not math.isfinite(norm) or not 1e-12 < norm < 1e12:
        raise DicomOrError("pose.orientation", "must be a finite, non-zero "
                           "quaternion", quaternion_xyzw)


class PoseRecorder(StreamRecorder):
    """PoseSample stream (all tools on one topic) -> Comprehensive 3D SR instances."""

    kind = "pose"

    def __init__(self, descriptor: ctx.StreamDescriptor, spool: Spool,
                 options: RecorderOptions) -> None:
        super().__init__(descriptor, spool, options)
        self._first_ns = 0
        self._segment_poses = 0
        self._last_stamp: dict[str, int] = {}
        self._batch = bytearray()   # packed _POSE_REC rows not yet journaled
        self._batch_rows = 0
        self._batch_first_ns = 0

    def feed(self, tool_id: str, stamp_ns: int, position: tuple[float, float, float],
             quaternion_xyzw: tuple[float, float, float, float], visible: bool,
             sequence: int) -> list[str]:
        """Record one pose sample."""
        if tool_id not in self.descriptor.tool_ids:
            raise DicomOrError("tool_id", "is not one of the descriptor's tool_ids", tool_id)
        if visible:
            # In the door's order: values a file could not hold faithfully are refused
            # before they can change the stream's state.
            _check_pose(position, quaternion_xyzw)
        last_stamp = self._last_stamp.get(tool_id, -1)
        verdict = self._admit(stamp_ns, sequence, last_stamp)
        if verdict == DROP:
            return []
        if not visible:
            self.stats.occluded += 1
            return []
        if verdict == ACCEPT and stamp_ns == last_stamp:
            self.stats.out_of_order += 1  # one pose per tool and time
            return []
        if not self._disk_ready():
            return []
        done = []
        if self.journal is not None and (verdict == NEW_SEGMENT
                                         or self._segment_cannot_take(stamp_ns)):
            done = self.close_segment(wait=False)
        if self.journal is None:
            self._first_ns = stamp_ns
            self._segment_poses = 0
            self._last_stamp.clear()  # each instance orders its own tools' times
            self._open({"first_ns": stamp_ns})
        self._last_stamp[tool_id] = stamp_ns
        if not self._batch_rows:
            self._batch_first_ns = stamp_ns
        self._batch += _POSE_REC.pack(stamp_ns, sequence,
                                      self.descriptor.tool_ids.index(tool_id),
                                      *position, *quaternion_xyzw)
        self._batch_rows += 1
        self._segment_poses += 1
        self.stats.samples += 1
        if self._batch_rows >= POSE_BATCH_ROWS or \
                stamp_ns - self._batch_first_ns >= POSE_BATCH_S * 1e9:
            self._flush_batch()
        return done

    def _segment_cannot_take(self, stamp_ns: int) -> bool:
        """The open instance is full: by duration or size, or by the poses one may hold."""
        limit = self.options.max_poses_per_instance
        return self._segment_full(stamp_ns - self._first_ns) or bool(
            limit and self._segment_poses >= limit)

    def _flush_batch(self) -> None:
        """Journal the poses taken since the last batch: one record, one write. A batch
        that cannot be written is dropped (counted): it was never acknowledged."""
        if self._batch_rows:
            batch, rows = bytes(self._batch), self._batch_rows
            self._batch.clear()
            self._batch_rows = 0
            try:
                self._append(batch, samples=rows)
            except OSError:
                self._count("dropped_disk_full", rows)
                raise

    def _before_close(self, journal: Journal) -> None:
        self._flush_batch()


RECORDERS: dict[int, type[StreamRecorder]] = {
    ctx.KIND_VIDEO: VideoRecorder,
    ctx.KIND_WAVEFORM: WaveformRecorder,
    ctx.KIND_POSE: PoseRecorder,
}


def recorder_for(descriptor: ctx.StreamDescriptor, spool: Spool,
                 options: RecorderOptions) -> StreamRecorder:
    """The recorder of a stream's kind (a video sent as H.264 packets: passthrough)."""
    if descriptor.kind == ctx.KIND_VIDEO and descriptor.video_codec == "h264":
        return PassthroughVideoRecorder(descriptor, spool, options)
    return RECORDERS[descriptor.kind](descriptor, spool, options)


def _now_ns() -> int:
    return time.time_ns()


# -- finalisation (also what crash recovery runs) -------------------------------------------


def finalise_journal(journal: Journal,
                     stamps: list[int] | None = None) -> PendingInstance | None:
    """The instance a journal describes, or None when it holds no sample.

    ``stamps``: the frame stamps the video recorder kept while recording (with the
    segment's Transport Stream already muxed beside the journal): then the journal is not
    read again. Crash recovery passes None and everything comes from the journal, streamed.
    """
    meta = journal.meta
    descriptor = ctx.from_dict(ctx.StreamDescriptor, meta["descriptor"])
    sop = meta["sop_instance_uid"]
    number = int(meta["instance_number"])
    created = _now_ns()
    kind = meta["recorder"]
    if kind == "video" and meta.get("mode") == "lossless":
        return _finalise_lossless(journal, descriptor, stamps, sop, number, created)
    if kind == "video":
        return _finalise_video(journal, descriptor, stamps, sop, number, created)
    if kind == "waveform":
        blocks = []
        first_ns = None
        for r in journal.records():
            t0, _, _, channels = _WAVE_REC.unpack_from(r)
            first_ns = t0 if first_ns is None else first_ns
            blocks.append(np.frombuffer(r, "<i2", offset=_WAVE_REC.size).reshape(-1, channels))
        if first_ns is None:  # no chunk reached the journal
            return None
        return PendingInstance(build_waveform(descriptor, np.concatenate(blocks).astype(
            np.int16), first_ns, sop, number, created))
    if kind == "pose":
        batches = [np.frombuffer(r, _POSE_ROW) for r in journal.records()
                   if len(r) % _POSE_ROW.itemsize == 0]
        if not batches:
            return None
        rows = np.concatenate(batches)
        tracks = []
        for tool in np.unique(rows["tool"]):
            mine = rows[rows["tool"] == tool]
            tracks.append(ToolTrack(descriptor.tool_ids[int(tool)], mine["stamp"].copy(),
                                    mine["values"][:, :3].copy(), mine["values"][:, 3:].copy()))
        return PendingInstance(build_pose_sr(descriptor, tracks, sop, number, created))
    raise DicomOrError("journal", "unknown recorder kind", kind)


def _finalise_video(journal: Journal, descriptor: ctx.StreamDescriptor,
                    stamps: list[int] | None, sop: str, number: int,
                    created: int) -> PendingInstance | None:
    """Compressed video: the segment's Transport Stream file becomes encapsulated Pixel
    Data by a file copy; muxed again from the journal first when it is not whole."""
    if journal.meta.get("mode") == PASSTHROUGH:
        # The stream's own SPS decided the transfer syntax when the segment opened.
        choice = transfer_syntax_for(SpsInfo(100, 0, int(journal.meta["level_idc"])),
                                     descriptor.rows, descriptor.columns,
                                     descriptor.nominal_rate_hz)
    else:
        choice = choose_codec(descriptor.rows, descriptor.columns,
                              descriptor.nominal_rate_hz, journal.meta.get("mode", "auto"))
    ts = journal.directory / TS_FILE
    if stamps is None or not ts.is_file():
        partial = journal.directory / (TS_FILE + ".partial")
        muxer = TsMuxer(partial, choice, descriptor.rows, descriptor.columns,
                        descriptor.nominal_rate_hz)
        stamps = []
        try:
            for r in journal.records():
                stamp, _, pts, key = _VIDEO_REC.unpack_from(r)
                stamps.append(stamp)
                muxer.mux(_Packet(pts, pts, bool(key), r[_VIDEO_REC.size:]))
        finally:
            muxer.close()
        if not stamps:
            partial.unlink(missing_ok=True)
            return None
        os.replace(partial, ts)
    if not stamps:
        return None
    header = video_header(descriptor, ts.stat().st_size, choice, stamps, sop, number, created)
    return PendingInstance(header, EncapsulatedFile(ts))


def _finalise_lossless(journal: Journal, descriptor: ctx.StreamDescriptor,
                       stamps: list[int] | None, sop: str, number: int,
                       created: int) -> PendingInstance | None:
    """Lossless video: native RGB frames copied from the journal into Pixel Data one frame
    at a time."""
    shape = (descriptor.rows, descriptor.columns) if descriptor.pixel_encoding == "mono8" \
        else (descriptor.rows, descriptor.columns, 3)
    if stamps is None:
        stamps = [_RAW_REC.unpack_from(r)[0] for r in journal.records()]
    if not stamps:
        return None
    frame_bytes = descriptor.rows * descriptor.columns * 3

    def frames() -> Iterator[bytes]:
        for k, r in enumerate(journal.records()):
            if k == len(stamps):
                break
            yield rgb_bytes(np.frombuffer(r, np.uint8, offset=_RAW_REC.size).reshape(shape),
                            descriptor.pixel_encoding)

    header = multiframe_sc_header(descriptor, stamps, sop, number, created)
    return PendingInstance(header, NativeFrames(len(stamps) * frame_bytes, frames))
