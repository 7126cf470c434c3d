"""The recorder's status as a typed message (``dicom_or_msgs/RecorderStatus``) and back.

:meth:`RecorderNode.status` gathers the status as a dict (what a person wants to know);
:func:`status_message` is the message published on ``~/status``, and :func:`status_dict`
reads a received message back into the same dict, for readers that print or compare it
(tests, bench/). Named counts that only some kinds have (``dropped_backpressure``,
``lost_samples``, ``refused_by`` per reason, ...) travel as ``RecorderCounter`` entries.
"""

from __future__ import annotations

from typing import Any

from dicom_or_core.archive.spool import STATES
from dicom_or_msgs.msg import (
    RecorderCounter,
    RecorderMppsStatus,
    RecorderPacsStatus,
    RecorderStatus,
    RecorderStreamStatus,
)

# Stream fields the message has by name (the dict's other numeric entries are counters).
_STREAM_FIELDS = ("acknowledged", "samples", "lost_messages", "out_of_order", "occluded",
                  "bytes_journaled", "instances", "finalising", "unwritten", "errors",
                  "foreign_samples")
_PACS_FIELDS = ("stored", "committed", "failed", "retries", "bytes_sent")
_RECOVERY = ("pending", "finalised", "discarded", "quarantined")
# MPPS fields the message has by name (present only when an MPPS destination is set).
_MPPS_TEXT = ("destination", "open_step", "open_step_id", "last_error")
_MPPS_COUNTS = ("steps_opened", "pending", "sent", "refused", "retries")
REFUSED_BY = "refused_by."


def _stream_message(entry: dict[str, Any]) -> RecorderStreamStatus:
    msg = RecorderStreamStatus()
    msg.topic = entry["topic"]
    msg.kind = entry["kind"]
    msg.series_instance_uid = entry.get("series_instance_uid", "")
    msg.recording = bool(entry.get("recording"))
    msg.waiting_for_descriptor = entry.get("waiting_for") == "descriptor"
    msg.refused = entry.get("refused", "")
    silent = entry.get("silent_s")
    msg.silent_s = -1.0 if silent is None else float(silent)
    for name in _STREAM_FIELDS:
        setattr(msg, name, int(entry.get(name) or 0))
    msg.last_error = entry.get("last_error") or ""
    counters = [RecorderCounter(name=f"{REFUSED_BY}{reason}", value=int(count))
                for reason, count in sorted(entry.get("refused_by", {}).items())]
    known = {"topic", "kind", "series_instance_uid", "recording", "waiting_for", "refused",
             "silent_s", "last_error", "refused_by", *_STREAM_FIELDS}
    for name, value in sorted(entry.items()):
        if name not in known and isinstance(value, (int, float)) and \
                not isinstance(value, bool):
            counters.append(RecorderCounter(name=name, value=int(value)))
    msg.counters = counters
    return msg


def status_message(status: dict[str, Any], stamp: Any = None) -> RecorderStatus:
    """The ``RecorderStatus`` of a :meth:`RecorderNode.status` dict."""
    msg = RecorderStatus()
    if stamp is not None:
        msg.header.stamp = stamp
    msg.recordings_dir = status["recordings_dir"]
    disk = status["disk"]
    msg.disk_free_mib = float(disk.get("free_mib", -1.0))
    msg.disk_total_mib = float(disk.get("total_mib", -1.0))
    msg.disk_low = bool(disk.get("low", False))
    msg.disk_error = disk.get("error", "")
    msg.streams = [_stream_message(s) for s in status["streams"]]
    for state in STATES:
        setattr(msg, f"instances_{state}", int(status["instances"].get(state, 0)))
    for name in _RECOVERY:
        setattr(msg, f"recovery_{name}", int(status["recovery"].get(name, 0)))
    pacs = status["pacs"]
    msg.pacs = RecorderPacsStatus(
        enabled=bool(pacs["enabled"]), queue=int(pacs["queue"]),
        contacted=pacs["reachable"] is not None, reachable=bool(pacs["reachable"]),
        last_error=pacs["last_error"] or "",
        **{name: int(pacs[name]) for name in _PACS_FIELDS})
    mpps = status.get("mpps")
    if mpps:
        last = mpps.get("last_step") or {}
        msg.mpps = RecorderMppsStatus(
            enabled=True, contacted=mpps["reachable"] is not None,
            reachable=bool(mpps["reachable"]), last_step=last.get("uid", ""),
            last_step_status=last.get("status", ""),
            **{name: mpps[name] or "" for name in _MPPS_TEXT},
            **{name: int(mpps[name]) for name in _MPPS_COUNTS})
    return msg


def _mpps_dict(msg: RecorderMppsStatus) -> dict[str, Any]:
    last = {"uid": msg.last_step, "status": msg.last_step_status} if msg.last_step else {}
    return {"enabled": True, **{name: getattr(msg, name) for name in _MPPS_TEXT},
            **{name: getattr(msg, name) for name in _MPPS_COUNTS}, "last_step": last,
            "reachable": msg.reachable if msg.contacted else None}


def _stream_dict(msg: RecorderStreamStatus) -> dict[str, Any]:
    entry: dict[str, Any] = {"topic": msg.topic, "kind": msg.kind,
                             "recording": msg.recording, "errors": msg.errors,
                             "foreign_samples": msg.foreign_samples,
                             "silent_s": None if msg.silent_s < 0 else msg.silent_s}
    refused_by = {c.name[len(REFUSED_BY):]: c.value for c in msg.counters
                  if c.name.startswith(REFUSED_BY)}
    entry["refused_by"] = refused_by
    if msg.series_instance_uid:
        entry["series_instance_uid"] = msg.series_instance_uid
        for name in _STREAM_FIELDS:
            entry[name] = getattr(msg, name)
        entry["last_error"] = msg.last_error
        entry.update({c.name: c.value for c in msg.counters
                      if not c.name.startswith(REFUSED_BY)})
    elif msg.refused:
        entry["refused"] = msg.refused
    elif msg.waiting_for_descriptor:
        entry["waiting_for"] = "descriptor"
    return entry


def status_dict(msg: RecorderStatus) -> dict[str, Any]:
    """A received ``RecorderStatus`` as the dict :meth:`RecorderNode.status` returns."""
    disk: dict[str, Any] = {"error": msg.disk_error} if msg.disk_error else {
        "free_mib": round(msg.disk_free_mib), "total_mib": round(msg.disk_total_mib),
        "low": msg.disk_low}
    pacs = msg.pacs
    mpps = {"mpps": _mpps_dict(msg.mpps)} if msg.mpps.enabled else {}
    return {
        "recordings_dir": msg.recordings_dir,
        "disk": disk,
        "streams": [_stream_dict(s) for s in msg.streams],
        "recovery": {name: getattr(msg, f"recovery_{name}") for name in _RECOVERY},
        "instances": {state: getattr(msg, f"instances_{state}") for state in STATES},
        "pacs": {"enabled": pacs.enabled, "queue": pacs.queue,
                 "reachable": pacs.reachable if pacs.contacted else None,
                 **{name: getattr(pacs, name) for name in _PACS_FIELDS},
                 "last_error": pacs.last_error},
        **mpps,
    }
