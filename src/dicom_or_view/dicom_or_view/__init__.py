"""dicom_or_view: the OR in any browser (see or_view_node)."""
