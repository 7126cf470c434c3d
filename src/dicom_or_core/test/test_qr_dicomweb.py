"""QIDO-RS / WADO-RS core in memory: query parameters become the C-FIND identifier the DIMSE
side would validate and match, answers are DICOM JSON (PS3.18 F.2), and WADO-RS bodies are
multipart/related parts that are the archived files byte for byte."""

from __future__ import annotations

import email.parser
import json

import pytest
from dicom_or_test_common.examples import example_descriptor, example_session, synthetic_rgb
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from dicom_or_core.iod.video import build_snapshot
from dicom_or_core.model.uid import new_uid
from dicom_or_core.qr import dicomweb as dw
from dicom_or_core.qr import query as q
from dicom_or_core.qr.model import ArchiveIndex, LiveStream, ModelStore


def _archive_frame(root, descriptor, number):
    """A recorder-built snapshot instance (VL Endoscopic Image) stored as the recorder
    stores it: <root>/<study>/<series>/<sop>.dcm."""
    sop = new_uid()
    ds = build_snapshot(descriptor, synthetic_rgb(descriptor.rows, descriptor.columns,
                                                  number), 1_790_000_000_000_000_000 + number,
                        sop, number)
    path = root / descriptor.session.study.study_instance_uid / \
        descriptor.series_instance_uid / f"{sop}.dcm"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def world(tmp_path):
    """Two studies: one with a live endoscope (two archived frames) and an ECG, the other
    with a live room camera."""
    first, second = example_session(), example_session()
    image, waveform = "dicom_or_msgs/msg/ImageFrame", "dicom_or_msgs/msg/WaveformChunk"
    scope = example_descriptor("video", first, message_type=image)
    ecg = example_descriptor("ecg", first, message_type=waveform)
    room = example_descriptor("video_xc", second, message_type=image)
    files = [_archive_frame(tmp_path, scope, n) for n in (1, 2)]
    store = ModelStore(ArchiveIndex(tmp_path), archive_rescan_s=0.0)
    store.set_streams([LiveStream(d) for d in (scope, ecg, room)])
    assert store.rescan(10)
    yield store.snapshot(), {"scope": scope, "ecg": ecg, "room": room, "files": files}
    store.close()


def _uids(answers, keyword="SeriesInstanceUID"):
    return sorted(str(a[keyword].value) for a in answers)


def test_series_over_all_studies_is_the_c_find_answer(world):
    model, s = world
    request = dw.parse_qido("series", [("Modality", "ES")])
    assert request.query.level == "SERIES"
    answers = dw.run_qido(request, model, 100)
    assert _uids(answers) == [s["scope"].series_instance_uid]
    # The same question to the DIMSE matcher, identifier by hand.
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "SERIES"
    identifier.StudyInstanceUID = ""
    identifier.Modality = "ES"
    query = q.parse_identifier(identifier, q.STUDY_ROOT, open_upper_levels=True)
    assert _uids(q.find(model.records("SERIES", query), query)) == _uids(answers)
    every = dw.run_qido(dw.parse_qido("series", []), model, 100)
    assert len(every) == 3


def test_keyword_and_tag_are_the_same_key_and_the_path_fixes_the_study(world):
    model, s = world
    study = s["scope"].session.study.study_instance_uid
    by_keyword = dw.run_qido(dw.parse_qido("series", [("Modality", "ECG")], study_uid=study),
                             model, 100)
    by_tag = dw.run_qido(dw.parse_qido("series", [("00080060", "ECG")], study_uid=study),
                         model, 100)
    assert _uids(by_keyword) == _uids(by_tag) == [s["ecg"].series_instance_uid]
    other = s["room"].session.study.study_instance_uid
    assert dw.run_qido(dw.parse_qido("series", [("Modality", "ECG")], study_uid=other),
                       model, 100) == []


def test_wildcards_ranges_uid_lists_and_sequence_keys_match_as_in_c_find(world):
    model, s = world
    assert len(dw.run_qido(dw.parse_qido("studies", [("PatientName", "doe*")]), model,
                           100)) == 2
    assert len(dw.run_qido(dw.parse_qido("studies", [("StudyDate", "20261101-")]), model,
                           100)) == 2
    assert dw.run_qido(dw.parse_qido("studies", [("StudyDate", "-20251231")]), model,
                       100) == []
    uids = f"{s['ecg'].series_instance_uid},{s['room'].series_instance_uid}"
    assert len(dw.run_qido(dw.parse_qido("series", [("SeriesInstanceUID", uids)]), model,
                           100)) == 2
    request = dw.parse_qido("series", [("RequestAttributesSequence.AccessionNumber", "A1")])
    assert len(dw.run_qido(request, model, 100)) == 3


def test_default_return_keys_and_includefield(world):
    model, s = world
    (answer,) = dw.run_qido(dw.parse_qido("series", [("Modality", "ES")]), model, 100)
    for keyword in dw.SERIES_RETURN_KEYS + ("StudyInstanceUID", "PatientName"):
        assert keyword in answer, keyword   # /series over all studies: study keys too
    assert "Rows" not in answer
    (answer,) = dw.run_qido(dw.parse_qido("series", [("Modality", "ES"),
                                                     ("includefield", "Rows,00280011")]),
                            model, 100)
    assert (answer.Rows, answer.Columns) == (240, 320)
    (answer,) = dw.run_qido(dw.parse_qido("series", [("Modality", "ES"),
                                                     ("includefield", "all")]), model, 100)
    assert answer.Manufacturer == "dicom_or" and answer.CineRate == 30


def test_limit_offset_and_max_matches(world):
    model, _ = world
    every = _uids(dw.run_qido(dw.parse_qido("series", []), model, 100))
    pages = [dw.run_qido(dw.parse_qido("series", [("limit", "2"), ("offset", str(o))]),
                         model, 100) for o in (0, 2, 4)]
    assert [len(p) for p in pages] == [2, 1, 0]
    assert sorted(_uids(pages[0]) + _uids(pages[1])) == every
    with pytest.raises(dw.TooManyMatches, match="more than 2 matches"):
        dw.run_qido(dw.parse_qido("series", []), model, 2)
    assert len(dw.run_qido(dw.parse_qido("series", [("limit", "50")]), model, 2)) == 2


@pytest.mark.parametrize("params, reason", [
    ([("Foo", "1")], "unknown attribute 'Foo'"),
    ([("orderby", "PatientName")], "unknown attribute 'orderby'"),
    ([("StudyDate", "2024x")], "StudyDate: not a DA value: '2024x'"),
    ([("StudyInstanceUID", "1.2.abc")], "StudyInstanceUID: not a UID: '1.2.abc'"),
    ([("limit", "-1")], "limit must be one non-negative integer"),
    ([("offset", "a")], "offset must be one non-negative integer"),
    ([("fuzzymatching", "maybe")], "fuzzymatching must be true or false"),
    ([("QueryRetrieveLevel", "PATIENT")], "QueryRetrieveLevel is not a query key"),
    ([("Modality", "ES"), ("Modality", "XC")], "Modality is given twice"),
    ([("Modality.CodeValue", "1")], "Modality is not a sequence"),
])
def test_bad_queries_are_refused_with_the_c_find_reason(params, reason):
    with pytest.raises(dw.QidoError) as refused:
        dw.parse_qido("studies", params)
    assert refused.value.comment == reason


def test_bad_key_gives_the_same_text_as_the_dimse_error_comment():
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyDate = "2024x"
    with pytest.raises(q.QueryError) as dimse:
        q.parse_identifier(identifier, q.STUDY_ROOT)
    with pytest.raises(dw.QidoError) as web:
        dw.parse_qido("studies", [("StudyDate", "2024x")])
    assert web.value.comment == dimse.value.comment


def test_fuzzymatching_true_is_flagged_for_the_warning_and_false_is_plain():
    assert dw.parse_qido("studies", [("fuzzymatching", "true")]).fuzzy_ignored
    assert not dw.parse_qido("studies", [("fuzzymatching", "false")]).fuzzy_ignored


def test_json_answers_follow_ps3_18_f2(world):
    model, s = world
    (live,) = dw.run_qido(dw.parse_qido("series", [("Modality", "ES")]), model, 100)
    obj = dw.to_json(live, "SERIES", "http://h:1/dicom-web")
    json.dumps(obj)
    assert "00080052" not in obj and "00080005" not in obj   # QR level, character set
    assert obj["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]}
    assert obj["00081190"]["Value"][0].startswith("ros2:/or/endoscope/frames")
    assert Dataset.from_json(obj).SeriesInstanceUID == s["scope"].series_instance_uid
    instances = dw.run_qido(dw.parse_qido(
        "instances", [], study_uid=s["scope"].session.study.study_instance_uid,
        series_uid=s["scope"].series_instance_uid), model, 100)
    assert len(instances) == 2
    url = dw.to_json(instances[0], "IMAGE", "http://h:1/dicom-web")["00081190"]["Value"][0]
    assert url.startswith("http://h:1/dicom-web/studies/") and "/instances/" in url


def test_metadata_leaves_out_bulk_data(world):
    _, s = world
    path = s["files"][0]
    obj = dw.metadata_json(path)
    assert "7FE00010" not in obj
    header = dcmread(path, stop_before_pixels=True)
    assert obj["00080018"]["Value"] == [header.SOPInstanceUID]
    assert obj["00280010"]["Value"] == [240]


def test_multipart_parts_are_the_archived_files_and_stream_in_chunks(world):
    _, s = world
    files = [(p, dw.stored_transfer_syntax(p)) for p in s["files"]]
    assert files[0][1] == ExplicitVRLittleEndian
    boundary = dw.new_boundary()
    body = dw.multipart_body(files, boundary, chunk_size=4096)
    chunks = list(body.chunks)
    assert max(len(c) for c in chunks) <= 4096
    data = b"".join(chunks)
    assert len(data) == body.content_length
    message = email.parser.BytesParser().parsebytes(
        f"Content-Type: {dw.multipart_content_type(boundary)}\r\n\r\n".encode() + data)
    parts = message.get_payload()
    assert [p.get_payload(decode=True) for p in parts] == [p.read_bytes() for p, _ in files]
    assert parts[0]["Content-Type"] == \
        f"application/dicom; transfer-syntax={ExplicitVRLittleEndian}"


def test_a_file_that_shrinks_while_sent_fails_instead_of_lying(tmp_path):
    path = tmp_path / "x.dcm"
    path.write_bytes(b"x" * 100)
    body = dw.multipart_body([(path, ExplicitVRLittleEndian)], "b")
    path.write_bytes(b"x" * 10)
    with pytest.raises(OSError, match="shrank"):
        b"".join(body.chunks)


@pytest.mark.parametrize("accept, ok", [
    (None, True),
    ("*/*", True),
    ('multipart/related; type="application/dicom"', True),
    ('multipart/related; type="application/dicom"; transfer-syntax=*', True),
    (f'multipart/related; type="application/dicom"; transfer-syntax={ExplicitVRLittleEndian}',
     True),
    ('multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50',
     False),
    ('multipart/related; type="application/octet-stream"', False),
    ("application/dicom+json", False),
    ('multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50, '
     'multipart/related; type="application/dicom"; transfer-syntax=*', True),
])
def test_accept_for_instances(accept, ok):
    assert dw.accepts_dicom(dw.parse_accept(accept), {ExplicitVRLittleEndian}) is ok


def test_choose_follows_the_clients_order():
    ranges = dw.parse_accept("image/png;q=0.9, image/jpeg")
    assert dw.choose(ranges, (dw.MEDIA_JPEG, dw.MEDIA_PNG)) == dw.MEDIA_PNG
    assert dw.choose(dw.parse_accept("image/*"), (dw.MEDIA_JPEG,)) == dw.MEDIA_JPEG
    assert dw.choose(dw.parse_accept("text/html"), (dw.MEDIA_JPEG,)) is None


def test_instance_files_of_study_series_and_instance(world):
    model, s = world
    study = s["scope"].session.study.study_instance_uid
    series = s["scope"].series_instance_uid
    assert sorted(dw.instance_files(model, study)) == sorted(s["files"])
    assert sorted(dw.instance_files(model, study, series)) == sorted(s["files"])
    sop = dcmread(s["files"][1], stop_before_pixels=True).SOPInstanceUID
    assert dw.instance_files(model, study, series, sop) == [s["files"][1]]
    assert dw.instance_files(model, study, s["ecg"].series_instance_uid) == []
    assert dw.has_series(model, study, s["ecg"].series_instance_uid)
    assert not dw.has_series(model, "1.2.3")
