"""The SCUs' shared association helper against a real SCP (pynetdicom's, in process)."""

import pytest
from dicom_or_test_common.peers import free_tcp_port
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from dicom_or_core.scu.association import AssociationFailed, associated, client_ae, peer_name


@pytest.fixture
def echo_scp():
    ae = AE(ae_title="ECHO")
    ae.add_supported_context(Verification)
    ae.require_called_aet = True
    server = ae.start_server(("127.0.0.1", 0), block=False)
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()


def test_client_ae_bounds_every_timer():
    ae = client_ae("SCU", 12.0)
    assert (ae.acse_timeout, ae.dimse_timeout, ae.network_timeout) == (12.0, 12.0, 12.0)
    assert ae.connection_timeout == 5.0          # connect fails fast, the retry comes sooner
    assert client_ae("SCU", 2.0).connection_timeout == 2.0


def test_association_is_released_after_the_block(echo_scp):
    ae = client_ae("SCU", 5.0)
    ae.add_requested_context(Verification)
    with associated(ae, "127.0.0.1", echo_scp, "ECHO") as assoc:
        assert assoc.send_c_echo().Status == 0x0000
    assert assoc.is_released


def test_rejected_association_names_the_peer(echo_scp):
    ae = client_ae("SCU", 5.0)
    ae.add_requested_context(Verification)
    with pytest.raises(AssociationFailed, match=f"WRONG@127.0.0.1:{echo_scp}"):
        with associated(ae, "127.0.0.1", echo_scp, "WRONG"):
            pass


def test_unreachable_peer_is_an_error_not_a_hang():
    ae = client_ae("SCU", 2.0)
    ae.add_requested_context(Verification)
    port = free_tcp_port()                      # nothing listens there
    with pytest.raises(AssociationFailed, match=peer_name("NOBODY", "127.0.0.1", port)):
        with associated(ae, "127.0.0.1", port, "NOBODY"):
            pass
