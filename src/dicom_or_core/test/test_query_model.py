"""The Patient/Study/Series/Image model built from descriptors and archived files, the
ros2: URI, and C-FIND over the model at every level of both roots."""

import time
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from dicom_or_core.archive import index as archive_index
from dicom_or_core.model import context as ctx
from dicom_or_core.model.errors import DicomOrError
from dicom_or_core.model.ros2_uri import Ros2Uri, format_uri, parse
from dicom_or_core.qr import model as m
from dicom_or_core.qr import query as q

pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR")

STUDY = "1.2.826.0.1.3680043.8.498.1"


def session(study_uid=STUDY, patient_id="P-001", name="Doe^Jane"):
    return ctx.SessionContext(
        patient=ctx.Patient(patient_id=patient_id, patient_name=name, birth_date="19700101",
                            sex="F"),
        study=ctx.Study(study_instance_uid=study_uid, accession_number="ACC1", study_id="S1",
                        study_date="20241124", study_time="080000",
                        study_description="Lap chole"),
        synchronization_frame_of_reference_uid="1.2.3.4", scheduled_procedure_step_id="SPS1",
        operating_room="OR1")


def video(uid="1.2.826.0.1.3680043.8.498.10", topic="/or/endoscope/frames", **kw):
    return ctx.StreamDescriptor(
        session=session(**kw), stream_uuid="u-" + uid, kind=ctx.KIND_VIDEO, topic=topic,
        message_type="dicom_or_msgs/msg/ImageFrame", qos_profile="video",
        nominal_rate_hz=30.0, series_instance_uid=uid, series_number=1, modality="ES",
        series_description="Endoscope", series_date="20241124", series_time="081500",
        frame_of_reference_uid="1.2.3.5", rows=1080, columns=1920, pixel_encoding="rgb8",
        equipment=ctx.Equipment(manufacturer="ACME", model_name="Scope 1",
                                station_name="OR1"))


def ecg(uid="1.2.826.0.1.3680043.8.498.11"):
    ch = [ctx.WaveformChannel(label=x, source_code_value="2:1", source_coding_scheme="MDC",
                              unit_ucum="uV") for x in ("I", "II", "III")]
    return ctx.StreamDescriptor(
        session=session(), stream_uuid="u-ecg", kind=ctx.KIND_WAVEFORM,
        topic="/or/patient_monitor/ecg", message_type="dicom_or_msgs/msg/WaveformChunk",
        qos_profile="waveform", nominal_rate_hz=500.0, series_instance_uid=uid,
        series_number=3, modality="ECG", series_description="ECG", series_date="20241124",
        series_time="081501", frame_of_reference_uid="1.2.3.5", sampling_frequency_hz=500.0,
        channels=ch)


def write_instance(root: Path, study: str, series: str, sop: str | None = None,
                   patient_id="P-001") -> Path:
    sop = sop or generate_uid()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = sop
    ds.PatientName, ds.PatientID = "Doe^Jane", patient_id
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.StudyDate, ds.StudyTime = "20241124", "080000"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "ES", 1, 1
    ds.ContentDate, ds.ContentTime = "20241124", "081600"
    ds.Rows = ds.Columns = 2
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = b"\x00\x01\x02\x03"
    path = root / study / series / f"{sop}.dcm"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


# --- ros2: URI ------------------------------------------------------------------------


def test_ros2_uri_round_trip():
    uri = Ros2Uri("/or/endoscope/frames", "dicom_or_msgs/msg/ImageFrame", "video", 7)
    text = format_uri(uri)
    assert text == "ros2:/or/endoscope/frames?type=dicom_or_msgs/msg/ImageFrame&qos=video" \
        "&domain=7"
    assert parse(text) == uri
    assert parse("ros2:///or/x?qos=pose&type=a/msg/B") == Ros2Uri("/or/x", "a/msg/B", "pose")


@pytest.mark.parametrize("bad", ["http://x", "ros2:or/x?type=a/msg/B&qos=v",
                                 "ros2:/or/x?qos=v", "ros2:/or/x?type=a/msg/B",
                                 "ros2:/or/x?type=bad&qos=v",
                                 "ros2:/or/x?type=a/msg/B&qos=v&domain=999",
                                 "ros2:/or/x?type=a/msg/B&qos=v&domain=-1",
                                 "ros2:/or/x y?type=a/msg/B&qos=v"])
def test_ros2_uri_rejects_malformed(bad):
    with pytest.raises(DicomOrError):
        parse(bad)


# --- model ---------------------------------------------------------------------------


def test_series_record_of_video_and_waveform():
    model = m.build_model([m.LiveStream(video()), m.LiveStream(ecg())], [], domain_id=5,
                          retrieve_ae_title="DICOM_OR")
    by_mod = {str(s.Modality): s for s in model.series}
    es, ecg_rec = by_mod["ES"], by_mod["ECG"]
    assert (es.Rows, es.Columns, es.RecommendedDisplayFrameRate, es.CineRate) == \
        (1080, 1920, 30, 30)
    assert es.RetrieveURL == "ros2:/or/endoscope/frames?type=dicom_or_msgs/msg/ImageFrame" \
        "&qos=video&domain=5"
    assert parse(ecg_rec.RetrieveURL).topic == "/or/patient_monitor/ecg"
    assert ecg_rec.NumberOfWaveformChannels == 3 and float(ecg_rec.SamplingFrequency) == 500
    assert es.Manufacturer == "ACME" and es.StationName == "OR1"
    assert es.InstanceAvailability == "ONLINE"
    assert es.RequestAttributesSequence[0].ScheduledProcedureStepID == "SPS1"
    (study,) = model.studies
    assert list(study.ModalitiesInStudy) == ["ECG", "ES"]
    assert study.NumberOfStudyRelatedSeries == 2
    (patient,) = model.patients
    assert patient.PatientID == "P-001" and patient.NumberOfPatientRelatedStudies == 1


def test_stale_and_lost_streams_are_marked_stopped_are_dropped():
    model = m.build_model([m.LiveStream(video(), state=m.STATE_STALE),
                           m.LiveStream(ecg(), state=m.STATE_SOURCE_LOST)], [])
    by_mod = {str(s.Modality): s for s in model.series}
    assert by_mod["ES"].SeriesDescription == "Endoscope [STALE]"
    assert by_mod["ES"].InstanceAvailability == "ONLINE"
    assert by_mod["ECG"].SeriesDescription == "ECG [SOURCE LOST]"
    assert by_mod["ECG"].InstanceAvailability == "UNAVAILABLE"
    model = m.build_model([m.LiveStream(video(), state=m.STATE_STOPPED)], [])
    assert model.series == []


def test_archive_instances_join_live_series_and_form_their_own(tmp_path):
    live = video()
    write_instance(tmp_path, STUDY, live.series_instance_uid)
    write_instance(tmp_path, STUDY, live.series_instance_uid)
    gone = write_instance(tmp_path, STUDY, "1.2.826.0.1.3680043.8.498.99")
    (tmp_path / STUDY / "junk.dcm").write_bytes(b"not dicom")
    (tmp_path / STUDY / "x.dcm.partial").write_bytes(b"half")
    index = archive_index.ArchiveIndex(tmp_path)
    model = m.build_model([m.LiveStream(live)], index.scan(), retrieve_ae_title="BR")
    counts = {str(s.SeriesInstanceUID): int(s.NumberOfSeriesRelatedInstances)
              for s in model.series}
    assert counts == {live.series_instance_uid: 2, "1.2.826.0.1.3680043.8.498.99": 1}
    assert len(model.images) == 3 and "PixelData" not in model.images[0]
    assert model.studies[0].NumberOfStudyRelatedInstances == 3
    assert gone in model.paths.values()


def test_model_store_rebuilds_on_change_only():
    store = m.ModelStore(domain_id=0, retrieve_ae_title="BR")
    first = store.snapshot()
    assert store.snapshot() is first
    store.set_streams([m.LiveStream(video())])
    second = store.snapshot()
    assert second is not first and len(second.series) == 1
    store.set_streams([m.LiveStream(video())])
    assert store.snapshot() is second
    store.set_streams([])
    assert store.snapshot().series == []


def test_model_store_sees_new_archive_files_after_a_background_rescan(tmp_path):
    store = m.ModelStore(archive_index.ArchiveIndex(tmp_path), archive_rescan_s=3600.0)
    try:
        now = time.monotonic()
        assert store.snapshot(now).images == []       # the first scan (empty folder)
        write_instance(tmp_path, STUDY, "1.2.3.4.5")
        assert store.snapshot(now + 0.1).images == []   # within the rescan period: cached
        # Past the period: the snapshot starts a rescan beside it and answers at once.
        assert store.snapshot(now + 3601).images == []
        assert store.wait_for_scans(10)
        assert len(store.snapshot(now + 3601.1).images) == 1
    finally:
        store.close()


# --- C-FIND over the model at every level of both roots ------------------------------


def _find(model, root, **keys):
    ds = Dataset()
    for key, value in keys.items():
        setattr(ds, key, value)
    parsed = q.parse_identifier(ds, root)
    return list(q.find(model.records(parsed.level), parsed))


@pytest.fixture
def model(tmp_path):
    other = video(uid="1.2.826.0.1.3680043.8.498.20", topic="/or2/endoscope/frames",
                  study_uid="1.2.826.0.1.3680043.8.498.2", patient_id="P-002",
                  name="Roe^Richard")
    write_instance(tmp_path, STUDY, "1.2.826.0.1.3680043.8.498.10", sop="1.2.3.100")
    return m.build_model([m.LiveStream(video()), m.LiveStream(ecg()), m.LiveStream(other)],
                         archive_index.ArchiveIndex(tmp_path).scan(), retrieve_ae_title="BR")


def test_find_patient_level(model):
    answers = _find(model, q.PATIENT_ROOT, QueryRetrieveLevel="PATIENT", PatientName="roe*",
                    NumberOfPatientRelatedSeries="")
    assert [(a.PatientID, a.NumberOfPatientRelatedSeries) for a in answers] == [("P-002", 1)]


def test_find_study_level_both_roots(model):
    answers = _find(model, q.PATIENT_ROOT, QueryRetrieveLevel="STUDY", PatientID="P-001",
                    StudyDate="20241101-", ModalitiesInStudy="")
    assert [a.StudyInstanceUID for a in answers] == [STUDY]
    answers = _find(model, q.STUDY_ROOT, QueryRetrieveLevel="STUDY", PatientName="*",
                    StudyInstanceUID="")
    assert len(answers) == 2


def test_find_series_level(model):
    answers = _find(model, q.STUDY_ROOT, QueryRetrieveLevel="SERIES", StudyInstanceUID=STUDY,
                    Modality="E*", RetrieveURL="", NumberOfSeriesRelatedInstances="")
    got = {str(a.Modality): a for a in answers}
    assert set(got) == {"ES", "ECG"}
    assert got["ES"].NumberOfSeriesRelatedInstances == 1
    assert parse(got["ES"].RetrieveURL).qos_profile == "video"
    answers = _find(model, q.PATIENT_ROOT, QueryRetrieveLevel="SERIES", PatientID="P-001",
                    StudyInstanceUID=STUDY, SeriesTime="081501-", Modality="")
    assert [a.Modality for a in answers] == ["ECG"]


def test_find_image_level(model):
    answers = _find(model, q.STUDY_ROOT, QueryRetrieveLevel="IMAGE", StudyInstanceUID=STUDY,
                    SeriesInstanceUID="1.2.826.0.1.3680043.8.498.10", SOPClassUID="",
                    InstanceNumber="")
    assert [(a.SOPInstanceUID, a.InstanceNumber) for a in answers] == [("1.2.3.100", 1)]
    assert _find(model, q.PATIENT_ROOT, QueryRetrieveLevel="IMAGE", PatientID="P-002",
                 StudyInstanceUID=STUDY, SeriesInstanceUID="1.2.826.0.1.3680043.8.498.10") \
        == []


def test_records_narrowed_by_unique_keys_hold_every_match(tmp_path):
    series = "1.2.826.0.1.3680043.8.498.10"
    for n in range(30):
        write_instance(tmp_path, STUDY, series if n % 2 else "1.2.3.4.5", sop=f"1.2.3.9.{n}")
    model = m.build_model([m.LiveStream(video())], archive_index.ArchiveIndex(tmp_path).scan())

    def query(level, **keys):
        ds = Dataset()
        ds.QueryRetrieveLevel = level
        for key, value in keys.items():
            setattr(ds, key, value)
        return q.parse_identifier(ds, q.STUDY_ROOT)

    one = query("IMAGE", StudyInstanceUID=STUDY, SeriesInstanceUID=series,
                SOPInstanceUID="1.2.3.9.7", InstanceNumber="")
    assert [str(r.SOPInstanceUID) for r in model.records("IMAGE", one)] == ["1.2.3.9.7"]
    listed = query("IMAGE", StudyInstanceUID=STUDY, SeriesInstanceUID=series,
                   SOPInstanceUID=["1.2.3.9.9", "1.2.3.9.3"])
    assert {str(r.SOPInstanceUID) for r in model.records("IMAGE", listed)} == \
        {"1.2.3.9.9", "1.2.3.9.3"}
    for ident in (query("IMAGE", StudyInstanceUID=STUDY, SeriesInstanceUID=series),
                  query("IMAGE", StudyInstanceUID=STUDY, SeriesInstanceUID=series,
                        InstanceNumber="1"),
                  query("SERIES", StudyInstanceUID=STUDY, Modality="")):
        narrowed = model.records(ident.level, ident)
        every = model.records(ident.level)
        assert list(q.find(narrowed, ident)) == list(q.find(every, ident))
        assert len(narrowed) <= len(every)
    assert len(model.records("IMAGE", query("IMAGE", StudyInstanceUID=STUDY,
                                             SeriesInstanceUID=series))) == 15
