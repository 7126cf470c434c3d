"""dds_transport: which Fast DDS profile a node process gets (docs/transport.md)."""

import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from dicom_or_core.config.paths import config_file

NS = {"dds": "http://www.eprosima.com"}
PROBE = ("import os; from dicom_or_ros.runtime import apply_transport_defaults; "
         "apply_transport_defaults(); print(os.environ['FASTDDS_DEFAULT_PROFILES_FILE'])")


def profile_of(env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in __import__("os").environ.items()
             if k not in ("FASTDDS_DEFAULT_PROFILES_FILE", "DICOM_OR_DDS_TRANSPORT")}
    return subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env},
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("choice,profile", [
    ("", "fastdds_profile.xml"), ("shm", "fastdds_profile.xml"),
    ("udp", "fastdds_udp_profile.xml")])
def test_dds_transport_selects_the_profile(choice, profile):
    result = profile_of({"DICOM_OR_DDS_TRANSPORT": choice})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(f"/{profile}")


def test_an_operator_profile_wins_and_a_typo_is_an_error():
    result = profile_of({"DICOM_OR_DDS_TRANSPORT": "udp",
                         "FASTDDS_DEFAULT_PROFILES_FILE": "/etc/or/mine.xml"})
    assert result.stdout.strip() == "/etc/or/mine.xml"
    result = profile_of({"DICOM_OR_DDS_TRANSPORT": "UDP"})
    assert result.returncode != 0
    assert "'UDP' is not a DDS transport; known: shm, udp" in result.stderr


def test_udp_profile_has_no_shared_memory_and_large_datagrams_and_buffers():
    root = ET.parse(config_file("fastdds_udp_profile.xml")).getroot()
    transports = root.findall(".//dds:transport_descriptor", NS)
    assert [t.findtext("dds:type", namespaces=NS) for t in transports] == ["UDPv4"]
    udp = transports[0]
    assert int(udp.findtext("dds:maxMessageSize", namespaces=NS)) == 65500
    assert int(udp.findtext("dds:receiveBufferSize", namespaces=NS)) >= 4 << 20
    assert root.findtext(".//dds:useBuiltinTransports", namespaces=NS) == "false"
