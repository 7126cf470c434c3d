"""Identifier rules of the Patient Root and Study Root models (PS3.4 C.4.1.2.2, C.6)."""

import pytest
from pydicom.dataset import Dataset

from dicom_or_core.qr import query as q

# Query values (wildcards, ranges) are not valid stored values; pydicom says so, rightly.
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR")


def ident(**kw) -> Dataset:
    ds = Dataset()
    for key, value in kw.items():
        setattr(ds, key, value)
    return ds


def test_missing_level_is_a900():
    with pytest.raises(q.QueryError) as err:
        q.parse_identifier(ident(PatientID="x"), q.PATIENT_ROOT)
    assert err.value.status == q.FAILURE_IDENTIFIER_DOES_NOT_MATCH
    assert err.value.offending == 0x00080052
    ds = err.value.status_dataset()
    assert ds.Status == 0xA900 and "QueryRetrieveLevel" in ds.ErrorComment


@pytest.mark.parametrize("root, level", [(q.STUDY_ROOT, "PATIENT"), (q.PATIENT_ROOT, "FRAME"),
                                         (q.PATIENT_ROOT, "SERIES ; DROP")])
def test_illegal_level_for_model_is_a900(root, level):
    with pytest.raises(q.QueryError) as err:
        q.parse_identifier(ident(QueryRetrieveLevel=level), root)
    assert err.value.status == q.FAILURE_IDENTIFIER_DOES_NOT_MATCH


@pytest.mark.parametrize("root, level, keys", [
    (q.PATIENT_ROOT, "STUDY", {}),
    (q.PATIENT_ROOT, "SERIES", {"PatientID": "P1"}),
    (q.PATIENT_ROOT, "SERIES", {"PatientID": "P*", "StudyInstanceUID": "1.2"}),
    (q.STUDY_ROOT, "SERIES", {"StudyInstanceUID": ""}),
    (q.STUDY_ROOT, "IMAGE", {"StudyInstanceUID": "1.2"}),
    (q.STUDY_ROOT, "IMAGE", {"StudyInstanceUID": ["1.2", "1.3"], "SeriesInstanceUID": "1.2.3"}),
])
def test_unique_keys_above_the_level_need_a_single_value(root, level, keys):
    with pytest.raises(q.QueryError) as err:
        q.parse_identifier(ident(QueryRetrieveLevel=level, **keys), root)
    assert err.value.status == q.FAILURE_IDENTIFIER_DOES_NOT_MATCH


@pytest.mark.parametrize("root, level, keys", [
    (q.PATIENT_ROOT, "STUDY", {}),
    (q.PATIENT_ROOT, "SERIES", {"PatientID": "P*"}),
    (q.STUDY_ROOT, "SERIES", {"StudyInstanceUID": "", "Modality": "ES"}),
    (q.STUDY_ROOT, "SERIES", {"StudyInstanceUID": "*"}),
    (q.STUDY_ROOT, "IMAGE", {"StudyInstanceUID": ["1.2", "1.3"]}),
])
def test_open_upper_levels_accept_absent_universal_and_listed_unique_keys(root, level, keys):
    parsed = q.parse_identifier(ident(QueryRetrieveLevel=level, **keys), root,
                                open_upper_levels=True)
    assert parsed.level == level


@pytest.mark.parametrize("keys", [{"StudyInstanceUID": "1.2.*"}, {"StudyInstanceUID": "x"},
                                  {"StudyDate": "2024-01-01"}])
def test_open_upper_levels_still_refuse_malformed_keys(keys):
    with pytest.raises(q.QueryError) as err:
        q.parse_identifier(ident(QueryRetrieveLevel="SERIES", **keys), q.STUDY_ROOT,
                           open_upper_levels=True)
    assert err.value.status == q.FAILURE_IDENTIFIER_DOES_NOT_MATCH


def test_relational_queries_lift_the_hierarchy_rule():
    parsed = q.parse_identifier(ident(QueryRetrieveLevel="SERIES", Modality="ES"),
                                q.STUDY_ROOT, relational=True)
    assert parsed.level == "SERIES"


@pytest.mark.parametrize("root, level, keys", [
    (q.PATIENT_ROOT, "PATIENT", {"PatientName": "*"}),
    (q.PATIENT_ROOT, "IMAGE", {"PatientID": "P1", "StudyInstanceUID": "1.2",
                               "SeriesInstanceUID": "1.2.3"}),
    (q.STUDY_ROOT, "STUDY", {"PatientName": "Doe*", "StudyDate": "20240101-"}),
    (q.STUDY_ROOT, "SERIES", {"StudyInstanceUID": "1.2", "Modality": "ES"}),
])
def test_valid_identifiers(root, level, keys):
    assert q.parse_identifier(ident(QueryRetrieveLevel=level, **keys), root).level == level


def test_level_is_case_and_space_tolerant():
    assert q.parse_identifier(ident(QueryRetrieveLevel="study "), q.STUDY_ROOT).level == "STUDY"


def test_undecodable_value_is_c000_not_an_exception():
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    # A US element with 3 bytes cannot be decoded.
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag
    ds[0x00280010] = RawDataElement(Tag(0x00280010), "US", 3, b"\x01\x02\x03", 0, False,
                                    True)
    with pytest.raises(q.QueryError) as err:
        q.parse_identifier(ds, q.STUDY_ROOT)
    assert err.value.status in (q.FAILURE_UNABLE_TO_PROCESS,
                                q.FAILURE_IDENTIFIER_DOES_NOT_MATCH)


def test_retrieve_needs_unique_key_of_level_and_ignores_others():
    recs = [ident(StudyInstanceUID="1.2", SeriesInstanceUID=f"1.2.{i}", Modality="ES")
            for i in range(3)]
    query = q.parse_identifier(ident(QueryRetrieveLevel="SERIES", StudyInstanceUID="1.2",
                                     SeriesInstanceUID=["1.2.0", "1.2.2"], Modality="XC"),
                               q.STUDY_ROOT)
    assert [str(r.SeriesInstanceUID) for r in q.matching_records(recs, query)] == \
        ["1.2.0", "1.2.2"]
    query = q.parse_identifier(ident(QueryRetrieveLevel="SERIES", StudyInstanceUID="1.2"),
                               q.STUDY_ROOT)
    with pytest.raises(q.QueryError):
        list(q.matching_records(recs, query))
