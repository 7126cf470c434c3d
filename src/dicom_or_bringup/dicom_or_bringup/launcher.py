"""Run a launch file without a ROS 2 distro: the pip user's ``ros2 launch``.

Each node of the resolved launch file (:mod:`dicom_or_bringup.graph` reads the same
``launch/*.launch.yaml`` that ``ros2 launch`` runs) becomes a child process of its installed
console script with the ``--ros-args`` launch_ros would give it: node name, namespace,
parameter files and name/value parameters in their order (the latter written to a parameter
file, as launch_ros does, so values keep their types) and remappings. Stopping is orderly:
SIGTERM to every child (``run_node`` turns it into a clean stop, so recorders finalise their
files; a child still importing simply ends, as it has written nothing), then SIGKILL after
each node's grace, the ``sigterm_timeout`` + ``sigkill_timeout`` of its ``node`` entry (the
values ``ros2 launch`` uses for the same node); no child outlives the launcher.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from dicom_or_bringup import graph
from dicom_or_bringup.graph import NodeSpec
from dicom_or_core.model.errors import DicomOrError

_PR_SET_PDEATHSIG = 1
# Exit codes of a node that stopped because we asked it to: run_node's 0, or SIGTERM's
# default action before the node had started.
STOPPED_CLEANLY = (0, -signal.SIGTERM)


def _terminate_with_parent() -> None:
    """In the child before exec: ask Linux for SIGTERM when the launcher dies."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def executable_path(spec: NodeSpec) -> Path:
    """The installed console script ``<prefix>/lib/<package>/<executable>``."""
    from ament_index_python.packages import PackageNotFoundError, get_package_prefix

    try:
        prefix = Path(get_package_prefix(spec.package))
    except PackageNotFoundError:
        raise DicomOrError(f"{spec.name}.package",
                           f"package {spec.package!r} is not installed (colcon build, then "
                           "source install/setup.bash)") from None
    path = prefix / "lib" / spec.package / spec.executable
    if not path.is_file():
        raise DicomOrError(f"{spec.name}.executable",
                           f"{spec.package} has no executable {spec.executable!r}")
    return path


def ros_args(spec: NodeSpec, parameter_files: list[str]) -> list[str]:
    """``--ros-args`` equivalent to what launch_ros passes for the same node."""
    args = ["--ros-args", "-r", f"__node:={spec.name}", "-r", f"__ns:={spec.namespace}"]
    for params in parameter_files:
        args += ["--params-file", params]
    for source, target in spec.remappings:
        args += ["-r", f"{source}:={target}"]
    return args


def parameter_files(spec: NodeSpec, folder: Path) -> list[str]:
    """The node's parameters as files, in launch order: each run of name/value parameters
    written to one file under the node's full name (launch_ros writes such a file too)."""
    files: list[str] = []
    run: dict[str, Any] = {}

    def flush() -> None:
        if run:
            path = folder / f"{spec.name}.{len(files)}.overrides.yaml"
            path.write_text(yaml.safe_dump({spec.fully_qualified_name: {
                "ros__parameters": dict(run)}}))
            files.append(str(path))
            run.clear()

    for params in spec.parameters:
        if isinstance(params, dict):
            run.update(params)
        else:
            flush()
            files.append(params)
    flush()
    return files


class ProcessGroup:
    """The running nodes of one graph."""

    def __init__(self, specs: list[NodeSpec], env: dict[str, str] | None = None,
                 log_dir: Path | None = None) -> None:
        self.specs = specs
        self.env = dict(os.environ if env is None else env)
        self.log_dir = log_dir
        self.processes: dict[str, subprocess.Popen] = {}
        self._tmp = tempfile.TemporaryDirectory(prefix="dicom_or_launch_")

    def start(self) -> None:
        """Start every node in its own session, logging to ``log_dir/<name>.log`` if given; every
        executable is resolved first, so a missing package starts no node."""
        # Resolve every executable first, so a missing package fails before anything runs.
        commands = []
        for spec in self.specs:
            files = parameter_files(spec, Path(self._tmp.name))
            commands.append((spec, [str(executable_path(spec)), *ros_args(spec, files)]))
        for spec, command in commands:
            env = {**self.env, **spec.environment}
            output = None
            if self.log_dir is not None:
                self.log_dir.mkdir(parents=True, exist_ok=True)
                output = open(self.log_dir / f"{spec.name}.log", "w")
            # Own session: a terminal's Ctrl-C reaches only the launcher, which then stops
            # the nodes in order (the bridge can still answer while the recorder finalises).
            # Parent-death signal: no node outlives a launcher that was killed outright.
            self.processes[spec.name] = subprocess.Popen(
                command, env=env, stdout=output, stderr=subprocess.STDOUT if output else None,
                stdin=subprocess.DEVNULL, start_new_session=True,
                preexec_fn=_terminate_with_parent)
            if output is not None:
                output.close()

    def failed(self) -> dict[str, int]:
        """Children that have exited with a non-zero code, by node name."""
        return {name: proc.returncode for name, proc in self.processes.items()
                if proc.poll() is not None and proc.returncode != 0}

    def stop(self, grace_s: float | None = None) -> dict[str, int]:
        """SIGTERM everyone, SIGKILL a node still running after its grace (``grace_s`` if
        given, else the node's own ``stop_grace_s``); return each child's exit code.

        SIGTERM rather than SIGINT: before a node's ``run_node`` has installed its handlers
        (while Python is still importing), SIGINT would print a KeyboardInterrupt traceback,
        while SIGTERM's default action ends the process quietly.
        """
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        graces = {spec.name: spec.stop_grace_s if grace_s is None else grace_s
                  for spec in self.specs}
        self.stop_seconds: dict[str, float] = {}
        for name, proc in self.processes.items():
            grace = graces.get(name, 10.0)
            try:
                proc.wait(timeout=max(0.0, started + grace - time.monotonic()))
                self.stop_seconds[name] = time.monotonic() - started
            except subprocess.TimeoutExpired:
                print(f"dicom_or_launch: {name} did not stop in {grace:g} s; its stacks "
                      "follow in its log (SIGUSR1), then SIGKILL", file=sys.stderr)
                proc.send_signal(signal.SIGUSR1)
                try:
                    proc.wait(timeout=1.0)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self._tmp.cleanup()
        return {name: proc.returncode for name, proc in self.processes.items()}


class StopSignals:
    """From creation on, SIGINT and SIGTERM only record that a stop was asked for.

    Created before any node starts, so a Ctrl-C while the graph is still starting is an
    orderly stop too, never a KeyboardInterrupt half-way through spawning children.
    """

    def __init__(self) -> None:
        self.reason = ""
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.reason = signal.Signals(signum).name


def wait(group: ProcessGroup, duration_s: float | None, signals: StopSignals) -> str:
    """Block until ``duration_s`` passes, a node fails, or a stop signal was received."""
    end = None if duration_s is None else time.monotonic() + duration_s
    while not signals.reason:
        if end is not None and time.monotonic() >= end:
            return "duration"
        failed = group.failed()
        if failed:
            name, code = next(iter(failed.items()))
            return f"node {name} exited with {code}"
        time.sleep(0.2)
    return signals.reason


def parse_launch_arguments(items: list[str]) -> dict[str, str]:
    """``name:=value`` words, as ``ros2 launch`` takes them."""
    given = {}
    for item in items:
        if ":=" not in item:
            raise DicomOrError(item, "launch arguments are written name:=value")
        name, value = item.split(":=", 1)
        given[name] = value
    return given


def show_arguments(arguments: list[graph.Argument]) -> str:
    """The argument list in ``ros2 launch --show-args``'s layout."""
    lines = ["Arguments (pass arguments as '<name>:=<value>'):"]
    for arg in arguments:
        lines += ["", f"    '{arg.name}':", f"        {arg.description}"]
        if arg.default is not None:
            lines.append(f"        (default: '{arg.default}')")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``dicom_or_launch <launch file> [name:=value ...]``: run it until Ctrl-C."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="dicom_or_launch",
        description="Start the nodes of a dicom_or launch file (launch/<name>.launch.yaml, "
                    "as 'ros2 launch dicom_or_bringup <name>.launch.yaml' would) without a "
                    "ROS 2 distro.")
    parser.add_argument("graph", metavar="launch_file",
                        help="launch file name, e.g. or_demo, bridge, recorder")
    parser.add_argument("arguments", nargs="*", help="launch arguments name:=value")
    parser.add_argument("--duration", type=float, help="stop after this many seconds")
    parser.add_argument("--show-args", action="store_true",
                        help="list the launch arguments (those of included files too) "
                             "and exit")
    parser.add_argument("--print", action="store_true", dest="print_only",
                        help="print the command of every node and exit")
    options = parser.parse_args(argv)
    try:
        if options.show_args:
            print(show_arguments(graph.arguments(options.graph)))
            return 0
        specs = graph.resolve(options.graph, parse_launch_arguments(options.arguments))
        group = ProcessGroup(specs)
        if options.print_only:
            for spec in specs:
                files = parameter_files(spec, Path(group._tmp.name))
                print(" ".join([str(executable_path(spec)), *ros_args(spec, files)]))
            return 0
        signals = StopSignals()
        group.start()
    except DicomOrError as exc:
        print(f"dicom_or_launch: {exc}", file=sys.stderr)
        return 1
    reason = wait(group, options.duration, signals)
    print(f"dicom_or_launch: stopping ({reason})", file=sys.stderr)
    codes = group.stop()
    # The stop handlers stay until the process ends: a second Ctrl-C while the nodes
    # stop (or while the results print) must not turn into a KeyboardInterrupt.
    failed = {n: c for n, c in codes.items() if c not in STOPPED_CLEANLY}
    for name, code in failed.items():
        print(f"dicom_or_launch: {name} exited with {code}", file=sys.stderr)
    return 1 if failed or reason.startswith("node ") else 0
