"""ros2 launch dicom_or_bringup tracker.launch.py [name:=value ...]

Starts the nodes of tracker.graph.yaml (list its arguments with --show-args). Without a
ROS 2 distro the same graph runs with: dicom_or_launch tracker [name:=value ...]
"""

from dicom_or_bringup.launch_support import graph_launch_description


def generate_launch_description():
    """The entry point `ros2 launch` calls."""
    return graph_launch_description("tracker")
