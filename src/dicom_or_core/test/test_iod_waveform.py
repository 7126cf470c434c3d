"""Waveform IOD builder: constraints, exact sample round trip, dciodvfy and dcmdump."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from dicom_or_test_common.examples import example_descriptor, now_ns, synthetic_waveform
from dicom_or_test_common.peers import dciodvfy, have, run_tool

from dicom_or_core.iod.waveform import (
    GENERAL_ECG,
    HEMODYNAMIC,
    MULTICHANNEL_RESPIRATORY,
    RESPIRATORY,
    build_waveform,
    iod_for,
    read_samples,
)
from dicom_or_core.model.errors import DicomOrError
from dicom_or_core.model.uid import new_uid


def _save(tmp_path, ds, name):
    path = tmp_path / f"{name}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("kind,iod", [("ecg", GENERAL_ECG), ("hd", HEMODYNAMIC),
                                      ("resp", RESPIRATORY)])
def test_samples_round_trip_exactly_through_a_file(tmp_path, kind, iod):
    d = example_descriptor(kind)
    samples = synthetic_waveform(2000, len(d.channels))
    t0 = now_ns()
    ds = build_waveform(d, samples, t0, new_uid(), 3, t0)
    assert ds.SOPClassUID == iod.sop_class_uid
    back = pydicom.dcmread(_save(tmp_path, ds, kind))
    assert np.array_equal(read_samples(back), samples)
    assert back.InstanceNumber == 3
    group = back.WaveformSequence[0]
    assert group.WaveformSampleInterpretation == "SS"
    assert group.WaveformBitsAllocated == 16
    assert float(group.SamplingFrequency) == d.sampling_frequency_hz
    for item, channel in zip(group.ChannelDefinitionSequence, d.channels, strict=True):
        assert item.ChannelSourceSequence[0].CodeValue == channel.source_code_value
        assert item.ChannelSensitivityUnitsSequence[0].CodeValue == channel.unit_ucum
        assert item.ChannelSensitivityUnitsSequence[0].CodingSchemeDesignator == "UCUM"
        assert float(item.ChannelSensitivity) == pytest.approx(channel.sensitivity)
    # Same session time base on every instance.
    assert back.SynchronizationFrameOfReferenceUID == \
        d.session.synchronization_frame_of_reference_uid
    assert back.AcquisitionDateTime.startswith(back.ContentDate)


def test_pydicom_physical_values_apply_sensitivity(tmp_path):
    d = example_descriptor("ecg")
    samples = synthetic_waveform(500, 3)
    ds = pydicom.dcmread(_save(tmp_path, build_waveform(d, samples, now_ns(), new_uid()),
                               "ecg"))
    physical = ds.waveform_array(0)
    assert np.allclose(physical, samples * 2.5)


def test_multiplex_group_label_fits_sh_whatever_the_description(tmp_path):
    d = example_descriptor("ecg", series_description="ECG leads I, II, III from monitor")
    ds = build_waveform(d, synthetic_waveform(10, 3), now_ns(), new_uid())
    assert ds.WaveformSequence[0].MultiplexGroupLabel == "I II III"
    d.channels = d.channels * 4
    ds = build_waveform(d, synthetic_waveform(10, 12), now_ns(), new_uid())
    assert ds.WaveformSequence[0].MultiplexGroupLabel == "ECG"
    if have("dciodvfy"):
        assert dciodvfy(_save(tmp_path, ds, "long"))[0] == 0


def test_many_hemodynamic_channels_split_into_multiplex_groups():
    d = example_descriptor("hd")
    d.channels = d.channels * 5  # 10 channels -> groups of 8 and 2
    samples = synthetic_waveform(100, 10)
    ds = build_waveform(d, samples, now_ns(), new_uid())
    assert [g.NumberOfWaveformChannels for g in ds.WaveformSequence] == [8, 2]
    assert np.array_equal(read_samples(ds), samples)


def _frombuffer_samples(ds) -> np.ndarray:
    """The hand-written parse read_samples used before pydicom's multiplex_array."""
    return np.concatenate([
        np.frombuffer(g.WaveformData, dtype="<i2").reshape(int(g.NumberOfWaveformSamples),
                                                           int(g.NumberOfWaveformChannels))
        for g in ds.WaveformSequence], axis=1)


@pytest.mark.parametrize("kind,channels", [("ecg", 3), ("ecg", 30), ("hd", 10), ("resp", 1)])
def test_read_samples_equals_the_frombuffer_parse(tmp_path, kind, channels):
    d = example_descriptor(kind)
    d.channels = (d.channels * channels)[:channels]
    samples = synthetic_waveform(777, channels)
    samples[0, 0], samples[1, 0] = np.iinfo(np.int16).min, np.iinfo(np.int16).max
    ds = build_waveform(d, samples, now_ns(), new_uid())
    back = pydicom.dcmread(_save(tmp_path, ds, kind))
    for each in (ds, back):
        got = read_samples(each)
        assert got.dtype == np.int16 and got.shape == samples.shape
        assert np.array_equal(got, _frombuffer_samples(each))
        assert np.array_equal(got, samples)


def test_out_of_constraint_streams_are_refused_by_name():
    d = example_descriptor("hd", sampling_frequency_hz=500.0)
    with pytest.raises(DicomOrError, match="sampling_frequency_hz.*400"):
        build_waveform(d, synthetic_waveform(10, 2), now_ns(), new_uid())
    d = example_descriptor("ecg", sampling_frequency_hz=100.0)
    with pytest.raises(DicomOrError, match="200..1000"):
        build_waveform(d, synthetic_waveform(10, 3), now_ns(), new_uid())
    d = example_descriptor("ecg")
    d.channels = d.channels * 33
    with pytest.raises(DicomOrError, match="channels"):
        build_waveform(d, synthetic_waveform(10, 99), now_ns(), new_uid())
    d = example_descriptor("ecg", modality="XX")
    with pytest.raises(DicomOrError, match="modality"):
        iod_for(d)


def test_bad_samples_are_refused():
    d = example_descriptor("ecg")
    with pytest.raises(DicomOrError, match="int16"):
        build_waveform(d, np.zeros((4, 3), np.float32), now_ns(), new_uid())
    with pytest.raises(DicomOrError, match="3\\) values"):
        build_waveform(d, np.zeros((4, 2), np.int16), now_ns(), new_uid())
    with pytest.raises(DicomOrError, match="at least one"):
        build_waveform(d, np.zeros((0, 3), np.int16), now_ns(), new_uid())


def test_multichannel_respiratory_is_chosen_for_several_channels():
    d = example_descriptor("resp")
    d.channels = d.channels * 2
    assert iod_for(d) is MULTICHANNEL_RESPIRATORY


@pytest.mark.skipif(not have("dciodvfy"), reason="dicom3tools not installed")
@pytest.mark.parametrize("kind", ["ecg", "hd"])
def test_dciodvfy_reports_no_error(tmp_path, kind):
    d = example_descriptor(kind)
    path = _save(tmp_path, build_waveform(d, synthetic_waveform(1000, len(d.channels)),
                                          now_ns(), new_uid(), 1, now_ns()), kind)
    count, errors = dciodvfy(path)
    assert count == 0, errors


@pytest.mark.skipif(not have("dcmdump"), reason="dcmtk not installed")
@pytest.mark.parametrize("kind", ["ecg", "hd", "resp"])
def test_dcmdump_parses(tmp_path, kind):
    d = example_descriptor(kind)
    path = _save(tmp_path, build_waveform(d, synthetic_waveform(300, len(d.channels)),
                                          now_ns(), new_uid()), kind)
    result = run_tool(["dcmdump", "-q", str(path)])
    assert result.returncode == 0, result.stderr
    assert "WaveformData" in result.stdout
