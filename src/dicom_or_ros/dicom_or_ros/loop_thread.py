"""An asyncio event loop in a thread of its own, for the nodes' HTTP services (aiohttp).

rclpy's executor owns the node's main thread, so a web service beside it (the bridge's
DICOMweb, the OR view) runs its own loop in a daemon thread. :func:`start_loop_thread` binds
the service in that loop and reports a failure to bind (a busy port) to the caller, so the
node can exit with one line naming the parameter instead of serving nothing.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable


def start_loop_thread(bind: Callable[[], Awaitable[None]], name: str, what: str,
                      timeout_s: float = 10.0
                      ) -> tuple[asyncio.AbstractEventLoop, threading.Thread]:
    """Run ``bind()`` in a new event loop on a thread called ``name``, then keep the loop
    running; returns (loop, thread) once bound. Raises what ``bind`` raised (OSError when
    the port cannot be bound), or OSError naming ``what`` when it did not finish in
    ``timeout_s``. Stop with ``loop.call_soon_threadsafe(loop.stop)`` and join the thread."""
    started = threading.Event()
    failure: list[BaseException] = []
    loop = asyncio.new_event_loop()

    def run() -> None:
        try:
            loop.run_until_complete(bind())
        except BaseException as exc:  # reported to the caller below
            failure.append(exc)
            started.set()
            loop.close()
            return
        started.set()
        loop.run_forever()
        loop.close()

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    if not started.wait(timeout_s):
        raise OSError(f"{what} did not start in {timeout_s} s")
    if failure:
        thread.join()
        raise failure[0]
    return loop, thread
