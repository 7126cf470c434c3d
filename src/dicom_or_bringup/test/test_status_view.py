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
