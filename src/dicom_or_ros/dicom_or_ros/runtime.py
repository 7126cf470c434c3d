"""Process set-up shared by every dicom_or node: transport defaults and a clean main().

Applied in each node's ``main()`` before ``rclpy.init`` (not only by the Makefile), so the
same tuning holds under ``ros2 launch`` in a distro, the pip launcher and tests:

* ``FASTDDS_DEFAULT_PROFILES_FILE`` -> the profile of ``DICOM_OR_DDS_TRANSPORT`` unless the
  operator set one: ``shm`` (the default) = ``config/fastdds_profile.xml`` (64 MiB
  shared-memory segment + UDPv4), ``udp`` = ``config/fastdds_udp_profile.xml`` (UDPv4 only,
  large socket buffers: a graph spread over several hosts, or hosts that share /dev/shm and
  must still talk over the network; docs/transport.md). The launch files set the variable
  from their ``dds_transport`` argument. Fast DDS reads the profile when the first
  participant is created, i.e. at node creation, so setting it here is early enough.
* glibc malloc tunables, through ``mallopt`` (the ``MALLOC_*_`` environment variables are
  read only at process start): multi-MB frame buffers otherwise come from fresh ``mmap``
  pages that fault on every frame; measured 15-18 ms -> 6 ms per 1080p frame.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import faulthandler
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from dicom_or_core.config.paths import config_file
from dicom_or_core.model.errors import DicomOrError

if TYPE_CHECKING:  # rclpy itself is imported once the process is set up
    from rclpy.node import Node

ENV_FASTDDS_PROFILE = "FASTDDS_DEFAULT_PROFILES_FILE"
ENV_NO_TUNING = "DICOM_OR_NO_TRANSPORT_TUNING"
ENV_DDS_TRANSPORT = "DICOM_OR_DDS_TRANSPORT"
# dds_transport choice -> the Fast DDS profile of config/ that implements it.
TRANSPORT_PROFILES = {"shm": "fastdds_profile.xml", "udp": "fastdds_udp_profile.xml"}

# mallopt parameter numbers from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_MALLOC_TUNING = {
    _M_MMAP_THRESHOLD: 1 << 30,      # 1 GiB: frame buffers come from the heap, reused
    _M_TRIM_THRESHOLD: 2**31 - 1,    # never give the heap top back between frames
    _M_TOP_PAD: 64 << 20,            # grow the heap 64 MiB at a time
}

_applied = False


def apply_transport_defaults() -> None:
    """Set the project's Fast DDS profile and malloc tuning once per process.

    ``DICOM_OR_NO_TRANSPORT_TUNING=1`` turns both off (for comparisons in bench/). An unknown
    ``DICOM_OR_DDS_TRANSPORT`` raises :class:`DicomOrError` (a typo must not silently give
    a host shared memory instead of the network).
    """
    global _applied
    if _applied or os.environ.get(ENV_NO_TUNING) == "1":
        return
    transport = os.environ.get(ENV_DDS_TRANSPORT, "") or "shm"
    if transport not in TRANSPORT_PROFILES:
        raise DicomOrError(ENV_DDS_TRANSPORT, f"{transport!r} is not a DDS transport; "
                           f"known: {', '.join(TRANSPORT_PROFILES)}")
    _applied = True
    profile = config_file(TRANSPORT_PROFILES[transport])
    if profile.is_file():
        os.environ.setdefault(ENV_FASTDDS_PROFILE, str(profile))
    libc_name = ctypes.util.find_library("c")
    if libc_name and sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(libc_name)
            for param, value in _MALLOC_TUNING.items():
                libc.mallopt(ctypes.c_int(param), ctypes.c_int(value))
        except (OSError, AttributeError):
            pass  # not glibc: the tuning is an optimisation only


NodeT = TypeVar("NodeT", bound="Node")

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def run_node(factory: Callable[[], NodeT], args: list[str] | None = None) -> int:
    """Run one node until Ctrl-C / SIGTERM and return the process exit code.

    * Bad ``--ros-args`` (rclpy cannot parse them) and configuration errors
      (:class:`DicomOrError`, raised while the node validates its parameters) print one line
      naming the problem and return 1, never a traceback.
    * SIGINT and SIGTERM stop spinning but leave the ROS context up, so the node's
      ``close()`` can still publish (a STOPPED status) and finalise its files before the
      context shuts down; a launcher's stop is an orderly stop. rclpy's own handlers, which
      would shut the context down first, are not installed.
    * The process's standard-library logging (pynetdicom, the storage SCU, the worklist
      client) goes to the node's logger and ``/rosout``
      (:mod:`dicom_or_ros.logging_bridge`), and the node publishes ``/diagnostics``
      (:mod:`dicom_or_ros.diagnostics`).
    """
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    from dicom_or_ros.diagnostics import diagnostics_for
    from dicom_or_ros.logging_bridge import install as install_logging

    try:
        apply_transport_defaults()
    except DicomOrError as exc:
        print(f"[ERROR] invalid configuration: {exc}", file=sys.stderr)
        return 1
    # A launcher that finds a node not stopping sends SIGUSR1 before SIGKILL: the node's
    # threads' stacks then land in its log, so a hang can be diagnosed, not just killed.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in _STOP_SIGNALS}
    teardown: _TeardownWatchdog | None = None
    try:
        try:
            init = rclpy.init(args=args if args is not None else sys.argv,
                              signal_handler_options=SignalHandlerOptions.NO)
        except Exception as exc:  # rclpy raises its C extension's RCLError here
            print(f"[ERROR] invalid command line arguments: {exc}".splitlines()[0],
                  file=sys.stderr)
            return 1
        with init:
            try:
                node = factory()
            except DicomOrError as exc:
                print(f"[ERROR] invalid configuration: {exc}", file=sys.stderr)
                return 1
            # Every node: the libraries' log records on its logger and /rosout, and a
            # /diagnostics report (at least its "node" entry) whatever it registered.
            logging_bridge = install_logging(node)
            diagnostics_for(node)
            # Single-threaded on purpose: rclpy's MultiThreadedExecutor dispatches through a
            # Python thread pool and was measured losing 44-87 % of 1080p30 BEST_EFFORT frames
            # where this loses none. Nodes that need parallel work own their threads (the
            # recorder spins one executor per stream; pynetdicom serves in its own threads).
            executor = SingleThreadedExecutor()
            executor.add_node(node)
            try:
                while not stop.is_set() and rclpy.ok(context=node.context):
                    executor.spin_once(timeout_sec=0.1)
            finally:
                close = getattr(node, "close", None)
                if close is not None:
                    close()
                logging_bridge.remove()
                # From here on the node's own work is done (its close() made every file
                # final and published its last status); what is left is middleware teardown.
                teardown = _TeardownWatchdog(node.get_fully_qualified_name())
                executor.shutdown(timeout_sec=5.0)
                node.destroy_node()
    except KeyboardInterrupt:
        pass
    finally:
        if teardown is not None:  # the context is shut down too: leaving ``with init`` did it
            teardown.cancel()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


TEARDOWN_GRACE_S = 3.0


class _TeardownWatchdog:
    """Bound the middleware teardown that follows a node's orderly stop.

    rclpy's ``Node.destroy_node`` (rcl_node_fini -> rmw_fastrtps) was seen to block
    indefinitely, once in a few hundred stops, with only the main thread alive on the Python
    side (a known class of DDS teardown hangs: ros2/rclpy#456, eProsima/Fast-DDS#235). By
    then the node has nothing left to lose: its files are final and its STOPPED status is
    out. Rather than leave a launcher to SIGKILL it after its grace (which reads as a failed
    stop), the process prints every thread's stack and exits 0 after
    :data:`TEARDOWN_GRACE_S`; the stacks keep the hang diagnosable.
    """

    def __init__(self, node_name: str, grace_s: float = TEARDOWN_GRACE_S) -> None:
        self._node_name = node_name
        self._timer = threading.Timer(grace_s, self._expire, args=(grace_s,))
        self._timer.daemon = True
        self._timer.start()

    def _expire(self, grace_s: float) -> None:
        print(f"[WARN] {self._node_name}: the middleware teardown did not finish in "
              f"{grace_s:g} s after the node stopped (its work is complete); exiting "
              "without it. Thread stacks follow.", file=sys.stderr, flush=True)
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        sys.stderr.flush()
        os._exit(0)

    def cancel(self) -> None:
        self._timer.cancel()
