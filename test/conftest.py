"""System tests: the workspace as users run it (installed console scripts, real peers)."""

import shutil

import pytest
from dicom_or_test_common.ros import isolated_env, reserved_domain_id


@pytest.fixture
def ros_env():
    """Environment for child processes on a DDS domain of their own, localhost only."""
    with reserved_domain_id() as domain:
        yield isolated_env(domain)


def require(*tools: str) -> None:
    """Fail (not skip) when a peer the project's CI installs is missing: a skipped system
    test would hide that the peers are not installed."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: run tools/install_system_deps")
