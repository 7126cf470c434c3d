"""The graph description shared by the ROS 2 launch files and the pip launcher.

A graph file (``launch/*.graph.yaml``) lists launch arguments, included graphs and nodes::

    arguments:
      bridge_port: {default: "11112", description: TCP port of the DICOM bridge}
    include:
      - endoscope.graph.yaml
      - {file: recorder.graph.yaml, if: $(var use_recorder)}   # conditional include
    nodes:
      - package: dicom_or_bridge
        executable: dicom_bridge
        name: dicom_bridge
        namespace: /or
        parameters: [dicom_bridge.yaml]        # files in the shared config folder
        overrides: {port: $(var bridge_port)}   # parameters set from launch arguments
        remappings: {}
        if: $(var use_bridge)                   # optional: start only when true
        sigterm_timeout: 10                     # optional (s): how long a stop may take,
        sigkill_timeout: 10                     # as launch_ros's Node takes them
    environment:                                # for every node of this file; an empty
      FASTDDS_DEFAULT_PROFILES_FILE: $(var fastdds_profile)   # value leaves it unset

``$(var name)`` is replaced by the argument's value (the ros2 launch frontend syntax), and a
value that is exactly one substitution keeps the YAML type of the result ("11112" -> 11112).
``*.launch.py`` files call :func:`resolve` from an OpaqueFunction and turn each
:class:`NodeSpec` into a ``launch_ros.actions.Node``; ``dicom_or_launch`` turns them into
processes. One description, two runners: they cannot drift apart.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dicom_or_core.config.paths import config_dir
from dicom_or_core.model.errors import DicomOrError

_VAR = re.compile(r"\$\(var ([A-Za-z_][A-Za-z0-9_]*)\)")
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off", ""}
DEFAULT_SIGTERM_TIMEOUT_S = 5.0
DEFAULT_SIGKILL_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Argument:
    name: str
    default: str
    description: str


@dataclass
class NodeSpec:
    """One node of a resolved graph: everything a runner needs to start it."""

    package: str
    executable: str
    name: str
    namespace: str = "/"
    parameter_files: list[str] = field(default_factory=list)
    overrides: dict[str, Any] = field(default_factory=dict)
    remappings: dict[str, str] = field(default_factory=dict)
    environment: dict[str, str] = field(default_factory=dict)
    # launch_ros's defaults: SIGINT, SIGTERM after sigterm_timeout, SIGKILL after
    # sigkill_timeout more. A node that finalises files on stop (the recorder) sets more.
    sigterm_timeout: float = DEFAULT_SIGTERM_TIMEOUT_S
    sigkill_timeout: float = DEFAULT_SIGKILL_TIMEOUT_S

    @property
    def fully_qualified_name(self) -> str:
        return f"{self.namespace.rstrip('/')}/{self.name}"

    @property
    def stop_grace_s(self) -> float:
        """How long the node has between the first stop signal and SIGKILL."""
        return self.sigterm_timeout + self.sigkill_timeout


def launch_dir() -> Path:
    """Where graph and launch files are: the installed share folder or the checkout."""
    try:
        from ament_index_python.packages import get_package_share_directory

        share = Path(get_package_share_directory("dicom_or_bringup")) / "launch"
        if share.is_dir():
            return share
    except (ImportError, LookupError):
        pass
    return Path(__file__).resolve().parents[3] / "launch"


def _read(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise DicomOrError("graph", f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise DicomOrError("graph", f"{path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise DicomOrError("graph", f"{path} must be a mapping")
    return data


def _include_file(include: str | dict[str, Any]) -> str:
    return include["file"] if isinstance(include, dict) else include


def graph_path(name: str) -> Path:
    """``or_demo`` or ``or_demo.graph.yaml`` -> the graph file's path."""
    file = name if name.endswith(".graph.yaml") else f"{name}.graph.yaml"
    path = Path(file) if Path(file).is_absolute() else launch_dir() / file
    if not path.is_file():
        known = sorted(p.name.removesuffix(".graph.yaml")
                       for p in launch_dir().glob("*.graph.yaml"))
        raise DicomOrError("graph", f"no graph {name!r}; known: {', '.join(known)}")
    return path


def arguments(name: str) -> list[Argument]:
    """Every launch argument of a graph and its includes, in declaration order."""
    found: dict[str, Argument] = {}
    path = graph_path(name)
    data = _read(path)
    for include in data.get("include", []) or []:
        for arg in arguments(str(path.parent / _include_file(include))):
            found.setdefault(arg.name, arg)
    for arg_name, spec in (data.get("arguments") or {}).items():
        spec = spec or {}
        found[arg_name] = Argument(arg_name, str(spec.get("default", "")),
                                   str(spec.get("description", "")))
    return list(found.values())


def _substitute(value: Any, values: dict[str, str], where: str) -> Any:
    if isinstance(value, dict):
        return {k: _substitute(v, values, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, values, where) for v in value]
    if not isinstance(value, str):
        return value

    def lookup(match: re.Match) -> str:
        if match.group(1) not in values:
            raise DicomOrError(where, f"uses undeclared launch argument {match.group(1)!r}")
        return values[match.group(1)]

    whole = _VAR.fullmatch(value.strip())
    if whole:
        text = lookup(whole)
        try:
            return yaml.safe_load(text) if text != "" else ""
        except yaml.YAMLError:
            return text
    return _VAR.sub(lookup, value)


def _truthy(value: Any, where: str) -> bool:
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise DicomOrError(where, "must be true or false", value)


def _seconds(spec: dict[str, Any], key: str, default: float, where: str) -> float:
    value = spec.get(key, default)
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise DicomOrError(f"{where}.{key}", "must be a number of seconds", value) from None
    if not 0 < seconds <= 600:
        raise DicomOrError(f"{where}.{key}", "must be 0..600 s", value)
    return seconds


def resolve(name: str, given: dict[str, str] | None = None) -> list[NodeSpec]:
    """The nodes of graph ``name`` with launch arguments ``given`` (others: defaults)."""
    declared = {arg.name: arg.default for arg in arguments(name)}
    unknown = sorted(set(given or {}) - set(declared))
    if unknown:
        raise DicomOrError(unknown[0], f"is not a launch argument; known: "
                           f"{', '.join(sorted(declared))}")
    values = {**declared, **{k: str(v) for k, v in (given or {}).items()}}
    return _resolve_file(graph_path(name), values)


def _resolve_file(path: Path, values: dict[str, str]) -> list[NodeSpec]:
    data = _read(path)
    environment = {str(k): str(v) for k, v in
                   (_substitute(data.get("environment") or {}, values, path.name)).items()
                   if str(v) != ""}
    nodes: list[NodeSpec] = []
    for index, include in enumerate(data.get("include", []) or []):
        if isinstance(include, dict) and "if" in include and not _truthy(
                _substitute(include["if"], values, path.name),
                f"{path.name}: include[{index}].if"):
            continue
        nodes.extend(_resolve_file(graph_path(str(path.parent / _include_file(include))),
                                   values))
    for index, raw in enumerate(data.get("nodes", []) or []):
        where = f"{path.name}: nodes[{index}]"
        spec = _substitute(raw, values, where)
        if "if" in spec and not _truthy(spec["if"], f"{where}.if"):
            continue
        missing = [k for k in ("package", "executable", "name") if not spec.get(k)]
        if missing:
            raise DicomOrError(f"{where}.{missing[0]}", "is required")
        nodes.append(NodeSpec(
            package=spec["package"], executable=spec["executable"], name=spec["name"],
            namespace=spec.get("namespace", "/"),
            parameter_files=[str(config_dir() / f) for f in spec.get("parameters", [])],
            overrides=dict(spec.get("overrides") or {}),
            remappings={str(k): str(v) for k, v in (spec.get("remappings") or {}).items()},
            environment=environment,
            sigterm_timeout=_seconds(spec, "sigterm_timeout", DEFAULT_SIGTERM_TIMEOUT_S, where),
            sigkill_timeout=_seconds(spec, "sigkill_timeout", DEFAULT_SIGKILL_TIMEOUT_S, where),
        ))
    names = [n.fully_qualified_name for n in nodes]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DicomOrError("graph", f"node name used twice: {duplicates[0]}")
    return nodes
