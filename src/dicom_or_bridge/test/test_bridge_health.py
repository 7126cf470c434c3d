"""/diagnostics of the bridge package's nodes: the bridge's port and load, WARN with the
reason after its SCP logged a problem (a rejected association, which the node never sees
returned); the session context WARN until a case is known."""

from __future__ import annotations

from dicom_or_test_common.peers import free_tcp_port
from dicom_or_test_common.ros import ros_context
from pynetdicom import AE
from pynetdicom import sop_class as sc
from rclpy.parameter import Parameter

from dicom_or_bridge.bridge_node import DicomBridgeNode
from dicom_or_bridge.session_context_node import SessionContextNode
from dicom_or_ros.diagnostics import OK, WARN, diagnostics_for, status_level


def test_node_entry_reports_load_and_warns_after_a_rejection(tmp_path):
    with ros_context() as ctx:
        bridge = DicomBridgeNode(context=ctx, parameter_overrides=[
            Parameter("port", value=0), Parameter("dicomweb_port", value=0),
            Parameter("archive_dir", value=str(tmp_path)),
            Parameter("allowed_calling_ae_titles", value=["WORKSTATION"])])
        try:
            def entry():
                return {s.name: s for s in diagnostics_for(bridge).collect().status}[
                    "/dicom_bridge: node"]

            healthy = entry()
            values = {kv.key: kv.value for kv in healthy.values}
            assert status_level(healthy) == OK, healthy.message
            assert values["port"] == str(bridge.port) and values["associations"] == "0"
            assert values["archive_instances"] == "0" and values["live_streams"] == "0"
            assert healthy.hardware_id == f"DICOM_OR@127.0.0.1:{bridge.port}"

            intruder = AE(ae_title="INTRUDER")
            intruder.add_requested_context(sc.Verification)
            assoc = intruder.associate("127.0.0.1", bridge.port, ae_title="DICOM_OR")
            assert assoc.is_rejected
            warned = entry()
            assert status_level(warned) == WARN
            assert "INTRUDER" in warned.message and "allow-list" in warned.message
            values = {kv.key: kv.value for kv in warned.values}
            assert values["problems"] == "1" and values["rejected_calling_ae"] == "1"
        finally:
            bridge.close()
            bridge.destroy_node()


def test_session_context_warns_until_a_case_is_known():
    with ros_context() as ctx:
        # A worklist nobody listens on: no case, the reason in the entry.
        waiting = SessionContextNode(context=ctx, parameter_overrides=[
            Parameter("source", value="worklist"),
            Parameter("worklist_port", value=free_tcp_port()),
            Parameter("station_ae_title", value="DICOM_OR"),
            Parameter("timeout_s", value=2.0)])
        given = SessionContextNode(context=ctx, parameter_overrides=[
            Parameter("patient.patient_id", value="P1")])
        try:
            status = diagnostics_for(waiting).collect().status[0]
            assert status.name == "/session_context: node" and status_level(status) == WARN
            assert status.message.startswith("no case yet: worklist unavailable")
            status = diagnostics_for(given).collect().status[0]
            values = {kv.key: kv.value for kv in status.values}
            assert status_level(status) == OK and values["patient_id"] == "P1"
            assert values["study_instance_uid"] == given.current.study.study_instance_uid
        finally:
            waiting.destroy_node()
            given.destroy_node()
