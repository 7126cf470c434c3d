"""UID generation and the QoS profile file."""

import pytest
import yaml

from dicom_or_core.config import qos
from dicom_or_core.model import uid
from dicom_or_core.model.errors import DicomOrError
from dicom_or_core.model.vr import check_ui


def test_new_uid_is_valid_unique_and_under_the_root(monkeypatch):
    monkeypatch.delenv(uid.ENV_UID_ROOT, raising=False)
    uids = {uid.new_uid() for _ in range(1000)}
    assert len(uids) == 1000
    for value in uids:
        check_ui("uid", value)
        assert value.startswith("1.2.826.0.1.3680043.8.498.")


def test_deterministic_uid_and_site_root(monkeypatch):
    monkeypatch.setenv(uid.ENV_UID_ROOT, "1.2.3.4.")
    assert uid.new_uid("case", "7") == uid.new_uid("case", "7") != uid.new_uid("case", "8")
    assert uid.new_uid().startswith("1.2.3.4.")
    monkeypatch.setenv(uid.ENV_UID_ROOT, "1.2.3")
    with pytest.raises(DicomOrError, match="DICOM_OR_UID_ROOT"):
        uid.new_uid()


def test_shipped_profiles_load_with_the_stream_classes():
    profiles = qos.load_profiles()
    assert {"video", "pose", "waveform", "descriptor", "status"} <= set(profiles)
    assert profiles["video"].reliability == "best_effort"
    assert profiles["descriptor"].durability == "transient_local"
    assert profiles["descriptor"].depth == 1
    assert profiles["pose"].reliability == "reliable"
    # deadline of about two frame periods at 30 fps
    assert profiles["video"].deadline_s(30.0) == pytest.approx(2 / 30)
    assert profiles["descriptor"].deadline_s(30.0) is None


@pytest.mark.parametrize("body,field", [
    ({"reliability": "sometimes"}, "profiles.p.reliability"),
    ({"durability": "forever"}, "profiles.p.durability"),
    ({"depth": 0}, "profiles.p.depth"),
    ({"depth": "ten"}, "profiles.p.depth"),
    ({"deadline_periods": -1}, "profiles.p.deadline_periods"),
    ({"liveliness_lease_s": 0}, "profiles.p.liveliness_lease_s"),
    ({"reliabilty": "reliable"}, "profiles.p.reliabilty"),
])
def test_bad_profile_names_the_policy(tmp_path, body, field):
    path = tmp_path / "qos.yaml"
    path.write_text(yaml.safe_dump({"profiles": {"p": body}}))
    with pytest.raises(DicomOrError) as info:
        qos.load_profiles(path)
    assert info.value.field == field


def test_missing_or_broken_file_and_unknown_profile(tmp_path):
    with pytest.raises(DicomOrError, match="qos_profiles_file: cannot be read"):
        qos.load_profiles(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("profiles: [unclosed")
    with pytest.raises(DicomOrError, match="not valid YAML"):
        qos.load_profiles(broken)
    with pytest.raises(DicomOrError, match="qos_profile: unknown profile"):
        qos.get_profile("telepathy")
