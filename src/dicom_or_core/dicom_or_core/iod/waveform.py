"""Waveform streams -> the waveform IOD that fits the channel type (PS3.3 A.34).

The Series Modality of the stream's descriptor picks the IOD; each IOD constrains channels,
multiplex groups and sampling frequency, and a stream outside the constraints is refused
with a :class:`DicomOrError` naming the descriptor field (never silently resampled: a
resampled waveform would no longer round-trip the device's samples exactly):

=========  ==============================  =================  ============  ==============
Modality   SOP Class (PS3.4 B.5)            channels / group   groups        frequency (Hz)
=========  ==============================  =================  ============  ==============
ECG        General ECG Waveform (A.34.4)    1..24              1..4          200..1000
HD         Hemodynamic Waveform (A.34.6)    1..8               1..4          <= 400
RESP       Respiratory Waveform (A.34.9)    1                  1             <= 1000
RESP (>1)  Multi-channel Respiratory        2..64              1             <= 1000
=========  ==============================  =================  ============  ==============

Channels beyond one group's limit are split across multiplex groups with the same sampling
frequency and time base (e.g. 10 hemodynamic channels -> groups of 8 and 2). Samples are
stored exactly as the device produced them (int16 digital values, SS, 16 bits), with the
channel's sensitivity, correction factor, baseline and UCUM units, so
``physical = (value + baseline) * sensitivity * correction`` (PS3.3 C.10.9.1.4.3).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.valuerep import DSfloat
from pydicom.waveforms import multiplex_array
from pynetdicom.sop_class import (
    GeneralECGWaveformStorage,
    HemodynamicWaveformStorage,
    MultichannelRespiratoryWaveformStorage,
    RespiratoryWaveformStorage,
)

from dicom_or_core.iod.common import (
    apply_instance_context,
    code_item,
    drop_frame_of_reference,
    new_dataset,
    require_kind,
)
from dicom_or_core.model.context import KIND_WAVEFORM, StreamDescriptor, WaveformChannel
from dicom_or_core.model.errors import DicomOrError


@dataclass(frozen=True)
class WaveformIod:
    """The constraints of one waveform IOD (PS3.3 A.34.x.4 "IOD content constraints")."""

    name: str
    sop_class_uid: str
    max_channels_per_group: int
    max_groups: int
    min_hz: float
    max_hz: float


GENERAL_ECG = WaveformIod("General ECG Waveform", GeneralECGWaveformStorage, 24, 4,
                          200.0, 1000.0)
HEMODYNAMIC = WaveformIod("Hemodynamic Waveform", HemodynamicWaveformStorage, 8, 4,
                          0.0, 400.0)
# Respiratory limits are the recorder's (one group; 1000 Hz covers impedance and flow
# sensors); this dicom3tools build cannot check these two IODs.
RESPIRATORY = WaveformIod("Respiratory Waveform", RespiratoryWaveformStorage, 1, 1,
                          0.0, 1000.0)
MULTICHANNEL_RESPIRATORY = WaveformIod("Multi-channel Respiratory Waveform",
                                       MultichannelRespiratoryWaveformStorage, 64, 1, 0.0,
                                       1000.0)

# UCUM code meanings for the units OR devices report (PS3.16 CID 3082 / UCUM). The
# project's own: pydicom's codes.UCUM lacks V, cm[H2O], L/s, mL, L and Ohm and gives
# others symbol-like meanings ("µV", "mmHg"), which would change recorded instances.
UCUM_MEANINGS = {
    "uV": "microvolt", "mV": "millivolt", "V": "volt",
    "mm[Hg]": "millimeter of mercury", "kPa": "kilopascal", "cm[H2O]": "centimeter of water",
    "%": "percent", "L/s": "liter per second", "mL": "milliliter", "L": "liter",
    "/min": "per minute", "Cel": "degree Celsius", "1": "no units", "Ohm": "ohm",
}


def iod_for(stream: StreamDescriptor) -> WaveformIod:
    """The waveform IOD for a descriptor, by Modality and channel count."""
    modality = stream.modality
    if modality == "ECG":
        return GENERAL_ECG
    if modality == "HD":
        return HEMODYNAMIC
    if modality == "RESP":
        return RESPIRATORY if len(stream.channels) == 1 else MULTICHANNEL_RESPIRATORY
    raise DicomOrError("descriptor.modality", "a waveform stream needs Modality ECG, HD or "
                       "RESP", modality)


def check_constraints(stream: StreamDescriptor) -> WaveformIod:
    """Validate a waveform descriptor against its IOD's constraints; return the IOD."""
    require_kind(stream, KIND_WAVEFORM, "waveform")
    iod = iod_for(stream)
    fs = stream.sampling_frequency_hz
    if not iod.min_hz <= fs <= iod.max_hz:
        raise DicomOrError("descriptor.sampling_frequency_hz",
                           f"{iod.name} allows {iod.min_hz:g}..{iod.max_hz:g} Hz "
                           "(the recorder does not resample)", fs)
    n = len(stream.channels)
    if n == 0 or n > iod.max_channels_per_group * iod.max_groups:
        raise DicomOrError("descriptor.channels",
                           f"{iod.name} allows 1..{iod.max_channels_per_group * iod.max_groups}"
                           " channels", n)
    return iod


def ds(value: float) -> DSfloat:
    """A float as DS within 16 characters (PS3.5 6.2)."""
    return DSfloat(value, auto_format=True)


def multiplex_group_label(channels: list[WaveformChannel], modality: str) -> str:
    """Multiplex Group Label (003A,0020) is SH (16 characters): the channel labels when they
    fit ("I II III", "ART PLETH"), else the Modality."""
    label = " ".join(c.label for c in channels if c.label)
    return label if label and len(label) <= 16 else modality


def _channel_item(channel: WaveformChannel) -> Dataset:
    """One Channel Definition Sequence item (PS3.3 C.10.9.1, Table C.10-10)."""
    item = Dataset()
    if channel.label:
        item.ChannelLabel = channel.label
    item.ChannelSourceSequence = [code_item(channel.source_code_value,
                                            channel.source_coding_scheme,
                                            channel.source_code_meaning
                                            or channel.source_code_value)]
    item.ChannelSensitivity = ds(channel.sensitivity)
    item.ChannelSensitivityUnitsSequence = [code_item(
        channel.unit_ucum, "UCUM", UCUM_MEANINGS.get(channel.unit_ucum, channel.unit_ucum))]
    item.ChannelSensitivityCorrectionFactor = ds(channel.sensitivity_correction)
    item.ChannelBaseline = ds(channel.baseline)
    # All channels of a group are sampled simultaneously (type 1C: skew or time skew).
    item.ChannelSampleSkew = "0"
    item.WaveformBitsStored = 16
    if channel.filter_low_hz:
        item.FilterLowFrequency = ds(channel.filter_low_hz)
    if channel.filter_high_hz:
        item.FilterHighFrequency = ds(channel.filter_high_hz)
    return item


def build_waveform(stream: StreamDescriptor, samples: np.ndarray, first_sample_ns: int,
                   sop_instance_uid: str, instance_number: int = 1,
                   created_ns: int | None = None) -> Dataset:
    """One waveform instance: ``samples`` is an int16 array (samples, channels) whose first
    row was acquired at ``first_sample_ns`` on the session clock; rows are contiguous at the
    descriptor's sampling frequency (a gap starts a new instance)."""
    iod = check_constraints(stream)
    samples = np.asarray(samples)
    if samples.ndim != 2 or samples.shape[1] != len(stream.channels):
        raise DicomOrError("samples", f"must be (samples, {len(stream.channels)}) values",
                           samples.shape)
    if samples.shape[0] == 0:
        raise DicomOrError("samples", "an instance needs at least one sample")
    if samples.dtype != np.int16:
        raise DicomOrError("samples", "must be int16 digital values", str(samples.dtype))
    ds_ = new_dataset(iod.sop_class_uid, sop_instance_uid)
    apply_instance_context(ds_, stream, instance_number, first_sample_ns, created_ns)
    # Waveform IODs have no Frame of Reference Module: time alignment is the
    # Synchronization Module's job.
    drop_frame_of_reference(ds_)
    if iod is HEMODYNAMIC:
        # Laterality (0020,0060) is type 2C in General Series; a catheter site's side is
        # not known to the monitor, so it is sent empty.
        ds_.Laterality = ""
    # PS3.3 C.7.6.14 Acquisition Context Module: type 2, no context items recorded.
    ds_.AcquisitionContextSequence = []
    # PS3.3 C.10.9 Waveform Module: one multiplex group per <= max channels.
    groups = []
    per = iod.max_channels_per_group
    for start in range(0, len(stream.channels), per):
        channels = stream.channels[start:start + per]
        block = np.ascontiguousarray(samples[:, start:start + len(channels)], dtype="<i2")
        group = Dataset()
        # Every group starts at the instance's Acquisition DateTime, so Multiplex Group
        # Time Offset (type 1C) is absent.
        group.WaveformOriginality = "ORIGINAL"
        group.NumberOfWaveformChannels = len(channels)
        group.NumberOfWaveformSamples = int(block.shape[0])
        group.SamplingFrequency = ds(stream.sampling_frequency_hz)
        group.MultiplexGroupLabel = multiplex_group_label(channels, stream.modality)
        group.ChannelDefinitionSequence = [_channel_item(c) for c in channels]
        group.WaveformBitsAllocated = 16
        group.WaveformSampleInterpretation = "SS"
        group.WaveformData = block.tobytes()
        groups.append(group)
    ds_.WaveformSequence = groups
    return ds_


def read_samples(ds_: Dataset) -> np.ndarray:
    """All multiplex groups of a waveform instance as one int16 (samples, channels) array
    (raw digital values, the inverse of :func:`build_waveform`).

    Each group is decoded by pydicom's ``multiplex_array(ds, index, as_raw=True)``; this
    function only joins the groups side by side, because :func:`build_waveform` splits the
    channels of one stream across groups (all with the same sample count) while pydicom
    reads one group at a time.
    """
    return np.concatenate([multiplex_array(ds_, index, as_raw=True)
                           for index in range(len(ds_.WaveformSequence))], axis=1)
