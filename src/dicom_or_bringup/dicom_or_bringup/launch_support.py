"""Shared body of every dicom_or launch file: turn a graph description into launch actions.

Imported only by ``launch/*.launch.py`` (it needs the ``launch`` / ``launch_ros`` packages
of a ROS 2 distro, which PyPI does not have).

The nodes, parameters and remappings come from ``<graph>.graph.yaml`` through
``dicom_or_bringup.graph.resolve`` -- the same function ``dicom_or_launch`` uses -- so a
``ros2 launch`` in a distro and the pip launcher start the very same graph.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch_ros.actions import Node

from dicom_or_bringup import graph
from launch import LaunchDescription

if TYPE_CHECKING:  # the tests run this module against stand-ins without it
    from launch import LaunchContext


def _nodes(context: LaunchContext, graph_name: str) -> list[Node]:
    given = {arg.name: context.launch_configurations.get(arg.name, arg.default)
             for arg in graph.arguments(graph_name)}
    actions = []
    for spec in graph.resolve(graph_name, given):
        parameters: list[str | dict[str, str]] = list(spec.parameter_files)
        if spec.overrides:
            parameters.append(dict(spec.overrides))
        actions.append(Node(
            package=spec.package, executable=spec.executable, name=spec.name,
            namespace=spec.namespace, parameters=parameters,
            remappings=list(spec.remappings.items()), additional_env=spec.environment,
            sigterm_timeout=str(spec.sigterm_timeout),
            sigkill_timeout=str(spec.sigkill_timeout),
            output="screen", emulate_tty=True))
    return actions


def graph_launch_description(graph_name: str) -> LaunchDescription:
    """A LaunchDescription declaring the graph's arguments and starting its nodes."""
    declared = [DeclareLaunchArgument(arg.name, default_value=arg.default,
                                      description=arg.description)
                for arg in graph.arguments(graph_name)]
    return LaunchDescription(declared + [OpaqueFunction(function=_nodes,
                                                        args=[graph_name])])
