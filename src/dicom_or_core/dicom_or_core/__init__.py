"""dicom_or_core: the ROS-free DICOM side of dicom_or.

Context model and validation (:mod:`.context`, :mod:`.vr`), UIDs (:mod:`.uid`), QoS profile
files (:mod:`.qos`). Nothing here imports rclpy, so plain pytest covers it.
"""

from dicom_or_core.errors import DicomOrError

__all__ = ["DicomOrError"]
