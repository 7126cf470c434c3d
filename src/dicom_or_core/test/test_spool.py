"""Durable spool: atomic instance files, journal framing and torn tails, recovery, index
states and retention."""

from __future__ import annotations

import os

import pydicom
import pytest
from dicom_or_test_common.examples import example_descriptor, now_ns, synthetic_waveform

from dicom_or_core.archive.spool import (
    COMMITTED,
    FINAL,
    STORED,
    WRITING,
    Spool,
)
from dicom_or_core.iod.waveform import build_waveform
from dicom_or_core.model.uid import new_uid


def instance(series=None):
    d = example_descriptor("ecg")
    if series:
        d.series_instance_uid = series
    return build_waveform(d, synthetic_waveform(100, 3), now_ns(), new_uid())


def test_write_instance_is_final_complete_and_indexed(tmp_path):
    spool = Spool(tmp_path)
    ds = instance()
    path = spool.write_instance(ds)
    assert path == tmp_path / ds.StudyInstanceUID / ds.SeriesInstanceUID / \
        f"{ds.SOPInstanceUID}.dcm"
    assert pydicom.dcmread(path).SOPInstanceUID == ds.SOPInstanceUID
    assert not list(tmp_path.rglob("*.partial"))
    row = spool.get(ds.SOPInstanceUID)
    assert row.state == FINAL and row.size == path.stat().st_size
    assert spool.counts()[FINAL] == 1
    assert [r.sop_instance_uid for r in spool.due()] == [ds.SOPInstanceUID]


def test_journal_records_survive_and_a_torn_tail_is_dropped(tmp_path):
    spool = Spool(tmp_path, fsync_interval_s=0.0)
    journal = spool.open_journal({"sop_instance_uid": "1.2.3"})
    for i in range(5):
        journal.append(bytes([i]) * (100 + i))
    assert journal.records_acknowledged == 5
    # Simulate a crash mid-write of a sixth record: a header and half a payload.
    with open(journal.data_path, "ab") as f:
        f.write(b"\x10\x00\x00\x00\x00\x00\x00\x00abc")
    [reopened] = Spool(tmp_path).journals()
    records = list(reopened.records())
    assert [len(r) for r in records] == [100, 101, 102, 103, 104]
    # A flipped bit in record 3 stops reading there (CRC), never returns bad data.
    data = bytearray(journal.data_path.read_bytes())
    data[-300] ^= 0xFF
    journal.data_path.write_bytes(bytes(data))
    assert len(list(reopened.records())) < 5


def test_a_failed_append_leaves_no_torn_record(tmp_path, monkeypatch):
    spool = Spool(tmp_path)
    journal = spool.open_journal({"sop_instance_uid": "1.2.3"})
    journal.append(b"first")
    real_write = os.write
    calls = []

    def disk_full(fd, data):
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data[:5]))  # part of the record went out
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", disk_full)
    with pytest.raises(OSError):
        journal.append(b"second record")
    monkeypatch.setattr(os, "write", real_write)
    journal.append(b"third")                        # space is back
    assert list(journal.records()) == [b"first", b"third"]
    assert journal.records_acknowledged == 2


def test_recover_finalises_journals_and_cleans_up(tmp_path):
    spool = Spool(tmp_path)
    ds = instance()
    journal = spool.open_journal({"sop_instance_uid": ds.SOPInstanceUID})
    journal.append(b"samples")
    # A crash left a half-written instance file and a 'writing' row behind.
    garbage = tmp_path / "1.2" / "3.4" / "5.6.dcm.partial"
    garbage.parent.mkdir(parents=True)
    garbage.write_bytes(b"half")
    other = instance()
    spool._upsert(other, spool.instance_path(other.StudyInstanceUID,
                                             other.SeriesInstanceUID,
                                             other.SOPInstanceUID), WRITING, 0, 0.0)
    spool.close()

    seen = []

    def finalise(j):
        seen.append(list(j.records()))
        return ds

    spool = Spool(tmp_path)
    report = spool.recover(finalise)
    assert seen == [[b"samples"]]
    assert report.journals_finalised == 1 and report.partial_files_removed == 1
    assert report.sop_instance_uids == (ds.SOPInstanceUID,)
    assert not garbage.exists() and spool.get(other.SOPInstanceUID) is None
    assert spool.get(ds.SOPInstanceUID).state == FINAL
    assert spool.journals() == []
    # Idempotent: nothing left to do.
    assert Spool(tmp_path).recover(finalise).journals_finalised == 0


def test_recover_does_not_duplicate_an_instance_finalised_before_the_crash(tmp_path):
    spool = Spool(tmp_path)
    ds = instance()
    journal = spool.open_journal({"sop_instance_uid": ds.SOPInstanceUID})
    journal.append(b"x")
    spool.write_instance(ds)  # killed after the rename, before the journal was removed
    report = Spool(tmp_path).recover(lambda j: pytest.fail("must not finalise twice"))
    assert report.journals_discarded == 1
    assert len(list(tmp_path.rglob("*.dcm"))) == 1


def test_empty_journal_is_discarded(tmp_path):
    spool = Spool(tmp_path)
    spool.open_journal({"sop_instance_uid": "1.2.3"})
    report = Spool(tmp_path).recover(lambda j: None)
    assert report.journals_discarded == 1 and not Spool(tmp_path).journals()


def test_states_retry_schedule_and_retention(tmp_path):
    spool = Spool(tmp_path)
    a, b = instance(), instance()
    pa, pb = spool.write_instance(a), spool.write_instance(b)
    spool.defer(a.SOPInstanceUID, "connection refused", next_attempt=1e12)
    assert [r.sop_instance_uid for r in spool.due()] == [b.SOPInstanceUID]
    assert spool.get(a.SOPInstanceUID).attempts == 1
    spool.mark_stored(b.SOPInstanceUID)
    assert spool.get(b.SOPInstanceUID).state == STORED
    spool.mark_committed(b.SOPInstanceUID)
    assert spool.apply_retention(3600.0) == []           # too young
    later = os.path.getmtime(pb) + 7200
    assert spool.apply_retention(3600.0, now=later) == [b.SOPInstanceUID]
    assert not pb.exists() and pa.exists()                # only committed ones go
    assert spool.counts()[COMMITTED] == 0


def test_last_instance_number_counts_index_journals_and_quarantine(tmp_path):
    """Instance Numbers never repeat: the highest number in the index, in this run's and
    earlier runs' journals and in quarantine, whatever finalises in between."""
    spool = Spool(tmp_path)
    ds = instance()
    ds.InstanceNumber = 3
    spool.write_instance(ds)
    series = {"series_instance_uid": ds.SeriesInstanceUID}
    assert spool.last_instance_number(ds.SeriesInstanceUID) == 3
    spool.open_journal({"sop_instance_uid": "1.2", "instance_number": 5,
                        "descriptor": series})
    assert spool.last_instance_number(ds.SeriesInstanceUID) == 5
    left = spool.open_journal({"sop_instance_uid": "1.3", "instance_number": 7,
                               "descriptor": series})
    spool.quarantine(left.directory, "test")
    assert Spool(tmp_path).last_instance_number(ds.SeriesInstanceUID) == 7
    assert Spool(tmp_path).last_instance_number("1.2.3.999") == 0


def test_a_journal_this_process_opened_is_never_a_leftover(tmp_path):
    """The restart race: recovery must not touch a segment being created right now."""
    spool = Spool(tmp_path)
    mine = spool.open_journal({"sop_instance_uid": "1.2.3"})
    mine.append(b"acknowledged")
    assert spool.journals() == []
    assert spool.recover(lambda j: pytest.fail("finalised a live segment")) \
        .journals_finalised == 0
    assert mine.directory.is_dir()
    assert [j.directory for j in Spool(tmp_path).journals()] == [mine.directory]


def test_unreadable_meta_with_samples_is_quarantined_never_deleted(tmp_path):
    spool = Spool(tmp_path)
    journal = spool.open_journal({"sop_instance_uid": "1.2.3"})
    journal.append(b"acknowledged sample")
    journal.close()
    (journal.directory / "meta.json").write_bytes(b"\x00garbage{")
    empty = spool.open_journal({"sop_instance_uid": "1.2.4"})
    (empty.directory / "meta.json").unlink()  # died before its first sample
    assert Spool(tmp_path).journals() == []
    kept = tmp_path / ".spool" / "quarantine" / journal.directory.name
    assert (kept / "data.jnl").is_file()
    assert "meta.json" in (kept / "QUARANTINED.txt").read_text()
    assert not empty.directory.exists()


def test_a_journal_that_cannot_be_finalised_is_quarantined_and_the_rest_recovered(tmp_path):
    spool = Spool(tmp_path)
    bad = spool.open_journal({"sop_instance_uid": "1.2.3", "n": 1})
    bad.append(b"x")
    good_ds = instance()
    good = spool.open_journal({"sop_instance_uid": good_ds.SOPInstanceUID, "n": 2})
    good.append(b"y")

    def finalise(journal):
        if journal.meta["n"] == 1:
            raise KeyError("descriptor")
        return good_ds

    report = Spool(tmp_path).recover(finalise)
    assert (report.journals_finalised, report.journals_quarantined) == (1, 1)
    assert "KeyError" in report.problems[0]
    assert (tmp_path / ".spool" / "quarantine" / bad.directory.name / "data.jnl").is_file()


def test_damage_mid_journal_loses_only_the_damaged_record_and_says_so(tmp_path):
    """One flipped byte a third into a journal once dropped every record after it."""
    spool = Spool(tmp_path)
    journal = spool.open_journal({"sop_instance_uid": "1.2.3"})
    for k in range(10):
        journal.append(bytes([k]) * 100)
    journal.close()
    data = bytearray(journal.data_path.read_bytes())
    data[len(data) // 3] ^= 0xFF  # one flipped byte a third of the way in
    journal.data_path.write_bytes(bytes(data))
    kept = []

    def finalise(j):
        kept.extend(j.records())
        return instance()

    report = Spool(tmp_path).recover(finalise)
    assert len(kept) == 9 and kept == [bytes([k]) * 100 for k in range(10) if k != 3]
    assert report.journals_finalised == 1
    assert any("1 corrupt record(s) skipped (CRC): 4" in p for p in report.problems), \
        report.problems


def test_a_torn_tail_ends_the_journal_where_it_tore(tmp_path):
    spool = Spool(tmp_path)
    journal = spool.open_journal({"sop_instance_uid": "1.2.3"})
    for k in range(5):
        journal.append(bytes([k]) * 100)
    journal.close()
    data = journal.data_path.read_bytes()
    journal.data_path.write_bytes(data[:-30])  # power loss in the last record
    records = list(Spool(tmp_path).journals()[0].records())
    assert records == [bytes([k]) * 100 for k in range(4)]


def test_pixel_data_written_file_to_file(tmp_path):
    """An instance whose Pixel Data is copied from a file: encapsulated fragments of at
    most the fragment size, an odd-length stream padded, read back intact by pydicom."""
    from pydicom.encaps import generate_fragments

    from dicom_or_core.archive.spool import PendingInstance
    from dicom_or_core.iod.bulk import EncapsulatedFile, NativeFrames

    stream = tmp_path / "stream.bin"
    payload = os.urandom(10_001)
    stream.write_bytes(payload)
    ds = instance()
    del ds.WaveformSequence
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.102"  # H.264: encapsulated
    spool = Spool(tmp_path / "archive")
    path = spool.write_instance(PendingInstance(ds, EncapsulatedFile(stream, 4096)))
    back = pydicom.dcmread(path)
    offset_table, *fragments = generate_fragments(back.PixelData)
    assert offset_table == b""  # empty Basic Offset Table (PS3.5 A.4)
    assert [len(f) for f in fragments] == [4096, 4096, 1810]
    assert b"".join(fragments) == payload + b"\0"
    # A writer that fails leaves neither the instance nor a partial file.
    other = instance()
    del other.WaveformSequence
    with pytest.raises(ValueError, match="declared"):
        spool.write_instance(PendingInstance(other, NativeFrames(10, lambda: [b"short"])))
    assert not list((tmp_path / "archive").rglob(f"{other.SOPInstanceUID}*"))


def test_a_damaged_index_is_set_aside_and_rebuilt_from_the_archive(tmp_path):
    spool = Spool(tmp_path)
    kept = instance()
    kept.InstanceNumber = 4
    spool.write_instance(kept)
    spool.mark_committed(kept.SOPInstanceUID)
    spool.close()
    for leftover in (tmp_path / ".spool").glob("index.sqlite-*"):
        leftover.unlink()
    (tmp_path / ".spool" / "index.sqlite").write_bytes(b"garbage, not SQLite" * 100)
    reopened = Spool(tmp_path)
    assert reopened.problems and "unreadable" in reopened.problems[0]
    row = reopened.get(kept.SOPInstanceUID)
    assert row.state == FINAL and row.instance_number == 4  # sent again: PACS state lost
    assert reopened.last_instance_number(kept.SeriesInstanceUID) == 4
    assert list((tmp_path / ".spool").glob("index.sqlite.damaged-*"))
