"""Every pynetdicom internal dicom_or touches, in one place.

pynetdicom offers no public API for what follows; each use was checked against the
pynetdicom versions in :data:`TESTED_PYNETDICOM` (its source named at each function), and
``test_pynetdicom_compat`` checks that the installed version is one of them and that every
attribute listed in :data:`PRIVATE_ATTRIBUTES` and :data:`INTERNAL_HOOKS` still exists. On a
pynetdicom upgrade: run that test, re-read the named source, then extend
:data:`TESTED_PYNETDICOM`.

Private attributes (names starting with ``_``), used only through this module:

* ``pynetdicom._config.STORE_SEND_CHUNKED_DATASET`` (pynetdicom's documented configuration
  module, private by name): :func:`send_stored_files_chunked`, used by the storage SCU and
  the bridge's C-GET / C-MOVE sub-operations.
* ``RequestHandler._create_association()`` (transport.py): :func:`create_acceptor_association`,
  used by :func:`dicom_or_bridge.server.adopt_connection`.
* ``C_MOVE._move_destination`` (dimse_primitives.py): :func:`set_raw_move_destination`, used by
  the bridge's lenient Move Destination setter (dicom_or_bridge.scp).

Public-named but undocumented internals the bridge relies on (not private, so used in
place, but checked by the same test): :data:`INTERNAL_HOOKS`.
"""

from __future__ import annotations

import inspect

import pynetdicom
from pynetdicom import _config
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_MOVE
from pynetdicom.transport import RequestHandler

#: The pynetdicom versions (prefixes) the uses below were checked against.
TESTED_PYNETDICOM = ("3.0.",)

#: Every private pynetdicom attribute this module touches, as "owner.attribute".
PRIVATE_ATTRIBUTES = (
    "pynetdicom._config.STORE_SEND_CHUNKED_DATASET",
    "pynetdicom.transport.RequestHandler._create_association",
    "pynetdicom.dimse_primitives.C_MOVE()._move_destination",
)

#: The public-named internals the bridge wraps or reads: dicom_or_bridge.server swaps the
#: class of ``Association.dul.socket`` (an AssociationSocket whose ``ready`` / ``recv`` the
#: DUL reads PDUs through) and hands AssociationServer a shared ``contexts`` list;
#: dicom_or_bridge.scp bounds ``dul.send_pdu`` by ``dul.to_provider_queue``, rewrites one
#: response through ``dimse.send_msg`` and wraps the ``C_MOVE.MoveDestination`` property.
INTERNAL_HOOKS = (
    "Association().dul.socket",
    "Association().dul.to_provider_queue",
    "Association().dul.send_pdu",
    "Association().dimse.send_msg",
    "pynetdicom.transport.AssociationSocket.ready",
    "pynetdicom.transport.AssociationSocket.recv",
    "pynetdicom.transport.AssociationServer.__init__(contexts)",
    "pynetdicom.dimse_primitives.C_MOVE.MoveDestination",
)


def missing_internals() -> list[str]:
    """The entries of :data:`PRIVATE_ATTRIBUTES` and :data:`INTERNAL_HOOKS` the installed
    pynetdicom lacks (empty when every one exists)."""
    from pynetdicom import AE
    from pynetdicom.transport import AssociationServer, AssociationSocket

    assoc = Association(AE(), "requestor")
    present = {
        PRIVATE_ATTRIBUTES[0]: hasattr(_config, "STORE_SEND_CHUNKED_DATASET"),
        PRIVATE_ATTRIBUTES[1]: callable(getattr(RequestHandler, "_create_association", None)),
        PRIVATE_ATTRIBUTES[2]: hasattr(C_MOVE(), "_move_destination"),
        INTERNAL_HOOKS[0]: hasattr(assoc.dul, "socket"),
        INTERNAL_HOOKS[1]: hasattr(assoc.dul, "to_provider_queue"),
        INTERNAL_HOOKS[2]: callable(getattr(assoc.dul, "send_pdu", None)),
        INTERNAL_HOOKS[3]: callable(getattr(assoc.dimse, "send_msg", None)),
        INTERNAL_HOOKS[4]: isinstance(getattr(AssociationSocket, "ready", None), property),
        INTERNAL_HOOKS[5]: callable(getattr(AssociationSocket, "recv", None)),
        INTERNAL_HOOKS[6]: list(inspect.signature(AssociationServer.__init__).parameters)[1:5]
        == ["ae", "address", "ae_title", "contexts"],
        INTERNAL_HOOKS[7]: isinstance(getattr(C_MOVE, "MoveDestination", None), property),
    }
    return [name for name, ok in present.items() if not ok]


def check_pynetdicom(version: str | None = None) -> None:
    """RuntimeError unless ``version`` (default: the installed pynetdicom's) is one this
    module was checked against."""
    version = version or pynetdicom.__version__
    if not version.startswith(TESTED_PYNETDICOM):
        raise RuntimeError(f"pynetdicom {version} is untested with dicom_or "
                           f"(tested: {', '.join(TESTED_PYNETDICOM)}x); check the uses in "
                           "dicom_or_core.scu.compat against its source")


def send_stored_files_chunked() -> None:
    """Make ``Association.send_c_store(<path>)`` send a file as stored, in PDU-sized chunks,
    instead of decoding it whole into memory (pynetdicom >= 2.0,
    ``_config.STORE_SEND_CHUNKED_DATASET``). Process-wide; a path is then never converted to
    another transfer syntax, so callers propose or check the file's own."""
    _config.STORE_SEND_CHUNKED_DATASET = True


def create_acceptor_association(handler: RequestHandler) -> Association:
    """The acceptor Association pynetdicom's own RequestHandler would run for ``handler``'s
    connection (``handler.request``): configured from the server's AE, with its event
    handlers bound and the server's supported contexts deep-copied (transport.py
    ``RequestHandler._create_association``)."""
    return handler._create_association()


def set_raw_move_destination(primitive: C_MOVE, text: str) -> None:
    """Store ``text`` as the primitive's Move Destination without pynetdicom's AE check (its
    getter returns it as is): an invalid destination then reaches the handler, which answers
    0xA801, instead of an exception in pynetdicom's DIMSE decoding."""
    primitive._move_destination = text
