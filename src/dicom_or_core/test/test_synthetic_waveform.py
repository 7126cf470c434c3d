"""Simulated patient monitor and WFDB replay: physiology, DICOM channel rules, seamless chunks."""

from __future__ import annotations

import numpy as np
import pytest
import wfdb

from dicom_or_core.model.errors import DicomOrError
from dicom_or_core.sim.waveform import (
    CHANNELS,
    GROUPS,
    PatientModel,
    WaveformSimulator,
    load_wfdb,
    parse_groups,
    physical,
)


def _r_peaks(signal: np.ndarray, fs: float) -> np.ndarray:
    """Indices of R peaks: local maxima above 60 % of the maximum, 250 ms refractory."""
    threshold = 0.6 * signal.max()
    peaks, last = [], -10**9
    for i in range(1, signal.size - 1):
        if signal[i] > threshold and signal[i] >= signal[i - 1] and signal[i] > signal[i + 1] \
                and i - last > 0.25 * fs:
            peaks.append(i)
            last = i
    return np.array(peaks)


def test_channel_definitions_are_valid_dicom_channels() -> None:
    for label, channel in CHANNELS.items():
        channel.validate(label)
    assert (CHANNELS["III"].source_coding_scheme, CHANNELS["III"].source_code_value) == \
        ("MDC", "2:61")
    assert CHANNELS["I"].unit_ucum == "uV" and CHANNELS["ART"].unit_ucum == "mm[Hg]"
    assert CHANNELS["PLETH"].unit_ucum == "%"


def test_default_groups_match_the_contract() -> None:
    ecg, hemo = parse_groups(["ecg", "hemodynamic"])
    assert (ecg.modality, ecg.labels, ecg.sampling_hz) == ("ECG", ("I", "II", "III"), 500.0)
    assert (hemo.modality, hemo.labels, hemo.sampling_hz) == ("HD", ("ART", "PLETH"), 250.0)
    assert GROUPS["respiration"].modality == "RESP"


@pytest.mark.parametrize("bad", [[], ["ecg", "ecg"], ["eeg"]])
def test_bad_groups_name_the_parameter(bad: list[str]) -> None:
    with pytest.raises(DicomOrError, match="groups"):
        parse_groups(bad)


def test_einthoven_holds_exactly_in_digital_values() -> None:
    samples = WaveformSimulator(GROUPS["ecg"]).samples(0, 5000)
    lead_i, lead_ii, lead_iii = samples.T.astype(np.int32)
    assert np.array_equal(lead_ii, lead_i + lead_iii)


@pytest.mark.parametrize("rate", [60.0, 72.0, 120.0])
def test_heart_rate_and_qrs_amplitude_are_realistic(rate: float) -> None:
    sim = WaveformSimulator(GROUPS["ecg"], PatientModel(heart_rate_bpm=rate, seed=3))
    fs = sim.sampling_hz
    samples = sim.samples(0, int(30 * fs))
    lead_ii_mv = physical(samples, sim.channels)[:, 1] / 1000.0
    assert 0.8 < lead_ii_mv.max() < 2.0          # R wave of lead II about 1.2 mV
    peaks = _r_peaks(lead_ii_mv, fs)
    measured = 60.0 / np.mean(np.diff(peaks) / fs)
    assert measured == pytest.approx(rate, rel=0.05)


def test_arterial_pressure_and_pleth_follow_the_beats() -> None:
    patient = PatientModel(heart_rate_bpm=75, systolic_mmhg=130, diastolic_mmhg=70)
    sim = WaveformSimulator(GROUPS["hemodynamic"], patient)
    values = physical(sim.samples(0, 250 * 20), sim.channels)
    art, pleth = values[:, 0], values[:, 1]
    assert art.max() == pytest.approx(130, abs=8)
    assert art[250:].min() == pytest.approx(70, abs=3)
    assert 0 <= pleth.min() and pleth.max() <= 100
    assert 60.0 / np.mean(np.diff(_r_peaks(art - art.min(), 250.0)) / 250.0) == \
        pytest.approx(75, rel=0.05)


def test_chunks_join_seamlessly_and_are_deterministic() -> None:
    whole = WaveformSimulator(GROUPS["ecg12"]).samples(0, 3000)
    sim = WaveformSimulator(GROUPS["ecg12"])
    parts = np.concatenate([sim.samples(i, 100) for i in range(0, 3000, 100)])
    assert np.array_equal(whole, parts)
    assert whole.shape == (3000, 12)


def test_respiration_rate() -> None:
    sim = WaveformSimulator(GROUPS["respiration"], PatientModel(respiration_rate_bpm=15))
    resp = physical(sim.samples(0, 250 * 60), sim.channels)[:, 0]
    rising = np.sum((resp[:-1] < 0) & (resp[1:] >= 0))
    assert rising == pytest.approx(15, abs=1)


def test_bad_patient_parameters() -> None:
    with pytest.raises(DicomOrError, match="heart_rate_bpm"):
        WaveformSimulator(GROUPS["ecg"], PatientModel(heart_rate_bpm=0))
    with pytest.raises(DicomOrError, match="diastolic_mmhg"):
        WaveformSimulator(GROUPS["hemodynamic"], PatientModel(diastolic_mmhg=150))


def _write_record(folder, name="rec") -> np.ndarray:
    sim = WaveformSimulator(GROUPS["ecg"])
    ecg_mv = physical(sim.samples(0, 1000), sim.channels)[:, [0, 1]] / 1000.0
    art = WaveformSimulator(GROUPS["hemodynamic"]).samples(0, 1000)[:, 0] * 0.01
    signals = np.column_stack([ecg_mv, art])
    wfdb.wrsamp(name, fs=500, units=["mV", "mV", "mmHg"], sig_name=["I", "MLII", "ABP"],
                p_signal=signals, fmt=["16", "16", "16"], adc_gain=[200.0, 200.0, 100.0],
                baseline=[0, 0, 0], write_dir=str(folder))
    return signals


def test_wfdb_replay_keeps_digital_values_and_maps_channels(tmp_path) -> None:
    signals = _write_record(tmp_path)
    record = load_wfdb(tmp_path / "rec")
    assert record.sampling_hz == 500
    assert [c.label for c in record.channels] == ["I", "MLII", "ABP"]
    assert [c.source_code_value for c in record.channels] == ["2:1", "2:2", "128446002"]
    assert [c.unit_ucum for c in record.channels] == ["uV", "uV", "mm[Hg]"]
    values = physical(record.samples, record.channels)
    assert np.allclose(values[:, :2] / 1000.0, signals[:, :2], atol=0.005)
    assert np.allclose(values[:, 2], signals[:, 2], atol=0.01)
    subset = load_wfdb(tmp_path / "rec.hea", ["ABP"])
    assert subset.samples.shape == (1000, 1)


def test_wfdb_errors_name_the_parameter(tmp_path) -> None:
    with pytest.raises(DicomOrError, match="wfdb_record"):
        load_wfdb(tmp_path / "missing")
    _write_record(tmp_path)
    with pytest.raises(DicomOrError, match="channels"):
        load_wfdb(tmp_path / "rec", ["V7"])
