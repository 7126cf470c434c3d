"""Every package.xml declares what its package imports, and nothing it does not use.

rosdep installs a released package's dependencies from its package.xml alone, so an import
missing there is a node that crashes on a clean machine, and a stale entry drags in a
package nobody needs. For each package under src/ this test reads its Python sources with
``ast`` and holds them against its manifest:

* installed modules (``src/<pkg>/<pkg>/``, plus the launch files bringup installs) may
  import only what is an ``exec_depend`` or ``depend``;
* tests (``src/<pkg>/test/``) may import that, or a ``test_depend``; the third-party
  imports of the test support modules they use (test/support) count as theirs;
* every ``exec_depend`` / ``depend`` is imported by the installed modules (bringup's launch
  files also use the packages whose nodes they start or whose share they read, and the
  launch frontend), and every ``test_depend`` by the
  tests, except the few runtime-only dependencies in :data:`RUNTIME_ONLY`;
* an interface package (dicom_or_msgs) depends on every package its msg/srv fields name.

Import names map to rosdep keys through one table, :data:`ROSDEP_KEYS`; an import the
table does not know fails with a hint to add it, so a new third-party import cannot slip
through undeclared.
"""

from __future__ import annotations

import ast
import re
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"

# Top-level import name -> rosdep key, for every third-party import in the workspace.
ROSDEP_KEYS = {
    "PIL": "python3-pil",
    "aiohttp": "python3-aiohttp",
    "av": "python3-av",
    "cv2": "python3-opencv",
    "numpy": "python3-numpy",
    "pydicom": "python3-pydicom",
    "pynetdicom": "python3-pynetdicom",
    "pytest": "python3-pytest",
    "requests": "python3-requests",
    "scipy": "python3-scipy",
    "yaml": "python3-yaml",
    # Packaged by no distribution rosdep targets: rosdep's pip keys (installed with pip).
    "dicomweb_client": "python3-dicomweb-client-pip",
    "foxglove": "python3-foxglove-sdk-pip",
    "highdicom": "python3-highdicom-pip",
    "mcap": "python3-mcap-pip",
    "mcap_ros2": "python3-mcap-ros2-support-pip",
    "pyigtl": "python3-pyigtl-pip",
    "rosbags": "python3-rosbags-pip",
    "wfdb": "python3-wfdb-pip",
}
# ROS 2 packages imported as Python modules: the rosdep key is the package name.
ROS_PACKAGES = {
    "ament_index_python", "builtin_interfaces", "diagnostic_msgs", "geometry_msgs", "launch",
    "launch_ros", "rcl_interfaces", "rclpy", "rosgraph_msgs", "sensor_msgs", "std_msgs",
    "std_srvs", "visualization_msgs",
}
# Test support on pytest's path (pytest.ini), never installed: tests only.
TEST_SUPPORT = {"dicom_or_test_common"}
SUPPORT_DIR = ROOT / "test" / "support" / "dicom_or_test_common"
# Declared but never imported, on purpose: package -> {key: why}.
RUNTIME_ONLY = {
    "dicom_or_bringup": {
        "rviz2": "the demo's viewer, started by `rviz2 -d` with the installed config",
    },
    "dicom_or_msgs": {
        "rosidl_default_runtime": "the generated type support's runtime libraries",
    },
}
WORKSPACE = {p.parent.name for p in SRC.glob("*/package.xml")}
_INTERFACE_TYPE = re.compile(r"^\s*([a-z][a-z0-9_]*)/[A-Z]\w*", re.MULTILINE)


@dataclass
class Manifest:
    """What one package.xml declares, by dependency kind."""

    name: str
    build_type: str
    run: set[str] = field(default_factory=set)    # exec_depend + depend
    test: set[str] = field(default_factory=set)   # test_depend


def read_manifest(package_xml: Path) -> Manifest:
    """The run and test dependencies package.xml declares (``depend`` counts as both)."""
    root = ET.parse(package_xml).getroot()
    manifest = Manifest(name=root.findtext("name", "").strip(),
                        build_type=root.findtext("export/build_type", "").strip())
    for tag, kinds in (("depend", ("run", "test")), ("exec_depend", ("run",)),
                       ("test_depend", ("test",))):
        for element in root.iter(tag):
            for kind in kinds:
                getattr(manifest, kind).add(element.text.strip())
    return manifest


def imported_names(files: list[Path]) -> dict[str, set[str]]:
    """Top-level names of the absolute imports in ``files`` -> the files importing them."""
    names: dict[str, set[str]] = {}
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            elif _is_importorskip(node):
                modules = [node.args[0].value]
            else:
                continue
            for module in modules:
                names.setdefault(module.split(".")[0], set()).add(_shown(path))
    return names


def support_modules(files: list[Path]) -> list[Path]:
    """The test support modules ``files`` use, and those these use in turn: what they import
    is what the tests importing them need."""
    found: set[Path] = set()
    pending = list(files)
    while pending:
        for node in ast.walk(ast.parse(pending.pop().read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for name in names:
                parts = name.split(".")
                module = SUPPORT_DIR / f"{parts[1]}.py" if len(parts) > 1 else None
                if parts[0] in TEST_SUPPORT and module and module.is_file() \
                        and module not in found:
                    found.add(module)
                    pending.append(module)
    return sorted(found)


def _is_importorskip(node: ast.AST) -> bool:
    """``pytest.importorskip("name")``: an optional test dependency, declared all the same."""
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr == "importorskip" and bool(node.args)
            and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str))


def _shown(path: Path) -> str:
    """``path`` as a report names it: relative to the workspace when inside it."""
    return path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)


def rosdep_key(name: str) -> str | None:
    """The dependency an import needs: None for the stdlib, a key, or KeyError if unknown."""
    if name in sys.stdlib_module_names or name == "__future__":
        return None
    if name in WORKSPACE or name in ROS_PACKAGES:
        return name
    return ROSDEP_KEYS[name]


def installed_sources(package: Path) -> list[Path]:
    """Python files the package installs: its module tree, and bringup's launch files."""
    files = sorted((package / package.name).rglob("*.py"))
    if package.name == "dicom_or_bringup":
        files += sorted((ROOT / "launch").glob("*.launch.py"))
    return files


_LAUNCHED = re.compile(r"\b(?:pkg|package):\s*([a-z][a-z0-9_]*)"
                       r"|\$\(find-pkg-share ([a-z][a-z0-9_]*)\)")
# What `ros2 launch` needs to run a YAML launch file: the frontend, its parser, node actions.
LAUNCH_YAML_FRONTEND = {"launch", "launch_yaml", "launch_ros"}


def launched_packages(package: Path) -> set[str]:
    """Packages the launch files installed by ``package`` use: the nodes they start, the
    shares they read, and the launch frontend that runs them."""
    if package.name != "dicom_or_bringup":
        return set()
    used = set()
    launch_files = sorted((ROOT / "launch").glob("*.yaml"))
    for path in launch_files:
        for match in _LAUNCHED.finditer(path.read_text()):
            used.add(match.group(1) or match.group(2))
    if any(p.name.endswith(".launch.yaml") for p in launch_files):
        used |= LAUNCH_YAML_FRONTEND
    return used - {package.name}


def check_python_package(package: Path, manifest: Manifest) -> list[str]:
    """Undeclared imports and unused declarations of an ament_python package."""
    problems = []
    local_test_modules = {p.stem for p in (package / "test").glob("*.py")}
    installed = imported_names(installed_sources(package))
    test_files = sorted((package / "test").rglob("*.py"))
    tests = imported_names(test_files)
    # What the test support used imports, the tests need too; but not its workspace packages:
    # support is shared by every package's tests (dicom_or_bringup's peer tools reach the
    # core's tests that way), and a test_depend on them would make a dependency cycle.
    for name, files in imported_names(support_modules(test_files)).items():
        if name not in WORKSPACE:
            tests.setdefault(name, set()).update(files)
    used_run, used_test = launched_packages(package), set()
    problems += [f"{key} undeclared: the installed launch files use it; declare it as "
                 "exec_depend" for key in sorted(used_run - manifest.run)]
    flagged: set[str] = set(used_run)
    for names, used, allowed, where in (
            (installed, used_run, manifest.run, "exec_depend"),
            (tests, used_test, manifest.run | manifest.test, "test_depend or exec_depend")):
        for name, files in sorted(names.items()):
            if name == package.name or (names is tests and (
                    name in TEST_SUPPORT or name in local_test_modules)):
                continue
            if name in TEST_SUPPORT:
                problems.append(f"{', '.join(sorted(files))} imports the test support "
                                f"{name}, which is never installed")
                continue
            try:
                key = rosdep_key(name)
            except KeyError:
                problems.append(f"import {name!r} ({sorted(files)[0]}) has no rosdep key: add "
                                f"it to ROSDEP_KEYS or ROS_PACKAGES in {Path(__file__).name}")
                continue
            if key is None:
                continue
            used.add(key)
            if key not in allowed and key not in flagged:
                flagged.add(key)   # once: an undeclared run dependency also covers the tests
                problems.append(f"{key} undeclared: imported by {', '.join(sorted(files))}; "
                                f"declare it as {where}")
    problems += unused(manifest, used_run, used_test | used_run)
    return problems


def unused(manifest: Manifest, used_run: set[str], used_test: set[str]) -> list[str]:
    """Declarations nothing uses, less the documented runtime-only ones."""
    exempt = RUNTIME_ONLY.get(manifest.name, {})
    return ([f"exec_depend {key} is not imported by the installed modules"
             for key in sorted(manifest.run - used_run - exempt.keys())]
            + [f"test_depend {key} is not imported by the tests"
               for key in sorted(manifest.test - manifest.run - used_test - exempt.keys())])


def check_interface_package(manifest: Manifest) -> list[str]:
    """An interface package depends on every package its msg/srv field types name."""
    named = set()
    for path in sorted((ROOT / "msg").glob("*.msg")) + sorted((ROOT / "srv").glob("*.srv")):
        named |= set(_INTERFACE_TYPE.findall(path.read_text())) - {manifest.name}
    problems = [f"depend {key} missing: an interface field names it"
                for key in sorted(named - manifest.run)]
    return problems + unused(manifest, named, named)


PACKAGES = sorted(p.parent for p in SRC.glob("*/package.xml"))


def test_every_package_is_checked():
    assert {p.name for p in PACKAGES} >= {"dicom_or_core", "dicom_or_ros", "dicom_or_msgs",
                                          "dicom_or_drivers", "dicom_or_bridge",
                                          "dicom_or_recorder", "dicom_or_bringup"}


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.name)
def test_package_xml_declares_what_the_package_imports(package: Path):
    manifest = read_manifest(package / "package.xml")
    assert manifest.name == package.name
    if manifest.build_type == "ament_python":
        problems = check_python_package(package, manifest)
    else:
        assert manifest.build_type == "ament_cmake", manifest.build_type
        problems = check_interface_package(manifest)
    assert not problems, f"{package.name}/package.xml:\n  " + "\n  ".join(problems)


def test_the_checker_sees_an_undeclared_and_an_unused_dependency(tmp_path: Path):
    """The check can fail: a fake package importing scipy and declaring std_srvs."""
    package = tmp_path / "dicom_or_fake"
    (package / "dicom_or_fake").mkdir(parents=True)
    (package / "test").mkdir()
    (package / "dicom_or_fake" / "node.py").write_text("import os\nimport scipy.signal\n")
    (package / "dicom_or_fake" / "bad.py").write_text("from dicom_or_test_common import ros\n")
    (package / "test" / "test_node.py").write_text("import pytest\nimport highdicom\n")
    manifest = Manifest("dicom_or_fake", "ament_python", run={"std_srvs"},
                        test={"python3-pytest"})
    problems = check_python_package(package, manifest)
    assert any(p.startswith("python3-scipy undeclared") for p in problems), problems
    assert any(p.startswith("python3-highdicom-pip undeclared") for p in problems), problems
    assert "exec_depend std_srvs is not imported by the installed modules" in problems
    assert any("imports the test support dicom_or_test_common" in p for p in problems), problems
    assert len(problems) == 4, problems


def test_core_stays_ros_free():
    """dicom_or_core is the ROS-free core (plain pytest covers it): with nothing ROS in its
    manifest, an rclpy or message import there fails the check above."""
    manifest = read_manifest(SRC / "dicom_or_core" / "package.xml")
    assert not manifest.run & (ROS_PACKAGES | {"dicom_or_msgs", "dicom_or_ros"})
