"""The launch files are standard ROS 2 launch YAML in the subset dicom_or_launch reads, and
they resolve to the nodes, parameters and environment both runners must start."""

import re
from pathlib import Path

import pytest
import yaml

from dicom_or_bringup import graph, launcher
from dicom_or_core.model.errors import DicomOrError

ROOT = Path(__file__).resolve().parents[3]
LAUNCH_DIR = ROOT / "launch"
LAUNCH_FILES = sorted(LAUNCH_DIR.glob(f"*{graph.SUFFIX}"))
NAMES = [p.name.removesuffix(graph.SUFFIX) for p in LAUNCH_FILES]
SHARE = "$(find-pkg-share dicom_or_bringup)/launch/"


def test_launch_folder_holds_only_launch_yaml_and_setup_installs_it():
    assert LAUNCH_FILES, "no launch files found"
    others = sorted(p.name for p in LAUNCH_DIR.iterdir() if not p.name.endswith(graph.SUFFIX))
    assert others == [], "no .launch.py is needed: the YAML frontend says it all"
    setup = (ROOT / "src" / "dicom_or_bringup" / "setup.py").read_text()
    assert "'launch', '*.launch.yaml'" in setup


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_file_is_in_the_supported_subset(path):
    """Tags, attributes, attribute YAML types, substitutions, includes and arg-before-use:
    graph.check is the subset's schema; every file must pass it."""
    graph.check(path)
    text = path.read_text()
    data = yaml.safe_load(text)
    assert list(data) == ["launch"]
    for entity in data["launch"]:
        (tag, attrs), = entity.items()
        if tag == "include":
            # found by ros2 launch in the installed share folder, never by relative path
            assert attrs["file"].startswith(SHARE), attrs["file"]
        if tag == "arg":
            assert attrs.get("description"), attrs["name"]
            assert isinstance(attrs.get("default"), str), attrs["name"]
        if tag == "node":
            assert attrs.get("output") == "screen", attrs["name"]
            assert attrs["param"][0]["from"].startswith(
                "$(find-pkg-share dicom_or_core)/config/"), attrs["name"]


def test_or_demo_includes_every_other_launch_file():
    text = (LAUNCH_DIR / "or_demo.launch.yaml").read_text()
    included = set(re.findall(re.escape(SHARE) + r"(\w+)\.launch\.yaml", text))
    assert included == set(NAMES) - {"or_demo"}


# set_env -> the condition that leaves the variable unset by default (an empty
# FASTDDS_DEFAULT_PROFILES_FILE would switch the project's profile off, an empty
# ROS_DISCOVERY_SERVER is not multicast discovery for every Fast DDS version).
SET_ENV_CONDITIONS = {
    "FASTDDS_DEFAULT_PROFILES_FILE": "$(equals x$(var fastdds_profile) x)",
    "DICOM_OR_DDS_TRANSPORT": "$(equals $(var dds_transport) shm)",
    "ROS_DISCOVERY_SERVER": "$(equals x$(var discovery_server) x)",
}


def test_every_set_env_is_conditional_and_every_file_has_the_transport_arguments():
    for path in LAUNCH_FILES:
        entities = yaml.safe_load(path.read_text())["launch"]
        names = set()
        for entity in entities:
            if "set_env" in entity:
                names.add(entity["set_env"]["name"])
                assert entity["set_env"]["unless"] == \
                    SET_ENV_CONDITIONS[entity["set_env"]["name"]], path.name
        if any("node" in entity for entity in entities):
            assert names == set(SET_ENV_CONDITIONS), path.name


def test_transport_and_discovery_server_reach_every_node_only_when_given():
    nodes = graph.resolve("or_demo", {"dds_transport": "udp",
                                      "discovery_server": "10.0.0.2:11811"})
    assert all(n.environment["DICOM_OR_DDS_TRANSPORT"] == "udp" and
               n.environment["ROS_DISCOVERY_SERVER"] == "10.0.0.2:11811" for n in nodes)
    # The nodes that list the whole graph are SUPER_CLIENTs of the server.
    assert {n.name for n in nodes if n.environment.get("ROS_SUPER_CLIENT") == "TRUE"} == \
        {"dicom_bridge", "recorder", "or_view"}
    assert all(set(n.environment) <= {"ROS_SUPER_CLIENT"} for n in graph.resolve("or_demo"))


def test_host_roles_devices_on_one_host_bridge_and_recorder_on_another():
    devices = {n.name for n in graph.resolve("or_demo", {
        "use_bridge": "false", "use_recorder": "false", "use_view": "false"})}
    assert devices == {"endoscope", "tracker", "patient_monitor"}
    archive = {n.name for n in graph.resolve("or_demo", {
        "use_endoscope": "false", "use_tracker": "false", "use_monitor": "false",
        "use_view": "false"})}
    assert archive == {"session_context", "dicom_bridge", "recorder"}


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_every_parameter_a_launch_file_sets_is_in_the_nodes_config(path):
    """A parameter renamed in a node (and its config file) but not here is caught."""
    for entity in yaml.safe_load(path.read_text())["launch"]:
        if "node" not in entity:
            continue
        params = entity["node"]["param"]
        config = params[0]["from"].rsplit("/", 1)[1]
        known = yaml.safe_load((ROOT / "config" / config).read_text())["/**"]["ros__parameters"]
        for param in params[1:]:
            assert param["name"] in known, f"{path.name}: {param['name']} not in {config}"


def test_every_launch_file_resolves_with_defaults_to_installed_nodes():
    for name in NAMES:
        nodes = graph.resolve(name)
        assert nodes, name
        for node in nodes:
            assert launcher.executable_path(node).is_file()
            for params in node.parameter_files:
                data = yaml.safe_load(Path(params).read_text())
                assert "/**" in data and "ros__parameters" in data["/**"], params


def test_or_demo_has_every_node_and_conditions_switch_them_off():
    names = {n.fully_qualified_name for n in graph.resolve("or_demo")}
    assert names == {"/or/endoscope", "/or/tracker", "/or/patient_monitor",
                     "/or/session_context", "/or/dicom_bridge", "/or/recorder",
                     "/or/or_view"}
    # launch's rule: true/1, false/0, any case
    fewer = {n.name for n in graph.resolve("or_demo", {"use_recorder": "false",
                                                        "use_tracker": "0",
                                                        "use_monitor": "False",
                                                        "use_view": "false"})}
    assert fewer == {"endoscope", "session_context", "dicom_bridge"}


def test_parameters_get_the_types_ros2_launch_gives_them():
    nodes = {n.name: n for n in graph.resolve("or_demo", {
        "bridge_port": "4242", "bridge_ae": "1234", "video_fps": "25",
        "monitor_groups": "[ecg12]", "pacs_port": "104"})}
    assert nodes["dicom_bridge"].overrides == {
        "host": "127.0.0.1", "port": 4242, "ae_title": "1234", "dicomweb_port": 8080,
        "archive_dir": "recordings"}
    assert nodes["endoscope"].overrides == {
        "source": "pattern", "width": 1920, "height": 1080, "fps": 25.0,
        "video_transport": "raw"}
    assert isinstance(nodes["endoscope"].overrides["fps"], float)
    assert nodes["patient_monitor"].overrides == {"groups": ["ecg12"]}
    assert nodes["recorder"].overrides["pacs_port"] == 104


@pytest.mark.parametrize("given,message", [
    ({"no_such_argument": "1"}, "no_such_argument: is not a launch argument"),
    ({"use_recorder": "maybe"}, r"or_demo.launch.yaml:\d+: condition must be true"),
    ({"bridge_port": "eleven"}, r"bridge.launch.yaml:\d+: param port: 'eleven' is no int"),
    ({"video_width": "640.0"}, r"endoscope.launch.yaml:\d+: param width"),
    ({"monitor_groups": "[ecg, 1]"}, r"patient_monitor.launch.yaml:\d+: param groups"),
])
def test_bad_launch_arguments_are_named_with_file_and_line(given, message):
    with pytest.raises(DicomOrError, match=message):
        graph.resolve("or_demo", given)


def test_fastdds_profile_is_set_only_when_given():
    assert all("FASTDDS_DEFAULT_PROFILES_FILE" not in n.environment
               for n in graph.resolve("or_demo"))
    nodes = graph.resolve("or_demo", {"fastdds_profile": "/etc/or/profile.xml"})
    assert {n.environment["FASTDDS_DEFAULT_PROFILES_FILE"] for n in nodes} == \
        {"/etc/or/profile.xml"}


def test_recorder_has_longer_stop_grace_than_launch_ros_default():
    nodes = {n.name: n for n in graph.resolve("or_demo")}
    assert (nodes["recorder"].sigterm_timeout, nodes["recorder"].sigkill_timeout) == \
        (10.0, 10.0)
    assert nodes["tracker"].stop_grace_s == \
        graph.DEFAULT_SIGTERM_TIMEOUT_S + graph.DEFAULT_SIGKILL_TIMEOUT_S


def test_show_args_lists_included_arguments_in_ros2_launch_layout(capsys):
    assert launcher.main(["--show-args", "or_demo"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Arguments (pass arguments as '<name>:=<value>'):\n")
    listed = re.findall(r"^    '(\w+)':$", out, flags=re.M)
    for name in ("use_recorder", "video_fps", "bridge_port", "pacs_port", "monitor_groups"):
        assert name in listed
    assert len(listed) == len(set(listed)), "an argument declared twice is listed once"
    assert "        TCP port of the bridge SCP (0 = any free port)\n" \
           "        (default: '11112')" in out


def test_pip_runner_passes_parameters_in_launch_order(tmp_path):
    spec = graph.NodeSpec(package="p", executable="e", name="n", namespace="/or",
                          parameters=["/a.yaml", {"x": 1}, {"y": "s"}, "/b.yaml", {"x": 2}],
                          remappings=[("image", "/or/endoscope/image_raw")])
    files = launcher.parameter_files(spec, tmp_path)
    assert files[0] == "/a.yaml" and files[2] == "/b.yaml" and len(files) == 4
    assert yaml.safe_load(Path(files[1]).read_text()) == {
        "/or/n": {"ros__parameters": {"x": 1, "y": "s"}}}
    assert yaml.safe_load(Path(files[3]).read_text()) == {"/or/n": {"ros__parameters": {"x": 2}}}
    assert launcher.ros_args(spec, files) == [
        "--ros-args", "-r", "__node:=n", "-r", "__ns:=/or",
        "--params-file", files[0], "--params-file", files[1], "--params-file", files[2],
        "--params-file", files[3], "-r", "image:=/or/endoscope/image_raw"]


# --- What the subset refuses, each with file and line -------------------------------------

GOOD_NODE = """\
  - node:
      pkg: dicom_or_drivers
      exec: tracker_driver
      name: tracker
      param:
        - from: $(find-pkg-share dicom_or_core)/config/tracker_driver.yaml
"""


@pytest.mark.parametrize("body,line,message", [
    ("  - group: {scoped: true}\n", 2, "tag 'group' is not in the launch subset"),
    ("  - arg: {name: a, default: x, choices: [x]}\n", 2, "unknown attribute 'choices'"),
    ("  - arg: {name: a, default: 11112}\n", 2, "arg.default must be a YAML string"),
    ("  - arg: {name: a, default: x}\n  - set_env: {name: A, value: $(env HOME)}\n", 3,
     r"substitution \$\(env\) is not in the launch subset"),
    ("  - set_env: {name: A, value: $(var a)}\n  - arg: {name: a, default: x}\n", 2,
     r"\$\(var a\) before the arg"),
    ("  - arg: {name: a, default: x}\n  - set_env: {name: A, value: x, "
     "unless: \"$(equals $(var a) '')\"}\n", 3, "empty quoted argument"),
    ("  - include: {file: $(find-pkg-share dicom_or_bringup)/launch/nope.launch.yaml}\n", 2,
     "included file .*nope.launch.yaml does not exist"),
    ("  - arg: {name: f, default: x}\n  - include: {file: $(var f)}\n", 3,
     "may not depend on a launch argument"),
    (GOOD_NODE + "      sigterm_timeout: \"10\"\n", 8, "must be an unquoted YAML float"),
    (GOOD_NODE + "      sigkill_timeout: 10\n", 8, "must be an unquoted YAML float"),
    (GOOD_NODE + "      respawn: true\n", 8, "unknown attribute 'respawn'"),
    (GOOD_NODE + "        - {name: rate_hz, value: 1, typ: int}\n", 8,
     "unknown attribute 'typ'"),
    (GOOD_NODE + "        - {name: rate_hz, value: $(var r), type: double}\n", 8,
     "param.type must be one of"),
    (GOOD_NODE + "      remap: [{from: a}]\n", 8, "'to' is required"),
    ("  - node: {pkg: p, name: n}\n", 2, "'exec' is required"),
    ("  - arg: {name: a, default: x}\n  - let: {name: b, value: \"$(var a\"}\n", 3,
     "unterminated substitution"),
])
def test_unsupported_syntax_is_an_error_naming_file_and_line(tmp_path, body, line, message):
    path = tmp_path / "bad.launch.yaml"
    path.write_text("launch:\n" + body)
    with pytest.raises(DicomOrError, match=message) as info:
        graph.check(path)
    assert str(info.value).startswith(f"{path}:{line}:"), str(info.value)


def test_a_file_that_is_not_a_launch_list_is_named(tmp_path):
    path = tmp_path / "bad.launch.yaml"
    path.write_text("nodes: []\n")
    with pytest.raises(DicomOrError, match=r"bad.launch.yaml:1: .*'launch:' list"):
        graph.check(path)
    path.write_text("launch:\n  - arg: {name: a\n")
    with pytest.raises(DicomOrError, match=r"bad.launch.yaml:3: is not valid YAML"):
        graph.check(path)


def test_substitutions_follow_launch(tmp_path):
    path = tmp_path / "subs.launch.yaml"
    path.write_text("""\
launch:
  - arg: {name: a, default: "1"}
  - let: {name: b, value: "x$(var a)y"}
  - set_env: {name: T1, value: "$(equals $(var a) true)"}
  - set_env: {name: T2, value: "$(equals $(var a) 1.0)"}
  - set_env: {name: T3, value: "$(equals 'a b' 'a b')"}
  - set_env: {name: B, value: $(var b), if: $(equals $(var b) x1y)}
  - set_env: {name: C, value: c, unless: $(var a)}
""" + GOOD_NODE)
    (node,) = graph.resolve(str(path))
    assert node.environment == {"T1": "true", "T2": "true", "T3": "true", "B": "x1y"}
    assert node.namespace == "/"


def test_unknown_launch_file_lists_the_known_ones():
    with pytest.raises(DicomOrError, match="known: .*or_demo"):
        graph.resolve("nope")


def test_launch_arguments_parse_like_ros2_launch():
    assert launcher.parse_launch_arguments(["a:=1", "b:=x:=y"]) == {"a": "1", "b": "x:=y"}
    with pytest.raises(DicomOrError, match="name:=value"):
        launcher.parse_launch_arguments(["a=1"])


def test_rviz_config_shows_the_demo_topics_in_the_tracker_frame():
    config = yaml.safe_load((ROOT / "config" / "or_demo.rviz").read_text())
    manager = config["Visualization Manager"]
    assert manager["Global Options"]["Fixed Frame"] == "tracker"
    topics = {d["Class"]: d["Topic"]["Value"] for d in manager["Displays"] if "Topic" in d}
    assert topics["rviz_default_plugins/Image"] == "/or/endoscope/image_raw"
    assert topics["rviz_default_plugins/MarkerArray"] == "/or/tracker/markers"
    # the image display must not ask for RELIABLE from a BEST_EFFORT publisher
    image = next(d for d in manager["Displays"] if d["Class"].endswith("/Image"))
    assert image["Topic"]["Reliability Policy"] == "Best Effort"


@pytest.mark.parametrize("entry,message", [
    ("[{name: X}]", r"node.env: 'value' is required"),
    ("[{name: X, value: Y, if: 'true'}]", r"node.env: unknown attribute 'if'"),
    ("X=Y", r"node.env must be a list of mappings"),
])
def test_a_node_env_entry_is_a_name_and_a_value(tmp_path, entry, message):
    """launch's node ``env`` (ExecuteProcess additional_env): name/value pairs only."""
    path = tmp_path / f"x{graph.SUFFIX}"
    path.write_text(f"launch:\n  - node: {{pkg: a, exec: b, name: c, env: {entry}}}\n")
    with pytest.raises(DicomOrError, match=message):
        graph.check(path)
