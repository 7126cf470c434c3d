"""The recorder's typed status: the dict RecorderNode.status() gathers survives the
message (dicom_or_msgs/RecorderStatus) unchanged, counters and unknowns included."""

from dicom_or_msgs.msg import RecorderStatus
from dicom_or_recorder.status import status_dict, status_message

STATUS = {
    "recordings_dir": "/data/or3",
    "disk": {"free_mib": 1500, "total_mib": 100000, "low": True},
    "streams": [
        {"topic": "/or/endoscope/frames", "kind": "video", "recording": True, "errors": 2,
         "refused_by": {"image": 2}, "foreign_samples": 0, "silent_s": 0.1,
         "series_instance_uid": "1.2.3", "acknowledged": 39, "samples": 39,
         "lost_messages": 1, "out_of_order": 0, "occluded": 0, "bytes_journaled": 123456,
         "instances": 1, "finalising": 1, "unwritten": 0, "last_error": "image: size",
         "queue_capacity": 60, "queued": 4, "dropped_backpressure": 7},
        {"topic": "/or/monitor/ecg", "kind": "waveform", "recording": False, "errors": 1,
         "refused_by": {}, "foreign_samples": 0, "silent_s": None,
         "refused": "modality: must not be empty"},
        {"topic": "/or/tracker/poses", "kind": "pose", "recording": False, "errors": 0,
         "refused_by": {}, "foreign_samples": 3, "silent_s": 12.5,
         "waiting_for": "descriptor"},
    ],
    "recovery": {"pending": 1, "finalised": 2, "discarded": 0, "quarantined": 1},
    "instances": {"writing": 1, "final": 2, "stored": 3, "committed": 4, "failed": 5},
    "pacs": {"enabled": True, "queue": 5, "reachable": None, "stored": 3, "committed": 4,
             "failed": 5, "retries": 6, "bytes_sent": 7, "last_error": ""},
}


def test_status_round_trips_through_the_typed_message():
    msg = status_message(STATUS)
    assert isinstance(msg, RecorderStatus)
    video = msg.streams[0]
    assert video.lost_messages == 1 and video.recording and video.series_instance_uid
    assert {c.name: c.value for c in video.counters} == {
        "refused_by.image": 2, "queue_capacity": 60, "queued": 4, "dropped_backpressure": 7}
    assert msg.streams[1].refused and msg.streams[2].waiting_for_descriptor
    assert msg.streams[1].silent_s == -1.0
    assert msg.pacs.queue == 5 and not msg.pacs.contacted and msg.instances_failed == 5
    assert status_dict(msg) == STATUS


def test_a_reachable_pacs_and_an_unknown_disk():
    status = dict(STATUS, disk={"error": "No such file or directory"},
                  pacs=dict(STATUS["pacs"], reachable=False, last_error="association failed"))
    msg = status_message(status)
    assert msg.pacs.contacted and not msg.pacs.reachable and msg.disk_free_mib == -1.0
    assert status_dict(msg) == status
