"""The status table: stream rows, the recorder line and health lines, as or_status draws them."""

from dicom_or_bringup.status_view import StreamRow, render


def test_render_shows_state_rate_and_problems():
    rows = [StreamRow("/or/tracker/poses", 1, 100.0, 1234, "", 9.5),
            StreamRow("/or/endoscope/frames", 3, 0.0, 10, "camera unplugged", 8.0)]
    lines = render(rows, now_s=10.0, recorder_line="recording 3 streams")
    assert lines[1].startswith("/or/endoscope/frames") and "SOURCE LOST" in lines[1]
    assert "camera unplugged" in lines[1]
    assert "LIVE" in lines[2] and "100.0" in lines[2] and "1234" in lines[2]
    assert lines[-1] == "recorder: recording 3 streams"
    assert "no stream" in render([], 0.0)[1]


def test_recorder_status_becomes_one_line():
    from dicom_or_bringup.status_view import summarize_recorder
    from dicom_or_msgs.msg import RecorderStatus, RecorderStreamStatus

    status = RecorderStatus(instances_final=3, streams=[
        RecorderStreamStatus(recording=True, samples=10, lost_messages=2),
        RecorderStreamStatus(recording=False, samples=5, last_error="disk full")])
    status.pacs.enabled, status.pacs.queue = True, 1
    status.pacs.stored = status.pacs.committed = 2
    line = summarize_recorder(status)
    assert line.startswith("recording 1/2 streams, 10 samples, 2 lost, instances final 3")
    assert "PACS queue 1 stored 2 committed 2" in line and "error: disk full" in line
    assert "unreachable" not in line and "DISK LOW" not in line
    status.pacs.contacted, status.disk_low, status.disk_free_mib = True, True, 900.0
    line = summarize_recorder(status)
    assert "(unreachable)" in line and "DISK LOW 900 MiB" in line
    assert "PACS" not in summarize_recorder(RecorderStatus())


def test_health_lines_list_what_is_not_ok_worst_first():
    from diagnostic_msgs.msg import DiagnosticStatus

    from dicom_or_bringup.status_view import health_lines

    statuses = [DiagnosticStatus(level=DiagnosticStatus.OK, name="/or/a: node"),
                DiagnosticStatus(level=DiagnosticStatus.WARN, name="/or/recorder: node",
                                 message="disk low"),
                DiagnosticStatus(level=DiagnosticStatus.ERROR, name="/or/endoscope: /f",
                                 message="SOURCE_LOST: unplugged")]
    lines = health_lines(statuses)
    assert lines == ["ERROR /or/endoscope: /f: SOURCE_LOST: unplugged",
                     "WARN  /or/recorder: node: disk low"]
    assert render([], 0.0, health=lines)[-2:] == lines
