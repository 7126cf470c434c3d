"""The recorder's /diagnostics entries: how its status becomes levels (the node entry: disk,
PACS reachability and backlog; a stream entry: refused descriptor, silence, new errors)."""

from __future__ import annotations

import copy
import time

from dicom_or_test_common.ros import ros_context
from rclpy.parameter import Parameter

from dicom_or_recorder.recorder_node import BACKLOG_STUCK_S, RecorderNode
from dicom_or_ros.diagnostics import ERROR, OK, STALE, WARN, diagnostics_for, status_level

STREAM = {"topic": "/or/x/ecg", "kind": "waveform", "recording": True, "errors": 0,
          "refused_by": {}, "foreign_samples": 0, "silent_s": 0.2,
          "series_instance_uid": "1.2.3", "acknowledged": 10, "samples": 500,
          "lost_messages": 0, "out_of_order": 0, "occluded": 0, "bytes_journaled": 3000,
          "instances": 0, "finalising": 0, "unwritten": 0, "last_error": ""}
STATUS = {"recordings_dir": "/r", "disk": {"free_mib": 9000, "total_mib": 10000, "low": False},
          "streams": [STREAM],
          "recovery": {"pending": 0, "finalised": 0, "discarded": 0, "quarantined": 0},
          "instances": {"writing": 1, "final": 0, "stored": 0, "committed": 0, "failed": 0},
          "pacs": {"enabled": True, "queue": 0, "reachable": True, "stored": 0,
                   "committed": 0, "failed": 0, "retries": 0, "bytes_sent": 0,
                   "last_error": ""}}


def test_status_becomes_levels(tmp_path):
    with ros_context() as ctx:
        rec = RecorderNode(context=ctx, parameter_overrides=[
            Parameter("recordings_dir", value=str(tmp_path))])
        try:
            diag = diagnostics_for(rec)
            rec._last_status = status = copy.deepcopy(STATUS)

            def level(entry: str) -> tuple[int, str]:
                found = {s.name: s for s in diag.collect().status}[f"/recorder: {entry}"]
                return status_level(found), found.message

            assert level("node") == (OK, "recording 1/1 stream(s), PACS reachable")
            status["disk"]["low"] = True
            assert level("node")[0] == WARN and "disk low" in level("node")[1]
            status["disk"] = {"error": "No such file or directory"}
            assert level("node")[0] == ERROR
            status["disk"] = dict(STATUS["disk"])
            status["pacs"].update(reachable=False, queue=3)
            assert level("node") == (WARN, "PACS unreachable, backlog 3")
            # Reachable, but the backlog has not shrunk for BACKLOG_STUCK_S.
            status["pacs"]["reachable"] = True
            assert level("node")[0] == OK
            rec._backlog = (3, time.monotonic() - BACKLOG_STUCK_S - 1)
            assert level("node")[0] == WARN and "not shrinking" in level("node")[1]
            status["pacs"]["queue"] = 2   # it shrank: fine again
            assert level("node")[0] == OK

            # Streams: the entry is registered when the recorder follows the topic.
            diag.add("/or/x/ecg", lambda: rec._stream_health("/or/x/ecg"))
            assert level("/or/x/ecg") == (OK, "recording")
            followed = status["streams"][0]
            followed.update(errors=2, last_error="samples: bad length")
            assert level("/or/x/ecg") == (WARN, "2 sample(s) refused: samples: bad length")
            assert level("/or/x/ecg")[0] == OK  # no new error since the last report
            followed["silent_s"] = 7.0
            assert level("/or/x/ecg") == (STALE, "no sample for 7 s")
            status["streams"][0] = {"topic": "/or/x/ecg", "kind": "waveform",
                                    "recording": False, "errors": 1, "refused_by": {},
                                    "foreign_samples": 0, "silent_s": None,
                                    "refused": "sampling_frequency_hz: too high"}
            assert level("/or/x/ecg")[0] == ERROR
        finally:
            rec.close()
            rec.destroy_node()
