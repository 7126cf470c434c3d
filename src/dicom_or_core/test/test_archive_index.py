"""The archive index behind the bridge's IMAGE level: what it reads of a file (headers only,
whatever the bulk), that a C-FIND snapshot never waits for a rescan, and which files it
lists (truncated skipped, one entry per SOP Instance UID, the spool's own folder ignored)."""

import io
import logging
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from dicom_or_test_common.examples import example_descriptor, example_session, synthetic_waveform
from pydicom.dataset import Dataset

from dicom_or_core.archive import index as archive_index
from dicom_or_core.archive.spool import SPOOL_DIR
from dicom_or_core.iod.codec import choose_codec
from dicom_or_core.iod.pose import ToolTrack, build_pose_sr
from dicom_or_core.iod.video import build_video
from dicom_or_core.iod.waveform import build_waveform
from dicom_or_core.model.uid import new_uid
from dicom_or_core.qr import model as m

pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR",
                                        "ignore:The value for the data element")

T0 = 1_795_000_000 * 1_000_000_000
WAIT_S = 10.0   # generous event waits: only a hang fails them


def pose_sr(samples: int = 5, notes: int = 0) -> Dataset:
    """A Comprehensive 3D SR of two tools; ``notes`` TEXT items (~100 B each) make its
    content tree as large as the pose SRs already on disk, whatever the builder's layout."""
    d = example_descriptor("pose", example_session())
    stamps = T0 + np.arange(samples, dtype=np.int64) * 16_666_667
    tracks = [ToolTrack(tool, stamps, np.full((samples, 3), 0.1),
                        np.tile([0.0, 0.0, 0.0, 1.0], (samples, 1))) for tool in d.tool_ids]
    ds = build_pose_sr(d, tracks, new_uid())
    for n in range(notes):
        item = Dataset()
        item.RelationshipType, item.ValueType = "CONTAINS", "TEXT"
        concept = Dataset()
        concept.CodeValue, concept.CodingSchemeDesignator = "121106", "DCM"
        concept.CodeMeaning = "Comment"
        item.ConceptNameCodeSequence = [concept]
        item.TextValue = f"note {n}"
        ds.ContentSequence.append(item)
    return ds


def live(kind: str):
    types = {"ecg": "WaveformChunk", "video": "ImageFrame"}
    return m.LiveStream(example_descriptor(kind, example_session(),
                                           message_type=f"dicom_or_msgs/msg/{types[kind]}"))


def ecg(seconds: float = 120) -> Dataset:
    """A General ECG of three leads at 500 Hz (~360 KB of Waveform Data)."""
    d = example_descriptor("ecg", example_session())
    n = int(seconds * d.sampling_frequency_hz)
    return build_waveform(d, synthetic_waveform(n, len(d.channels)), T0, new_uid())


def video(size: int = 1 << 20, frames: int = 3000) -> Dataset:
    """A Video Endoscopic instance: synthetic bitstream, jittered stamps (so a Frame Time
    Vector of ``frames`` values, ~24 KB)."""
    d = example_descriptor("video", example_session())
    rng = np.random.default_rng(1)
    stamps = (T0 + np.arange(frames) * 33_333_333 + rng.integers(0, 2_000_000, frames))
    blob = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
    return build_video(d, blob, choose_codec(d.rows, d.columns, 30), stamps.tolist(),
                       new_uid())


BUILDERS = {"pose SR": lambda: pose_sr(notes=4000), "waveform": ecg, "video": video}
BULK = {"pose SR": "ContentSequence", "waveform": "WaveformSequence", "video": "PixelData"}


def save(root: Path, ds: Dataset, name: str | None = None) -> Path:
    """``ds`` at the recorder's place <root>/<Study>/<Series>/<SOP>.dcm (or ``name``)."""
    path = root / ds.StudyInstanceUID / ds.SeriesInstanceUID / \
        (name or f"{ds.SOPInstanceUID}.dcm")
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


class Counting(io.FileIO):
    """A raw file counting the bytes read from it (below Python's buffer)."""

    def __init__(self, path: Path, counter: list[int]) -> None:
        super().__init__(path, "rb")
        self.counter = counter

    def readinto(self, buffer):
        n = super().readinto(buffer)
        self.counter[0] += n or 0
        return n


@pytest.fixture(scope="module")
def bulky(tmp_path_factory):
    root = tmp_path_factory.mktemp("bulky")
    return root, {kind: save(root, build()) for kind, build in BUILDERS.items()}


# --- what is read ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_index_reads_the_header_not_the_bulk(bulky, kind):
    """Indexing reads a bounded prefix and the element headers, not the content tree,
    waveform samples, Frame Time Vector or Pixel Data: same cost whatever their size."""
    _, paths = bulky
    path = paths[kind]
    counter = [0]
    inst = archive_index.read_instance(
        path, open_file=lambda p: io.BufferedReader(Counting(p, counter)))
    size = path.stat().st_size
    assert size > 300_000
    assert counter[0] < 64 * 1024, f"read {counter[0]} of {size} bytes"
    header = inst.header
    assert BULK[kind] not in header and "FrameTimeVector" not in header
    assert not any(elem.tag.is_private for elem in header)
    for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID",
                    "SeriesInstanceUID", "Modality", "InstanceNumber", "PatientID"):
        assert keyword in header, keyword


def test_image_records_of_bulky_instances_carry_the_query_attributes(bulky):
    root, paths = bulky
    instances = archive_index.ArchiveIndex(root).scan()
    assert sorted(i.path for i in instances) == sorted(paths.values())
    model = m.build_model([], instances, retrieve_ae_title="BR")
    by_modality = {str(r.Modality): r for r in model.images}
    assert set(by_modality) == {"SR", "ECG", "ES"}
    for record in model.images:
        assert record.SOPInstanceUID and record.SOPClassUID and record.InstanceNumber
        assert record.RetrieveAETitle == "BR" and record.InstanceAvailability == "ONLINE"
        for bulk in BULK.values():
            assert bulk not in record
    assert int(by_modality["ES"].NumberOfFrames) == 3000
    assert by_modality["ES"].Rows == 240 and by_modality["SR"].ContentDate


def test_model_rebuild_reuses_image_records(tmp_path):
    """A live stream change rebuilds the model from cached IMAGE records (no header copy
    per instance), which keeps it cheap with thousands of archived instances."""
    save(tmp_path, pose_sr(5))
    store = m.ModelStore(archive_index.ArchiveIndex(tmp_path), archive_rescan_s=3600.0)
    try:
        first = store.snapshot()
        store.set_streams([live("ecg")])
        second = store.snapshot()
        assert second is not first and len(second.series) == 2
        assert second.images[0] is first.images[0]
    finally:
        store.close()


# --- C-FIND never waits for a rescan ------------------------------------------------------


def test_snapshot_does_not_wait_for_a_rescan_in_progress(tmp_path):
    entered, release = threading.Event(), threading.Event()

    def slow_reader(path: Path) -> archive_index.ArchivedInstance:
        entered.set()
        release.wait(WAIT_S * 3)
        return archive_index.read_instance(path)

    store = m.ModelStore(archive_index.ArchiveIndex(tmp_path, reader=slow_reader),
                         archive_rescan_s=0.0)
    try:
        assert store.snapshot().images == []          # first scan of an empty folder
        save(tmp_path, pose_sr(5))
        store.snapshot()                               # asks for a rescan, not awaited
        assert entered.wait(WAIT_S), "the rescan did not start"
        got: list[m.QueryModel] = []
        answered = threading.Event()

        def c_find() -> None:
            store.set_streams([live("ecg")])
            got.append(store.snapshot())
            answered.set()

        threading.Thread(target=c_find, daemon=True).start()
        assert answered.wait(WAIT_S), "snapshot() waited for the archive rescan"
        assert got[0].images == [] and len(got[0].series) == 1   # the stream shows at once
        release.set()
        assert store.wait_for_scans(WAIT_S)
        assert len(store.snapshot().images) == 1
    finally:
        release.set()
        store.close()


def test_first_snapshot_answers_with_what_is_indexed_so_far(tmp_path):
    first, second = save(tmp_path, pose_sr(5)), save(tmp_path, pose_sr(5))
    blocked, release = threading.Event(), threading.Event()

    def reader(path: Path) -> archive_index.ArchivedInstance:
        if path == max(first, second):
            blocked.set()
            release.wait(WAIT_S * 3)
        return archive_index.read_instance(path)

    store = m.ModelStore(archive_index.ArchiveIndex(tmp_path, reader=reader),
                         first_scan_wait_s=0.0)
    try:
        assert blocked.wait(WAIT_S)
        assert list(store.snapshot().paths.values()) == [min(first, second)]
        release.set()
        assert store.wait_for_scans(WAIT_S) and store.rescan(WAIT_S)
        assert len(store.snapshot().images) == 2
    finally:
        release.set()
        store.close()


def test_close_stops_the_index_thread(tmp_path):
    store = m.ModelStore(archive_index.ArchiveIndex(tmp_path), archive_rescan_s=0.05)
    threads = {t.name for t in threading.enumerate()}
    assert "archive-index" in threads
    store.close()
    assert store._thread is not None and not store._thread.is_alive()


# --- which files are listed -------------------------------------------------------------


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_truncated_file_is_skipped(bulky, tmp_path, kind, caplog):
    """A copy cut in half (full disk, interrupted copy) is not listed: its header may be
    whole, but C-GET would send a broken file."""
    _, paths = bulky
    data = paths[kind].read_bytes()
    cut = tmp_path / "1.2" / "1.2.3" / "cut.dcm"
    cut.parent.mkdir(parents=True)
    cut.write_bytes(data[:len(data) // 2])
    with caplog.at_level(logging.WARNING, logger="dicom_or_core.archive.index"):
        assert archive_index.ArchiveIndex(tmp_path).scan() == []
    assert "truncated" in caplog.text


def test_small_file_cut_in_its_header_is_skipped(tmp_path):
    path = save(tmp_path, pose_sr(2))
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 3])
    assert archive_index.ArchiveIndex(tmp_path).scan() == []


def test_same_sop_instance_uid_is_listed_once(tmp_path, caplog):
    ds = pose_sr(5)
    original = save(tmp_path, ds)
    shutil.copy(original, original.with_name("copy.dcm"))       # complete duplicate
    cut = original.with_name("z-partial-copy.dcm")               # newer, but cut
    cut.write_bytes(original.read_bytes()[:-100])
    with caplog.at_level(logging.WARNING, logger="dicom_or_core.archive.index"):
        index = archive_index.ArchiveIndex(tmp_path)
        instances = index.scan()
        index.scan()
    assert [i.path for i in instances] == [original]   # the one in its layout place
    model = m.build_model([], instances)
    assert len(model.images) == 1 and model.paths == {ds.SOPInstanceUID: original}
    assert caplog.text.count(f"SOP Instance UID {ds.SOPInstanceUID} in 2 files") == 1


def test_spool_folder_is_never_entered(tmp_path):
    ds = pose_sr(5)
    inside = tmp_path / SPOOL_DIR / "journal" / f"{ds.SOPInstanceUID}.dcm"
    inside.parent.mkdir(parents=True)
    ds.save_as(inside, enforce_file_format=True)
    (tmp_path / SPOOL_DIR / "index.sqlite").write_bytes(b"SQLite format 3\x00")
    assert archive_index.ArchiveIndex(tmp_path).scan() == []
    listed: list[Path] = []

    def reader(path: Path) -> archive_index.ArchivedInstance:
        listed.append(path)
        return archive_index.read_instance(path)

    assert archive_index.ArchiveIndex(tmp_path, reader=reader).scan() == []
    assert listed == []
