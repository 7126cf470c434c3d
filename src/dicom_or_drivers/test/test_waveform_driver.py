"""Waveform driver: default streams per the contracts, contiguous chunks and sample indices,
context on every chunk, WFDB replay of a record the test writes, bad parameters."""

from __future__ import annotations

import numpy as np
import pytest
import wfdb
from dicom_or_test_common.ros import isolated_env, ros_context
from driver_harness import (
    Probe,
    assert_contiguous,
    driver_process,
    make_session,
    params,
    run_bad_parameter,
)

from dicom_or_core.model.context import KIND_WAVEFORM
from dicom_or_core.sim.waveform import GROUPS, WaveformSimulator, physical
from dicom_or_drivers.waveform_node import WaveformDriver
from dicom_or_msgs.msg import DeviceStatus, WaveformChunk
from dicom_or_ros.convert import time_to_ns
from dicom_or_ros.qos import named_qos

ECG = "/or/patient_monitor/ecg"
HEMO = "/or/patient_monitor/hemodynamic"


def _check_chunks(chunks: list[WaveformChunk], series_uid: str, channels: int,
                  rate: float, chunk_ms: int = 100) -> np.ndarray:
    """Check stamping and contiguity; return all samples as (count, channels)."""
    assert_contiguous([c.context.sequence for c in chunks])
    per_chunk = int(rate * chunk_ms / 1000)
    for index, chunk in enumerate(chunks):
        assert chunk.context.series_instance_uid == series_uid
        assert chunk.channel_count == channels
        assert len(chunk.samples) == channels * per_chunk
        assert chunk.sample_period == pytest.approx(1.0 / rate)
        assert chunk.first_sample_index == chunks[0].first_sample_index + index * per_chunk
        assert time_to_ns(chunk.context.acquisition_time) == time_to_ns(chunk.first_sample_time)
        if index:
            step = time_to_ns(chunk.first_sample_time) - time_to_ns(chunks[index - 1]
                                                                     .first_sample_time)
            assert step == pytest.approx(per_chunk / rate * 1e9, abs=2)
    return np.concatenate([np.asarray(c.samples, np.int16).reshape(-1, channels)
                           for c in chunks])


def test_default_streams_in_process() -> None:
    with ros_context() as context:
        probe = Probe(context)
        probe.follow(ECG, WaveformChunk, named_qos("waveform", 10))
        probe.follow(HEMO, WaveformChunk, named_qos("waveform", 10))
        driver = WaveformDriver(context=context, namespace="/or")
        probe.executor.add_node(driver)
        try:
            assert probe.spin_until(
                lambda: all(s.stream.publisher.get_subscription_count() >= 1
                            for s in driver.channels), 10)
            session = make_session()
            probe.publish_session(session)
            assert probe.spin_until(lambda: len(probe.samples[ECG]) >= 12
                                    and len(probe.samples[HEMO]) >= 12, 20)
            ecg, hemo = probe.descriptor(ECG), probe.descriptor(HEMO)
            assert ecg.kind == hemo.kind == KIND_WAVEFORM
            assert (ecg.modality, hemo.modality) == ("ECG", "HD")
            assert [c.label for c in ecg.channels] == ["I", "II", "III"]
            assert [c.label for c in hemo.channels] == ["ART", "PLETH"]
            assert (ecg.sampling_frequency_hz, hemo.sampling_frequency_hz) == (500.0, 250.0)
            assert ecg.series_instance_uid != hemo.series_instance_uid
            assert ecg.session == hemo.session == session
            ecg_chunks, hemo_chunks = probe.samples[ECG], probe.samples[HEMO]
            assert ecg_chunks[0].context.sequence == 0
            assert ecg_chunks[0].first_sample_index == 0
            samples = _check_chunks(ecg_chunks, ecg.series_instance_uid, 3, 500.0)
            lead_i, lead_ii, lead_iii = samples.T.astype(np.int32)
            assert np.array_equal(lead_ii, lead_i + lead_iii)
            # The published samples are the simulator's, sample for sample (no gaps).
            first_device = driver.channels[0].series_first
            expected = WaveformSimulator(GROUPS["ecg"]).samples(first_device, len(samples))
            assert np.array_equal(samples, expected)
            art = physical(_check_chunks(hemo_chunks, hemo.series_instance_uid, 2, 250.0),
                           hemo.channels)[:, 0]
            assert 60 < art.min() and art.max() < 140
            assert probe.spin_until(lambda: DeviceStatus.STATE_LIVE in probe.states(ECG))
            assert DeviceStatus.STATE_STALE not in probe.states(ECG)
        finally:
            driver.close()
            driver.destroy_node()
            probe.close()


def _write_record(folder) -> np.ndarray:
    fs = 250
    t = np.arange(fs) / fs  # 1 s: the test runs past its end, so replay must loop
    abp = 80 + 40 * np.clip(np.sin(2 * np.pi * 1.2 * t), 0, None)
    ecg = 1.1 * np.exp(-0.5 * (((t * 1.2) % 1 - 0.5) / 0.02) ** 2)
    wfdb.wrsamp("case1", fs=fs, units=["mV", "mmHg"], sig_name=["II", "ABP"],
                p_signal=np.column_stack([ecg, abp]), fmt=["16", "16"],
                adc_gain=[200.0, 50.0], baseline=[0, 0], write_dir=str(folder))
    return wfdb.rdrecord(str(folder / "case1"), physical=False).d_signal


def test_wfdb_replay_in_process(tmp_path) -> None:
    digital = _write_record(tmp_path)
    topic = "/or/patient_monitor/replay"
    with ros_context() as context:
        probe = Probe(context)
        probe.follow(topic, WaveformChunk, named_qos("waveform", 10))
        driver = WaveformDriver(context=context, namespace="/or", parameter_overrides=params(
            source="wfdb", wfdb_record=str(tmp_path / "case1"), require_session_context=False,
            chunk_ms=40))
        probe.executor.add_node(driver)
        try:
            assert probe.spin_until(lambda: len(probe.samples[topic]) >= 30, 20)
            descriptor = probe.descriptor(topic)
            assert descriptor.modality == "HD"
            assert [c.source_code_value for c in descriptor.channels] == ["2:2", "128446002"]
            chunks = [c for c in probe.samples[topic]
                      if c.context.series_instance_uid == descriptor.series_instance_uid]
            samples = _check_chunks(chunks, descriptor.series_instance_uid, 2, 250.0, 40)
            start = chunks[0].first_sample_index + driver.channels[0].series_first
            index = [(start + i) % digital.shape[0] for i in range(len(samples))]
            assert np.array_equal(samples, digital[index])   # record replayed verbatim
        finally:
            driver.close()
            driver.destroy_node()
            probe.close()


def test_across_processes_ecg_group() -> None:
    with ros_context() as context:
        probe = Probe(context)
        probe.follow(ECG, WaveformChunk, named_qos("waveform", 10))
        try:
            with driver_process("waveform_driver", "groups:=[ecg]",
                                "require_session_context:=false",
                                env=isolated_env(context.domain)):
                assert probe.spin_until(lambda: len(probe.samples[ECG]) >= 15, 30)
                descriptor = probe.descriptor(ECG)
                chunks = [c for c in probe.samples[ECG]
                          if c.context.series_instance_uid == descriptor.series_instance_uid]
                _check_chunks(chunks, descriptor.series_instance_uid, 3, 500.0)
                assert descriptor.session.study.study_description == "Ad-hoc OR session"
        finally:
            probe.close()


@pytest.mark.parametrize("args, name", [
    (["groups:=[eeg]"], "groups"),
    (["chunk_ms:=3"], "chunk_ms"),
    (["chunk_ms:=33"], "chunk_ms"),          # 500 Hz x 33 ms is not a whole sample count
    (["heart_rate_bpm:=-10.0"], "heart_rate_bpm"),
    (["source:=wfdb"], "wfdb_record"),
    (["source:=wfdb", "wfdb_record:=/no/such/record"], "wfdb_record"),
    (["source:=hl7"], "source"),
    (["hemodynamic.sampling_hz:=500.0"], "Hemodynamic Waveform allows 1..400 Hz"),
    (["ecg.sampling_hz:=100.0"], "General ECG Waveform allows 200..1000 Hz"),
])
def test_bad_parameter_exits_1_naming_it(args: list[str], name: str) -> None:
    with ros_context() as context:
        result = run_bad_parameter("waveform_driver", *args, env=isolated_env(context.domain))
    assert result.returncode == 1, result.stderr
    assert name in result.stderr and "invalid configuration" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
