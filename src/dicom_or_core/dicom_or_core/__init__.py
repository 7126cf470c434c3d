"""dicom_or_core: the ROS-free DICOM side of dicom_or, one sub-package per domain.

* :mod:`.model`: session context, VR rules, UIDs, errors, the ``ros2:`` URI, stream kinds;
* :mod:`.config`: the shared configuration folder and named QoS profiles;
* :mod:`.iod`: IOD builders and readers (waveform, video, pose SR) and the video codec;
* :mod:`.qr`: PS3.4 query matching and the Query/Retrieve information model;
* :mod:`.archive`: the recorder's durable spool and the index of finished instances;
* :mod:`.scu`: storage and worklist clients;
* :mod:`.sim`: synthetic devices.

Nothing here imports rclpy, so plain pytest covers it.
"""

from dicom_or_core.model.errors import DicomOrError

__all__ = ["DicomOrError"]
