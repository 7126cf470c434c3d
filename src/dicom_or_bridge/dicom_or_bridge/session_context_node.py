"""``session_context``: publishes the OR case's patient / study context, latched.

Sources (parameter ``source``):

* ``worklist``: a Modality Worklist C-FIND (:mod:`dicom_or_core.scu.worklist`) to the SCP at
  ``worklist_host:worklist_port`` (AE ``worklist_ae_title``), selecting Scheduled Procedure
  Steps by ``station_ae_title`` and/or ``location`` and ``date`` (``today``, ``""`` = any
  date, ``YYYYMMDD`` or a DA range). The earliest step is published. An unreachable or
  failing worklist is logged and retried every ``retry_period_s``; nothing is published
  until a case is known (a made-up patient would be worse than none).
* ``parameters``: the ``patient.*`` / ``study.*`` parameters (``config/session_context.yaml``
  holds a demo case); an empty ``study.study_instance_uid`` gets a new UID at start.

Service ``~/next_case`` (std_srvs/Trigger) re-queries the worklist and switches to the step
scheduled after the current one. Each published case gets a new Synchronization Frame of
Reference UID (one per session).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import sys
import threading
from typing import Any

from rclpy.node import Node
from std_srvs.srv import Trigger

from dicom_or_core.model import context as ctx
from dicom_or_core.model.errors import DicomOrError
from dicom_or_core.model.uid import new_uid
from dicom_or_core.scu import worklist as wl
from dicom_or_msgs.msg import SessionContext as SessionContextMsg
from dicom_or_ros.convert import to_msg
from dicom_or_ros.diagnostics import NODE_ENTRY, OK, WARN, Health, diagnostics_for
from dicom_or_ros.graph import SESSION_CONTEXT_TOPIC
from dicom_or_ros.params import load_parameters
from dicom_or_ros.qos import named_qos, overridable
from dicom_or_ros.runtime import run_node


class SessionContextNode(Node):
    """See the module docstring."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("session_context", **kwargs)
        # Every parameter, its type, default and rule: session_context_parameters.yaml.
        self.params = load_parameters(self, "dicom_or_bridge",
                                      "session_context_parameters.yaml")
        self.source, self.operating_room = self.params.source, self.params.operating_room
        self._pub = self.create_publisher(SessionContextMsg, SESSION_CONTEXT_TOPIC,
                                          named_qos("descriptor"),
                                          qos_overriding_options=overridable())
        self._lock = threading.Lock()
        self.current: ctx.SessionContext | None = None
        self.current_step: str | None = None
        self.last_error = ""  # the worklist's last failure, for /diagnostics
        diagnostics_for(self).add(NODE_ENTRY, self._health, hardware_id=self.source)
        if self.source == "worklist":
            self._declare_worklist()
            self.create_service(Trigger, "~/next_case", self._on_next_case)
            self._retry = self.create_timer(self.retry_period_s, self._try_worklist)
            self._try_worklist()
        else:
            self.publish(self._from_parameters())
            self.create_service(Trigger, "~/next_case", self._on_next_case)

    # --- configuration ---------------------------------------------------------------

    def _declare_worklist(self) -> None:
        p = self.params
        host, port, timeout = p.worklist_host, p.worklist_port, p.timeout_s
        called, calling = p.worklist_ae_title, p.calling_ae_title
        self.retry_period_s = p.retry_period_s
        station, location, date = p.station_ae_title, p.location, p.date
        if date == "today":
            date = _dt.date.today().strftime("%Y%m%d")
        if not (station or location):
            raise DicomOrError("station_ae_title", "set station_ae_title and/or location, "
                               "or every OR would take every case")
        self.peer = wl.WorklistPeer(host, port, called, calling, timeout)
        try:
            self.selection = wl.WorklistSelection(station, location, date).validate()
        except DicomOrError as exc:
            raise DicomOrError("date", exc.rule, date) from None

    def _from_parameters(self) -> ctx.SessionContext:
        values = {}
        for section, cls in (("patient", ctx.Patient), ("study", ctx.Study)):
            values[section] = cls(**dataclasses.asdict(getattr(self.params, section)))
        if not values["study"].study_instance_uid:
            values["study"].study_instance_uid = new_uid()
        if not values["study"].study_date:
            values["study"].study_date, values["study"].study_time = ctx.now_da_tm()
        step = self.params.scheduled_procedure_step_id
        session = ctx.SessionContext(
            patient=values["patient"], study=values["study"],
            synchronization_frame_of_reference_uid=new_uid(),
            scheduled_procedure_step_id=step, operating_room=self.operating_room)
        # Named after the parameters (patient.x / study.x), so the error names the parameter.
        session.patient.validate("patient")
        session.study.validate("study")
        return session.validate("session")

    # --- worklist ------------------------------------------------------------------

    def _query(self) -> list | None:
        try:
            return wl.query_worklist(self.peer, self.selection)
        except wl.WorklistUnavailable as exc:
            self.last_error = f"worklist unavailable: {exc}"
            self.get_logger().warning(
                f"worklist {self.peer.called_ae_title}@{self.peer.host}:{self.peer.port} "
                f"unavailable: {exc}; retrying every {self.retry_period_s:g} s")
            return None

    def _try_worklist(self) -> None:
        """Timer: until a case is known, ask the worklist."""
        with self._lock:
            if self.current is not None:
                self._retry.cancel()
                return
            items = self._query()
            if items is None:
                return
            if not items:
                self.last_error = "worklist has no scheduled step for this OR"
                self.get_logger().warning(
                    f"worklist has no scheduled step for station "
                    f"'{self.selection.station_ae_title}' location "
                    f"'{self.selection.location}' date '{self.selection.date}'; "
                    f"asking again in {self.retry_period_s:g} s")
                return
            self._switch(items[0])

    def _switch(self, item: object) -> bool:
        try:
            session = wl.session_from_item(item, operating_room=self.operating_room)
        except DicomOrError as exc:
            self.get_logger().error(f"worklist item {wl.step_id(item)!r} is unusable: {exc}")
            return False
        self.current_step = wl.step_id(item)
        self.publish(session)
        return True

    def _on_next_case(self, request: Trigger.Request,
                      response: Trigger.Response) -> Trigger.Response:
        if self.source != "worklist":
            response.success = False
            response.message = "source is 'parameters': there is no worklist to advance"
            return response
        with self._lock:
            items = self._query()
            if items is None:
                response.success, response.message = False, "worklist unavailable"
                return response
            item = wl.next_item(items, self.current_step)
            if item is None:
                response.success = False
                response.message = "no later scheduled procedure step"
                return response
            response.success = self._switch(item)
            response.message = (f"now {self.current_step}: "
                                f"{self.current.patient.patient_name}"
                                if response.success else "worklist item unusable")
        return response

    def _health(self) -> Health:
        """OK once a case is published; until then WARN (nothing is recorded without a
        context), with the worklist's last failure."""
        values = {"source": self.source, "last_error": self.last_error}
        session = self.current
        if session is None:
            return Health(WARN, "no case yet" + (f": {self.last_error}" if self.last_error
                                                 else ""), values)
        values.update(study_instance_uid=session.study.study_instance_uid,
                      patient_id=session.patient.patient_id,
                      scheduled_procedure_step_id=session.scheduled_procedure_step_id)
        return Health(OK, f"case published: study {session.study.study_instance_uid}",
                      values)

    def publish(self, session: ctx.SessionContext) -> None:
        """Make ``session`` the current case: published latched on the session context topic,
        so a late-joining driver gets it too, and logged."""
        self.current = session
        msg = to_msg(session)
        msg.header.stamp = self.get_clock().now().to_msg()
        self._pub.publish(msg)
        self.get_logger().info(
            f"session: patient {session.patient.patient_id!r} study "
            f"{session.study.study_instance_uid} step "
            f"{session.scheduled_procedure_step_id!r}")


def main(args: list[str] | None = None) -> None:
    """Run ``session_context`` until Ctrl-C / SIGTERM; a bad parameter: one error line, exit 1."""
    sys.exit(run_node(SessionContextNode, args))
