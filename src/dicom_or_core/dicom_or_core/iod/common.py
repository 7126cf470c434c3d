"""Pieces every recorder IOD shares: file meta, SOP Common, time base, saving.

Time base: every sample of an OR session carries its acquisition time as nanoseconds on the
session clock (the host's NTP-disciplined UTC clock, ``SampleContext.acquisition_time``).
Every instance writes that clock as DICOM DT with the host's UTC offset, and declares it
through the Synchronization Module (PS3.3 C.7.4.2, filled by
:func:`dicom_or_core.model.context.apply_synchronization_module`), so a video, a waveform and a
pose recording of one session can be aligned to the microsecond.
"""

from __future__ import annotations

import datetime as _dt

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.coding import Code
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian

from dicom_or_core.model import vr
from dicom_or_core.model.context import StreamDescriptor, apply_stream_context
from dicom_or_core.model.errors import DicomOrError

IMPLEMENTATION_VERSION_NAME = "DICOM_OR_0_1"
# Private coding scheme for concepts no standard code covers (PS3.3 8.2: "99" prefix).
PRIVATE_SCHEME = "99DICOMOR"


def ns_to_datetime(ns: int) -> _dt.datetime:
    """Session-clock nanoseconds (UTC epoch) as an aware local datetime (microseconds)."""
    utc = _dt.datetime.fromtimestamp(ns // 1000 / 1e6, tz=_dt.UTC)
    return utc.astimezone()


def ns_to_dt(ns: int) -> str:
    """Session-clock nanoseconds as DT ``YYYYMMDDHHMMSS.FFFFFF&ZZXX`` (local time + offset)."""
    return vr.format_dt(ns_to_datetime(ns))


def ns_to_da_tm(ns: int) -> tuple[str, str]:
    """Session-clock nanoseconds as (DA, TM with microseconds), local time."""
    moment = ns_to_datetime(ns)
    return vr.format_da(moment), vr.format_tm(moment)


def code_item(value: str, scheme: str, meaning: str) -> Dataset:
    """One Code Sequence Macro item (PS3.3 Table 8.8-1)."""
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def concept_item(code: Code) -> Dataset:
    """The Code Sequence Macro item of a pydicom ``Code`` (``codes.DCM.X``, ``codes.SCT.Y``
    from ``pydicom.sr.codedict``, or a ``Code`` of the private scheme)."""
    return code_item(code.value, code.scheme_designator, code.meaning)


def new_dataset(sop_class_uid: str, sop_instance_uid: str,
                transfer_syntax: str = ExplicitVRLittleEndian) -> Dataset:
    """An empty dataset with its File Meta Information (PS3.10 7.1) and the SOP Common
    Module (PS3.3 C.12.1) identifiers."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    ds = Dataset()
    ds.file_meta = meta
    # PS3.3 C.12.1 SOP Common Module. ISO_IR 192 (UTF-8) because names typed at an OR
    # console are not restricted to ASCII.
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_instance_uid
    return ds


def apply_instance_context(ds: Dataset, stream: StreamDescriptor, instance_number: int,
                           first_ns: int, created_ns: int | None = None) -> Dataset:
    """Context modules of the stream (Patient, General Study, General Series, Frame of
    Reference, Synchronization, General Equipment) plus the instance-level times: Instance
    Creation Date/Time (C.12.1), Content Date/Time and Acquisition DateTime of the first
    sample, on the session time base."""
    apply_stream_context(ds, stream)
    ds.InstanceNumber = instance_number
    if created_ns is not None:
        ds.InstanceCreationDate, ds.InstanceCreationTime = ns_to_da_tm(created_ns)
    ds.ContentDate, ds.ContentTime = ns_to_da_tm(first_ns)
    ds.AcquisitionDateTime = ns_to_dt(first_ns)
    return ds


def require_kind(stream: StreamDescriptor, kind: int, what: str) -> None:
    """Reject a descriptor of the wrong stream kind for a builder."""
    if stream.kind != kind:
        raise DicomOrError("descriptor.kind", f"the {what} builder needs kind {kind}",
                           stream.kind)


def drop_frame_of_reference(ds: Dataset) -> Dataset:
    """Remove the Frame of Reference Module (PS3.3 C.7.4.1) from an IOD that has none
    (waveforms, video, secondary capture): its spatial frame only means something where
    coordinates are recorded (the pose SR references it from its SCOORD3D items)."""
    for keyword in ("FrameOfReferenceUID", "PositionReferenceIndicator"):
        if keyword in ds:
            delattr(ds, keyword)
    return ds
