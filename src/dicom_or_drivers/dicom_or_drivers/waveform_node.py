"""Patient monitor waveform driver node (``waveform_driver``, run as ``patient_monitor``).

One stream per channel group, each a DICOM Series of its own (WaveformChunk on
``~/<group>``, profile "waveform"): by default ``~/ecg`` (leads I, II, III at 500 Hz,
Modality ECG) and ``~/hemodynamic`` (ART + PLETH at 250 Hz, Modality HD); ``respiration``
(Modality RESP) and ``ecg12`` (12 leads at 1 kHz) on request. Or ``source: wfdb`` replays a
PhysioNet WFDB record as one stream ``~/replay``.

Chunks of ``chunk_ms`` (IEEE 11073 SDC style, default 100 ms) are published when their last
sample is due, on a drift-free schedule; a late tick publishes every chunk that became due
(samples are never skipped: ``first_sample_index`` stays contiguous).
"""

from __future__ import annotations

import array
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from rclpy.node import Node

from dicom_or_core.iod.waveform import iod_for
from dicom_or_core.model.context import KIND_WAVEFORM, StreamDescriptor, WaveformChannel
from dicom_or_core.model.errors import DicomOrError
from dicom_or_core.sim.waveform import (
    GROUPS,
    ChannelGroup,
    PatientModel,
    WaveformSimulator,
    load_wfdb,
    parse_groups,
)
from dicom_or_drivers.pacing import Pacer
from dicom_or_drivers.stream import (
    SOURCE_LOST,
    DriverParameters,
    SampleStamp,
    SessionFollower,
    StatusReporter,
    StreamConfig,
    StreamPublisher,
)
from dicom_or_msgs.msg import WaveformChunk
from dicom_or_ros.convert import ns_to_time
from dicom_or_ros.params import load_parameters
from dicom_or_ros.runtime import run_node

# (first sample index, count) -> int16 samples, one column per channel.
Produce = Callable[[int, int], np.ndarray]

ECG_LEADS = {"I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6",
             "MLII", "ECG"}


class _Channel:
    """One group's stream and its sample bookkeeping."""

    def __init__(self, stream: StreamPublisher, sampling_hz: float, chunk: int,
                 produce: Produce) -> None:
        self.stream = stream
        self.sampling_hz = sampling_hz
        self.chunk = chunk
        self.produce = produce          # (device_index, count) -> int16 (count, channels)
        self.emitted = 0                # samples produced since the driver started
        self.series_first = 0           # device index of the Series' sample 0
        self.series_uid = ""


class WaveformDriver(Node):
    """Simulated multi-parameter monitor or WFDB replay."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("patient_monitor", **kwargs)
        # Every parameter, its type, default and rule: waveform_parameters.yaml; a group's
        # sampling rate defaults to the group's standard rate.
        self.params = load_parameters(
            self, "dicom_or_drivers", "waveform_parameters.yaml",
            defaults={f"{name}.sampling_hz": g.sampling_hz for name, g in GROUPS.items()})
        source, self.chunk_ms = self.params.source, self.params.chunk_ms
        params = DriverParameters(self, "dicom_or", "Simulated patient monitor"
                                  if source == "simulator" else "WFDB replay")
        self.session = SessionFollower(self, params.require_session_context)
        self.status = StatusReporter(self)
        self.channels: list[_Channel] = []
        self._loop = True
        self._record_length = 0
        if source == "simulator":
            self._make_simulated(params)
        else:
            self._make_replay(params)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="waveform_source",
                                        daemon=True)
        self._thread.start()

    def _chunk_size(self, sampling_hz: float) -> int:
        samples = sampling_hz * self.chunk_ms / 1000.0
        if abs(samples - round(samples)) > 1e-9 or round(samples) < 1:
            raise DicomOrError("chunk_ms", "must hold a whole number of samples at "
                               f"{sampling_hz:g} Hz", self.chunk_ms)
        return int(round(samples))

    def _make_simulated(self, params: DriverParameters) -> None:
        p = self.params
        groups = parse_groups(list(p.groups))
        patient = PatientModel(
            heart_rate_bpm=p.heart_rate_bpm, respiration_rate_bpm=p.respiration_rate_bpm,
            systolic_mmhg=p.systolic_mmhg, diastolic_mmhg=p.diastolic_mmhg, seed=p.seed)
        patient.validate()
        for group in groups:
            # The rate must fit the waveform IOD the recorder will write for this group's
            # Modality (PS3.3 A.34.x: General ECG 200..1000 Hz, Hemodynamic <= 400 Hz, ...),
            # so a misconfigured monitor fails at start, not when its recording is refused.
            iod = iod_for(StreamDescriptor(modality=group.modality,
                                           channels=group.channels()))
            low, high = max(iod.min_hz, 1.0), iod.max_hz
            rate = getattr(p, group.name).sampling_hz
            if not low <= rate <= high:
                raise DicomOrError(f"{group.name}.sampling_hz",
                                   f"{iod.name} allows {low:g}..{high:g} Hz", rate)
            group = ChannelGroup(group.name, group.modality, group.labels, rate,
                                 group.description)
            # Each group gets its own model instance with the same parameters and seed:
            # identical beats, so ECG and pressure stay physiologically aligned.
            simulator = WaveformSimulator(group, PatientModel(**{
                k: getattr(patient, k) for k in ("heart_rate_bpm", "respiration_rate_bpm",
                                                 "systolic_mmhg", "diastolic_mmhg", "seed")}))
            self._add_stream(group.name, group.modality, group.description, rate,
                             simulator.channels, simulator.samples, params)

    def _make_replay(self, params: DriverParameters) -> None:
        p = self.params
        if not p.wfdb_record:
            raise DicomOrError("wfdb_record", "is required when source is wfdb")
        self._loop = p.loop
        record = load_wfdb(p.wfdb_record, p.channels or None)
        # Empty: ECG when every signal is an ECG lead, else hemodynamic.
        modality = p.modality or (
            "ECG" if all(c.label in ECG_LEADS for c in record.channels) else "HD")
        samples = record.samples
        self._record_length = samples.shape[0]

        def produce(first: int, count: int) -> np.ndarray:
            index = [(first + i) % samples.shape[0] for i in range(count)]
            return samples[index]

        self._add_stream("replay", modality, f"WFDB replay of {record.name}",
                         record.sampling_hz, record.channels, produce, params)

    def _add_stream(self, name: str, modality: str, description: str, rate: float,
                    channels: list[WaveformChannel], produce: Produce,
                    params: DriverParameters) -> None:
        chunk = self._chunk_size(rate)
        stream = StreamPublisher(self, StreamConfig(
            topic=f"~/{name}", msg_type=WaveformChunk, kind=KIND_WAVEFORM, modality=modality,
            qos_profile="waveform", nominal_rate_hz=rate, series_description=description,
            sampling_frequency_hz=rate, channels=list(channels),
            message_rate_hz=1000.0 / self.chunk_ms), params, self.session, self.status)
        self.channels.append(_Channel(stream, rate, chunk, produce))

    # --- device loop -----------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._generate()
        except Exception as exc:
            if self.context.ok():  # else: shutting down, publishers are gone
                self.get_logger().error(f"waveform source failed: {exc!r}")
                for channel in self.channels:
                    channel.stream.set_state(SOURCE_LOST, f"source failed: {exc}")

    def _generate(self) -> None:
        start_mono = time.monotonic()
        start_wall = time.time_ns()
        pacer = Pacer(1000.0 / self.chunk_ms, self._stop, max_late_ticks=None)
        pacer.start = start_mono
        while pacer.wait() is not None:
            elapsed = time.monotonic() - start_mono
            for channel in self.channels:
                due = int(elapsed * channel.sampling_hz)
                while channel.emitted + channel.chunk <= due and not self._stop.is_set():
                    if not self._loop and self._record_length and \
                            channel.emitted + channel.chunk > self._record_length:
                        channel.stream.set_state(SOURCE_LOST, "end of the WFDB record "
                                                 "(loop is off)")
                        break
                    self._publish_chunk(channel, start_wall)

    def _publish_chunk(self, channel: _Channel, start_wall_ns: int) -> None:
        first = channel.emitted
        first_ns = start_wall_ns + round(first * 1e9 / channel.sampling_hz)

        def build(stamp: SampleStamp) -> WaveformChunk:
            if stamp.series_instance_uid != channel.series_uid:
                # A new Series: its sample 0 is the first sample published in it.
                channel.series_uid = stamp.series_instance_uid
                channel.series_first = first
            samples = channel.produce(first, channel.chunk)
            msg = WaveformChunk()
            stamp.fill(msg.context)
            msg.first_sample_time = ns_to_time(first_ns)
            msg.sample_period = 1.0 / channel.sampling_hz
            msg.first_sample_index = first - channel.series_first
            msg.channel_count = samples.shape[1]
            msg.samples = array.array("h", samples.tobytes())  # interleaved s0c0, s0c1, ...
            return msg

        channel.stream.publish(build, first_ns)
        channel.emitted += channel.chunk

    def close(self) -> None:
        """Stop the channel loop, publish STOPPED on every channel's stream."""
        self._stop.set()
        self._thread.join(timeout=5.0)
        for channel in self.channels:
            channel.stream.close()


def main(args: list[str] | None = None) -> None:
    """Run the ``patient_monitor`` driver until Ctrl-C / SIGTERM; a bad parameter: one error
    line, exit 1."""
    sys.exit(run_node(WaveformDriver, args))
