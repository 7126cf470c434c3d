"""dicom_or_bringup: graphs, launch support, the pip launcher, the OR demo and or_status."""
