"""DICOM network clients: storage (C-STORE with Storage Commitment) and the Modality
Worklist query."""
