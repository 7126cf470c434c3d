"""Simulated optical tracker: plausible, deterministic poses, occlusion, tool parsing."""

from __future__ import annotations

import numpy as np
import pytest

from dicom_or_core.model.errors import DicomOrError
from dicom_or_core.sim.tracker import TrackerSimulator, default_tools, parse_tools


def test_parse_tools_accepts_colon_and_equals() -> None:
    assert parse_tools(["pointer:instrument", "ref=reference", "drill"]) == [
        ("pointer", "instrument"), ("ref", "reference"), ("drill", "instrument")]


def test_default_tools() -> None:
    assert default_tools(2) == [("pointer", "instrument"), ("patient_reference", "reference")]
    assert [kind for _, kind in default_tools(5)] == ["instrument", "reference", "occluded",
                                                      "instrument", "instrument"]
    with pytest.raises(DicomOrError, match="tool_count"):
        default_tools(0)


@pytest.mark.parametrize("bad", [["1tool"], ["a:laser"], ["a", "a"], [], ["a/b"]])
def test_bad_tool_specs_name_the_parameter(bad: list[str]) -> None:
    with pytest.raises(DicomOrError, match="tools"):
        parse_tools(bad)


def test_poses_are_unit_quaternions_in_the_working_volume() -> None:
    sim = TrackerSimulator(default_tools(3))
    for t in np.linspace(0, 20, 400):
        for pose in sim.poses(float(t)):
            assert np.linalg.norm(pose.orientation) == pytest.approx(1.0)
            x, y, z = pose.position
            assert abs(x) < 0.2 and abs(y) < 0.2 and 1.0 < z < 1.3


def test_instrument_moves_smoothly_reference_stays() -> None:
    sim = TrackerSimulator(default_tools(2))
    times = np.arange(0, 10, 0.001)
    tip = np.array([sim.pose("pointer", "instrument", float(t)).position for t in times])
    ref = np.array([sim.pose("patient_reference", "reference", float(t)).position
                    for t in times])
    steps = np.linalg.norm(np.diff(tip, axis=0), axis=1)
    assert steps.max() < 0.002                      # < 2 m/s at 1 kHz: no jumps
    assert np.ptp(tip, axis=0).max() > 0.05         # but it does travel centimetres
    assert np.std(ref, axis=0).max() < 3e-4         # reference: sub-millimetre jitter


def test_occluded_tool_disappears_one_second_in_six_and_holds_its_pose() -> None:
    sim = TrackerSimulator([("drill", "occluded")])
    times = np.arange(0, 60, 0.01)
    poses = [sim.pose("drill", "occluded", float(t)) for t in times]
    hidden = np.array([not p.visible for p in poses])
    assert hidden.mean() == pytest.approx(1 / 6, abs=0.02)
    first_hidden = int(np.argmax(hidden))
    held = poses[first_hidden + 10]
    assert not held.visible and held.quality == 0.0
    assert held.position == poses[first_hidden + 20].position


def test_deterministic_for_a_seed() -> None:
    a = TrackerSimulator(default_tools(3), seed=4).poses(1.234)
    b = TrackerSimulator(default_tools(3), seed=4).poses(1.234)
    assert a == b
