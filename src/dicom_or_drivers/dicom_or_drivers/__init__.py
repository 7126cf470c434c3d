"""dicom_or_drivers: OR device drivers publishing DICOM-context streams.

ROS-free parts: :mod:`.pacing` (drift-free schedules, reconnect backoff), :mod:`.video_sources`
(OpenCV sources), :mod:`.igtl` (OpenIGTLink client). ROS parts: :mod:`.stream` (the
StreamPublisher every driver uses) and one node per module: :mod:`.video_node`,
:mod:`.tracker_node`, :mod:`.waveform_node`.
"""
