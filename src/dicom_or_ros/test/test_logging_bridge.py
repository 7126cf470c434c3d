"""dicom_or_ros.logging_bridge: standard-library records reach /rosout, named and leveled."""

import logging
import threading

import rclpy
from dicom_or_test_common.ros import ros_context, spin_until
from rcl_interfaces.msg import Log
from rclpy.executors import SingleThreadedExecutor

from dicom_or_ros.logging_bridge import LastProblem, install


def test_library_records_reach_rosout_under_the_node_logger():
    with ros_context() as ctx:
        node = rclpy.create_node("recorder", namespace="/or", context=ctx)
        listener = rclpy.create_node("listener", context=ctx)
        got: list[Log] = []
        listener.create_subscription(Log, "/rosout", got.append, 100)
        executor = SingleThreadedExecutor(context=ctx)
        executor.add_node(node)
        executor.add_node(listener)
        bridge = install(node)
        try:
            assert spin_until(executor, lambda: node.count_subscribers("/rosout") > 0, 10)
            scu = logging.getLogger("dicom_or.storage_scu")
            # From another thread, as the storage sender and pynetdicom log.
            thread = threading.Thread(target=scu.info, args=("stored %d instance(s)", 3))
            thread.start()
            thread.join()
            logging.getLogger("pynetdicom.assoc").info("Requesting Association")  # dropped
            logging.getLogger("pynetdicom.assoc").warning("Association Aborted")
            try:
                raise ConnectionError("peer reset")
            except ConnectionError:
                scu.exception("storage round failed")
            logging.getLogger("dicom_or_bridge.scp").debug("noise")  # below INFO
            assert spin_until(executor, lambda: len(
                [m for m in got if m.name.startswith("or.recorder.")]) >= 3, 10), got
        finally:
            bridge.remove()
            executor.shutdown()
            node.destroy_node()
            listener.destroy_node()
    mine = [(m.name, m.level, m.msg) for m in got if m.name.startswith("or.recorder.")]
    assert mine == [
        ("or.recorder.dicom_or.storage_scu", Log.INFO, "stored 3 instance(s)"),
        ("or.recorder.pynetdicom.assoc", Log.WARN, "Association Aborted"),
        ("or.recorder.dicom_or.storage_scu", Log.ERROR,
         "storage round failed: ConnectionError: peer reset")]


def test_remove_restores_the_logging_configuration():
    root = logging.getLogger()
    before = (root.level, list(root.handlers), logging.getLogger("dicom_or").level)
    with ros_context() as ctx:
        node = rclpy.create_node("n", context=ctx)
        bridge = install(node)
        assert bridge.handler in root.handlers
        assert logging.getLogger("dicom_or").getEffectiveLevel() == logging.INFO
        assert logging.getLogger("pynetdicom").getEffectiveLevel() == logging.WARNING
        bridge.remove()
        node.destroy_node()
    assert (root.level, list(root.handlers), logging.getLogger("dicom_or").level) == before


def test_last_problem_keeps_the_latest_warning_of_its_tree():
    problems = LastProblem("dicom_or_bridge")
    try:
        assert problems.count == 0 and problems.age_s() is None
        logging.getLogger("dicom_or_bridge.server").info("fine")
        logging.getLogger("dicom_or_bridge.scp").warning("rejected association from %s",
                                                         "EVIL")
        logging.getLogger("dicom_or_recorder").error("not mine")
        assert problems.count == 1 and problems.text == "rejected association from EVIL"
        assert 0 <= problems.age_s() < 5
    finally:
        problems.close()
    logging.getLogger("dicom_or_bridge.scp").warning("after close")
    assert problems.count == 1
