"""Bags and DICOM: rosbag2 / MCAP recordings into DICOM studies, DICOM studies into MCAP.

==================  ==========================================================================
module              what it does
==================  ==========================================================================
:mod:`.reader`      open a rosbag2 directory (sqlite3 or mcap storage) or a bare ``.mcap``
                    file with ``rosbags`` (no ROS distro) and turn messages into typed samples
:mod:`.plan`        which topics become which streams: descriptors of the project's topics,
                    or built for plain topics from a stream YAML (waveform channel units)
:mod:`.to_dicom`    drive the recorder's stream recorders offline over the samples, so the
                    instances are built and segmented exactly as live recording does
:mod:`.to_mcap`     a recorded study folder back into a rosbag2 MCAP bag of the project's
                    message types
:mod:`.progress`    a one-line progress bar for terminals
==================  ==========================================================================
"""
