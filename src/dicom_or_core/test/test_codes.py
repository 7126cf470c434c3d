"""Concepts taken from pydicom's code dictionary encode exactly as the project's former
hand-written (value, scheme, meaning) triples, so recorded instances do not change."""

from __future__ import annotations

from dicom_or_test_common.examples import example_descriptor
from pydicom.dataset import Dataset

from dicom_or_core.iod import pose
from dicom_or_core.iod.common import concept_item
from dicom_or_core.iod.video import ANATOMIC_REGIONS, WHOLE_BODY, apply_vl_anatomy
from dicom_or_core.sim.waveform import CHANNELS

# The literals the modules held before pydicom.sr.codedict (value, scheme, meaning).
OLD_POSE = [("DOR001", "99DICOMOR", "Tracked tool poses"),
            ("DOR002", "99DICOMOR", "Tracked tool"),
            ("112039", "DCM", "Tracking Identifier"),
            ("121230", "DCM", "Path Vertex"),
            ("DOR007", "99DICOMOR", "Rotation vector")]
OLD_REGIONS = {
    "ABDOMEN": ("818981001", "Abdomen"), "CHEST": ("51185008", "Chest"),
    "PELVIS": ("816092008", "Pelvis"), "HEAD": ("69536005", "Head"),
    "NECK": ("45048000", "Neck"), "KNEE": ("72696002", "Knee"),
    "SHOULDER": ("16982005", "Shoulder"), "HIP": ("29836001", "Hip"),
    "SPINE": ("421060004", "Spine"), "COLON": ("71854001", "Colon"),
    "STOMACH": ("69695003", "Stomach"), "BLADDER": ("89837001", "Urinary bladder"),
    "UTERUS": ("35039007", "Uterus"), "LARYNX": ("4596009", "Larynx"),
}
OLD_CHANNELS = {
    "I": ("2:1", "MDC", "Lead I"), "II": ("2:2", "MDC", "Lead II"),
    "III": ("2:61", "MDC", "Lead III"),
    "aVR": ("2:62", "MDC", "aVR, augmented voltage, right"),
    "aVL": ("2:63", "MDC", "aVL, augmented voltage, left"),
    "aVF": ("2:64", "MDC", "aVF, augmented voltage, foot"),
    "V1": ("2:3", "MDC", "Lead V1"), "V2": ("2:4", "MDC", "Lead V2"),
    "V3": ("2:5", "MDC", "Lead V3"), "V4": ("2:6", "MDC", "Lead V4"),
    "V5": ("2:7", "MDC", "Lead V5"), "V6": ("2:8", "MDC", "Lead V6"),
    "ART": ("128446002", "SCT", "Arterial pressure waveform"),
    "PLETH": ("128435000", "SCT", "Hemodynamic oxygen saturation waveform"),
    "RESP": ("128436004", "SCT", "Respiration impedance waveform"),
}


def _triple(item) -> tuple[str, str, str]:
    return item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning


def test_pose_concepts_encode_as_before():
    assert [_triple(concept_item(c)) for c in pose.CODES] == OLD_POSE


def test_anatomic_regions_encode_as_before():
    assert set(ANATOMIC_REGIONS) == set(OLD_REGIONS)
    for part, (value, meaning) in OLD_REGIONS.items():
        assert _triple(concept_item(ANATOMIC_REGIONS[part])) == (value, "SCT", meaning)
    assert _triple(concept_item(WHOLE_BODY)) == ("38266002", "SCT", "Entire body")
    ds = Dataset()
    apply_vl_anatomy(ds, example_descriptor("video", body_part_examined="CHEST"))
    assert _triple(ds.AnatomicRegionSequence[0]) == ("51185008", "SCT", "Chest")


def test_simulated_channel_sources_are_as_before():
    assert set(CHANNELS) == set(OLD_CHANNELS)
    for label, triple in OLD_CHANNELS.items():
        c = CHANNELS[label]
        assert (c.source_code_value, c.source_coding_scheme, c.source_code_meaning) == triple
