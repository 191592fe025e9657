"""Synthetic 12-lead ECGs written as real DICOM 12-lead ECG Waveform Storage files.

For tests and demos: a heart at a known rate, so that measured heart rates can be checked.
The signal is a sum of Gaussian P, Q, R, S and T waves per beat (the wave model of McSharry et
al. 2003, ECGSYN, without its dynamics), placed at exactly ``60 / heart_rate`` seconds apart,
projected onto the limb leads I and II, with III, aVR, aVL and aVF derived by Einthoven's and
Goldberger's equations, plus small noise and baseline wander. It is deliberately not
neurokit2's simulator: the generator and the measurer (:mod:`medspark.waveforms.ecg`, which
uses neurokit2) should not share code.

:func:`write_ecg` writes SOP Class 1.2.840.10008.5.1.4.1.1.9.1.1 with one multiplex group
(RHYTHM), 12 channels, 16-bit signed samples (SS), Channel Sensitivity 2.5 uV per LSB.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

ECG_12_LEAD = "1.2.840.10008.5.1.4.1.1.9.1.1"

#: Lead name (Code Meaning) and SCP-ECG code (Code Value) as in pydicom's waveform_ecg.dcm.
LEADS: tuple[tuple[str, str], ...] = (
    ("Lead I (Einthoven)", "5.6.3-9-1"),
    ("Lead II", "5.6.3-9-2"),
    ("Lead III", "5.6.3-9-61"),
    ("Lead aVR", "5.6.3-9-62"),
    ("Lead aVL", "5.6.3-9-63"),
    ("Lead aVF", "5.6.3-9-64"),
    ("Lead V1", "5.6.3-9-3"),
    ("Lead V2", "5.6.3-9-4"),
    ("Lead V3", "5.6.3-9-5"),
    ("Lead V4", "5.6.3-9-6"),
    ("Lead V5", "5.6.3-9-7"),
    ("Lead V6", "5.6.3-9-8"),
)

# (centre relative to the R peak in s, width in s, amplitude in mV) of P, Q, R, S, T.
_WAVES = (
    (-0.17, 0.020, 0.15),
    (-0.030, 0.008, -0.12),
    (0.0, 0.010, 1.2),
    (0.030, 0.008, -0.30),
    (0.26, 0.040, 0.35),
)
# Gain of each precordial lead on the R wave (V1 mostly negative, V5 tallest).
_PRECORDIAL_R = (-0.5, -0.2, 0.4, 0.9, 1.1, 0.9)


def _beats(t: np.ndarray, r_times: np.ndarray, rr: float, gains: tuple[float, ...]) -> np.ndarray:
    out = np.zeros_like(t)
    qt_scale = np.sqrt(rr)  # the T wave moves with the RR interval (Bazett)
    for r in r_times:
        for (centre, width, amp), g in zip(_WAVES, gains, strict=True):
            c = centre * qt_scale if centre > 0.1 else centre
            out += g * amp * np.exp(-0.5 * ((t - r - c) / width) ** 2)
    return out


def simulate_12_lead(
    heart_rate: float,
    duration: float = 10.0,
    sampling_rate: float = 500.0,
    noise_mv: float = 0.01,
    seed: int = 0,
) -> np.ndarray:
    """(samples, 12) float array in mV, leads in :data:`LEADS` order, R peaks exactly
    ``60 / heart_rate`` s apart (first at 0.4 s)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(duration * sampling_rate))) / sampling_rate
    rr = 60.0 / heart_rate
    r_times = np.arange(0.4, duration + rr, rr)
    wander = 0.05 * np.sin(2 * np.pi * 0.25 * t)

    def noisy(x: np.ndarray) -> np.ndarray:
        return x + wander + rng.normal(0.0, noise_mv, x.shape)

    # Noise is added to the measured leads (I, II, V1-V6) before the others are derived, so
    # the derived leads keep Einthoven's and Goldberger's relations exactly.
    lead_i = noisy(_beats(t, r_times, rr, (1.0, 0.6, 0.6, 0.6, 0.8)))
    lead_ii = noisy(_beats(t, r_times, rr, (1.2, 1.0, 1.0, 1.0, 1.0)))
    limb = [
        lead_i,
        lead_ii,
        lead_ii - lead_i,  # III (Einthoven)
        -(lead_i + lead_ii) / 2,  # aVR (Goldberger)
        lead_i - lead_ii / 2,  # aVL
        lead_ii - lead_i / 2,  # aVF
    ]
    chest = [noisy(_beats(t, r_times, rr, (0.8, 0.5, g, 0.5, 0.9))) for g in _PRECORDIAL_R]
    return np.stack(limb + chest, axis=1)


def ecg_dataset(
    signal_mv: np.ndarray,
    sampling_rate: float,
    *,
    sop_instance_uid: str | None = None,
    patient_id: str = "SYNTH-ECG",
    station_name: str = "ECG-CART-1",
    acquisition: str = "20260105083000",
    sensitivity_uv: float = 2.5,
) -> object:
    """A pydicom Dataset of 12-lead ECG Waveform Storage holding ``signal_mv`` (samples, 12)."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence
    from pydicom.uid import generate_uid

    from medspark.synthetic import new_dataset

    n_samples, n_channels = signal_mv.shape
    ds = new_dataset(ECG_12_LEAD, sop_instance_uid or generate_uid())
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = patient_id
    ds.PatientName = "Synthetic^ECG"
    ds.Modality = "ECG"
    ds.StationName = station_name
    ds.Manufacturer = "medspark synthetic"
    ds.StudyDate = acquisition[:8]
    ds.StudyTime = acquisition[8:]
    ds.AcquisitionDateTime = acquisition
    ds.ContentDate = acquisition[:8]
    ds.ContentTime = acquisition[8:]
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1

    def code(value: str, scheme: str, meaning: str) -> Dataset:
        c = Dataset()
        c.CodeValue = value
        c.CodingSchemeDesignator = scheme
        c.CodeMeaning = meaning
        return c

    group = Dataset()
    group.WaveformOriginality = "ORIGINAL"
    group.NumberOfWaveformChannels = n_channels
    group.NumberOfWaveformSamples = n_samples
    group.SamplingFrequency = f"{sampling_rate:g}"
    group.MultiplexGroupLabel = "RHYTHM"
    channels = []
    for c in range(n_channels):
        meaning, value = LEADS[c % len(LEADS)]
        item = Dataset()
        item.ChannelSourceSequence = Sequence([code(value, "SCPECG", meaning)])
        item.ChannelSensitivity = f"{sensitivity_uv:g}"
        item.ChannelSensitivityUnitsSequence = Sequence([code("uV", "UCUM", "microvolt")])
        item.ChannelSensitivityCorrectionFactor = "1"
        item.ChannelBaseline = "0"
        item.ChannelSampleSkew = "0"
        item.WaveformBitsStored = 16
        channels.append(item)
    group.ChannelDefinitionSequence = Sequence(channels)
    group.WaveformBitsAllocated = 16
    group.WaveformSampleInterpretation = "SS"
    raw = np.clip(np.round(signal_mv * 1000.0 / sensitivity_uv), -32768, 32767).astype("<i2")
    group.WaveformData = raw.tobytes()  # (samples, channels) C order: channel fastest
    ds.WaveformSequence = Sequence([group])
    return ds


def write_ecg(
    path: Path | str,
    heart_rate: float,
    *,
    duration: float = 10.0,
    sampling_rate: float = 500.0,
    seed: int = 0,
    bad_channel_count: bool = False,
    **dataset_options: str,
) -> Path:
    """Write a synthetic 12-lead ECG at ``heart_rate`` bpm to ``path``; returns the path.

    ``bad_channel_count`` writes Number of Waveform Channels (003A,0005) = 11 beside 12 channel
    definitions: a bad channel definition, for the error path.
    """
    signal = simulate_12_lead(heart_rate, duration, sampling_rate, seed=seed)
    ds = ecg_dataset(signal, sampling_rate, **dataset_options)  # type: ignore[arg-type]
    if bad_channel_count:
        ds.WaveformSequence[0].NumberOfWaveformChannels = 11  # type: ignore[attr-defined]
    path = Path(path)
    ds.save_as(path, enforce_file_format=True)  # type: ignore[attr-defined]
    return path
