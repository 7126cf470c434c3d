"""dicom_or_recorder: stream topics -> DICOM instances -> PACS.

:mod:`.segments` (ROS-free stream recorders and journal finalisation),
:mod:`.recorder_node` (the ``recorder`` node: subscriptions, control service, status).
"""
