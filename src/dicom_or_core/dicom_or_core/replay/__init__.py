"""Replay of DICOM recordings as live streams (ROS-free): :mod:`.sources` rebuilds each
Series' stream descriptor and timed samples from its instances, :mod:`.schedule` merges the
streams of a study on one clock."""
