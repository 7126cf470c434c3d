"""The launch files and the pip launcher describe the same graph, and graphs resolve."""

import importlib.util
import py_compile
import sys
import types
from pathlib import Path

import pytest
import yaml

from dicom_or_bringup import graph, launcher
from dicom_or_core.model.errors import DicomOrError

LAUNCH_DIR = Path(__file__).resolve().parents[3] / "launch"
LAUNCH_FILES = sorted(LAUNCH_DIR.glob("*.launch.py"))


def test_every_launch_file_compiles():
    assert LAUNCH_FILES, "no launch files found"
    for path in LAUNCH_FILES:
        py_compile.compile(str(path), doraise=True)


def test_every_graph_has_a_launch_file_and_resolves_with_defaults():
    graphs = sorted(p.name.removesuffix(".graph.yaml") for p in LAUNCH_DIR.glob("*.graph.yaml"))
    assert {p.name.removesuffix(".launch.py") for p in LAUNCH_FILES} == set(graphs)
    for name in graphs:
        nodes = graph.resolve(name)
        assert nodes, name
        for node in nodes:
            for params in node.parameter_files:
                data = yaml.safe_load(Path(params).read_text())
                assert "/**" in data and "ros__parameters" in data["/**"], params


def test_or_demo_has_every_node_and_conditions_switch_them_off():
    names = {n.fully_qualified_name for n in graph.resolve("or_demo")}
    assert names == {"/or/endoscope", "/or/tracker", "/or/patient_monitor",
                     "/or/session_context", "/or/dicom_bridge", "/or/recorder"}
    fewer = {n.name for n in graph.resolve("or_demo", {"use_recorder": "false",
                                                        "use_tracker": "no"})}
    assert "recorder" not in fewer and "tracker" not in fewer and "endoscope" in fewer


def test_arguments_substitute_with_yaml_types():
    bridge = {n.name: n for n in graph.resolve("or_demo", {"bridge_port": "4242",
                                                            "bridge_ae": "OR3"})}
    assert bridge["dicom_bridge"].overrides["port"] == 4242
    assert bridge["dicom_bridge"].overrides["ae_title"] == "OR3"
    assert bridge["endoscope"].overrides["fps"] == 30.0


@pytest.mark.parametrize("given,field", [
    ({"no_such_argument": "1"}, "no_such_argument"),
    ({"use_recorder": "maybe"}, "include[4].if"),
])
def test_bad_launch_arguments_are_named(given, field):
    with pytest.raises(DicomOrError) as info:
        graph.resolve("or_demo", given)
    assert field in str(info.value)


def test_unknown_graph_lists_the_known_ones():
    with pytest.raises(DicomOrError, match="known: .*or_demo"):
        graph.resolve("nope")


# --- The launch files, run against a minimal stand-in of the launch API -------------------
# launch / launch_ros cannot be installed from PyPI; these stand-ins record what the launch
# file asks for, with the real classes' keyword names, so the comparison below is exact.

class _Recorder:
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


def _install_launch_stand_ins(monkeypatch):
    modules = {name: types.ModuleType(name) for name in
               ("launch", "launch.actions", "launch_ros", "launch_ros.actions")}
    modules["launch"].LaunchDescription = lambda actions: list(actions)
    modules["launch.actions"].DeclareLaunchArgument = type("DeclareLaunchArgument",
                                                           (_Recorder,), {})
    modules["launch.actions"].OpaqueFunction = type("OpaqueFunction", (_Recorder,), {})
    modules["launch_ros.actions"].Node = type("Node", (_Recorder,), {})
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.delitem(sys.modules, "dicom_or_bringup.launch_support", raising=False)


def _run_launch_file(path, given):
    spec = importlib.util.spec_from_file_location(path.stem.replace(".", "_"), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    actions = module.generate_launch_description()
    declared = {a.args[0]: a.kwargs["default_value"] for a in actions
                if type(a).__name__ == "DeclareLaunchArgument"}
    opaque = [a for a in actions if type(a).__name__ == "OpaqueFunction"]
    context = types.SimpleNamespace(launch_configurations={**declared, **given})
    return declared, opaque[0].kwargs["function"](context, *opaque[0].kwargs["args"])


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_file_starts_the_same_nodes_as_dicom_or_launch(monkeypatch, tmp_path, path):
    _install_launch_stand_ins(monkeypatch)
    name = path.name.removesuffix(".launch.py")
    given = {"output_dir": "/data/or3"} if "output_dir" in {
        a.name for a in graph.arguments(name)} else {}
    declared, nodes = _run_launch_file(path, given)
    assert declared == {a.name: a.default for a in graph.arguments(name)}
    expected = graph.resolve(name, given)
    assert len(nodes) == len(expected)
    for node, spec in zip(nodes, expected, strict=True):
        kw = node.kwargs
        assert (kw["package"], kw["executable"], kw["name"], kw["namespace"]) == \
            (spec.package, spec.executable, spec.name, spec.namespace)
        files = [p for p in kw["parameters"] if isinstance(p, str)]
        overrides = [p for p in kw["parameters"] if isinstance(p, dict)]
        assert files == spec.parameter_files
        assert (overrides[0] if overrides else {}) == spec.overrides
        assert dict(kw["remappings"]) == spec.remappings
        assert kw["additional_env"] == spec.environment
        # ... and the pip launcher passes exactly these to the same node.
        overrides_file = launcher.write_overrides(spec, tmp_path)
        args = launcher.ros_args(spec, overrides_file)
        assert args[:5] == ["--ros-args", "-r", f"__node:={spec.name}", "-r",
                            f"__ns:={spec.namespace}"]
        assert [args[i + 1] for i, a in enumerate(args) if a == "--params-file"] == \
            files + ([str(overrides_file)] if overrides_file else [])
        if overrides_file:
            written = yaml.safe_load(overrides_file.read_text())
            assert written == {spec.fully_qualified_name: {"ros__parameters": spec.overrides}}


def test_launch_arguments_parse_like_ros2_launch():
    assert launcher.parse_launch_arguments(["a:=1", "b:=x:=y"]) == {"a": "1", "b": "x:=y"}
    with pytest.raises(DicomOrError, match="name:=value"):
        launcher.parse_launch_arguments(["a=1"])


def test_rviz_config_shows_the_demo_topics_in_the_tracker_frame():
    config = yaml.safe_load((LAUNCH_DIR.parent / "config" / "or_demo.rviz").read_text())
    manager = config["Visualization Manager"]
    assert manager["Global Options"]["Fixed Frame"] == "tracker"
    topics = {d["Class"]: d["Topic"]["Value"] for d in manager["Displays"] if "Topic" in d}
    assert topics["rviz_default_plugins/Image"] == "/or/endoscope/image_raw"
    assert topics["rviz_default_plugins/MarkerArray"] == "/or/tracker/markers"
    # the image display must not ask for RELIABLE from a BEST_EFFORT publisher
    image = next(d for d in manager["Displays"] if d["Class"].endswith("/Image"))
    assert image["Topic"]["Reliability Policy"] == "Best Effort"
