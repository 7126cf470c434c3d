"""Typed parameters and the process lifecycle every node shares."""

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import rclpy
from dicom_or_test_common.ros import isolated_env, reserved_domain_id, ros_context
from rclpy.parameter import Parameter

from dicom_or_core.model.errors import DicomOrError
from dicom_or_ros.params import declare
from dicom_or_ros.runtime import TEARDOWN_GRACE_S

HERE = Path(__file__).parent


def _node(ctx, **overrides):
    return rclpy.create_node("params_test", context=ctx, parameter_overrides=[
        Parameter(name, value=value) for name, value in overrides.items()])


def test_declare_converts_integer_to_double_and_names_bad_types():
    with ros_context() as ctx:
        node = _node(ctx, fps=30, width="wide", mode="fast", names=["a", "b"])
        assert declare(node, "names", [], "names",
                       param_type=Parameter.Type.STRING_ARRAY) == ["a", "b"]
        assert declare(node, "fps", 25.0, "frames per second") == 30.0
        assert isinstance(declare(node, "height", 480, "rows"), int)
        with pytest.raises(DicomOrError) as info:
            declare(node, "width", 640, "columns")
        assert info.value.field == "width" and "must be of type integer" in str(info.value)
        assert declare(node, "tools", [], "tool names",
                       param_type=Parameter.Type.STRING_ARRAY) == []
        with pytest.raises(DicomOrError, match="mode: must be one of"):
            declare(node, "mode", "slow", "speed", check=lambda v: v in ("slow", "safe"),
                    rule="must be one of slow, safe")
        node.destroy_node()


def test_empty_list_in_a_parameter_file_is_an_empty_array(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("/**:\n  ros__parameters:\n    names: []\n")
    with reserved_domain_id() as domain:
        ctx = rclpy.context.Context()
        rclpy.init(args=["--ros-args", "--params-file", str(params)], context=ctx,
                   domain_id=domain)
        try:
            node = rclpy.create_node("params_file_test", context=ctx)
            # rcl leaves `names: []` unset; with an empty default that used to be an error
            assert declare(node, "names", [], "names",
                           param_type=Parameter.Type.STRING_ARRAY) == []
            node.destroy_node()
        finally:
            ctx.try_shutdown()


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_close_runs_with_the_context_alive_on_stop_signals(stop_signal):
    with reserved_domain_id() as domain:
        child = subprocess.Popen([sys.executable, str(HERE / "closing_node.py")],
                                 env=isolated_env(domain), text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert child.stdout.readline().strip() == "READY"
        child.send_signal(stop_signal)
        out, err = child.communicate(timeout=20)
    assert child.returncode == 0, err
    assert "CLOSED" in out, err
    assert "Traceback" not in err


def test_a_teardown_that_hangs_after_close_is_bounded_and_leaves_its_stacks():
    """close() ran (the node's work is done), then destroy_node blocks: the process exits 0
    after the teardown grace with a warning and every thread's stack, not when a launcher
    loses patience and SIGKILLs it."""
    with reserved_domain_id() as domain:
        child = subprocess.Popen([sys.executable, str(HERE / "closing_node.py")],
                                 env={**isolated_env(domain), "HANG_TEARDOWN": "1"},
                                 text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert child.stdout.readline().strip() == "READY"
        child.send_signal(signal.SIGINT)
        try:
            out, err = child.communicate(timeout=TEARDOWN_GRACE_S + 15)
        finally:
            child.kill()
    assert child.returncode == 0, err
    assert "CLOSED" in out
    assert "/closing_node: the middleware teardown did not finish in 3 s" in err, err
    assert "in destroy_node" in err, err   # the stack of the hang, for diagnosis


@pytest.mark.parametrize("args,words", [
    (["--ros-args", "-p", "rate_hz:=-3.0"], "rate_hz: must be greater than 0"),
    (["--ros-args", "-p", "rate_hz:=fast"], "rate_hz: must be of type double"),
    (["--ros-args", "-p", "rate_hz:=[1,"], "invalid command line arguments"),
])
def test_bad_configuration_exits_1_with_one_line(args, words):
    with reserved_domain_id() as domain:
        result = subprocess.run([sys.executable, str(HERE / "closing_node.py"), *args],
                                env=isolated_env(domain), capture_output=True, text=True,
                                timeout=30)
    assert result.returncode == 1
    assert words in result.stderr
    assert "Traceback" not in result.stderr
