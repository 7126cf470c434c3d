"""The recorder's side of IHE Scheduled Workflow: one Modality Performed Procedure Step per
recording of a worklist case (PS3.4 F.7, IHE RAD TF-2 RAD-6 / RAD-7).

The recorder owns the step because it alone knows when acquisition starts and stops and
which Series it produced:

* **open**: the first stream of a case whose session context lists worklist ``requests``
  starts recording (START, or ``record_on_start``) -> a step is opened: its SOP Instance
  UID and Performed Procedure Step ID are made here, written into that stream's descriptor
  (so every instance references the step, PS3.3 C.7.3.1); ``CREATE_SETTLE_S`` after the
  first stream joined (:meth:`Workflow.started`), an N-CREATE IN PROGRESS is queued, its
  Modality the image modality among the streams that joined by then (with
  ``record_on_start`` the streams join one by one as their descriptors arrive, in any
  order; Modality cannot be changed by a later N-SET, PS3.4 Table F.7.2-1). Streams of the
  same case that start later join the open step. A stream of another case closes the open
  step first (COMPLETED).
* **close**: when no stream of the step records any more (STOP), the step waits (in the
  background, the STOP answers at once) until the instances the STOP closed are final,
  lists every instance in the spool that references the step, and queues the N-SET:
  COMPLETED with the Performed Series, or DISCONTINUED when the STOP asked for it, when the
  recorder shuts down mid-case, or when nothing was acquired (a COMPLETED step must list a
  Series). A START after that opens a new step (a COMPLETED step cannot be extended).
* **delivery**: the messages go through :class:`~dicom_or_core.scu.mpps.MppsOutbox`, a
  JSON file beside the spool (``.spool/mpps_outbox.json``), sent in order by a thread of
  this module with bounded timeouts and a backoff: an unreachable RIS never blocks nor
  loses a recording, and what was not accepted is sent after a restart. The open step is
  kept in ``.spool/mpps_open.json`` too, so a step a crash left IN PROGRESS is ended
  DISCONTINUED at the next start.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError

from dicom_or_core.archive.spool import Spool, write_atomic
from dicom_or_core.model import context as ctx
from dicom_or_core.model.uid import new_uid
from dicom_or_core.scu import mpps

log = logging.getLogger(__name__)

OUTBOX_FILE = "mpps_outbox.json"
OPEN_STEP_FILE = "mpps_open.json"
# How long a closing step waits for the instances its STOP closed to become final (a long
# video segment is muxed after the STOP); after that it lists what is final.
FINAL_WAIT_S = 120.0
# The worker's period: how soon a due message or a closing step is looked at.
TICK_S = 0.2
# Shutdown waits at most this long for the worker, and gives the last delivery attempt
# these timeouts: a RIS that accepts but never answers must not hold the recorder's stop
# (what is not accepted stays in the outbox for the next start).
SHUTDOWN_WAIT_S = 2.0
# How long the N-CREATE waits for the other streams of a START to join the step: the streams
# of one graph are discovered within a second or two of each other (the recorder's discovery
# period plus the descriptors' arrival), and the step's Modality is chosen among them.
CREATE_SETTLE_S = 2.0


@dataclass
class _Step:
    """The open step: what the N-CREATE said and which Series it has recorded."""

    uid: str
    step_id: str
    case: str                       # Study Instance UID + SPS IDs: which case it performs
    start: float                    # time.time() at open
    start_date: str
    start_time: str
    description: str
    series: dict[str, dict[str, str]] = field(default_factory=dict)  # uid -> modality, desc
    performed: mpps.PerformedStep | None = None  # the N-CREATE to queue (None: queued)
    create_due: float | None = None  # time.monotonic() when it is queued (started())


@dataclass
class _Closing:
    step: _Step
    status: str
    waiting_for: set[str]           # SOP Instance UIDs not final yet
    deadline: float


def case_key(session: ctx.SessionContext) -> str:
    """Which case a session performs: its study and the Scheduled Procedure Steps."""
    steps = ",".join(sorted(r.scheduled_procedure_step_id for r in session.requests))
    return f"{session.study.study_instance_uid}|{steps}"


class Workflow:
    """MPPS of the recorder (module docstring). ``busy(series_uids)`` tells whether a
    stream of those Series still has an instance being finalised."""

    def __init__(self, peer: mpps.MppsPeer, spool: Spool, station_ae_title: str,
                 retrieve_ae_title: str = "",
                 busy: Callable[[set[str]], bool] | None = None) -> None:
        self.peer = peer
        self.spool = spool
        self.station_ae_title = station_ae_title
        self.retrieve_ae_title = retrieve_ae_title
        self.busy = busy or (lambda series: False)
        folder = spool.spool_dir
        self.outbox = mpps.MppsOutbox(folder / OUTBOX_FILE)
        self._open_file = folder / OPEN_STEP_FILE
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.step: _Step | None = None
        self._closing: list[_Closing] = []
        self.last_step: dict[str, str] = {}  # uid, status of the last step ended
        self.opened = 0
        self._thread = threading.Thread(target=self._run, name="mpps", daemon=True)
        if self.enabled:
            self._end_leftover_step()
            self._thread.start()

    @property
    def enabled(self) -> bool:
        """Whether MPPS is on (an MPPS destination is configured)."""
        return self.peer.enabled

    # -- open ------------------------------------------------------------------------------

    def begin(self, descriptor: ctx.StreamDescriptor) -> ctx.StreamDescriptor:
        """A stream starts recording: the descriptor its instances are built from, with the
        open step's references in its session (opening one when needed). Unchanged when
        MPPS is off or the case came from no worklist."""
        session = descriptor.session
        if not self.enabled or not session.requests:
            return descriptor
        with self._lock:
            key = case_key(session)
            if self.step is not None and self.step.case != key:
                self._end_locked(mpps.COMPLETED, set())
            if self.step is None:
                self._open_locked(descriptor, key)
            step = self.step
            assert step is not None
            step.series[descriptor.series_instance_uid] = {
                "modality": descriptor.modality, "description": descriptor.series_description}
            self._save_open()
        return replace(descriptor, session=replace(
            session, performed_procedure_step_sop_instance_uid=step.uid,
            performed_procedure_step_id=step.step_id,
            performed_procedure_step_start_date=step.start_date,
            performed_procedure_step_start_time=step.start_time,
            performed_procedure_step_description=step.description))

    def _open_locked(self, descriptor: ctx.StreamDescriptor, key: str) -> None:
        now = _dt.datetime.now()
        date, tm = ctx.now_da_tm(now)
        first = descriptor.session.requests[0]
        description = (first.scheduled_procedure_step_description
                       or first.requested_procedure_description)[:64]
        step = _Step(uid=new_uid(), step_id=mpps.new_step_id(now), case=key,
                     start=time.time(), start_date=date, start_time=tm,
                     description=description)
        performed = mpps.PerformedStep(
            sop_instance_uid=step.uid, performed_procedure_step_id=step.step_id,
            session=descriptor.session, modality=mpps.step_modality([descriptor.modality]),
            station_ae_title=self.station_ae_title,
            station_name=descriptor.equipment.station_name, start_date=date, start_time=tm,
            description=description)
        # Queued by started(), once every stream a START starts has joined, so the step's
        # Modality is the best of theirs (step_modality).
        step.performed = performed
        self.step = step
        self.opened += 1
        self._wake.set()
        log.info("MPPS %s (%s) opened IN PROGRESS for %s", step.uid, step.step_id, key)

    # -- close -----------------------------------------------------------------------------

    def streams_stopped(self, recording_series: set[str], closing_uids: list[str],
                        discontinued: bool = False) -> None:
        """Streams stopped; ``recording_series`` are the Series still recording and
        ``closing_uids`` the instances the stop is finalising. The open step ends when none
        of its Series records any more."""
        with self._lock:
            if self.step is None or set(self.step.series) & recording_series:
                return
            self._end_locked(mpps.DISCONTINUED if discontinued else mpps.COMPLETED,
                             set(closing_uids))

    def started(self) -> None:
        """Streams have called :meth:`begin`: the N-CREATE of the step they opened is queued
        ``CREATE_SETTLE_S`` later, so streams that join meanwhile count for its Modality
        (nothing when it is already due or queued)."""
        with self._lock:
            step = self.step
            if step is not None and step.performed is not None and step.create_due is None:
                step.create_due = time.monotonic() + CREATE_SETTLE_S
        self._wake.set()

    def _queue_create_locked(self, step: _Step) -> None:
        performed, step.performed = step.performed, None
        if performed is None:
            return
        performed.modality = mpps.step_modality(s["modality"] for s in step.series.values())
        self.outbox.put("create", step.uid, mpps.n_create_dataset(performed))

    def _end_locked(self, status: str, waiting_for: set[str]) -> None:
        step = self.step
        assert step is not None
        self._queue_create_locked(step)
        self.step = None
        self._save_open()
        self._closing.append(_Closing(step, status, waiting_for,
                                      time.monotonic() + FINAL_WAIT_S))
        self._wake.set()

    def performed_series(self, step: _Step) -> list[mpps.PerformedSeries]:
        """The step's Series with every instance in the spool that references the step
        (read from the instances' headers: a Series recorded by several steps lists in
        each only its own instances)."""
        by_series: dict[str, mpps.PerformedSeries] = {}
        for row in self.spool.rows():
            info = step.series.get(row.series_instance_uid)
            if info is None or row.created < step.start - 1.0:
                continue
            if not self._references(self.spool.absolute(row), step.uid):
                continue
            entry = by_series.setdefault(row.series_instance_uid, mpps.PerformedSeries(
                row.series_instance_uid, info["modality"], info["description"],
                self.retrieve_ae_title))
            entry.instances.append((row.sop_class_uid, row.sop_instance_uid))
        return [by_series[uid] for uid in step.series if uid in by_series]

    @staticmethod
    def _references(path: Path, step_uid: str) -> bool:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True,
                                 specific_tags=["ReferencedPerformedProcedureStepSequence"])
        except (OSError, InvalidDicomError) as exc:
            log.warning("MPPS: cannot read %s: %s", path, exc)
            return False
        refs = ds.get("ReferencedPerformedProcedureStepSequence") or []
        return any(str(r.get("ReferencedSOPInstanceUID", "")) == step_uid for r in refs)

    def _finish(self, closing: _Closing) -> None:
        step, status = closing.step, closing.status
        series = self.performed_series(step)
        if status == mpps.COMPLETED and not series:
            status = mpps.DISCONTINUED  # nothing acquired: a COMPLETED step lists a Series
        self.outbox.put("set", step.uid, mpps.n_set_dataset(status, series))
        self.last_step = {"uid": step.uid, "status": status}
        log.info("MPPS %s ending %s with %d Series, %d instance(s)", step.uid, status,
                 len(series), sum(len(s.instances) for s in series))

    # -- persistence of the open step -------------------------------------------------------

    def _save_open(self) -> None:
        step = self.step
        data = {} if step is None else {"uid": step.uid, "start": step.start,
                                        "series": step.series}
        write_atomic(self._open_file, json.dumps(data).encode("utf-8"))

    def _end_leftover_step(self) -> None:
        """A step an earlier run left open (a crash, a kill): ended DISCONTINUED with the
        instances that reference it (the journals of that run are finalised beside)."""
        try:
            data = json.loads(self._open_file.read_text("utf-8"))
        except (OSError, ValueError):
            return
        if not data.get("uid"):
            return
        step = _Step(uid=data["uid"], step_id="", case="", start=float(data["start"]),
                     start_date="", start_time="", description="",
                     series=dict(data.get("series", {})))
        log.warning("MPPS %s was left IN PROGRESS by an earlier run: ending it DISCONTINUED",
                    step.uid)
        self._closing.append(_Closing(step, mpps.DISCONTINUED, set(), time.monotonic()))
        self._save_open()

    # -- delivery ----------------------------------------------------------------------------

    def _ready(self, closing: _Closing) -> bool:
        closing.waiting_for = {u for u in closing.waiting_for if self.spool.get(u) is None}
        if time.monotonic() >= closing.deadline:
            return True
        return not closing.waiting_for and not self.busy(set(closing.step.series))

    def _work(self) -> None:
        with self._lock:
            step = self.step
            if step is not None and step.create_due is not None \
                    and time.monotonic() >= step.create_due:
                self._queue_create_locked(step)
            ready = [c for c in self._closing if self._ready(c)]
            self._closing = [c for c in self._closing if c not in ready]
        for closing in ready:
            self._finish(closing)
        if self.outbox.due():
            self.outbox.flush(self.peer)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(TICK_S)
            self._wake.clear()
            try:
                self._work()
            except Exception as exc:  # noqa: BLE001 - MPPS must never take the recorder down
                self.outbox.stats.last_error = f"MPPS: {type(exc).__name__}: {exc}"
                log.exception("MPPS worker")

    def close(self, timeout_s: float = SHUTDOWN_WAIT_S) -> None:
        """Shutdown (every instance already final): a step still open ends DISCONTINUED;
        its N-SET and anything pending get one delivery attempt with ``timeout_s``
        timeouts; what is not accepted stays in the outbox for the next start."""
        if not self.enabled:
            return
        self._stop.set()
        self._thread.join(timeout=timeout_s)
        with self._lock:
            if self.step is not None:
                self._end_locked(mpps.DISCONTINUED, set())
            closing, self._closing = self._closing, []
        for c in closing:
            self._finish(c)
        # Not beside a worker still waiting on the peer (the same message twice).
        if self.outbox.pending() and not self._thread.is_alive():
            self.outbox.flush(replace(self.peer, timeout_s=min(self.peer.timeout_s,
                                                               timeout_s)))

    # -- status ------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """MPPS state for the status and diagnostics."""
        stats = self.outbox.stats
        step = self.step
        return {"enabled": self.enabled, "destination": str(self.peer) if self.enabled else "",
                "open_step": step.uid if step else "",
                "open_step_id": step.step_id if step else "",
                "steps_opened": self.opened, "last_step": dict(self.last_step),
                "pending": len(self.outbox.pending()), "sent": stats.sent,
                "refused": stats.refused, "retries": stats.retries,
                "reachable": stats.reachable, "last_error": stats.last_error}

    def problems(self) -> list[str]:
        """What /diagnostics should WARN about: an unreachable MPPS SCP with messages
        waiting, refused messages."""
        if not self.enabled:
            return []
        stats, pending = self.outbox.stats, len(self.outbox.pending())
        found = []
        if stats.reachable is False and pending:
            found.append(f"MPPS {self.peer} unreachable, {pending} message(s) kept")
        if stats.refused:
            found.append(f"{stats.refused} MPPS message(s) refused: "
                         f"{self.outbox.refusals[-1]}")
        return found

    def diagnostic_values(self) -> dict[str, Any]:
        """The MPPS key/values of the node's /diagnostics entry."""
        status = self.status()
        return {f"mpps_{k}": v for k, v in status.items()
                if k in ("enabled", "open_step", "pending", "sent", "refused", "reachable",
                         "last_error")}


def detach(descriptor: ctx.StreamDescriptor) -> ctx.StreamDescriptor:
    """The descriptor without a step's references (the step ended: a snapshot taken now
    belongs to none)."""
    return replace(descriptor, session=replace(
        descriptor.session, performed_procedure_step_sop_instance_uid="",
        performed_procedure_step_id="", performed_procedure_step_start_date="",
        performed_procedure_step_start_time="", performed_procedure_step_description=""))
