"""Running the Debian DICOM tools the demo uses beside the graph (dcmtk, dicom3tools).

The demo starts dcmtk's worklist server and validates what was recorded with dciodvfy; the
tests use the same runners (``dicom_or_test_common.peers``). Every run has a timeout, so a
hung tool is an error naming it, never a hang.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path


def free_tcp_port() -> int:
    """A TCP port free on 127.0.0.1 now, for peers that cannot bind port 0 and report it
    (dcmtk storescp, Orthanc). Our own servers bind 0 and report the port they got."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def have(tool: str) -> bool:
    """Whether a peer's command is installed."""
    return shutil.which(tool) is not None or Path(tool).is_file()


# pynetdicom ships console scripts with dcmtk's names; a peer test must run dcmtk's.
DCMTK_TOOLS = ("echoscu", "findscu", "getscu", "movescu", "storescu", "storescp")


def tool_path(tool: str) -> str:
    """The Debian dcmtk binary for a dcmtk tool name, whatever PATH says; else ``tool``."""
    if tool in DCMTK_TOOLS and Path("/usr/bin", tool).is_file():
        return str(Path("/usr/bin", tool))
    return tool


def run_tool(args: list[str], timeout_s: float = 60.0, check: bool = False,
             cwd: str | Path | None = None) -> subprocess.CompletedProcess:
    """Run a dcmtk / dicom3tools command, capturing text output, never longer than
    ``timeout_s`` (a TimeoutExpired then propagates with the command named)."""
    return subprocess.run([tool_path(args[0]), *args[1:]], capture_output=True, text=True,
                          timeout=timeout_s, check=check, cwd=cwd)


def dciodvfy(path: str | Path) -> tuple[int, list[str]]:
    """Validate one file with dicom3tools' dciodvfy: (error count, error lines).

    dciodvfy prints ``Error - ...`` lines for IOD violations and ``Warning - ...`` for
    the rest; only errors count.
    """
    result = run_tool(["dciodvfy", str(path)], timeout_s=120)
    lines = (result.stdout + result.stderr).splitlines()
    errors = [line for line in lines if line.startswith("Error")]
    return len(errors), errors
