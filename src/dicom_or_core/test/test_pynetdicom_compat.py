"""The pynetdicom compatibility shim: the installed pynetdicom is a version it was written
for, and every private attribute and internal hook it lists exists there."""

from __future__ import annotations

import ast
from pathlib import Path

import pynetdicom
import pytest
from pynetdicom import _config
from pynetdicom.dimse_primitives import C_MOVE

from dicom_or_core.scu import compat


def test_installed_pynetdicom_is_a_tested_version():
    assert pynetdicom.__version__.startswith(compat.TESTED_PYNETDICOM), pynetdicom.__version__
    compat.check_pynetdicom()
    for other in ("3.1.0", "2.0.2", "4.0.0"):
        with pytest.raises(RuntimeError, match="untested"):
            compat.check_pynetdicom(other)


def test_every_private_attribute_and_hook_exists():
    assert compat.missing_internals() == []
    assert len(compat.PRIVATE_ATTRIBUTES) == 3 and len(compat.INTERNAL_HOOKS) == 8


def test_shim_functions_do_what_they_say():
    before = _config.STORE_SEND_CHUNKED_DATASET
    try:
        compat.send_stored_files_chunked()
        assert _config.STORE_SEND_CHUNKED_DATASET is True
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = before
    primitive = C_MOVE()
    compat.set_raw_move_destination(primitive, "")  # pynetdicom's setter refuses ""
    assert primitive.MoveDestination == ""


def test_no_other_module_touches_a_pynetdicom_private_attribute():
    """Outside the shim, no code of the core's SCUs or the bridge imports a private
    pynetdicom name or calls/sets one on a pynetdicom object (attributes of the project's
    own classes, such as GuardedSocket's, are not pynetdicom's)."""
    src = Path(__file__).resolve().parents[2]
    files = [*(src / "dicom_or_core" / "dicom_or_core" / "scu").glob("*.py"),
             *(src / "dicom_or_bridge" / "dicom_or_bridge").glob("*.py")]
    private = {name.rsplit(".", 1)[-1].rstrip("()") for name in compat.PRIVATE_ATTRIBUTES}
    private |= {"_config", "_create_association", "_move_destination", "_handlers",
                "_servers", "_recv_pdu", "_server", "_kill"}
    found = []
    for path in files:
        if path.name == "compat.py":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pynetdicom"):
                found += [f"{path.name}: import {a.name}" for a in node.names
                          if a.name.startswith("_")]
            own = isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                and node.value.id in ("self", "cls")
            if isinstance(node, ast.Attribute) and node.attr in private and not own:
                found.append(f"{path.name}:{node.lineno}: .{node.attr}")
    assert found == []
