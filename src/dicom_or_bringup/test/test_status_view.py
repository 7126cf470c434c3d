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


def test_recorder_json_becomes_one_line():
    import json

    from dicom_or_bringup.status_view import summarize_recorder

    status = {"streams": [{"recording": True, "samples": 10, "lost_messages": 2,
                           "last_error": ""},
                          {"recording": False, "samples": 5, "lost_messages": 0,
                           "last_error": "disk full"}],
              "instances": {"final": 3}, "pacs": {"enabled": True, "queue": 1, "stored": 2,
                                                  "committed": 2}}
    line = summarize_recorder(json.dumps(status))
    assert line.startswith("recording 1/2 streams, 10 samples, 2 lost, instances final 3")
    assert "PACS queue 1 stored 2 committed 2" in line and "error: disk full" in line
    assert summarize_recorder("plain text\nmore") == "plain text"
