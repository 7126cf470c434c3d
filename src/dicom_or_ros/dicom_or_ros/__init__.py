"""dicom_or_ros: the thin ROS 2 layer shared by dicom_or nodes.

:mod:`.convert` (messages <-> core context), :mod:`.qos` (named profiles as rclpy QoS),
:mod:`.params` (typed parameters), :mod:`.runtime` (process set-up and ``run_node``),
:mod:`.graph` (streams found by their descriptors), :mod:`.image` (frames <-> arrays),
:mod:`.diagnostics` (``/diagnostics``), :mod:`.logging_bridge` (standard logging to
``/rosout``), :mod:`.loop_thread` (an asyncio loop beside the executor, for the
nodes' HTTP services). Test isolation (per-test DDS domains) is test support, never installed.
"""
