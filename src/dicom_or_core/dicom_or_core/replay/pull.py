"""A recorded study pulled from a PACS by C-GET before it is replayed.

Study Root C-GET at STUDY level (PS3.4 C.4.3): the PACS sends every instance of the study on
the same association as C-STORE sub-operations, for which this SCU proposes the SCP role
(PS3.7 D.3.3.4 SCP/SCU Role Selection) for every SOP Class a recording holds (streams and
snapshots). Each instance
is received into a file by pynetdicom (``STORE_RECV_CHUNKED_DATASET``: never decoded nor held
whole in memory) and copied file to file into ``<folder>/<Study>/<Series>/<SOP>.dcm``, the
recorder's layout that :func:`dicom_or_core.replay.sources.load_study` reads.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import (
    HEVCMP51,
    MPEG2MPHL,
    MPEG2MPML,
    MPEG4HP41,
    MPEG4HP422D,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import _config, build_role, evt
from pynetdicom.sop_class import (
    SecondaryCaptureImageStorage,
    StudyRootQueryRetrieveInformationModelGet,
    VLEndoscopicImageStorage,
)

from dicom_or_core.model.errors import DicomOrError
from dicom_or_core.model.vr import check_ui
from dicom_or_core.replay.sources import POSE_CLASSES, VIDEO_CLASSES, WAVEFORM_CLASSES
from dicom_or_core.scu.association import AssociationFailed, associated, client_ae

STREAM_CLASSES = (*VIDEO_CLASSES, *WAVEFORM_CLASSES, *POSE_CLASSES)
# The recorder's snapshots share the video's Series: taken too, so the whole recorded study
# comes across (the replay skips them) and a PACS has no sub-operation to fail.
SNAPSHOT_CLASSES = (VLEndoscopicImageStorage, SecondaryCaptureImageStorage)
REQUESTED_CLASSES = (*STREAM_CLASSES, *SNAPSHOT_CLASSES)
# What the recorder writes: video in MPEG-4 / HEVC / MPEG-2 (encapsulated) or native, the
# rest in Explicit VR Little Endian; Implicit VR for a PACS that converts. 3 video classes x
# 7 syntaxes + 7 x 1 + the C-GET context: 29 of the 128 presentation contexts (PS3.8 9.3.2).
TRANSFER_SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, MPEG4HP41, MPEG4HP422D,
                     HEVCMP51, MPEG2MPML, MPEG2MPHL]
SUCCESS, OUT_OF_RESOURCES = 0x0000, 0xA702


@dataclass
class PullResult:
    """What a C-GET brought: the files written, the final status and the sub-operations
    the PACS counted (failed ones: instances of SOP Classes not asked for)."""

    files: list[Path] = field(default_factory=list)
    status: int = SUCCESS
    completed: int = 0
    failed: int = 0
    warning: int = 0


def _store_into(folder: Path, result: PullResult) -> Any:
    """An EVT_C_STORE handler writing each received instance into ``folder``."""

    def on_store(event: Any) -> int:
        try:
            received = Path(event.dataset_path)
            header = dcmread(received, stop_before_pixels=True)
            uids = [str(header.StudyInstanceUID), str(header.SeriesInstanceUID),
                    str(header.SOPInstanceUID)]
            for uid in uids:
                check_ui("instance UID", uid)  # a UID is a safe path component
        except Exception:  # noqa: BLE001 - a bad instance is refused, never a crash
            return 0xC000  # Error: cannot understand (PS3.4 Table GG.4-1)
        target = folder.joinpath(*uids[:2], f"{uids[2]}.dcm")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_suffix(".partial")
            shutil.copyfile(received, partial)
            partial.replace(target)
        except OSError:
            return OUT_OF_RESOURCES
        result.files.append(target)
        return SUCCESS

    return on_store


def pull_study(host: str, port: int, called_ae_title: str, study_instance_uid: str,
               folder: str | Path, calling_ae_title: str = "DICOM_OR_REPLAY",
               timeout_s: float = 30.0) -> PullResult:
    """C-GET every instance of the study from ``called_ae_title@host:port`` into ``folder``.

    DicomOrError naming ``pacs`` when the PACS cannot be reached, refuses the request, or
    sends nothing (``study_instance_uid`` when it is not a UID)."""
    check_ui("study_instance_uid", study_instance_uid)
    if not study_instance_uid:
        raise DicomOrError("study_instance_uid", "is required to pull a study from a PACS")
    root = Path(folder)
    ae = client_ae(calling_ae_title, timeout_s)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    for sop_class in REQUESTED_CLASSES:
        if sop_class in VIDEO_CLASSES:
            # One context per transfer syntax: an acceptor takes one syntax per context,
            # and a video can only be sent in the one it was encoded in.
            for syntax in TRANSFER_SYNTAXES:
                ae.add_requested_context(sop_class, syntax)
        else:
            ae.add_requested_context(sop_class, TRANSFER_SYNTAXES[:2])
    roles = [build_role(sop_class, scp_role=True) for sop_class in REQUESTED_CLASSES]
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study_instance_uid
    result = PullResult()
    chunked = _config.STORE_RECV_CHUNKED_DATASET
    _config.STORE_RECV_CHUNKED_DATASET = True
    try:
        with associated(ae, host, port, called_ae_title, ext_neg=roles,
                        evt_handlers=[(evt.EVT_C_STORE, _store_into(root, result))]) as assoc:
            last = None
            for status, _ in assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet):
                if status is not None and "Status" in status:
                    last = status
    except AssociationFailed as exc:
        raise DicomOrError("pacs", f"cannot pull the study: {exc}") from None
    finally:
        _config.STORE_RECV_CHUNKED_DATASET = chunked
    if last is None:
        raise DicomOrError("pacs", "no C-GET response (timeout or aborted)",
                           study_instance_uid)
    result.completed = int(last.get("NumberOfCompletedSuboperations", len(result.files)))
    result.failed = int(last.get("NumberOfFailedSuboperations", 0))
    result.warning = int(last.get("NumberOfWarningSuboperations", 0))
    result.status = code = int(last.Status)
    # Some sub-operations failed (B000, or C000 from PACSs that report it so): what came is
    # replayed; nothing at all is an error.
    if not result.files:
        raise DicomOrError("pacs", f"C-GET of the study ended with status 0x{code:04X}, "
                           f"{len(result.files)} instances received", study_instance_uid)
    return result
