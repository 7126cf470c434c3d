"""Test isolation for anything that touches DDS.

Each test gets its own ROS_DOMAIN_ID, reserved with an exclusive file lock so tests running
side by side (colcon's parallel executor, several pytest processes, a demo) never share a
domain, and localhost-only discovery so nothing leaves the machine.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from dicom_or_bringup.peer_tools import free_tcp_port  # noqa: F401  (re-exported for tests)

# 0 is everybody's default and the demo's; 1-100 are left to users. 101..232 are valid
# Fast DDS domains whose ports (7400 + 250 * id) stay below the ephemeral port range.
_FIRST, _LAST = 101, 232
_LOCK_DIR = Path(tempfile.gettempdir()) / "dicom_or_domains"


@contextmanager
def reserved_domain_id() -> Iterator[int]:
    """Hold an unused DDS domain id for the duration of the ``with`` block."""
    _LOCK_DIR.mkdir(exist_ok=True)
    start = _FIRST + os.getpid() % (_LAST - _FIRST + 1)
    span = _LAST - _FIRST + 1
    for offset in range(span):
        domain = _FIRST + (start - _FIRST + offset) % span
        handle = open(_LOCK_DIR / f"{domain}.lock", "w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        try:
            yield domain
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()
        return
    raise RuntimeError("no free DDS domain id between 101 and 232")


def isolated_env(domain_id: int, base: dict[str, str] | None = None) -> dict[str, str]:
    """An environment for child processes on ``domain_id``, discovery limited to localhost."""
    env = dict(os.environ if base is None else base)
    env["ROS_DOMAIN_ID"] = str(domain_id)
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env.pop("ROS_STATIC_PEERS", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@contextmanager
def ros_context() -> Iterator[object]:
    """An initialised rclpy Context on a reserved domain, shut down afterwards.

    In-process tests create their nodes with ``context=ctx`` and spin them with an executor
    made with the same context, so they never touch the global default context.
    """
    import rclpy
    from rclpy.context import Context

    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    with reserved_domain_id() as domain:
        ctx = Context()
        rclpy.init(context=ctx, domain_id=domain)
        ctx.domain = domain  # for child processes started by the test
        try:
            yield ctx
        finally:
            ctx.try_shutdown()


def spin_until(executor: object, predicate: Callable[[], bool], timeout_s: float) -> bool:
    """Spin ``executor`` until ``predicate()`` holds or ``timeout_s`` passes; return it."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        executor.spin_once(timeout_sec=min(0.05, remaining))
    return True

