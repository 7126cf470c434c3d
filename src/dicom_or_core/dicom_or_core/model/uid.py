"""UID generation.

Every UID this project makes comes from :func:`new_uid`, built on pydicom's
``generate_uid``. The root defaults to pydicom's registered root ``1.2.826.0.1.3680043.8.498.``
(a UUID-derived suffix makes collisions negligible). A site that owns an ISO OID sets
``DICOM_OR_UID_ROOT`` (ending with a dot, at most 32 characters so the random suffix keeps
enough entropy) and every Study, Series, Frame of Reference and SOP Instance UID uses it.
"""

from __future__ import annotations

import os
import uuid

from pydicom.uid import PYDICOM_ROOT_UID, generate_uid

from dicom_or_core.model.errors import DicomOrError
from dicom_or_core.model.vr import check_ui

ENV_UID_ROOT = "DICOM_OR_UID_ROOT"


def uid_root() -> str:
    """The organisation root for new UIDs: ``$DICOM_OR_UID_ROOT`` or pydicom's."""
    root = os.environ.get(ENV_UID_ROOT, PYDICOM_ROOT_UID)
    if not root.endswith(".") or len(root) > 32:
        raise DicomOrError(ENV_UID_ROOT, "must end with '.' and be at most 32 characters",
                           root)
    check_ui(ENV_UID_ROOT, root[:-1])
    return root


def new_uid(*entropy: str) -> str:
    """A new UID under :func:`uid_root`.

    With ``entropy`` strings the UID is deterministic (a SHA-512 hash of them), which makes
    re-created objects (e.g. the same worklist item) keep their UID; without, it is random.
    """
    return generate_uid(uid_root(), entropy_srcs=list(entropy) if entropy else None)


def new_stream_uuid() -> str:
    """An RFC 4122 random UUID naming one stream for the life of its driver."""
    return str(uuid.uuid4())
