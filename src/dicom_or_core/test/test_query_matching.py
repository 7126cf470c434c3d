"""PS3.4 C.2.2.2 attribute matching, element by element, without any network."""

import time

import pytest
from pydicom.dataset import Dataset

from dicom_or_core.qr import query as q

# Query values (wildcards, ranges) are not valid stored values; pydicom says so, rightly.
pytestmark = [pytest.mark.filterwarnings("ignore:Invalid value for VR"),
              pytest.mark.filterwarnings("ignore:The value length:UserWarning")]


def record(**kw) -> Dataset:
    ds = Dataset()
    for key, value in kw.items():
        setattr(ds, key, value)
    return ds


def matches(query_kw: dict, record_kw: dict, combined: bool = False) -> bool:
    return q.match_dataset(record(**query_kw), record(**record_kw), combined)


@pytest.mark.parametrize("query_value, stored, expected", [
    ("ES", "ES", True),
    ("ES", "XC", False),
    ("es", "ES", False),              # CS is case sensitive
    ("E*", "ES", True),
    ("E?", "ES", True),
    ("E?", "ECG", False),
    ("*G", "ECG", True),
    ("*", "ANY", True),               # universal
    ("", "ANY", True),                # zero length: universal
    ("ES", "", False),                # empty stored value never matches a single value
])
def test_cs_single_value_and_wildcards(query_value, stored, expected):
    assert matches({"Modality": query_value}, {"Modality": stored}) is expected


@pytest.mark.parametrize("query_value, stored, expected", [
    ("Doe^John", "Doe^John", True),
    ("doe^john", "DOE^JOHN", True),   # PN may match case-insensitively
    ("Doe^John", "Doe^John^^^", True),  # trailing empty components are insignificant
    ("Doe*", "Doe^John", True),
    ("*john", "Doe^John", True),
    ("D?e^J*", "Doe^Jane", True),
    ("Doe^Jane", "Doe^John", False),
    ("Doe", "Doe^John", False),       # single value is not a prefix match
    ("Müller^Jörg", "MÜLLER^JÖRG", True),  # case folding beyond ASCII
    ("Yamada^Tarou", "Yamada^Tarou=山田^太郎=やまだ^たろう", True),  # alphabetic group
])
def test_pn_matching(query_value, stored, expected):
    assert matches({"PatientName": query_value}, {"PatientName": stored}) is expected


def test_lo_wildcards_are_literal_for_regex_characters():
    assert matches({"StudyDescription": "a.b*"}, {"StudyDescription": "a.bc"})
    assert not matches({"StudyDescription": "a.b*"}, {"StudyDescription": "axbc"})
    assert matches({"StudyDescription": "(x)+?"}, {"StudyDescription": "(x)+1"})


def test_uid_single_and_list_matching_and_no_wildcards():
    assert matches({"SeriesInstanceUID": "1.2.3"}, {"SeriesInstanceUID": "1.2.3"})
    assert not matches({"SeriesInstanceUID": "1.2.3"}, {"SeriesInstanceUID": "1.2.34"})
    assert matches({"SeriesInstanceUID": ["1.2.4", "1.2.3"]}, {"SeriesInstanceUID": "1.2.3"})
    assert not matches({"SeriesInstanceUID": ["1.2.4", "1.2.5"]},
                       {"SeriesInstanceUID": "1.2.3"})
    with pytest.raises(q.QueryError) as err:
        q.check_key(record(SeriesInstanceUID="1.2.*")[0x0020000E])
    assert err.value.status == q.FAILURE_IDENTIFIER_DOES_NOT_MATCH


@pytest.mark.parametrize("query_value, stored, expected", [
    ("20241124", "20241124", True),
    ("20241124", "20241125", False),
    ("20241120-20241130", "20241124", True),
    ("20241120-20241123", "20241124", False),
    ("20241124-", "20241124", True),     # open upper bound, inclusive
    ("20241125-", "20241124", False),
    ("-20241124", "20241124", True),     # open lower bound, inclusive
    ("-20241123", "20241124", False),
    ("2024.11.20-2024.11.30", "20241124", True),  # ACR-NEMA form still accepted
])
def test_date_ranges(query_value, stored, expected):
    assert matches({"StudyDate": query_value}, {"StudyDate": stored}) is expected


@pytest.mark.parametrize("query_value, stored, expected", [
    ("101530", "101530.250000", True),   # single value at lower precision covers its second
    ("1015", "101530", True),
    ("1016", "101530", False),
    ("1000-1100", "101530", True),
    ("1000-1015", "101530", True),       # upper bound 1015 covers 10:15:59.999999
    ("1000-1014", "101530", False),
    ("-0959", "101530", False),
    ("1016-", "101530", False),
    ("101530.5-", "101530.25", False),
    ("10:00:00-11:00:00", "101530", True),
])
def test_time_ranges(query_value, stored, expected):
    assert matches({"SeriesTime": query_value}, {"SeriesTime": stored}) is expected


@pytest.mark.parametrize("query_value, stored, expected", [
    ("20241124101530", "20241124101530.123", True),
    ("2024-2025", "20241124101530", True),           # year range, not an offset
    ("202411-", "20241124", True),
    ("-202410", "20241124", False),
    ("20241124100000-20241124110000", "20241124101530", True),
    ("20241124100000+0100-20241124110000+0100", "20241124091530", True),  # offsets -> UTC
    ("20241124120000-0500", "20241124170000", True),  # single value with offset
])
def test_datetime_ranges(query_value, stored, expected):
    assert matches({"AcquisitionDateTime": query_value},
                   {"AcquisitionDateTime": stored}) is expected


def test_combined_date_time_range_only_when_negotiated():
    query = {"StudyDate": "20241123-20241124", "StudyTime": "2200-0600"}
    late = {"StudyDate": "20241123", "StudyTime": "230000"}
    early_next = {"StudyDate": "20241124", "StudyTime": "050000"}
    noon = {"StudyDate": "20241123", "StudyTime": "120000"}
    # Separately, TM 2200-0600 is reversed: refused. Combined it is 23rd 22:00 .. 24th 06:00.
    assert matches(query, late, combined=True)
    assert matches(query, early_next, combined=True)
    assert not matches(query, noon, combined=True)
    with pytest.raises(q.QueryError):
        q.check_key(record(StudyTime="2200-0600")[0x00080030])
    # Without combination a time range applies to every day of the date range.
    separate = {"StudyDate": "20241123-20241124", "StudyTime": "1100-1300"}
    assert matches(separate, noon)
    assert not matches(separate, late)


@pytest.mark.parametrize("bad", ["2024-13-45", "20241301", "abc", "-", "20241130-20241101",
                                 "2024112"])
def test_invalid_date_keys_are_refused_with_a900(bad):
    with pytest.raises(q.QueryError) as err:
        q.check_key(record(StudyDate=bad)[0x00080020])
    assert err.value.status == q.FAILURE_IDENTIFIER_DOES_NOT_MATCH
    assert "StudyDate" in err.value.comment


def test_numeric_keys_compare_as_numbers():
    assert matches({"Rows": 1080}, {"Rows": 1080})
    assert not matches({"Rows": 720}, {"Rows": 1080})
    assert matches({"SamplingFrequency": "500.0"}, {"SamplingFrequency": "500"})
    assert matches({"SeriesNumber": "3"}, {"SeriesNumber": 3})


def test_multivalued_stored_attribute_matches_any_value():
    stored = {"ModalitiesInStudy": ["ECG", "ES", "HD"]}
    assert matches({"ModalitiesInStudy": "ES"}, stored)
    assert matches({"ModalitiesInStudy": "H*"}, stored)
    assert not matches({"ModalitiesInStudy": "XC"}, stored)


def test_unsupported_key_does_not_restrict_and_is_answered_empty():
    query = q.Query(q.STUDY_ROOT, "SERIES", record(QueryRetrieveLevel="SERIES",
                                                   StudyInstanceUID="1.2",
                                                   SeriesInstanceUID="",
                                                   ContrastBolusAgent="x*"))
    rec = record(StudyInstanceUID="1.2", SeriesInstanceUID="1.2.3", Modality="ES")
    answers = list(q.find([rec], query))
    assert len(answers) == 1
    assert answers[0].ContrastBolusAgent in (None, "")
    assert "Modality" not in answers[0]  # only requested keys come back


def _sequence_record():
    items = []
    for step, accession in (("SPS1", "ACC1"), ("SPS2", "ACC2")):
        item = Dataset()
        item.ScheduledProcedureStepID = step
        item.AccessionNumber = accession
        item.RequestedProcedureID = "RP" + step[-1]
        items.append(item)
    return record(SeriesInstanceUID="1.2.3", StudyInstanceUID="1.2",
                  RequestAttributesSequence=items)


def test_sequence_matching_returns_matching_items_with_requested_keys():
    item = Dataset()
    item.ScheduledProcedureStepID = "SPS2"
    item.AccessionNumber = ""
    query = q.Query(q.STUDY_ROOT, "SERIES", record(QueryRetrieveLevel="SERIES",
                                                   StudyInstanceUID="1.2",
                                                   RequestAttributesSequence=[item]))
    (answer,) = list(q.find([_sequence_record()], query))
    seq = answer.RequestAttributesSequence
    assert len(seq) == 1
    assert seq[0].ScheduledProcedureStepID == "SPS2"
    assert seq[0].AccessionNumber == "ACC2"
    assert "RequestedProcedureID" not in seq[0]
    item.ScheduledProcedureStepID = "SPS9"
    assert list(q.find([_sequence_record()], query)) == []


def test_empty_sequence_key_is_universal_and_returns_all_items():
    query = q.Query(q.STUDY_ROOT, "SERIES", record(QueryRetrieveLevel="SERIES",
                                                   StudyInstanceUID="1.2",
                                                   RequestAttributesSequence=[]))
    (answer,) = list(q.find([_sequence_record()], query))
    assert [i.ScheduledProcedureStepID for i in answer.RequestAttributesSequence] == \
        ["SPS1", "SPS2"]


def test_answer_has_unique_keys_level_and_utf8_charset():
    query = q.Query(q.PATIENT_ROOT, "SERIES", record(QueryRetrieveLevel="SERIES",
                                                     PatientID="P1", StudyInstanceUID="1.2",
                                                     Modality=""))
    rec = record(PatientID="P1", StudyInstanceUID="1.2", SeriesInstanceUID="1.2.3",
                 Modality="ES", PatientName="Doe")
    (answer,) = list(q.find([rec], query))
    assert answer.SpecificCharacterSet == "ISO_IR 192"
    assert answer.QueryRetrieveLevel == "SERIES"
    assert answer.SeriesInstanceUID == "1.2.3"  # unique key of the level, though not asked
    assert answer.PatientID == "P1" and answer.StudyInstanceUID == "1.2"
    assert answer.Modality == "ES"
    assert "PatientName" not in answer


# --- Wild card matching in linear time (PS3.4 C.2.2.2.4) ---------------------------------

def _reference_wildcard(pattern: str, text: str) -> bool:
    """Plain dynamic programming over (pattern, text) prefixes: slow but obviously right."""
    reach = [True] + [False] * len(text)   # reach[j]: pattern[:i] matches text[:j]
    for c in pattern:
        if c == "*":
            for j in range(1, len(text) + 1):
                reach[j] = reach[j] or reach[j - 1]
        else:
            reach = [False] + [reach[j - 1] and (c == "?" or c == text[j - 1])
                               for j in range(1, len(text) + 1)]
    return reach[len(text)]


def test_wildcard_match_agrees_with_a_reference_on_random_patterns():
    import random

    rng = random.Random(20241124)
    for _ in range(5000):
        text = "".join(rng.choice("ab.") for _ in range(rng.randint(0, 10)))
        pattern = "".join(rng.choice("ab.*?") for _ in range(rng.randint(0, 8)))
        assert q.wildcard_match(pattern, text) is _reference_wildcard(pattern, text), \
            (pattern, text)


def _finishes_within(seconds: float, fn) -> bool:
    """Run ``fn`` in a daemon thread; False when it is still running after ``seconds`` (a
    backtracking matcher would hold the test for minutes)."""
    import threading

    worker = threading.Thread(target=fn, daemon=True)
    worker.start()
    worker.join(seconds)
    return not worker.is_alive()


# One key of each VR that allows wild cards (PS3.4 C.2.2.2.4).
@pytest.mark.parametrize("keyword", [
    "RetrieveAETitle", "Modality", "StudyDescription", "ImageComments", "PatientName",
    "AccessionNumber", "InstitutionAddress", "LongCodeValue", "RetrieveURL", "TextValue"])
def test_hostile_wildcards_are_matched_in_linear_time(keyword):
    """Regression: ``****************x`` against a short description took 29 s and froze the
    bridge; each 2 more stars multiplied that by 4-5."""
    from pydicom.datadict import dictionary_VR

    assert dictionary_VR(keyword) in q._WILDCARD_VRS
    stored = "Lap chole"
    hostile = ["*" * 16 + "x", "*" * 40 + "x", "*?" * 200 + "x", "?*" * 3000,
               "*a" * 5000 + "*", "*" + "?" * 10 + "*" * 30 + "Z"]
    results = {}

    def run():
        for pattern in hostile:
            results[pattern] = matches({keyword: pattern}, {keyword: stored})

    assert _finishes_within(2.0, run), f"{keyword}: wild card matching backtracks"
    assert not any(results.values())
    assert matches({keyword: "*" * 64 + "chole"}, {keyword: stored})
    assert matches({keyword: "L*?*?*e"}, {keyword: stored})


def test_wildcard_matching_is_linear_in_a_long_stored_value():
    stored = "ab" * 5000 + "c"
    for pattern, expected in (("*a?a?a?a?b*c", False), ("*" + "a?" * 40 + "*d", False),
                              ("*?" * 300 + "c", True), ("a*b*a*c", True),
                              ("a" + "*?b" * 4000 + "c", True)):
        start = time.perf_counter()
        assert q.wildcard_match(pattern, stored) is expected, pattern
        assert time.perf_counter() - start < 0.5, pattern


@pytest.mark.parametrize("vr, text", [
    ("DA", "2" * 60000), ("DA", "2" * 30000 + "-" + "2" * 30000),
    ("TM", "1" * 60000), ("TM", "1" * 30000 + "." + "1" * 30000),
    ("DT", "2" * 60000), ("DT", "2" * 30000 + "-"), ("DT", "2024" + "+0000" * 10000 + "-"),
    ("DT", "20241124" * 7000 + "-20241124"), ("DT", "-" * 60000)])
def test_hostile_date_time_values_are_refused_quickly(vr, text):
    start = time.perf_counter()
    with pytest.raises(ValueError):
        q.parse_range(vr, text)
    assert time.perf_counter() - start < 0.5


def test_hostile_uid_lists_are_checked_quickly():
    from pydicom.dataelem import DataElement

    start = time.perf_counter()
    with pytest.raises(q.QueryError):
        q.check_key(DataElement(0x0020000D, "UI", ["1.2." * 20] * 3000 + ["1.2.x"]))
    with pytest.raises(q.QueryError):
        q.check_key(DataElement(0x0020000D, "UI", "1" * 60000))
    assert time.perf_counter() - start < 0.5
