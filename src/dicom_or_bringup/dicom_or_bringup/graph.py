"""The project's ROS 2 launch files, read without a ROS 2 distro.

``launch/*.launch.yaml`` are standard launch YAML frontend files: ``ros2 launch
dicom_or_bringup or_demo.launch.yaml`` runs them in a distro, and this module interprets the
same files for ``dicom_or_launch``, ``dicom_or_demo`` and the system tests. It knows exactly
the subset the project uses, with the meaning ``launch`` / ``launch_ros`` give it::

    launch:
      - arg: {name: bridge_port, default: "11112", description: TCP port of the bridge}
      - let: {name: x, value: $(var bridge_port)}
      - set_env: {name: FASTDDS_DEFAULT_PROFILES_FILE, value: $(var fastdds_profile),
                  unless: $(equals x$(var fastdds_profile) x)}     # only if not empty
      - include: {file: $(find-pkg-share dicom_or_bringup)/launch/bridge.launch.yaml,
                  if: $(var use_bridge)}
      - node:
          {pkg: ..., exec: ..., name: ..., namespace: /or, output: screen,
           sigterm_timeout: 10.0, sigkill_timeout: 10.0, if: ..., unless: ...,
           param: [{from: <file>}, {name: port, value: $(var bridge_port), type: int}],
           remap: [{from: image, to: /or/endoscope/image_raw}],
           env: [{name: ROS_SUPER_CLIENT, value: "TRUE"}]}

Substitutions: ``$(var name)``, ``$(find-pkg-share package)``, ``$(equals a b)``
(arguments unquoted, or quoted with '...' / "..."; not an empty '' or "", which launch
reads as the text "[]"). Anything else -- another tag, attribute or
substitution, a string where launch reads a float ("10" for ``sigterm_timeout``), a
``$(var)`` before its ``arg`` / ``let`` -- is an error naming the file and line, so a file
this module accepts means the same to both runners.

The rules copied from launch, because they decide what a node gets:

* launch configurations are one global scope: command-line values first, an ``arg`` sets
  its default only when not given; an ``include`` does not scope (``launch`` does not
  either), so an included file sees the values given to the top-level one.
* ``set_env`` applies to the nodes that come after it; a node's own ``env`` entries
  (launch's ``additional_env`` of ExecuteProcess) apply to that node only and win over it.
* ``if`` / ``unless``: the text, stripped and lower-cased, must be true/1 or false/0.
* a parameter value with ``type`` is converted like launch's ``coerce_to_type`` (int("30.0")
  fails, float("30") is 30.0); without ``type`` it is read as YAML (``"[ecg, hemodynamic]"``
  -> a string list; "" stays ""), and must be a scalar or a list of one scalar type.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dicom_or_core.model.errors import DicomOrError

SUFFIX = ".launch.yaml"
PACKAGE = "dicom_or_bringup"
# launch's defaults for a node's stop: SIGINT, SIGTERM after sigterm_timeout, SIGKILL
# after sigkill_timeout more (ExecuteLocal's '5' and '5').
DEFAULT_SIGTERM_TIMEOUT_S = 5.0
DEFAULT_SIGKILL_TIMEOUT_S = 5.0
_TRUE = ("true", "1")
_FALSE = ("false", "0")


class Str:
    """Attribute kinds: a YAML string (substitutions allowed) ..."""


class Float:
    """... a YAML float (launch's ``data_type=float``: neither "10" nor 10 is accepted) ..."""


class Entries:
    """... or a list of mappings (``param``, ``remap``)."""


_CONDITION = {"if": Str, "unless": Str}
# Every tag and attribute the subset knows, and which are required.
SCHEMA: dict[str, dict[str, type]] = {
    "arg": {"name": Str, "default": Str, "description": Str},
    "let": {"name": Str, "value": Str, **_CONDITION},
    "set_env": {"name": Str, "value": Str, **_CONDITION},
    "include": {"file": Str, **_CONDITION},
    "node": {"pkg": Str, "exec": Str, "name": Str, "namespace": Str, "output": Str,
             "param": Entries, "remap": Entries, "sigterm_timeout": Float,
             "sigkill_timeout": Float, "env": Entries, **_CONDITION},
}
REQUIRED = {"arg": ("name",), "let": ("name", "value"), "set_env": ("name", "value"),
            "include": ("file",), "node": ("pkg", "exec", "name")}
PARAM_FILE: dict[str, type] = {"from": Str}
PARAM_VALUE: dict[str, type] = {"name": Str, "value": object, "type": Str}
REMAP: dict[str, type] = {"from": Str, "to": Str}
ENV: dict[str, type] = {"name": Str, "value": Str}
OUTPUTS = ("screen", "log", "both")
# Substitution name -> how many arguments it takes.
SUBSTITUTIONS = {"var": 1, "find-pkg-share": 1, "equals": 2}


# --- Reading: YAML that keeps line numbers ------------------------------------------------

class _Map(dict):
    line = 0
    key_lines: dict[str, int]


class _List(list):
    line = 0


class _Loader(yaml.SafeLoader):
    pass


def _mapping(loader: _Loader, node: yaml.MappingNode) -> _Map:
    result = _Map(loader.construct_mapping(node, deep=True))
    result.line = node.start_mark.line + 1
    result.key_lines = {str(key.value): key.start_mark.line + 1 for key, _ in node.value}
    return result


def _sequence(loader: _Loader, node: yaml.SequenceNode) -> _List:
    result = _List(loader.construct_sequence(node, deep=True))
    result.line = node.start_mark.line + 1
    return result


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _sequence)


def _where(path: Path, line: int) -> str:
    return f"{path}:{line}"


@dataclass(frozen=True)
class Entity:
    """One ``- tag: {attributes}`` item of a launch file."""

    tag: str
    attrs: _Map
    path: Path

    def at(self, attribute: str | None = None) -> str:
        """``file:line`` of ``attribute`` (the entity's own when None or absent), for errors."""
        line = self.attrs.key_lines.get(attribute, self.attrs.line) if attribute \
            else self.attrs.line
        return _where(self.path, line)


def read(path: Path) -> list[Entity]:
    """The entities of one launch file, every tag and attribute checked against SCHEMA."""
    try:
        data = yaml.load(path.read_text(), Loader=_Loader)  # noqa: S506 (a SafeLoader)
    except OSError as exc:
        raise DicomOrError(str(path), f"cannot read the launch file: {exc.strerror}") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = mark.line + 1 if mark else 0
        raise DicomOrError(_where(path, line), f"is not valid YAML: {exc.problem}") from None
    if not isinstance(data, _Map) or set(data) != {"launch"} or not isinstance(
            data["launch"], _List):
        raise DicomOrError(_where(path, 1), "a launch file is a 'launch:' list of entities")
    entities = []
    for item in data["launch"]:
        if not isinstance(item, _Map) or len(item) != 1:
            raise DicomOrError(_where(path, getattr(item, "line", data["launch"].line)),
                               "each entity is one '- tag: {attributes}' item")
        tag, attrs = next(iter(item.items()))
        where = _where(path, item.line)
        if tag not in SCHEMA:
            raise DicomOrError(where, f"tag {tag!r} is not in the launch subset dicom_or "
                               f"supports ({', '.join(SCHEMA)})")
        if not isinstance(attrs, _Map):
            raise DicomOrError(where, f"{tag}: attributes must be a mapping")
        entity = Entity(tag, attrs, path)
        _check_attributes(entity, SCHEMA[tag], REQUIRED[tag])
        entities.append(entity)
    return entities


def _check_attributes(entity: Entity, schema: dict[str, type],
                      required: tuple[str, ...]) -> None:
    """Every attribute of ``entity`` known and of the YAML type launch reads it as, every
    required one present; a node's param and remap entries checked too."""
    attrs = entity.attrs
    for name, value in attrs.items():
        kind = schema.get(name)
        if kind is None:
            raise DicomOrError(entity.at(name), f"{entity.tag}: unknown attribute {name!r} "
                               f"(known: {', '.join(schema)})")
        _check_value(entity, name, kind, value)
    missing = [name for name in required if name not in attrs]
    if missing:
        raise DicomOrError(entity.at(), f"{entity.tag}: {missing[0]!r} is required")
    if "if" in attrs and "unless" in attrs:
        raise DicomOrError(entity.at("unless"), f"{entity.tag}: if and unless can't be used "
                           "together")
    if entity.tag == "node":
        _check_node(entity)


def _check_value(entity: Entity, name: str, kind: type, value: object) -> None:
    """One attribute's value has the YAML type launch's parser takes for ``kind``."""
    where = entity.at(name)
    if kind is Str and not isinstance(value, str):
        raise DicomOrError(where, f"{entity.tag}.{name} must be a YAML string (launch "
                           f"reads it as one); quote {value!r}")
    if kind is Float and (isinstance(value, bool) or not isinstance(value, float)
                          or not 0 <= value <= 600):
        raise DicomOrError(where, f"{entity.tag}.{name} must be an unquoted YAML float "
                           f"0.0..600.0 such as 10.0 (launch rejects a string or an int),"
                           f" not {value!r}")
    if kind is Entries and not (isinstance(value, _List) and value and all(
            isinstance(v, _Map) for v in value)):
        raise DicomOrError(where, f"{entity.tag}.{name} must be a list of mappings")
    if kind is Str:
        parse(str(value), where)  # substitution syntax


def _check_node(entity: Entity) -> None:
    """A node's output choice, its param entries (a file, or a typed name/value) and its
    remaps."""
    attrs = entity.attrs
    if attrs.get("output", "screen") not in OUTPUTS:
        raise DicomOrError(entity.at("output"), f"node.output must be one of {OUTPUTS}")
    for item in attrs.get("param", []):
        _check_entry(entity, item, PARAM_FILE if "from" in item else PARAM_VALUE,
                     ("from",) if "from" in item else ("name", "value"), "param")
        if "type" in item and item["type"] not in _COERCE:
            raise DicomOrError(_where(entity.path, item.line), f"param.type must be one "
                               f"of {', '.join(_COERCE)}, not {item['type']!r}")
        value = item.get("value")
        if "value" in item and not isinstance(value, (str, bool, int, float)):
            raise DicomOrError(_where(entity.path, item.line),
                               "param.value must be a scalar (or a string to substitute)")
    for item in attrs.get("remap", []):
        _check_entry(entity, item, REMAP, ("from", "to"), "remap")
    for item in attrs.get("env", []):
        _check_entry(entity, item, ENV, ("name", "value"), "env")


def _check_entry(entity: Entity, item: _Map, schema: dict[str, type],
                 required: tuple[str, ...], name: str) -> None:
    where = _where(entity.path, item.line)
    unknown = sorted(set(item) - set(schema))
    if unknown:
        raise DicomOrError(where, f"node.{name}: unknown attribute {unknown[0]!r} (known "
                           f"here: {', '.join(schema)})")
    missing = [key for key in required if key not in item]
    if missing:
        raise DicomOrError(where, f"node.{name}: {missing[0]!r} is required")
    for key, kind in schema.items():
        if kind is Str and key in item:
            if not isinstance(item[key], str):
                raise DicomOrError(where, f"node.{name}.{key} must be a YAML string")
            parse(item[key], where)


# --- Substitutions: the frontend grammar's $(name arg ...) ---------------------------------

@dataclass(frozen=True)
class Sub:
    """``$(name arg ...)``; each argument is itself a list of text and substitutions."""

    name: str
    args: tuple[tuple[str | Sub, ...], ...]


Parts = tuple["str | Sub", ...]
_IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")


def parse(text: str, where: str) -> Parts:
    """``"$(find-pkg-share x)/a"`` -> (Sub('find-pkg-share', (('x',),)), '/a')."""
    parts, i = _parse_parts(text, 0, where, stop="")
    return parts


def _parse_parts(text: str, i: int, where: str, stop: str) -> tuple[Parts, int]:
    """Text and substitutions up to a character of ``stop`` (top level: to the end)."""
    parts: list[str | Sub] = []
    literal = ""
    while i < len(text) and text[i] not in stop:
        if text.startswith("$(", i):
            if literal:
                parts.append(literal)
                literal = ""
            sub, i = _parse_sub(text, i, where)
            parts.append(sub)
        else:
            if stop == " )" and text[i] in "('\"":
                raise DicomOrError(where, f"unexpected {text[i]!r} in a substitution "
                                   f"argument: {text!r} (quote the argument)")
            literal += text[i]
            i += 1
    if literal:
        parts.append(literal)
    return tuple(parts), i


def _parse_sub(text: str, i: int, where: str) -> tuple[Sub, int]:
    match = _IDENTIFIER.match(text, i + 2)
    if not match:
        raise DicomOrError(where, f"a substitution needs a name after '$(': {text!r}")
    name, i = match.group(), match.end()
    args: list[Parts] = []
    while i < len(text) and text[i] == " ":
        i += 1
        if i < len(text) and text[i] in "'\"":
            quote = text[i]
            arg, i = _parse_parts(text, i + 1, where, stop=quote)
            if i >= len(text):
                raise DicomOrError(where, f"unterminated {quote} in {text!r}")
            if not arg:
                raise DicomOrError(where, f"an empty quoted argument {quote}{quote} is read "
                                   f"by launch as the text '[]'; compare x$(var ...) with x "
                                   f"instead: {text!r}")
            i += 1
        else:
            arg, i = _parse_parts(text, i, where, stop=" )")
        args.append(arg)
    if i >= len(text) or text[i] != ")":
        raise DicomOrError(where, f"unterminated substitution in {text!r}")
    if name not in SUBSTITUTIONS:
        raise DicomOrError(where, f"substitution $({name}) is not in the launch subset "
                           f"dicom_or supports ({', '.join(SUBSTITUTIONS)})")
    if len(args) != SUBSTITUTIONS[name]:
        raise DicomOrError(where, f"$({name}) takes {SUBSTITUTIONS[name]} argument(s), "
                           f"got {len(args)}")
    return Sub(name, tuple(args)), i + 1


def variables(parts: Parts) -> list[str]:
    """Launch configurations a value reads, nested ones included."""
    found: list[str] = []
    for part in parts:
        if isinstance(part, Sub):
            if part.name == "var" and all(isinstance(p, str) for p in part.args[0]):
                found.append("".join(str(p) for p in part.args[0]))
            for arg in part.args:
                found += variables(arg)
    return found


def package_share(package: str) -> Path:
    """``$(find-pkg-share package)``: the package's share folder from the ament index."""
    from ament_index_python.packages import PackageNotFoundError, get_package_share_directory

    try:
        return Path(get_package_share_directory(package))
    except (PackageNotFoundError, LookupError):
        raise DicomOrError(package, "package not found by $(find-pkg-share) (colcon build, "
                           "then source install/setup.bash)") from None


def _is_bool(text: str) -> bool:
    return text.lower() in _TRUE + _FALSE


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _equals(left: str, right: str) -> bool:
    """launch's EqualsSubstitution: booleans by truth, numbers by closeness, else text."""
    if _is_bool(left) and _is_bool(right):
        return (left.lower() in _TRUE) == (right.lower() in _TRUE)
    if _is_float(left) and _is_float(right):
        return math.isclose(float(left), float(right))
    return left == right


def perform(parts: Parts, configs: dict[str, str], where: str) -> str:
    """The text of ``parts`` with the launch configurations ``configs``."""
    out = []
    for part in parts:
        if isinstance(part, str):
            out.append(part)
            continue
        args = [perform(arg, configs, where) for arg in part.args]
        if part.name == "var":
            if args[0] not in configs:
                raise DicomOrError(where, f"$(var {args[0]}): no such launch argument")
            out.append(configs[args[0]])
        elif part.name == "find-pkg-share":
            out.append(str(package_share(args[0])))
        elif part.name == "equals":
            out.append(str(_equals(args[0], args[1])).lower())
    return "".join(out)


def condition(text: str, where: str) -> bool:
    """launch's ``if`` / ``unless`` rule: true/1 or false/0, nothing else."""
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise DicomOrError(where, f"condition must be true, false, 1 or 0, not {text!r}")


# --- Parameter types, as launch_ros gives them -------------------------------------------

def _yaml_value(text: str) -> Any:
    """launch's coerce_to_type(value, None): YAML, empty forwarded, uniform lists only."""
    if not text:
        return text
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        raise ValueError(f"{text!r} is not valid YAML") from None
    scalars = (bool, int, float, str)
    if isinstance(value, list):
        kinds = {type(v) for v in value}
        if len(kinds) > 1 or (kinds and next(iter(kinds)) not in scalars):
            raise ValueError(f"{text!r} is not a list of one scalar type")
        return value
    if type(value) not in scalars:
        raise ValueError(f"{text!r} is not a scalar or a list")
    return value


def _bool_value(text: str) -> bool:
    value = yaml.safe_load({"1": "true", "0": "false"}.get(text, text) or "''")
    if not isinstance(value, bool):
        raise ValueError(f"{text!r} is not a bool")
    return value


# launch's type identifiers a substituted value can be converted to (the list_of_* ones
# take no substitution string in launch_yaml, so the subset leaves them out).
_COERCE: dict[str, Callable[[str], Any]] = {
    "str": str, "int": int, "float": float, "bool": _bool_value, "yaml": _yaml_value}


def parameter_value(item: _Map, configs: dict[str, str], where: str) -> Any:
    """A ``param`` item's value as launch_ros gives it: substituted, then converted by ``type``
    (YAML without one); a value YAML already typed must be of that type."""
    raw = item["value"]
    kind = item.get("type", "yaml")
    if not isinstance(raw, str):
        expected = {"int": int, "float": float, "bool": bool, "str": str}.get(kind)
        if expected is not None and type(raw) is not expected:
            raise DicomOrError(where, f"param {item['name']}: {raw!r} is not a {kind}")
        return raw
    text = perform(parse(raw, where), configs, where)
    try:
        return _COERCE[kind](text)
    except ValueError as exc:
        raise DicomOrError(where, f"param {item['name']}: {text!r} is no {kind} value "
                           f"({exc})") from None


# --- Resolving a graph ---------------------------------------------------------------------

@dataclass(frozen=True)
class Argument:
    """One ``arg`` of a launch file; a None ``default`` means launch requires it to be given."""

    name: str
    default: str | None
    description: str


@dataclass
class NodeSpec:
    """One node of a resolved launch file: everything a runner needs to start it."""

    package: str
    executable: str
    name: str
    namespace: str = "/"
    # In launch order: a parameter file path, or a {name: value} dict of overrides.
    parameters: list[str | dict[str, Any]] = field(default_factory=list)
    remappings: list[tuple[str, str]] = field(default_factory=list)
    environment: dict[str, str] = field(default_factory=dict)
    output: str = "screen"
    # A node that finalises files on stop (the recorder) sets more than launch_ros's default.
    sigterm_timeout: float = DEFAULT_SIGTERM_TIMEOUT_S
    sigkill_timeout: float = DEFAULT_SIGKILL_TIMEOUT_S
    where: str = ""

    @property
    def fully_qualified_name(self) -> str:
        """``<namespace>/<name>``: the key of the node's parameters in a ``--params-file``."""
        return f"{self.namespace.rstrip('/')}/{self.name}"

    @property
    def parameter_files(self) -> list[str]:
        """The node's parameter file paths in launch order, without the name/value overrides."""
        return [p for p in self.parameters if isinstance(p, str)]

    @property
    def overrides(self) -> dict[str, Any]:
        """Every name/value parameter, later ones winning."""
        merged: dict[str, Any] = {}
        for p in self.parameters:
            if isinstance(p, dict):
                merged.update(p)
        return merged

    @property
    def stop_grace_s(self) -> float:
        """How long the node has between the first stop signal and SIGKILL."""
        return self.sigterm_timeout + self.sigkill_timeout


def launch_dir() -> Path:
    """Where the launch files are: the installed share folder, else the checkout's."""
    try:
        share = package_share(PACKAGE) / "launch"
        if share.is_dir():
            return share
    except (DicomOrError, ImportError):
        pass
    return Path(__file__).resolve().parents[3] / "launch"


def launch_path(name: str) -> Path:
    """``or_demo``, ``or_demo.launch.yaml`` or a path -> the launch file."""
    file = name if name.endswith(SUFFIX) else f"{name}{SUFFIX}"
    path = Path(file) if "/" in file else launch_dir() / file
    if not path.is_file():
        known = sorted(p.name.removesuffix(SUFFIX) for p in launch_dir().glob(f"*{SUFFIX}"))
        raise DicomOrError(name, f"no such launch file; known: {', '.join(known)}")
    return path


def _include_path(entity: Entity) -> Path:
    """An include's file: found without launch configurations, as ros2 launch's
    --show-args needs it (so it may use $(find-pkg-share), never $(var))."""
    where = entity.at("file")
    parts = parse(entity.attrs["file"], where)
    if variables(parts):
        raise DicomOrError(where, "an include's file may not depend on a launch argument "
                           "(ros2 launch --show-args could not list its arguments)")
    path = Path(perform(parts, {}, where))
    if not path.is_file():
        raise DicomOrError(where, f"included file {path} does not exist")
    return path


def check(path: Path, seen: tuple[Path, ...] = ()) -> None:
    """Every file reachable from ``path`` is in the subset: tags, attributes, substitutions,
    includes that resolve, and each ``$(var x)`` after the ``arg`` / ``let`` of x."""
    if path.resolve() in seen:
        raise DicomOrError(str(path), "includes itself")
    known: set[str] = set()
    for entity in read(path):
        for attribute, value in entity.attrs.items():
            for text, where in _strings(entity, attribute, value):
                undeclared = [v for v in variables(parse(text, where)) if v not in known]
                if undeclared:
                    raise DicomOrError(where, f"$(var {undeclared[0]}) before the arg (or "
                                       "let) that declares it in this file")
        if entity.tag in ("arg", "let"):
            known.add(entity.attrs["name"])
        if entity.tag == "include":
            check(_include_path(entity), (*seen, path.resolve()))


def _strings(entity: Entity, attribute: str, value: Any) -> list[tuple[str, str]]:
    if isinstance(value, str):
        return [(value, entity.at(attribute))]
    if isinstance(value, list):
        return [(v, _where(entity.path, item.line)) for item in value
                for v in item.values() if isinstance(v, str)]
    return []


def arguments(name: str) -> list[Argument]:
    """Every ``arg`` of a launch file and of the files it includes (conditionally or not),
    first declaration winning: what ``ros2 launch ... --show-args`` lists."""
    found: dict[str, Argument] = {}

    def visit(path: Path) -> None:
        for entity in read(path):
            if entity.tag == "arg":
                attrs = entity.attrs
                found.setdefault(attrs["name"], Argument(
                    attrs["name"], attrs.get("default"), attrs.get("description", "")))
            elif entity.tag == "include":
                visit(_include_path(entity))

    path = launch_path(name)
    check(path)
    visit(path)
    return list(found.values())


def resolve(name: str, given: dict[str, str] | None = None) -> list[NodeSpec]:
    """The nodes launch file ``name`` starts with launch arguments ``given``."""
    declared = {arg.name for arg in arguments(name)}
    unknown = sorted(set(given or {}) - declared)
    if unknown:
        # ros2 launch would ignore it silently; a misspelt argument is better named.
        raise DicomOrError(unknown[0], f"is not a launch argument; known: "
                           f"{', '.join(sorted(declared))}")
    configs = {k: str(v) for k, v in (given or {}).items()}
    nodes: list[NodeSpec] = []
    _run(launch_path(name), configs, {}, nodes)
    names = [n.fully_qualified_name for n in nodes]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DicomOrError("graph", f"node name used twice: {duplicates[0]}")
    return nodes


def _text(entity: Entity, attribute: str, configs: dict[str, str]) -> str:
    where = entity.at(attribute)
    return perform(parse(entity.attrs[attribute], where), configs, where)


def _run(path: Path, configs: dict[str, str], environment: dict[str, str],
         nodes: list[NodeSpec]) -> None:
    for entity in read(path):
        attrs = entity.attrs
        if "if" in attrs and not condition(_text(entity, "if", configs), entity.at("if")):
            continue
        if "unless" in attrs and condition(_text(entity, "unless", configs),
                                           entity.at("unless")):
            continue
        if entity.tag == "arg":
            if attrs["name"] not in configs:
                if "default" not in attrs:
                    raise DicomOrError(attrs["name"], "launch argument has no default and "
                                       "was not given")
                configs[attrs["name"]] = _text(entity, "default", configs)
        elif entity.tag == "let":
            configs[_text(entity, "name", configs)] = _text(entity, "value", configs)
        elif entity.tag == "set_env":
            environment[_text(entity, "name", configs)] = _text(entity, "value", configs)
        elif entity.tag == "include":
            _run(_include_path(entity), configs, environment, nodes)
        elif entity.tag == "node":
            nodes.append(_node(entity, configs, environment))


def _node(entity: Entity, configs: dict[str, str], environment: dict[str, str]) -> NodeSpec:
    attrs = entity.attrs
    parameters: list[str | dict[str, Any]] = []
    for item in attrs.get("param", []):
        where = _where(entity.path, item.line)
        if "from" in item:
            file = perform(parse(item["from"], where), configs, where)
            if not Path(file).is_file():
                raise DicomOrError(where, f"parameter file {file} does not exist")
            parameters.append(file)
        else:
            name = perform(parse(item["name"], where), configs, where)
            parameters.append({name: parameter_value(item, configs, where)})
    remappings = []
    for item in attrs.get("remap", []):
        where = _where(entity.path, item.line)
        remappings.append((perform(parse(item["from"], where), configs, where),
                           perform(parse(item["to"], where), configs, where)))
    node_environment = dict(environment)
    for item in attrs.get("env", []):
        where = _where(entity.path, item.line)
        node_environment[perform(parse(item["name"], where), configs, where)] = \
            perform(parse(item["value"], where), configs, where)
    return NodeSpec(
        package=_text(entity, "pkg", configs), executable=_text(entity, "exec", configs),
        name=_text(entity, "name", configs),
        namespace=_text(entity, "namespace", configs) if "namespace" in attrs else "/",
        parameters=parameters, remappings=remappings, environment=node_environment,
        output=attrs.get("output", "screen"),
        sigterm_timeout=attrs.get("sigterm_timeout", DEFAULT_SIGTERM_TIMEOUT_S),
        sigkill_timeout=attrs.get("sigkill_timeout", DEFAULT_SIGKILL_TIMEOUT_S),
        where=entity.at())
