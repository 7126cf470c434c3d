"""dicom_or_bridge: DICOM as the management interface of the OR's ROS 2 graph.

:mod:`.scp` (ROS-free pynetdicom SCP over a :class:`~dicom_or_core.qr.model.ModelStore`),
:mod:`.bridge_node` (``dicom_bridge``), :mod:`.session_context_node` (``session_context``),
:mod:`.find_tool` (``dicom_or_find``).
"""
