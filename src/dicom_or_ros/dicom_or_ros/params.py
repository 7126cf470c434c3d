"""Typed, described, validated parameters, declared from one schema file per node.

Every node's parameters are a table (``<node>_parameters.yaml`` beside its module, in the
shape of generate_parameter_library's ``parameters.yaml``) that :func:`load_parameters`
declares, validates and returns as a frozen, typed namespace. :func:`declare` is the
single-parameter primitive beneath it: a type and a description (so ``ros2 param describe``
documents the node), and a wrong type or a failed check becomes :class:`DicomOrError` naming
the parameter: ``run_node`` prints it and the process exits 1.
"""

from __future__ import annotations

import functools
import importlib
import importlib.resources
import keyword
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, make_dataclass
from pathlib import Path
from typing import Any

import yaml
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.exceptions import (
    InvalidParameterTypeException,
    InvalidParameterValueException,
    ParameterUninitializedException,
)
from rclpy.node import Node
from rclpy.parameter import Parameter

from dicom_or_core.model import vr
from dicom_or_core.model.errors import DicomOrError

Check = Callable[[Any], bool]

_TYPES = {
    bool: Parameter.Type.BOOL,
    int: Parameter.Type.INTEGER,
    float: Parameter.Type.DOUBLE,
    str: Parameter.Type.STRING,
}


def declare(node: Node, name: str, default: Any, description: str, *,
            check: Check | None = None, rule: str = "", read_only: bool = True,
            param_type: Parameter.Type | None = None) -> Any:
    """Declare ``name`` with ``default``'s type and return its validated value.

    ``check(value)`` returning False raises DicomOrError(name, rule). Lists need
    ``param_type`` (e.g. ``Parameter.Type.STRING_ARRAY``) since an empty default has no type.
    """
    ptype = param_type or _TYPES[type(default)]
    # Dynamic typing only so that an integer given for a double ("fps:=30") is accepted
    # and converted; any other type mismatch is still an error naming the parameter.
    descriptor = ParameterDescriptor(description=f"{description} [{ptype.name.lower()}]",
                                     read_only=read_only, dynamic_typing=True)
    try:
        parameter = node.declare_parameter(name, default if default is not None else ptype,
                                           descriptor)
    except (InvalidParameterTypeException, InvalidParameterValueException) as exc:
        raise DicomOrError(name, f"must be of type {ptype.name.lower()}: {exc}") from None
    except ParameterUninitializedException:
        raise DicomOrError(name, "is required") from None
    value = parameter.value
    if parameter.type_ == Parameter.Type.INTEGER and ptype == Parameter.Type.DOUBLE:
        value = float(value)
    elif ptype.name.endswith("_ARRAY") and (
            parameter.type_ == Parameter.Type.NOT_SET
            or (isinstance(value, (list, tuple)) and not value)):
        # An empty list has no element type: rclpy types it as a byte array, and rcl's
        # YAML parser leaves `name: []` in a parameter file unset. Both mean "empty".
        value = []
    elif parameter.type_ != ptype:
        raise DicomOrError(name, f"must be of type {ptype.name.lower()}, got "
                           f"{parameter.type_.name.lower()}", value)
    if check is not None and not check(value):
        raise DicomOrError(name, rule or "invalid value", value)
    return value


# -- declarative parameter tables ---------------------------------------------------------
#
# One schema per node, in the shape of generate_parameter_library's ``parameters.yaml``:
#
#   recorder:                       # the node (one top-level key)
#     video_quality:
#       type: int                   # bool, int, double, string, <type>_array
#       default_value: 18
#       description: "CRF of H.264/HEVC"
#       read_only: true
#       validation:
#         bounds<>: [0, 51]
#     igtl:                         # a group: parameters igtl.host, igtl.port, ...
#       host: {type: string, default_value: "127.0.0.1", description: ...}
#     __map_groups:                 # for each value of parameter ``groups``: <value>.<name>
#       sampling_hz: {type: double, default_value: 250.0, ...}
#
# Validators: generate_parameter_library's built-ins used here (``bounds<>``, ``lt<>``,
# ``gt<>``, ``lt_eq<>``, ``gt_eq<>``, ``one_of<>``, ``subset_of<>``, ``not_empty<>``,
# ``unique<>``) and custom ones named by their Python path, called as ``f(value, *args)``
# and returning an error text or None (generate_parameter_library_py's convention).

SCHEMA_TYPES: dict[str, Parameter.Type] = {
    "bool": Parameter.Type.BOOL, "int": Parameter.Type.INTEGER,
    "double": Parameter.Type.DOUBLE, "string": Parameter.Type.STRING,
    "bool_array": Parameter.Type.BOOL_ARRAY, "int_array": Parameter.Type.INTEGER_ARRAY,
    "double_array": Parameter.Type.DOUBLE_ARRAY, "string_array": Parameter.Type.STRING_ARRAY,
}
_PY_TYPES: dict[str, type] = {"bool": bool, "int": int, "double": float, "string": str,
                              "bool_array": list, "int_array": list, "double_array": list,
                              "string_array": list}
_SPEC_KEYS = {"type", "default_value", "description", "read_only", "validation",
              "additional_constraints"}
_MAP_PREFIX = "__map_"
_INT64 = (-(2**63), 2**63 - 1)


def _fmt(value: Any) -> str:
    return ", ".join(map(str, value)) if isinstance(value, (list, tuple)) else f"{value:g}" \
        if isinstance(value, float) else str(value)


def _bounds(value: Any, lo: Any, hi: Any) -> str | None:
    return None if lo <= value <= hi else f"must be within {_fmt(lo)}..{_fmt(hi)}"


BUILTIN_VALIDATORS: dict[str, Callable[..., str | None]] = {
    "bounds<>": _bounds,
    "lt<>": lambda v, x: None if v < x else f"must be less than {_fmt(x)}",
    "gt<>": lambda v, x: None if v > x else f"must be greater than {_fmt(x)}",
    "lt_eq<>": lambda v, x: None if v <= x else f"must be at most {_fmt(x)}",
    "gt_eq<>": lambda v, x: None if v >= x else f"must be at least {_fmt(x)}",
    "one_of<>": lambda v, choices: None if v in choices
    else f"must be one of {_fmt(choices)}",
    "subset_of<>": lambda v, choices: None if set(v) <= set(choices)
    else f"entries must be among {_fmt(choices)}",
    "not_empty<>": lambda v: None if len(v) else "must not be empty",
    "unique<>": lambda v: None if len(set(v)) == len(v) else "entries must be unique",
}


# Custom validators of the project (named in schemas as dicom_or_ros.params.<name>).

def dicom_vr(value: str, vr_name: str, required: bool = False) -> str | None:
    """``value`` is a valid DICOM ``vr_name`` (PS3.5 6.2: AE, SH, CS, ...); empty only when
    not ``required``."""
    if not value.strip():
        return f"must be a non-empty {vr_name}" if required else None
    try:
        getattr(vr, f"check_{vr_name.lower()}")(vr_name, value)
    except DicomOrError as exc:
        return exc.rule
    return None


def each_dicom_vr(values: list[str], vr_name: str) -> str | None:
    """Every entry is a non-empty, valid DICOM ``vr_name``."""
    for value in values:
        problem = dicom_vr(value, vr_name, required=True)
        if problem:
            return f"entry {value!r}: {problem}"
    return None


def no_empty_entries(values: list[str]) -> str | None:
    """No entry of a string array is empty or blank."""
    return None if all(v.strip() for v in values) else "entries must not be empty"


def topic_names(values: list[str]) -> str | None:
    """Every entry is a fully qualified ROS topic name (starts with '/')."""
    return None if all(t.startswith("/") for t in values) else \
        "entries must be fully qualified topic names (/...)"


def zero_or_bounds(value: int | float, lo: int | float, hi: int | float) -> str | None:
    """0 (unlimited / off) or within lo..hi."""
    return None if value == 0 or lo <= value <= hi else \
        f"must be 0 or within {_fmt(lo)}..{_fmt(hi)}"


@dataclass(frozen=True)
class ParameterSpec:
    """One parameter of a schema, its name flattened (``igtl.host``)."""

    name: str
    type: str
    default_value: Any
    description: str
    read_only: bool
    validation: tuple[tuple[str, tuple[Any, ...]], ...]
    additional_constraints: str = ""
    map_key: str = ""  # "groups" for a parameter under __map_groups


def _validator(name: str) -> Callable[..., str | None]:
    if name in BUILTIN_VALIDATORS:
        return BUILTIN_VALIDATORS[name]
    module, _, function = name.rpartition(".")
    if not module or name.endswith("<>"):
        raise DicomOrError("validation", "unknown validator", name)
    try:
        return getattr(importlib.import_module(module), function)
    except (ImportError, AttributeError):
        raise DicomOrError("validation", "validator not found", name) from None


def _spec(name: str, raw: dict[str, Any], map_key: str = "") -> ParameterSpec:
    unknown = set(raw) - _SPEC_KEYS
    if unknown:
        raise DicomOrError(name, f"unknown schema keys {sorted(unknown)}")
    kind = raw.get("type")
    if kind not in SCHEMA_TYPES:
        raise DicomOrError(name, f"type must be one of {', '.join(SCHEMA_TYPES)}", kind)
    if "default_value" not in raw:
        raise DicomOrError(name, "needs a default_value")
    default = raw["default_value"]
    if kind == "double" and type(default) is int:
        default = float(default)
    if type(default) is not _PY_TYPES[kind]:
        raise DicomOrError(name, f"default_value is not a {kind}", default)
    if not isinstance(raw.get("description"), str) or not raw["description"].strip():
        raise DicomOrError(name, "needs a description")
    validation = raw.get("validation") or {}
    if not isinstance(validation, dict):
        raise DicomOrError(name, "validation must be a mapping", validation)
    checks = []
    for validator, args in validation.items():
        _validator(validator)
        if not isinstance(args, list):
            raise DicomOrError(name, f"{validator}: arguments must be a list", args)
        checks.append((validator, tuple(args)))
    spec = ParameterSpec(name, kind, default, raw["description"].strip(),
                         bool(raw.get("read_only", False)), tuple(checks),
                         str(raw.get("additional_constraints", "")), map_key)
    problem = _check(spec, default)
    if problem:
        raise DicomOrError(name, f"default_value fails its own validation: {problem}",
                           default)
    return spec


def _flatten(prefix: str, tree: dict[str, Any], map_key: str = "") -> list[ParameterSpec]:
    specs: list[ParameterSpec] = []
    for key, value in tree.items():
        if not isinstance(value, dict):
            raise DicomOrError(f"{prefix}{key}", "must be a parameter or a group", value)
        if key.startswith(_MAP_PREFIX):
            specs += _flatten(prefix, value, prefix + key[len(_MAP_PREFIX):])
        elif "type" in value:
            specs.append(_spec(prefix + key, value, map_key))
        else:
            specs += _flatten(f"{prefix}{key}.", value, map_key)
    return specs


@functools.cache
def load_schema(path: Path) -> tuple[str, tuple[ParameterSpec, ...]]:
    """The node name and the parameters of the schema file ``path``, checked: known types,
    a typed default that passes its own validation, a description, known validators."""
    try:
        document = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise DicomOrError("parameter schema", f"cannot be read: {exc}", str(path)) from None
    if not isinstance(document, dict) or len(document) != 1:
        raise DicomOrError("parameter schema", "must have one top-level key (the node)",
                           str(path))
    (node_name, tree), = document.items()
    try:
        specs = _flatten("", tree or {})
    except DicomOrError as exc:
        raise DicomOrError(f"{Path(path).name}: {exc.field}", exc.rule, exc.value) from None
    for spec in specs:
        if spec.map_key and spec.map_key not in {s.name for s in specs}:
            raise DicomOrError(f"{Path(path).name}: {spec.name}",
                               f"__map_{spec.map_key} names no parameter")
    return node_name, tuple(specs)


def schema_file(package: str, filename: str) -> Path:
    """A schema shipped as package data beside the node's module."""
    return Path(str(importlib.resources.files(package).joinpath(filename)))


def _check(spec: ParameterSpec, value: Any) -> str | None:
    for validator, args in spec.validation:
        problem = _validator(validator)(value, *args)
        if problem:
            return problem
    return None


def _range(spec: ParameterSpec) -> dict[str, Any]:
    """The descriptor range ``ros2 param describe`` shows, from bounds<> / gt_eq<> / lt_eq<>
    (ROS ranges are closed intervals: gt<> and lt<> have none)."""
    lo, hi = None, None
    for validator, args in spec.validation:
        if validator == "bounds<>":
            lo, hi = args
        elif validator == "gt_eq<>":
            lo = args[0]
        elif validator == "lt_eq<>":
            hi = args[0]
    if lo is None and hi is None:
        return {}
    if spec.type == "double":
        return {"floating_point_range": [FloatingPointRange(
            from_value=float(-math.inf if lo is None else lo),
            to_value=float(math.inf if hi is None else hi), step=0.0)]}
    if spec.type == "int":
        return {"integer_range": [IntegerRange(
            from_value=int(_INT64[0] if lo is None else lo),
            to_value=int(_INT64[1] if hi is None else hi), step=0)]}
    return {}


def _constraints(spec: ParameterSpec) -> str:
    parts = [spec.additional_constraints] if spec.additional_constraints else []
    parts += [f"{v} {list(a)}" if a else v for v, a in spec.validation]
    return "; ".join(parts)


def _namespace(name: str, values: dict[str, tuple[type, Any]]) -> Any:
    """A frozen dataclass instance with one typed field per value; ``a.b`` names become a
    nested frozen group ``a`` with field ``b``."""
    groups: dict[str, dict[str, tuple[type, Any]]] = {}
    fields: dict[str, tuple[type, Any]] = {}
    for key, typed in values.items():
        head, dot, rest = key.partition(".")
        if dot:
            groups.setdefault(head, {})[rest] = typed
        else:
            fields[key] = typed
    for head, members in groups.items():
        group = _namespace(f"{name}_{head}", members)
        fields[head] = (type(group), group)
    cls = make_dataclass(name, [(key, typed[0]) for key, typed in fields.items()],
                         frozen=True)
    return cls(**{key: typed[1] for key, typed in fields.items()})


def load_parameters(node: Node, package: str, *schemas: str,
                    defaults: Mapping[str, Any] | None = None) -> Any:
    """Declare, validate and return every parameter of the node's schema files.

    ``schemas`` are package-data files of ``package`` (several: shared tables first, e.g.
    the drivers' common parameters). Each parameter is declared with a ParameterDescriptor
    (description with its type, read_only, the validators as additional_constraints, and a
    FloatingPointRange / IntegerRange for bounds, so ``ros2 param describe`` documents it);
    an integer given for a double is taken as a double. A wrong type or a failed validator
    raises DicomOrError naming the parameter (``run_node`` prints one line, exit 1).

    ``defaults`` replaces a schema default where it depends on the node: a value, or a
    callable of the values declared so far (e.g. the equipment model name by ``source``).
    Returns a frozen dataclass: ``params.video_quality``, ``params.igtl.host``.
    """
    defaults = dict(defaults or {})
    specs = [spec for schema in schemas
             for spec in load_schema(schema_file(package, schema))[1]]
    # Mapped parameters after the others: their names come from their key parameter's value.
    specs.sort(key=lambda spec: bool(spec.map_key))
    values: dict[str, tuple[type, Any]] = {}
    plain: dict[str, Any] = {}
    for spec in specs:
        names = [spec.name]
        if spec.map_key:
            keys = plain[spec.map_key]
            bad = [k for k in keys if not k.isidentifier() or keyword.iskeyword(k) or k in plain]
            if bad:
                raise DicomOrError(spec.map_key, "entries name parameters: each must be an "
                                   "identifier and no other parameter's name", bad)
            names = [f"{key}.{spec.name}" for key in keys]
        for name in names:
            default = defaults.get(name, spec.default_value)
            if callable(default):
                default = default(plain)
            value = _declare_spec(node, spec, name, default)
            plain[name] = value
            values[name] = (_PY_TYPES[spec.type], value)
    return _namespace(f"{node.get_name()}_parameters", values)


def _declare_spec(node: Node, spec: ParameterSpec, name: str, default: Any) -> Any:
    value = declare(node, name, default, spec.description, read_only=False,
                    param_type=SCHEMA_TYPES[spec.type])
    problem = _check(spec, value)
    if problem:
        raise DicomOrError(name, problem, value)
    if node.get_parameter(name).type_ != SCHEMA_TYPES[spec.type] and value != []:
        # An integer given for a double: stored as the double it stands for.
        node.set_parameters([Parameter(name, SCHEMA_TYPES[spec.type], value)])
    descriptor = ParameterDescriptor(
        description=f"{spec.description} [{spec.type}]", read_only=spec.read_only,
        dynamic_typing=True, additional_constraints=_constraints(spec), **_range(spec))
    node.set_descriptor(name, descriptor)
    return value
