"""A recorder's status and control from another process (another host in netns tests).

    python -m dicom_or_test_common.recorder_probe [/or/recorder]

Prints every ``~/status`` it receives as one JSON line ``{"status": {...}}`` (the message as
a dict: streams with their counters, the PACS queue); a line ``STOP`` or ``START`` on stdin
calls ``~/control`` for every stream and prints ``{"control": {...}}``. Ends at EOF on stdin
or SIGTERM. The test reads the lines; nothing here asserts.
"""

from __future__ import annotations

import json
import queue
import sys
import threading
from typing import Any


def to_dict(message: Any) -> Any:
    """A ROS message as plain JSON-able data (fields by name, arrays as lists)."""
    if hasattr(message, "get_fields_and_field_types"):
        return {name: to_dict(getattr(message, name))
                for name in message.get_fields_and_field_types()}
    if isinstance(message, (list, tuple)) or type(message).__name__ == "array":
        return [to_dict(v) for v in message]
    if isinstance(message, (bytes, bytearray)):
        return len(message)
    return message


def main() -> int:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from dicom_or_msgs.msg import RecorderStatus
    from dicom_or_msgs.srv import RecordControl
    from dicom_or_ros.qos import named_qos
    from dicom_or_ros.runtime import apply_transport_defaults

    recorder = sys.argv[1] if len(sys.argv) > 1 else "/or/recorder"
    apply_transport_defaults()
    rclpy.init()
    node = rclpy.create_node("recorder_probe")
    commands: queue.Queue[str] = queue.Queue()

    def on_status(message: RecorderStatus) -> None:
        print(json.dumps({"status": to_dict(message)}), flush=True)

    node.create_subscription(RecorderStatus, f"{recorder}/status", on_status,
                             named_qos("status"))
    control: Any = node.create_client(RecordControl, f"{recorder}/control")

    def read_stdin() -> None:
        for line in sys.stdin:
            commands.put(line.strip())
        commands.put("EOF")

    threading.Thread(target=read_stdin, daemon=True).start()
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    pending: Any = None
    try:
        while rclpy.ok():
            executor.spin_once(timeout_sec=0.1)
            try:
                command = commands.get_nowait()
            except queue.Empty:
                command = ""
            if command == "EOF":
                break
            if command in ("START", "STOP"):
                request = RecordControl.Request()
                request.command = getattr(RecordControl.Request, command)
                pending = control.call_async(request)
            if pending is not None and pending.done():
                print(json.dumps({"control": to_dict(pending.result())}), flush=True)
                pending = None
    except KeyboardInterrupt:
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
