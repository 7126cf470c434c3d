"""The tracker's pose sources (ROS-free): choice by parameter, simulator pacing and the
active switch, OpenIGTLink pose conversion and a lost server; the schemas' choice lists are
the code's tables."""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from dicom_or_core.model.errors import DicomOrError
from dicom_or_core.model.pixels import PIXEL_ENCODINGS
from dicom_or_drivers import tracker_sources as ts
from dicom_or_drivers.igtl import IgtlTransform
from dicom_or_ros.params import load_schema

PACKAGE = Path(ts.__file__).parent


def _params(**overrides):
    values = dict(source="simulator", tools=[], tool_count=2, rate_hz=200.0, seed=0,
                  igtl=SimpleNamespace(host="127.0.0.1", port=18944, device_names=[],
                                       unit_scale=0.001))
    values.update(overrides)
    return SimpleNamespace(**values)


def _choices(schema: str, name: str) -> list:
    (spec,) = [s for s in load_schema(PACKAGE / schema)[1] if s.name == name]
    return dict(spec.validation)["one_of<>"][0]


def test_schema_choices_are_the_code_tables():
    assert _choices("tracker_parameters.yaml", "source") == list(ts.SOURCES)
    assert _choices("video_parameters.yaml", "pixel_format") == list(PIXEL_ENCODINGS)


def test_the_source_parameter_picks_the_source():
    simulated = ts.make_tracker_source(_params())
    assert isinstance(simulated, ts.SimulatedTracker)
    assert [kind for _, kind in simulated.tools] == ["instrument", "reference"]
    named = ts.make_tracker_source(_params(tools=["probe:instrument", "ref=reference"]))
    assert named.tools == [("probe", "instrument"), ("ref", "reference")]
    igtl = ts.make_tracker_source(_params(source="igtl", igtl=SimpleNamespace(
        host="h", port=1, device_names=["Stylus"], unit_scale=0.001)))
    assert isinstance(igtl, ts.IgtlTracker) and igtl.tools == [("Stylus", "igtl")]
    assert igtl.model_name == "OpenIGTLink tracker" != simulated.model_name
    with pytest.raises(DicomOrError, match="igtl.device_names"):
        ts.make_tracker_source(_params(source="igtl"))
    with pytest.raises(DicomOrError, match="tools"):
        ts.make_tracker_source(_params(tools=["a:laser"]))


def test_simulator_delivers_every_tool_per_tick_only_while_active():
    source = ts.make_tracker_source(_params(rate_hz=200.0))
    stop, active = threading.Event(), threading.Event()
    got: list[tuple[list, int]] = []
    enough = threading.Event()

    def deliver(poses, acquisition_ns):
        got.append((poses, acquisition_ns))
        if len(got) >= 20:
            enough.set()

    thread = threading.Thread(target=source.run, args=(deliver, stop, active.is_set))
    thread.start()
    try:
        assert not enough.wait(0.1) and not got  # inactive: no work, no poses
        active.set()
        assert enough.wait(5.0)
    finally:
        stop.set()
        thread.join(5.0)
    assert not thread.is_alive()
    assert all([p.tool_id for p in poses] == ["pointer", "patient_reference"]
               for poses, _ in got)
    stamps = [ns for _, ns in got]
    assert stamps == sorted(stamps)


def test_igtl_pose_in_metres_and_clock_rule():
    source = ts.IgtlTracker("h", 1, ["Stylus"], 0.001)
    matrix = np.eye(4)
    matrix[:3, 3] = (10.0, -20.0, 300.0)
    now = 1_800_000_000 * 10**9
    pose, ns = source.pose(IgtlTransform("Stylus", matrix, (now - 5_000_000) / 1e9), now)
    assert pose.position == pytest.approx((0.01, -0.02, 0.3))
    assert pose.orientation == pytest.approx((0.0, 0.0, 0.0, 1.0))
    assert pose.visible and abs(ns - (now - 5_000_000)) < 1000  # the sender's time
    _, ns = source.pose(IgtlTransform("Stylus", matrix, 5.0), now)
    assert ns == now  # a sender clock 56 years off: the reception time


def test_an_unreachable_igtl_server_is_source_lost():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: the connection is refused
        source = ts.IgtlTracker("127.0.0.1", port, ["Stylus"], 0.001)
        with pytest.raises(ts.SourceLost):
            source.run(lambda poses, ns: None, threading.Event())
