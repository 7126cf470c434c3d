#!/usr/bin/env python3
"""Point the ROS 2 wheels' CMake exports at this interpreter's include directories.

The ``ros-*-msgs`` wheels are built in a manylinux container, and their
``share/*/cmake/export_*__rosidl_generator_pyExport.cmake`` files name that container's
Python and numpy include directories (``/opt/python/cp311-cp311/...``). CMake refuses an
imported target whose include path does not exist, so an interface package that depends on
std_msgs or sensor_msgs fails at generate time. Rewriting the two paths to the venv's own is
idempotent and must run after every pip install that adds a message wheel.
"""

import re
import sys
import sysconfig
from pathlib import Path

import numpy

# The builder's paths, whatever minor Python version the wheel came from.
_PY_INCLUDE = re.compile(r"/opt/python/cp3\d+-cp3\d+/include/python3\.\d+")
_NUMPY_INCLUDE = re.compile(
    r"/opt/python/cp3\d+-cp3\d+/lib/python3\.\d+/site-packages/numpy/(?:_core|core)/include")


def fix(prefix: Path) -> int:
    """Rewrite every export file under ``prefix/share``; return how many changed."""
    py_include = sysconfig.get_paths()["include"]
    np_include = numpy.get_include()
    changed = 0
    for path in sorted(prefix.glob("share/*/cmake/export_*Export*.cmake")):
        text = path.read_text()
        new = _NUMPY_INCLUDE.sub(np_include, _PY_INCLUDE.sub(py_include, text))
        if new != text:
            path.write_text(new)
            changed += 1
    return changed


if __name__ == "__main__":
    prefix = Path(sys.argv[1] if len(sys.argv) > 1 else sys.prefix)
    print(f"fix_wheel_cmake_exports: {fix(prefix)} file(s) rewritten under {prefix}")
