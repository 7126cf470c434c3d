"""The declarative parameter tables: every schema well-formed, every shipped parameter file
key in its node's schema, and load_parameters' declaring, typing and validation."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import rclpy
import yaml
from dicom_or_test_common.ros import ros_context
from rclpy.parameter import Parameter

from dicom_or_core.model import context as ctx
from dicom_or_core.model.errors import DicomOrError
from dicom_or_ros import params as P

ROOT = Path(__file__).resolve().parents[3]
SCHEMAS = sorted(ROOT.glob("src/*/*/*_parameters.yaml"))
# Each shipped parameter file and the schema files its executable loads (in order).
CONFIG_SCHEMAS = {
    "recorder.yaml": ["dicom_or_recorder/recorder_parameters.yaml"],
    "dicom_bridge.yaml": ["dicom_or_bridge/bridge_parameters.yaml"],
    "session_context.yaml": ["dicom_or_bridge/session_context_parameters.yaml"],
    "foxglove.yaml": ["dicom_or_bridge/foxglove_parameters.yaml"],
    "igtl_server.yaml": ["dicom_or_bridge/igtl_server_parameters.yaml"],
    "replay.yaml": ["dicom_or_drivers/replay_parameters.yaml"],
    "or_view.yaml": ["dicom_or_view/view_parameters.yaml"],
    "video_driver.yaml": ["dicom_or_drivers/driver_parameters.yaml",
                          "dicom_or_drivers/video_parameters.yaml"],
    "tracker_driver.yaml": ["dicom_or_drivers/driver_parameters.yaml",
                            "dicom_or_drivers/tracker_parameters.yaml"],
    "waveform_driver.yaml": ["dicom_or_drivers/driver_parameters.yaml",
                             "dicom_or_drivers/waveform_parameters.yaml"],
}


def _schema(relative: str) -> tuple[P.ParameterSpec, ...]:
    package = relative.split("/")[0]
    return P.load_schema(ROOT / "src" / package / relative)[1]


def _keys(tree: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in tree.items():
        if isinstance(value, dict):
            keys += _keys(value, f"{prefix}{key}.")
        else:
            keys.append(prefix + key)
    return keys


def test_every_schema_is_well_formed_and_every_node_has_one():
    assert {p.name for p in SCHEMAS} >= {
        "recorder_parameters.yaml", "bridge_parameters.yaml",
        "session_context_parameters.yaml", "driver_parameters.yaml",
        "video_parameters.yaml", "tracker_parameters.yaml", "waveform_parameters.yaml",
        "status_parameters.yaml"}
    for path in SCHEMAS:
        _, specs = P.load_schema(path)
        names = [s.name for s in specs]
        assert len(names) == len(set(names)), path
        assert all(s.read_only for s in specs), path  # nodes read parameters once


@pytest.mark.parametrize("config", sorted(CONFIG_SCHEMAS))
def test_every_shipped_parameter_is_in_the_node_schema(config):
    document = yaml.safe_load((ROOT / "config" / config).read_text())
    keys = _keys(document["/**"]["ros__parameters"])
    specs = [s for schema in CONFIG_SCHEMAS[config] for s in _schema(schema)]
    plain = {s.name for s in specs if not s.map_key}
    mapped = {s.name: s.map_key for s in specs if s.map_key}
    for key in keys:
        head, _, tail = key.partition(".")
        assert key in plain or (tail in mapped and head in document["/**"][
            "ros__parameters"].get(mapped[tail], [head])), f"{config}: {key} not in schema"


def test_session_parameters_are_the_context_fields():
    """patient.* / study.* are exactly the Patient / Study fields the node builds."""
    names = {s.name for s in _schema("dicom_or_bridge/session_context_parameters.yaml")}
    for section, cls in (("patient", ctx.Patient), ("study", ctx.Study)):
        assert {n.partition(".")[2] for n in names if n.startswith(section + ".")} == \
            {f.name for f in dataclasses.fields(cls)}


def test_every_parameter_file_has_its_schemas():
    shipped = {p.name for p in (ROOT / "config").glob("*.yaml")
               if "ros__parameters" in p.read_text()}
    assert shipped == set(CONFIG_SCHEMAS)


BAD_SCHEMAS = [
    ({"x": {"type": "float", "default_value": 1.0, "description": "d"}}, "type must be"),
    ({"x": {"type": "int", "default_value": "1", "description": "d"}}, "not a int"),
    ({"x": {"type": "int", "default_value": 1}}, "needs a description"),
    ({"x": {"type": "int", "description": "d"}}, "needs a default_value"),
    ({"x": {"type": "int", "default_value": 1, "description": "d", "max": 3}},
     "unknown schema keys"),
    ({"x": {"type": "int", "default_value": 1, "description": "d",
            "validation": {"bounded<>": [0, 2]}}}, "unknown validator"),
    ({"x": {"type": "int", "default_value": 5, "description": "d",
            "validation": {"bounds<>": [0, 2]}}}, "fails its own validation"),
    ({"__map_nothing": {"y": {"type": "int", "default_value": 1, "description": "d"}}},
     "names no parameter"),
]


@pytest.mark.parametrize("tree,words", BAD_SCHEMAS)
def test_a_malformed_schema_is_an_error_naming_the_parameter(tmp_path, tree, words):
    path = tmp_path / "bad_parameters.yaml"
    path.write_text(yaml.safe_dump({"node": tree}))
    with pytest.raises(DicomOrError, match=words):
        P.load_schema(path)


SCHEMA = {"demo": {
    "rate_hz": {"type": "double", "default_value": 30.0, "description": "rate",
                "read_only": True, "validation": {"bounds<>": [1.0, 240.0]}},
    "mode": {"type": "string", "default_value": "auto", "description": "mode",
             "read_only": True, "validation": {"one_of<>": [["auto", "fast"]]}},
    "count": {"type": "int", "default_value": 0, "description": "count", "read_only": True,
              "validation": {"gt_eq<>": [0]}},
    "names": {"type": "string_array", "default_value": [], "description": "names",
              "read_only": True, "validation": {"dicom_or_ros.params.no_empty_entries": []}},
    "model": {"type": "string", "default_value": "", "description": "model",
              "read_only": True},
    "igtl": {"port": {"type": "int", "default_value": 18944, "description": "port",
                      "read_only": True, "validation": {"bounds<>": [1, 65535]}}},
    "groups": {"type": "string_array", "default_value": ["a"], "description": "groups",
               "read_only": True},
    "__map_groups": {"hz": {"type": "double", "default_value": 1.0, "description": "hz",
                            "read_only": True, "validation": {"gt<>": [0.0]}}},
}}


@pytest.fixture
def schema_package(tmp_path, monkeypatch):
    (tmp_path / "demo_pkg").mkdir()
    (tmp_path / "demo_pkg" / "__init__.py").write_text("")
    (tmp_path / "demo_pkg" / "demo_parameters.yaml").write_text(yaml.safe_dump(SCHEMA))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "demo_pkg"


def _load(ctx, package, defaults=None, **overrides):
    node = rclpy.create_node("demo", context=ctx, parameter_overrides=[
        Parameter(name, value=value) for name, value in overrides.items()])
    return node, P.load_parameters(node, package, "demo_parameters.yaml", defaults=defaults)


def test_load_declares_typed_frozen_values_with_descriptors(schema_package):
    with ros_context() as ctx:
        node, p = _load(ctx, schema_package, {"model": lambda v: f"{v['mode']} model"},
                        rate_hz=60, groups=["a", "b"], **{"b.hz": 2})
        assert p.rate_hz == 60.0 and isinstance(p.rate_hz, float)
        assert node.get_parameter("rate_hz").type_ == Parameter.Type.DOUBLE
        assert p.igtl.port == 18944 and p.names == [] and p.model == "auto model"
        assert (p.a.hz, p.b.hz) == (1.0, 2.0)
        with pytest.raises(dataclasses.FrozenInstanceError):
            p.rate_hz = 1.0
        described = node.describe_parameter("rate_hz")
        assert described.read_only and "rate [double]" == described.description
        fp = described.floating_point_range[0]
        assert (fp.from_value, fp.to_value) == (1.0, 240.0)
        count = node.describe_parameter("count").integer_range[0]
        assert count.from_value == 0 and count.to_value == 2**63 - 1
        assert "one_of<>" in node.describe_parameter("mode").additional_constraints
        result, = node.set_parameters([Parameter("mode", value="fast")])
        assert not result.successful and p.mode == node.get_parameter("mode").value
        node.destroy_node()


@pytest.mark.parametrize("overrides,words", [
    ({"rate_hz": 0.5}, "rate_hz: must be within 1..240"),
    ({"rate_hz": "fast"}, "rate_hz: must be of type double"),
    ({"mode": "slow"}, "mode: must be one of auto, fast"),
    ({"count": -1}, "count: must be at least 0"),
    ({"names": ["a", " "]}, "names: entries must not be empty"),
    ({"igtl.port": 0}, "igtl.port: must be within 1..65535"),
    ({"a.hz": 0.0}, "a.hz: must be greater than 0"),
])
def test_an_invalid_value_is_an_error_naming_the_parameter(schema_package, overrides, words):
    with ros_context() as ctx:
        with pytest.raises(DicomOrError) as info:
            _load(ctx, schema_package, **overrides)
        assert words in str(info.value)


def test_project_validators():
    assert P.dicom_vr("DICOM_OR", "AE") is None
    assert "AE" in P.dicom_vr("A" * 17, "AE") or P.dicom_vr("A" * 17, "AE")
    assert P.dicom_vr("", "AE", True) == "must be a non-empty AE"
    assert P.each_dicom_vr(["OK", ""], "AE").startswith("entry ''")
    assert P.topic_names(["/a", "b"]) and P.topic_names(["/a"]) is None
    assert P.zero_or_bounds(0, 4096, 2**24) is None
    assert P.zero_or_bounds(100, 4096, 2**24) == "must be 0 or within 4096..16777216"
    assert math.isinf(P._range(P.ParameterSpec(
        "x", "double", 1.0, "d", True, (("gt_eq<>", (0.0,)),)))[
        "floating_point_range"][0].to_value)
