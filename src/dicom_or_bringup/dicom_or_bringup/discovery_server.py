"""``dicom_or_discovery_server``: a Fast DDS Discovery Server for a graph over several hosts.

Runs eProsima's ``fast-discovery-server`` (shipped with Fast DDS: in a distro on PATH, in the
pip install as the ros-fastdds wheel's ``fast-discovery-server-<version>`` in the venv's
``bin``) listening on ``--address``:``--port``; nodes started with
``discovery_server:=<address>:<port>`` (ROS_DISCOVERY_SERVER) then discover each other
through it instead of multicast (docs/transport.md).

The wheel's binary is linked against ``libfastdds`` by an RPATH that points into the wheel's
build tree, so it does not start as installed; this wrapper puts the venv's ``lib`` and the
wheel's vendored libraries on ``LD_LIBRARY_PATH``. The binary takes a command index first
(42 = run a server), as the ``fastdds discovery`` Python front end passes it. The process
is replaced by the server (``exec``), so a launcher's SIGTERM / SIGINT reach it directly.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import sysconfig
from pathlib import Path

# fastdds/tools/fastdds/discovery/parser.py: Command.SERVER -> 42.
SERVER_COMMAND = "42"
DEFAULT_PORT = 11811


def find_server() -> Path | None:
    """The ``fast-discovery-server`` binary: the versioned one next to this Python (the
    wheel's; the unversioned name is a shell front end there), else one on PATH."""
    bin_dir = Path(sys.prefix) / "bin"
    versioned = sorted(bin_dir.glob("fast-discovery-server-*"))
    if versioned:
        return versioned[-1]
    found = shutil.which("fast-discovery-server")
    return Path(found) if found else None


def library_path() -> str:
    """``LD_LIBRARY_PATH`` with the venv's lib and the ros-fastdds wheel's vendored libs."""
    site = Path(sysconfig.get_paths()["purelib"])
    extra = [str(p) for p in (Path(sys.prefix) / "lib", site / "ros_fastdds.libs") if p.is_dir()]
    current = os.environ.get("LD_LIBRARY_PATH", "")
    return os.pathsep.join([*extra, *([current] if current else [])])


def main(argv: list[str] | None = None) -> int:
    """Parse the options and replace this process by the server (2 on a bad option, 1 when
    no server binary is installed)."""
    args = sys.argv[1:] if argv is None else argv
    # A launch file's node action appends --ros-args ...: not ours, ignored.
    if "--ros-args" in args:
        args = args[:args.index("--ros-args")]
    parser = argparse.ArgumentParser(
        prog="dicom_or_discovery_server",
        description="Run a Fast DDS Discovery Server (nodes: discovery_server:=ADDRESS:PORT)")
    parser.add_argument("--address", default="0.0.0.0",
                        help="IPv4 address to listen on (default: every interface)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"UDP port (default {DEFAULT_PORT})")
    options = parser.parse_args(args)
    if not 0 < options.port < 65536:
        print(f"dicom_or_discovery_server: --port {options.port} is not a UDP port",
              file=sys.stderr)
        return 2
    server = find_server()
    if server is None:
        print("dicom_or_discovery_server: fast-discovery-server not found (pip install "
              "ros-fastdds, or install Fast DDS)", file=sys.stderr)
        return 1
    os.environ["LD_LIBRARY_PATH"] = library_path()
    command = [str(server), SERVER_COMMAND, "-l", options.address, "-p", str(options.port)]
    sys.stdout.flush()
    os.execv(command[0], command)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
