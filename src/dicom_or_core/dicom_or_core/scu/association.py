"""What every dicom_or SCU does the same way before and after its DIMSE work.

One client Application Entity per peer with every PS3.8 timer bounded (so a silent peer is
an error after ``timeout_s``, never a hang), one way to name a peer in logs, and one
association context that always ends the association it opened (A-RELEASE if established,
PS3.8 7.2) and turns "no association" into an exception carrying the reason.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pynetdicom import AE
from pynetdicom.association import Association

# TCP connect is local-network fast or not at all; waiting the full DIMSE timeout for a
# host that is down only delays the retry.
MAX_CONNECT_S = 5.0


class AssociationFailed(Exception):
    """The peer could not be reached, or rejected or aborted the association."""


def client_ae(calling_ae_title: str, timeout_s: float) -> AE:
    """An SCU Application Entity whose ACSE, DIMSE and network timers are ``timeout_s``."""
    ae = AE(ae_title=calling_ae_title)
    ae.acse_timeout = timeout_s
    ae.dimse_timeout = timeout_s
    ae.network_timeout = timeout_s
    ae.connection_timeout = min(timeout_s, MAX_CONNECT_S)
    return ae


def peer_name(ae_title: str, host: str, port: int) -> str:
    """A peer as logs and errors name it: ``AE@host:port``."""
    return f"{ae_title}@{host}:{port}"


@contextmanager
def associated(ae: AE, host: str, port: int, ae_title: str,
               **kwargs: Any) -> Iterator[Association]:
    """Associate ``ae`` with the peer for the ``with`` block, then release.

    Raises :class:`AssociationFailed` naming the peer when no association is established
    (unreachable, A-ASSOCIATE-RJ or A-ABORT); ``kwargs`` go to ``AE.associate``.
    """
    try:
        assoc = ae.associate(host, port, ae_title=ae_title, **kwargs)
    except (OSError, RuntimeError) as exc:
        raise AssociationFailed(f"{peer_name(ae_title, host, port)}: {exc}") from None
    if not assoc.is_established:
        raise AssociationFailed(f"no association with {peer_name(ae_title, host, port)} "
                                "(refused, aborted or unreachable)")
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()
