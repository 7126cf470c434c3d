"""A simulated multi-parameter patient monitor, and WFDB record replay, as DICOM channels.

Channels are defined as PS3.3 C.10.9.1 Channel Definition Sequence items
(:class:`~dicom_or_core.model.context.WaveformChannel`): label, Channel Source code, UCUM units,
sensitivity and baseline, so a digital sample ``d`` means the physical value
``(d + baseline) * sensitivity * sensitivity_correction``.

Channel Source codes:

* ECG leads: MDC codes of PS3.16 CID 3001 "ECG Leads" (``2:1`` Lead I, ``2:2`` Lead II,
  ``2:61`` Lead III, ``2:62..64`` aVR / aVL / aVF, ``2:3..8`` V1..V6).
* Arterial pressure, pleth and respiration: SNOMED CT codes of CID 3003 "Hemodynamic Waveform
  Source" (the Hemodynamic IOD, PS3.3 A.34.6, constrains its Channel Source to that CID):
  128446002 arterial pressure waveform, 128435000 hemodynamic oxygen saturation waveform
  (the SpO2 plethysmogram), 128436004 respiration impedance waveform.

The simulator is deterministic for a seed and a function of the sample index only, so any
chunk can be generated independently and consecutive chunks join seamlessly. Beats follow
a heart rate with respiratory sinus arrhythmia; each beat drives the ECG (sum-of-Gaussians
P, Q, R, S, T waves whose QT scales with the RR interval), then, after the pulse transit
delay, the arterial pressure (systolic upstroke, dicrotic notch, diastolic run-off) and the
pleth. Lead II is computed in *digital values* as Lead I + Lead III, so Einthoven's law holds
exactly in the stored data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from dicom_or_core.model.context import WaveformChannel
from dicom_or_core.model.errors import DicomOrError

INT16_MIN, INT16_MAX = -32768, 32767


def _ecg(label: str, lead: Code) -> WaveformChannel:
    # 1 uV per digital value: +-32 mV range, finer than any monitor's ADC; diagnostic
    # bandwidth 0.05-150 Hz (the simulated signal has no content above it).
    return WaveformChannel(label=label, source_code_value=lead.value,
                           source_coding_scheme=lead.scheme_designator,
                           source_code_meaning=lead.meaning, unit_ucum="uV", sensitivity=1.0,
                           sensitivity_correction=1.0, baseline=0.0, filter_low_hz=0.05,
                           filter_high_hz=150.0)


_ART = codes.SCT.ArterialPressureWaveform
_PLETH = codes.SCT.HemodynamicOxygenSaturationWaveform
_RESP = codes.SCT.RespirationImpedanceWaveform
CHANNELS: dict[str, WaveformChannel] = {
    # Lead and waveform concepts (CID 3001 ECG leads, CID 3003 hemodynamic, CID 3005
    # respiration) from pydicom's code dictionary.
    "I": _ecg("I", codes.MDC.LeadI),
    "II": _ecg("II", codes.MDC.LeadII),
    "III": _ecg("III", codes.MDC.LeadIII),
    "aVR": _ecg("aVR", codes.MDC.AvrAugmentedVoltageRight),
    "aVL": _ecg("aVL", codes.MDC.AvlAugmentedVoltageLeft),
    "aVF": _ecg("aVF", codes.MDC.AvfAugmentedVoltageFoot),
    "V1": _ecg("V1", codes.MDC.LeadV1),
    "V2": _ecg("V2", codes.MDC.LeadV2),
    "V3": _ecg("V3", codes.MDC.LeadV3),
    "V4": _ecg("V4", codes.MDC.LeadV4),
    "V5": _ecg("V5", codes.MDC.LeadV5),
    "V6": _ecg("V6", codes.MDC.LeadV6),
    "ART": WaveformChannel(label="ART",
                           source_code_value=_ART.value, source_coding_scheme="SCT",
                           source_code_meaning=_ART.meaning,
                           unit_ucum="mm[Hg]", sensitivity=0.01, sensitivity_correction=1.0,
                           baseline=0.0, filter_low_hz=0.0, filter_high_hz=40.0),
    "PLETH": WaveformChannel(label="PLETH",
                             source_code_value=_PLETH.value, source_coding_scheme="SCT",
                             source_code_meaning=_PLETH.meaning,
                             unit_ucum="%", sensitivity=0.01, sensitivity_correction=1.0,
                             baseline=0.0, filter_low_hz=0.0, filter_high_hz=20.0),
    "RESP": WaveformChannel(label="RESP",
                            source_code_value=_RESP.value, source_coding_scheme="SCT",
                            source_code_meaning=_RESP.meaning,
                            unit_ucum="Ohm", sensitivity=0.001, sensitivity_correction=1.0,
                            baseline=0.0, filter_low_hz=0.0, filter_high_hz=5.0),
}


@dataclass(frozen=True)
class ChannelGroup:
    """One stream of the monitor: channels sampled together (one DICOM multiplex group)."""

    name: str
    modality: str
    labels: tuple[str, ...]
    sampling_hz: float
    description: str = ""

    def channels(self) -> list[WaveformChannel]:
        """Fresh copies of the group's channel definitions, in label order."""
        return [replace(CHANNELS[label]) for label in self.labels]


# The default streams of the contracts, plus optional ones. Sampling limits of the IODs the
# recorder writes: General ECG (PS3.3 A.34.4) 200..1000 Hz, Hemodynamic (A.34.6) <= 400 Hz.
GROUPS: dict[str, ChannelGroup] = {
    "ecg": ChannelGroup("ecg", "ECG", ("I", "II", "III"), 500.0, "ECG leads I, II, III"),
    "hemodynamic": ChannelGroup("hemodynamic", "HD", ("ART", "PLETH"), 250.0,
                                "Arterial pressure and SpO2 plethysmogram"),
    "respiration": ChannelGroup("respiration", "RESP", ("RESP",), 250.0,
                                "Impedance respiration"),
    "ecg12": ChannelGroup("ecg12", "ECG", ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2",
                                           "V3", "V4", "V5", "V6"), 1000.0, "12-lead ECG"),
}

# ECG wave templates: (centre s relative to R, width s, amplitude mV) for leads I and III;
# every other lead is derived (II = I + III, augmented leads) or has its own amplitudes.
# The T wave's centre scales with sqrt(RR) (Bazett), so QT shortens as the rate rises.
_WAVES = ("P", "Q", "R", "S", "T")
_CENTRES = {"P": -0.17, "Q": -0.028, "R": 0.0, "S": 0.03, "T": 0.27}
_WIDTHS = {"P": 0.025, "Q": 0.010, "R": 0.011, "S": 0.012, "T": 0.055}
_AMPLITUDES_MV = {
    "I": {"P": 0.08, "Q": -0.04, "R": 0.65, "S": -0.10, "T": 0.18},
    "III": {"P": 0.06, "Q": -0.05, "R": 0.55, "S": -0.15, "T": 0.10},
    "V1": {"P": 0.05, "Q": 0.0, "R": 0.25, "S": -0.90, "T": -0.05},
    "V2": {"P": 0.07, "Q": 0.0, "R": 0.45, "S": -1.20, "T": 0.35},
    "V3": {"P": 0.08, "Q": -0.03, "R": 0.80, "S": -0.80, "T": 0.40},
    "V4": {"P": 0.09, "Q": -0.05, "R": 1.30, "S": -0.40, "T": 0.40},
    "V5": {"P": 0.09, "Q": -0.07, "R": 1.20, "S": -0.20, "T": 0.30},
    "V6": {"P": 0.08, "Q": -0.06, "R": 0.90, "S": -0.10, "T": 0.22},
}


@dataclass
class PatientModel:
    """Vital parameters of the simulated patient."""

    heart_rate_bpm: float = 72.0
    respiration_rate_bpm: float = 14.0
    systolic_mmhg: float = 120.0
    diastolic_mmhg: float = 80.0
    seed: int = 0
    # Beat-to-beat variability: respiratory sinus arrhythmia depth and random jitter.
    rsa_fraction: float = 0.04
    jitter_s: float = 0.01
    _beats: list[float] = field(default_factory=list, repr=False)
    # Caches, not parameters: the beats as an array, and the jitter's generator (seeded with
    # the first beat).
    _beats_array: np.ndarray | None = field(default=None, init=False, repr=False,
                                            compare=False)
    _rng: np.random.Generator = field(init=False, repr=False, compare=False)

    def validate(self) -> PatientModel:
        """Self, or DicomOrError naming the vital sign outside its physiological range."""
        for name, low, high in (("heart_rate_bpm", 20, 250), ("respiration_rate_bpm", 4, 60),
                                ("systolic_mmhg", 40, 300), ("diastolic_mmhg", 10, 200)):
            value = getattr(self, name)
            if not low <= value <= high:
                raise DicomOrError(name, f"must be within {low}..{high}", value)
        if self.diastolic_mmhg >= self.systolic_mmhg:
            raise DicomOrError("diastolic_mmhg", "must be below systolic_mmhg",
                               self.diastolic_mmhg)
        return self

    def _extend_beats(self, until_s: float) -> None:
        """Generate R-peak times up to ``until_s`` + 2 beats (deterministic per seed)."""
        if not self._beats:
            self._rng = np.random.default_rng(self.seed)
            mean_rr = 60.0 / self.heart_rate_bpm
            self._beats = [-mean_rr, 0.25]
        mean_rr = 60.0 / self.heart_rate_bpm
        resp_hz = self.respiration_rate_bpm / 60.0
        while self._beats[-1] < until_s + 2 * mean_rr:
            last = self._beats[-1]
            rr = mean_rr * (1 + self.rsa_fraction * math.sin(2 * math.pi * resp_hz * last)) \
                + float(self._rng.normal(0.0, self.jitter_s))
            rr = max(rr, 0.3)
            self._beats.append(last + rr)
            self._beats_array = None

    def _beat_index(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For each time: (previous R time, RR of that beat, next R time)."""
        self._extend_beats(float(t.max()) if t.size else 0.0)
        beats = self._beats_array
        if beats is None:  # rebuilt only when beats were added
            beats = self._beats_array = np.asarray(self._beats)
        k = np.searchsorted(beats, t, side="right") - 1
        k = np.clip(k, 0, beats.size - 2)
        return beats[k], beats[k + 1] - beats[k], beats[k + 1]

    def ecg_mv(self, lead: str, t: np.ndarray) -> np.ndarray:
        """Lead ``lead`` in mV at times ``t`` (I, III, V1..V6 from templates)."""
        prev_r, rr, next_r = self._beat_index(t)
        amplitudes = _AMPLITUDES_MV[lead]
        out = np.zeros_like(t)
        for r_time, beat_rr in ((prev_r, rr), (next_r, rr)):
            tau = t - r_time
            for wave in _WAVES:
                centre = _CENTRES[wave] * np.sqrt(beat_rr / 0.8) if wave == "T" \
                    else _CENTRES[wave]
                out += amplitudes[wave] * np.exp(-0.5 * ((tau - centre) / _WIDTHS[wave]) ** 2)
        # Baseline wander with breathing (electrode impedance changes), 20 uV.
        out += 0.02 * np.sin(2 * np.pi * self.respiration_rate_bpm / 60.0 * t)
        return out

    def _pulse(self, t: np.ndarray, delay_s: float, rise: float, notch: float) -> np.ndarray:
        """A 0..1 pulse shape per beat, starting ``delay_s`` after each R peak: sin^2
        upstroke over ``rise`` of the cycle, exponential run-off reaching 0 at the next
        upstroke (so beats join continuously), optional dicrotic notch."""
        prev_r, rr, _ = self._beat_index(t - delay_s)
        x = np.clip((t - delay_s - prev_r) / rr, 0.0, 1.0)
        up = np.sin(np.pi / 2 * np.clip(x / rise, 0, 1)) ** 2
        tail = 0.3
        decay = (np.exp(-(x - rise) / tail) - math.exp(-(1 - rise) / tail)) \
            / (1 - math.exp(-(1 - rise) / tail))
        shape = np.where(x < rise, up, decay)
        if notch:
            shape += notch * (np.exp(-0.5 * ((x - 0.42) / 0.03) ** 2)
                              - 0.8 * np.exp(-0.5 * ((x - 0.36) / 0.015) ** 2))
        return shape

    def art_mmhg(self, t: np.ndarray) -> np.ndarray:
        """Radial arterial pressure: upstroke ~120 ms after R (pulse transit time), mild
        respiratory variation of the pulse pressure (as under mechanical ventilation)."""
        resp = 1 + 0.04 * np.sin(2 * np.pi * self.respiration_rate_bpm / 60.0 * t)
        pulse = self._pulse(t, 0.12, 0.14, 0.10)
        return self.diastolic_mmhg + (self.systolic_mmhg - self.diastolic_mmhg) * resp * pulse

    def pleth_percent(self, t: np.ndarray) -> np.ndarray:
        """Finger plethysmogram, 0..100 % of the pulse amplitude, ~250 ms after R."""
        return 10.0 + 80.0 * self._pulse(t, 0.25, 0.22, 0.05)

    def resp_ohm(self, t: np.ndarray) -> np.ndarray:
        """Thoracic impedance change, ~1 Ohm per breath, inspiration shorter than expiration."""
        phase = 2 * np.pi * self.respiration_rate_bpm / 60.0 * t
        return 0.5 * np.sin(phase) + 0.12 * np.sin(2 * phase + 0.6)


def _digital(physical: np.ndarray, channel: WaveformChannel) -> np.ndarray:
    """Physical values as int16 digital values of ``channel`` (rounded, clipped)."""
    scale = channel.sensitivity * channel.sensitivity_correction
    values = np.rint(physical / scale - channel.baseline)
    return np.clip(values, INT16_MIN, INT16_MAX).astype(np.int16)


class WaveformSimulator:
    """Digital samples of one channel group of a :class:`PatientModel`."""

    def __init__(self, group: ChannelGroup, patient: PatientModel | None = None) -> None:
        unknown = [label for label in group.labels if label not in CHANNELS]
        if unknown:
            raise DicomOrError("channels", f"unknown channel; known: {', '.join(CHANNELS)}",
                               unknown[0])
        if group.sampling_hz <= 0:
            raise DicomOrError("sampling_hz", "must be greater than 0", group.sampling_hz)
        self.group = group
        self.channels = group.channels()
        self.patient = (patient or PatientModel()).validate()

    @property
    def sampling_hz(self) -> float:
        """Samples per second of every channel of the group."""
        return self.group.sampling_hz

    def samples(self, first_index: int, count: int) -> np.ndarray:
        """``count`` samples from sample index ``first_index``: int16 array (count, channels).

        Sample ``i`` is at ``i / sampling_hz`` seconds after the Series started.
        """
        t = (first_index + np.arange(count, dtype=np.float64)) / self.group.sampling_hz
        p = self.patient
        # Every limb lead derives from I and III; other groups never read them.
        lead_i = lead_iii = np.zeros(0, np.int16)
        if {"I", "II", "III", "aVR", "aVL", "aVF"} & set(self.group.labels):
            lead_i = _digital(p.ecg_mv("I", t) * 1000.0, CHANNELS["I"])
            lead_iii = _digital(p.ecg_mv("III", t) * 1000.0, CHANNELS["III"])
        out = np.empty((count, len(self.channels)), np.int16)
        for column, label in enumerate(self.group.labels):
            if label == "I":
                values = lead_i
            elif label == "III":
                values = lead_iii
            elif label == "II":  # Einthoven: II = I + III, exactly, in digital values
                values = (lead_i.astype(np.int32) + lead_iii).clip(INT16_MIN, INT16_MAX)
            elif label in ("aVR", "aVL", "aVF"):
                i32, iii32 = lead_i.astype(np.int32), lead_iii.astype(np.int32)
                ii32 = i32 + iii32
                values = {"aVR": -(i32 + ii32) // 2, "aVL": (i32 - iii32) // 2,
                          "aVF": (ii32 + iii32) // 2}[label]
            elif label.startswith("V"):
                values = _digital(p.ecg_mv(label, t) * 1000.0, CHANNELS[label])
            elif label == "ART":
                values = _digital(p.art_mmhg(t), CHANNELS[label])
            elif label == "PLETH":
                values = _digital(p.pleth_percent(t), CHANNELS[label])
            else:  # RESP
                values = _digital(p.resp_ohm(t), CHANNELS[label])
            out[:, column] = values
        return out


def physical(samples: np.ndarray, channels: list[WaveformChannel]) -> np.ndarray:
    """Digital (count, channels) samples as float physical values per the channel rule."""
    scale = np.array([(c.sensitivity * c.sensitivity_correction) for c in channels])
    baseline = np.array([c.baseline for c in channels])
    return (samples.astype(np.float64) + baseline) * scale


def parse_groups(names: list[str]) -> list[ChannelGroup]:
    """Channel groups by name; an unknown name is an error listing the known ones."""
    if not names:
        raise DicomOrError("groups", "at least one channel group is needed")
    groups = []
    for name in names:
        if name not in GROUPS:
            raise DicomOrError("groups", f"unknown group; known: {', '.join(GROUPS)}", name)
        groups.append(GROUPS[name])
    if len(set(names)) != len(names):
        raise DicomOrError("groups", "each group may appear once", names)
    return groups


# ---------------------------------------------------------------------------------------
# WFDB replay (PhysioNet format, the ``wfdb`` package).

_WFDB_UNITS = {"mV": ("uV", 1000.0), "uV": ("uV", 1.0), "mmHg": ("mm[Hg]", 1.0),
               "%": ("%", 1.0), "Ohm": ("Ohm", 1.0), "ohm": ("Ohm", 1.0)}
_WFDB_ALIASES = {"ABP": "ART", "AP": "ART", "PPG": "PLETH", "SPO2": "PLETH", "RESP": "RESP",
                 "MLII": "II", "ECG": "II"}


@dataclass
class WfdbRecord:
    """A WFDB record loaded for replay: digital samples and matching DICOM channels."""

    name: str
    sampling_hz: float
    channels: list[WaveformChannel]
    samples: np.ndarray  # (count, channels) int16 digital values


def load_wfdb(record_path: str | Path, labels: list[str] | None = None) -> WfdbRecord:
    """Load a WFDB record (``.hea`` + signal files) for replay.

    The digital values are kept as recorded (no resampling, no requantisation); WFDB's
    ``physical = (digital - baseline) / adc_gain`` becomes DICOM's
    ``(digital + ChannelBaseline) * ChannelSensitivity``, i.e. baseline = -wfdb baseline and
    sensitivity = 1 / adc_gain, converted to the channel's UCUM unit. Signals are matched to
    known channels by name (aliases such as ABP -> ART, MLII -> II); ``labels`` selects some.
    """
    import wfdb

    path = Path(record_path)
    base = str(path.with_suffix("")) if path.suffix in (".hea", ".dat") else str(path)
    if not Path(base + ".hea").is_file():
        raise DicomOrError("wfdb_record", "no WFDB header (.hea) at this path", str(path))
    try:
        record = wfdb.rdrecord(base, physical=False)
    except Exception as exc:  # wfdb raises many types for a malformed record
        raise DicomOrError("wfdb_record", f"cannot be read: {exc}", str(path)) from None
    names = list(record.sig_name)
    wanted = labels or names
    channels, columns = [], []
    for label in wanted:
        if label not in names:
            raise DicomOrError("channels", f"not a signal of the record ({', '.join(names)})",
                               label)
        column = names.index(label)
        known = _WFDB_ALIASES.get(label, label)
        if known not in CHANNELS:
            raise DicomOrError("channels", "signal has no known Channel Source code; "
                               f"known: {', '.join(CHANNELS)}", label)
        unit = record.units[column]
        if unit not in _WFDB_UNITS:
            raise DicomOrError("wfdb_record", f"signal {label} has unsupported units", unit)
        ucum, factor = _WFDB_UNITS[unit]
        gain = float(record.adc_gain[column])
        if gain <= 0:
            raise DicomOrError("wfdb_record", f"signal {label} has no ADC gain", gain)
        channels.append(replace(CHANNELS[known], label=label[:16], unit_ucum=ucum,
                                sensitivity=factor / gain, sensitivity_correction=1.0,
                                baseline=-float(record.baseline[column])))
        columns.append(column)
    digital = np.asarray(record.d_signal)[:, columns]
    if digital.size and (digital.min() < INT16_MIN or digital.max() > INT16_MAX):
        raise DicomOrError("wfdb_record", "digital values exceed 16 bits", str(path))
    return WfdbRecord(Path(base).name, float(record.fs), channels,
                      digital.astype(np.int16))
