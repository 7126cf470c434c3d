"""session_context against dcmtk's wlmscpfs serving the demo worklist files (made with
dump2dcm from config/worklist/*.dump): worklist down -> retry, then case 1, ~/next_case ->
case 2, then no later case; parameter mode from config/session_context.yaml."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import rclpy
from bridge_fixtures import console_script
from dicom_or_test_common.peers import free_tcp_port
from dicom_or_test_common.ros import isolated_env, reserved_domain_id, ros_context, spin_until
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
from std_srvs.srv import Trigger

from dicom_or_bridge.session_context_node import SessionContextNode
from dicom_or_core.config.paths import config_dir
from dicom_or_msgs.msg import SessionContext
from dicom_or_ros.graph import SESSION_CONTEXT_TOPIC
from dicom_or_ros.qos import named_qos

SOURCE_CONFIG = Path(__file__).resolve().parents[3] / "config"


def make_worklist(folder: Path) -> Path:
    aet_dir = folder / "WORKLIST"
    aet_dir.mkdir(parents=True)
    (aet_dir / "lockfile").touch()  # wlmscpfs locks the folder through this file
    for dump in sorted((SOURCE_CONFIG / "worklist").glob("*.dump")):
        subprocess.run(["dump2dcm", "--write-dataset", str(dump),
                        str(aet_dir / (dump.stem + ".wl"))], check=True, capture_output=True,
                       timeout=30)
    return folder


def start_wlmscpfs(folder: Path, port: int) -> subprocess.Popen:
    return subprocess.Popen(["wlmscpfs", "--single-process", "-dfp", str(folder), str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_worklist_down_then_up_then_next_case(tmp_path):
    folder = make_worklist(tmp_path / "wl")
    port = free_tcp_port()
    wlm = None
    with ros_context() as ctx:
        node = SessionContextNode(context=ctx, parameter_overrides=[
            Parameter("source", value="worklist"),
            Parameter("worklist_port", value=port),
            Parameter("worklist_ae_title", value="WORKLIST"),
            Parameter("station_ae_title", value="DICOM_OR"),
            Parameter("location", value="OR1"),
            Parameter("date", value="20241124"),
            Parameter("retry_period_s", value=0.2),
            Parameter("timeout_s", value=2.0),
        ])
        listener = rclpy.create_node("listener", context=ctx)
        got: list[SessionContext] = []
        listener.create_subscription(SessionContext, SESSION_CONTEXT_TOPIC, got.append,
                                     named_qos("descriptor"))
        client = listener.create_client(Trigger, "/session_context/next_case")
        executor = SingleThreadedExecutor(context=ctx)
        executor.add_node(node)
        executor.add_node(listener)
        try:
            # Worklist down: the node keeps retrying, publishes nothing, does not crash.
            spin_until(executor, lambda: False, 1.0)
            assert got == [] and node.current is None
            wlm = start_wlmscpfs(folder, port)
            assert spin_until(executor, lambda: len(got) == 1, 20.0)
            first = got[0]
            assert first.patient.patient_id == "P-000123"
            assert first.patient.patient_name == "Doe^Jane"
            assert first.study.study_instance_uid == \
                "1.2.826.0.1.3680043.8.498.90000000000000000001"
            assert first.study.accession_number == "ACC-20241124-01"
            assert first.study.study_id == "RP-0001"
            assert first.scheduled_procedure_step_id == "SPS-0001"
            assert first.operating_room == "OR1"
            assert first.synchronization_frame_of_reference_uid

            def call():
                future = client.call_async(Trigger.Request())
                assert spin_until(executor, future.done, 20.0)
                return future.result()

            assert client.wait_for_service(timeout_sec=10.0)
            result = call()
            assert result.success, result.message
            assert spin_until(executor, lambda: len(got) == 2, 10.0)
            assert got[1].patient.patient_id == "P-000456"
            assert got[1].scheduled_procedure_step_id == "SPS-0002"
            assert got[1].synchronization_frame_of_reference_uid != \
                first.synchronization_frame_of_reference_uid
            result = call()
            assert not result.success and "no later" in result.message
        finally:
            if wlm is not None:
                wlm.terminate()
                wlm.wait(timeout=10)
            executor.shutdown()
            listener.destroy_node()
            node.destroy_node()


def test_parameter_source_from_the_shipped_yaml():
    with ros_context() as ctx:
        child = subprocess.Popen(
            [console_script("session_context"), "--ros-args", "--params-file",
             str(config_dir() / "session_context.yaml")],
            env=isolated_env(ctx.domain), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True)
        listener = rclpy.create_node("listener", context=ctx)
        got = []
        listener.create_subscription(SessionContext, SESSION_CONTEXT_TOPIC, got.append,
                                     named_qos("descriptor"))
        executor = SingleThreadedExecutor(context=ctx)
        executor.add_node(listener)
        try:
            assert spin_until(executor, lambda: bool(got), 20.0)
            assert got[0].patient.patient_id == "DEMO-0001"
            assert got[0].study.study_instance_uid  # generated
            assert got[0].operating_room == "OR1"
        finally:
            child.terminate()
            child.wait(timeout=10)
            executor.shutdown()
            listener.destroy_node()


@pytest.mark.parametrize("args, name", [
    (["-p", "source:=carrier_pigeon"], "source"),
    (["-p", "patient.birth_date:=1970-01-01"], "patient.birth_date"),
    (["-p", "study.study_instance_uid:=1.02.3"], "study.study_instance_uid"),
    (["-p", "source:=worklist", "-p", "worklist_port:=0", "-p", "station_ae_title:=X"],
     "worklist_port"),
    (["-p", "source:=worklist"], "station_ae_title"),
])
def test_bad_parameters_exit_1(args, name):
    with reserved_domain_id() as domain:
        result = subprocess.run([console_script("session_context"), "--ros-args", *args],
                                env=isolated_env(domain), capture_output=True, text=True,
                                timeout=60)
    assert result.returncode == 1, result.stderr
    assert name in result.stderr
    assert "Traceback" not in result.stderr
