"""Typed, described, validated parameters (teleop_tools style).

Every node declares its parameters through :func:`declare`, which attaches a type and a
description (so ``ros2 param describe`` documents the node) and turns a wrong type or a
failed check into :class:`DicomOrError` naming the parameter: ``run_node`` prints it and the
process exits 1.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rcl_interfaces.msg import ParameterDescriptor
from rclpy.exceptions import (
    InvalidParameterTypeException,
    InvalidParameterValueException,
    ParameterUninitializedException,
)
from rclpy.node import Node
from rclpy.parameter import Parameter

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
