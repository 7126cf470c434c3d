"""ROS-free hand-off of video frames from a stream's subscription to its encoder thread.

A stream's subscription callback must never wait for the encoder: with BEST_EFFORT video a
callback that is late makes DDS overwrite frames in its history, and the loss is then
invisible to the recorder except as a sequence gap. :class:`VideoEncoderQueue` decouples the
two: :meth:`~VideoEncoderQueue.offer` (called by the subscription) only checks the frame's
shape and appends it to a bounded queue; one worker thread per stream takes frames in order
and feeds them to the stream's :class:`~dicom_or_recorder.segments.VideoRecorder`, which
encodes and journals them. A compressed stream's H.264 access units take the same path to a
:class:`~dicom_or_recorder.segments.PassthroughVideoRecorder`, which journals them unchanged
(a packet dropped here breaks its chain: recording resumes at the next key frame).

Rules:

* A frame is *acknowledged* only once the recorder has journaled its packet (as without the
  queue): a frame waiting in the queue is not, so a SIGKILL can lose queued frames but never
  an acknowledged one.
* When the queue is full the newest frame is dropped and counted (``dropped_backpressure``
  in the stream's status); the frames around it keep their acquisition stamps, so the drop
  stays a gap in the instance's timeline (Frame Time Vector / PTS), never a shift. Such a
  drop is not counted again as a lost message.
* ``stop`` encodes every frame still queued before closing the segment, so STOP loses no
  frame that was taken; :meth:`~VideoEncoderQueue.request_stop` does the same without
  waiting (a marker in the queue: the worker closes the segment when it reaches it), which
  is what a STOP request uses so it answers at once.
* ``close`` (the node shutting down) encodes queued frames until its deadline and drops the
  rest, counted as ``dropped_at_shutdown``: they were never acknowledged, and a recorder
  that must stop within its launcher's grace cannot promise more.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any, cast

import numpy as np

from dicom_or_core.model.errors import DicomOrError
from dicom_or_recorder.segments import VideoRecorder

_STOP = None  # the queue marker of request_stop()


class VideoEncoderQueue:
    """A bounded frame queue and the worker thread that encodes a stream's frames.

    ``capacity`` is in frames (the queue holds references to the received images: at most
    ``capacity`` x rows x columns x 3 bytes). ``on_done`` receives the SOP Instance UIDs of
    segments closed by a boundary; ``on_error`` every exception a frame raised (the frame is
    then not recorded, the worker goes on).
    """

    def __init__(self, recorder: VideoRecorder, capacity: int,
                 on_done: Callable[[list[str]], None] | None = None,
                 on_error: Callable[[Exception], None] | None = None) -> None:
        if capacity < 1:
            raise DicomOrError("video_queue_frames", "must be >= 1", capacity)
        self.recorder = recorder
        self.capacity = capacity
        self.on_done = on_done
        self.on_error = on_error
        self.dropped = 0        # frames dropped because the queue was full
        self.errors = 0         # frames the recorder refused in the worker
        self.latest: tuple[Any, int] | None = None  # newest frame taken (snapshot)
        # Frames (image, stamp, sequence, dropped before), or _STOP: close the segment here.
        # (An image is an ndarray, or an access unit's bytes for a passthrough recorder.)
        self._queue: deque[tuple[Any, int, int, int] | None] = deque()
        self._cond = threading.Condition()
        self._busy = False              # the worker is feeding a frame
        self._closed = False
        self._dropped_pending = 0       # drops since the last queued frame
        # Serialises the recorder between the worker (feed) and control (stop, snapshot).
        self._recorder_lock = threading.Lock()
        recorder.stats.extra.update(dropped_backpressure=0, queued=0,
                                    queue_capacity=capacity)
        self._thread = threading.Thread(
            target=self._run, name=f"encode {recorder.descriptor.topic}", daemon=True)
        self._thread.start()

    # -- subscription side (never waits for the encoder) --------------------------------

    def note_latest(self, image: np.ndarray, stamp_ns: int) -> None:
        """Remember a frame for SNAPSHOT without recording it (recording is stopped)."""
        self.latest = (image, stamp_ns)

    def offer(self, image: np.ndarray | bytes, stamp_ns: int, sequence: int) -> bool:
        """Queue one frame for encoding (or, for a passthrough recorder, one H.264 access
        unit for journaling); False when it was dropped (queue full, counted). Raises
        DicomOrError for a frame whose shape is not the descriptor's."""
        self.recorder.check_frame(cast(Any, image))
        with self._cond:
            if self._closed:
                raise DicomOrError("frame", "the stream's encoder is closed",
                                   self.recorder.descriptor.topic)
            if isinstance(image, np.ndarray):
                self.latest = (image, stamp_ns)
            if len(self._queue) >= self.capacity:
                self.dropped += 1
                self._dropped_pending += 1
                self.recorder.stats.extra["dropped_backpressure"] = self.dropped
                return False
            self._queue.append((image, stamp_ns, sequence, self._dropped_pending))
            self._dropped_pending = 0
            self.recorder.stats.extra["queued"] = len(self._queue)
            self._cond.notify_all()
        return True

    @property
    def queued(self) -> int:
        """Frames taken but not yet encoded (not acknowledged)."""
        with self._cond:
            return len(self._queue) + (1 if self._busy else 0)

    # -- worker ------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._closed)
                if not self._queue:
                    return  # closed and drained
                item = self._queue.popleft()
                self._busy = True
                self.recorder.stats.extra["queued"] = len(self._queue)
            try:
                with self._recorder_lock:
                    if item is _STOP:
                        # Frames offered before the STOP are journaled: close the segment,
                        # its instance is built by the recorder's finaliser.
                        done = self.recorder.stop(wait=False)
                    else:
                        image, stamp_ns, sequence, dropped = item
                        done = self.recorder.feed(image, stamp_ns, sequence, dropped)
                if done and self.on_done is not None:
                    self.on_done(done)
            except Exception as exc:  # the worker must outlive a bad frame
                # A dead worker would leave stop() waiting for a queue nobody empties, so
                # every failure is counted and reported and the next frame is taken.
                self.errors += 1
                self.recorder.stats.last_error = str(exc)
                if self.on_error is not None:
                    self.on_error(exc)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    # -- control side --------------------------------------------------------------------

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every queued frame is encoded and journaled; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and not self._busy, timeout)

    def stop(self) -> list[str]:
        """Encode what is queued, then close the open segment and wait until it is final
        (:meth:`VideoRecorder.stop`). The caller stops offering frames first."""
        self.drain()
        with self._cond:
            self._dropped_pending = 0  # sequence accounting restarts with the next frame
        with self._recorder_lock:
            return self.recorder.stop()

    def request_stop(self) -> list[str]:
        """Stop recording without waiting: frames already queued are still encoded, then the
        worker closes the segment. Returns the SOP Instance UID of the open segment (the
        instance this STOP will finalise), if one is open."""
        with self._cond:
            self._queue.append(_STOP)
            self._dropped_pending = 0
            self._cond.notify_all()
            journal = self.recorder.journal
        return [journal.meta["sop_instance_uid"]] if journal is not None else []

    def snapshot(self) -> list[str]:
        """Write the newest frame taken (queued or not) as a single-frame instance."""
        with self._recorder_lock:
            return self.recorder.snapshot(self.latest)

    def close(self, deadline_s: float | None = None) -> list[str]:
        """End the worker: encode what is queued (until ``deadline_s`` seconds from now, then
        drop the rest, counted), close the segment without waiting for its instance (the
        caller waits for the recorder's finaliser), and join the thread."""
        if not self.drain(deadline_s):
            with self._cond:
                left = sum(1 for item in self._queue if item is not _STOP)
                self._queue.clear()
            self.recorder.stats.extra["dropped_at_shutdown"] = left
            self.drain()  # the frame being encoded now
        try:
            with self._recorder_lock:
                return self.recorder.stop(wait=False)
        finally:
            with self._cond:
                self._closed = True
                self._cond.notify_all()
            self._thread.join()
