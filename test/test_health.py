"""Standard health and logging of the OR graph as a user runs it (dicom_or_launch or_demo),
recording to a real PACS peer (dcmtk storescp):

* ``/diagnostics`` carries a ``node`` entry for every node and an entry per stream, from
  the driver that publishes it and from the recorder that follows it;
* what the storage SCU logs through the standard library reaches ``/rosout`` under the
  recorder's logger;
* every node name is unique, the recorder's per-stream helper nodes included, under the
  launcher's ``__node:=`` / ``__ns:=`` remaps.
"""

import os
import subprocess
import time

import rclpy
from conftest import require
from diagnostic_msgs.msg import DiagnosticArray
from dicom_or_test_common.peers import STORESCP_AE, free_tcp_port, storescp
from graph_support import start_graph, stop
from rcl_interfaces.msg import Log
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import DurabilityPolicy, QoSProfile

from dicom_or_msgs.srv import RecordControl
from dicom_or_ros.diagnostics import DIAGNOSTICS_TOPIC, status_level
from dicom_or_ros.graph import discover_streams

PACS_AE = STORESCP_AE
RECORDER = "/or/recorder"
SCU_LOGGER = ".dicom_or.storage_scu"  # a child of the recorder's logger
# The levels a healthy demo may show: OK, or STALE for a stream that is briefly late on a
# loaded 2-core machine; never ERROR.
ERROR = 2


class Observer:
    """A node on the graph's domain that keeps the latest /diagnostics entry per name and
    every /rosout record."""

    def __init__(self, env: dict[str, str]) -> None:
        os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = env["ROS_AUTOMATIC_DISCOVERY_RANGE"]
        self.context = Context()
        rclpy.init(context=self.context, domain_id=int(env["ROS_DOMAIN_ID"]))
        self.node = rclpy.create_node("health_observer", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.health: dict[str, object] = {}
        self.logs: list[Log] = []
        self.node.create_subscription(DiagnosticArray, DIAGNOSTICS_TOPIC, self._on_array, 50)
        # /rosout is transient local: records logged before this subscription arrive too.
        self.node.create_subscription(
            Log, "/rosout", self.logs.append,
            QoSProfile(depth=1000, durability=DurabilityPolicy.TRANSIENT_LOCAL))
        self.control = self.node.create_client(RecordControl, f"{RECORDER}/control")

    def _on_array(self, array) -> None:
        for status in array.status:
            self.health[status.name] = status

    def spin_until(self, predicate, timeout_s: float, graph: subprocess.Popen) -> bool:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            assert graph.poll() is None, graph.communicate()[0][-3000:]
            if time.monotonic() > deadline:
                return False
            self.executor.spin_once(timeout_sec=0.1)
        return True

    def call(self, request, graph: subprocess.Popen):
        future = self.control.call_async(request)
        assert self.spin_until(future.done, 30, graph)
        return future.result()

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        self.context.try_shutdown()


def test_diagnostics_per_node_and_stream_and_library_logs_on_rosout(ros_env, tmp_path):
    require("storescp", "echoscu")
    output = tmp_path / "recordings"
    with storescp(tmp_path / "pacs") as pacs_port:
        graph = start_graph(ros_env, output, free_tcp_port(), f"pacs_port:={pacs_port}",
                            f"pacs_ae:={PACS_AE}")
        observer = Observer(ros_env)
        try:
            node = observer.node

            def graph_nodes() -> list[tuple[str, str]]:
                return [(name, ns) for name, ns in node.get_node_names_and_namespaces()
                        if ns == "/or"]

            def streams() -> set[str]:
                return {s.topic for s in discover_streams(node)}

            def fully_reported() -> bool:
                names = set(observer.health)
                nodes = [n for n, _ in graph_nodes() if not n.startswith("recorder_")]
                found = streams()
                return (len(nodes) >= 6 and len(found) >= 4
                        and all(f"/or/{n}: node" in names for n in nodes)
                        and all(f"{RECORDER}: {t}" in names for t in found)
                        and all(any(n.endswith(f": {t}") and not n.startswith(RECORDER)
                                    for n in names) for t in found))

            assert observer.spin_until(fully_reported, 120, graph), sorted(observer.health)

            # One name per node: the recorder's per-stream helper nodes have their own.
            listed = graph_nodes()
            assert len(listed) == len(set(listed)), listed
            helpers = [n for n, _ in listed if n.startswith("recorder_")]
            assert len(helpers) == len(streams()), listed

            for name, status in observer.health.items():
                assert status_level(status) < ERROR, (name, status.message)
            recorder = observer.health[f"{RECORDER}: node"]
            values = {kv.key: kv.value for kv in recorder.values}
            assert values["pacs_enabled"] == "true" and "pacs_backlog" in values
            assert "disk_free_mib" in values
            video = next(t for t in streams() if t.endswith("/frames"))
            followed = {kv.key for kv in observer.health[f"{RECORDER}: {video}"].values}
            assert {"samples", "lost_messages", "queue_depth", "instances"} <= followed

            # A snapshot is an instance now, so the storage SCU sends it (and says so).
            assert observer.control.wait_for_service(timeout_sec=30)
            snapshot = RecordControl.Request(command=RecordControl.Request.SNAPSHOT)
            deadline = time.monotonic() + 60
            while not observer.call(snapshot, graph).success:  # until a frame arrived
                assert time.monotonic() < deadline, "no snapshot"
                observer.spin_until(lambda: False, 0.5, graph)

            def scu_stored() -> bool:
                return any(m.name.endswith(SCU_LOGGER) and "stored" in m.msg
                           for m in observer.logs)

            assert observer.spin_until(scu_stored, 60, graph), \
                [(m.name, m.msg) for m in observer.logs][-30:]
            scu = next(m for m in observer.logs if m.name.endswith(SCU_LOGGER))
            assert scu.name == "or.recorder" + SCU_LOGGER and PACS_AE in scu.msg
        finally:
            observer.close()
            code, log = stop(graph) if graph.poll() is None else (graph.returncode, "")
    assert code == 0, log[-3000:]
    assert list((tmp_path / "pacs").iterdir()), "the PACS received nothing"
