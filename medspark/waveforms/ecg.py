"""ECG metrics per instance and per lead, with neurokit2: pure numpy in, dataclasses out.

neurokit2 (Makowski et al. 2021, MIT licence) does the signal work: ``ecg_clean`` (0.5 Hz
high-pass + 50 Hz power-line filter), ``ecg_peaks`` (R peaks, its default detector) and
``ecg_delineate`` (P, QRS and T onsets and offsets; the ``prominence`` method of Emrich et al.
2023, which came closest to the vendor's measurements on pydicom's real ECG of the methods
tried, see docs/waveforms.md). No peak detection is written here: this module chooses leads,
converts units, turns fiducial points into intervals, and computes the quality figure
(:func:`beat_correlation`).

Per lead: heart rate (60 / mean RR), RR mean and SD, number of beats, PR (P onset to QRS
onset), QRS (QRS onset to offset), QT (QRS onset to T offset) and QTc (Bazett, QT / sqrt(RR in
s)), each from the median fiducial position over the lead's beats, and the quality figure.
Per instance: heart rate, RR, beats and quality of the analysis lead (Lead II when it is
measurable, else the measurable lead of best quality); intervals the median over the
measurable leads (each automatic per-lead delineation misses some waves; the median over 12
leads is steadier).

A lead or an instance that cannot be analysed gets null metrics and a ``reason``: too short
(under :data:`MIN_SECONDS`), flat (peak-to-peak under :data:`FLAT_MV`), fewer than
:data:`MIN_BEATS` beats found, a heart rate outside :data:`HR_RANGE`, or noisy (quality under
:data:`MIN_QUALITY`); an instance without a channel in volts is not an ECG.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from medspark.waveforms.decode import Channel

MIN_SECONDS = 5.0  # shorter records (a median beat, a strip) give no rate worth storing
FLAT_MV = 0.05  # peak-to-peak below this after cleaning: no signal (lead off)
MIN_BEATS = 3
MIN_QUALITY = 0.8  # mean beat-to-median-beat correlation; see beat_correlation
HR_RANGE = (20.0, 300.0)  # bpm; outside: the detector locked on noise
PREFERRED_LEAD = "Lead II"

#: Channel Sensitivity Units (003A,0211) Code Values (UCUM) of voltage -> factor to mV.
TO_MV = {"uV": 1e-3, "mV": 1.0, "V": 1e3}

#: Delineation method of neurokit2's ecg_delineate.
DELINEATION = "prominence"


@dataclass
class EcgMetrics:
    """Metrics of one lead (``lead`` set) or of the instance (``lead`` None)."""

    lead: str | None
    group: int | None = None
    heart_rate_bpm: float | None = None
    rr_mean_ms: float | None = None
    rr_sd_ms: float | None = None
    n_beats: int | None = None
    pr_ms: float | None = None
    qrs_ms: float | None = None
    qt_ms: float | None = None
    qtc_ms: float | None = None
    quality: float | None = None
    analysis_lead: str | None = None
    leads_measured: int | None = None
    duration_s: float | None = None
    sampling_frequency: float | None = None
    reason: str | None = None

    def as_row(self) -> dict[str, Any]:
        return asdict(self)


def _finite(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def _relative_median(points: Any, r_peaks: np.ndarray) -> float:
    """Median position (samples) of fiducial ``points`` relative to their nearest R peak."""
    x = np.asarray(points if points is not None else [], dtype=float)
    x = x[np.isfinite(x)]
    if x.size == 0 or r_peaks.size == 0:
        return math.nan
    i = np.clip(np.searchsorted(r_peaks, x), 0, r_peaks.size - 1)
    j = np.clip(i - 1, 0, r_peaks.size - 1)
    nearest = np.where(np.abs(r_peaks[i] - x) <= np.abs(r_peaks[j] - x), r_peaks[i], r_peaks[j])
    return float(np.median(x - nearest))


def beat_correlation(clean: np.ndarray, r_peaks: np.ndarray, fs: float) -> float | None:
    """Signal quality: mean Pearson correlation of each beat (R - 0.2 s to R + 0.4 s) with the
    median beat, -1..1; None with fewer than 3 whole beats.

    neurokit2's own ``averageQRS`` quality is rescaled within each record (its worst beat is
    0, its best 1), so it cannot tell a noisy record from a clean one, and ``zhao2018`` called
    clean synthetic leads Unacceptable and a lead buried in 1 mV noise acceptable (measured, see
    docs/waveforms.md): this absolute figure is used instead. Measured on synthetic Lead II at
    72 bpm (:mod:`medspark.waveforms.synthetic`, 6 noise seeds each): 0.99 with 0.1 mV
    Gaussian noise, 0.90-0.94 with 0.3 mV, 0.79-0.86 with 0.5 mV (heart rate still right),
    0.56-0.78 with 0.7 mV (4 of 6 rates wrong), 0.46-0.64 with 1 mV (all wrong); 0.87-1.00
    on the 12 leads of pydicom's real ECG. :data:`MIN_QUALITY` 0.8 rejects every wrong rate
    measured there, at the cost of one of the six right 0.5 mV records.
    """
    before, after = int(round(0.2 * fs)), int(round(0.4 * fs))
    keep = r_peaks[(r_peaks >= before) & (r_peaks + after <= clean.size)]
    if keep.size < MIN_BEATS:
        return None
    beats = np.stack([clean[r - before : r + after] for r in keep])
    template = np.median(beats, axis=0)
    t = template - template.mean()
    b = beats - beats.mean(axis=1, keepdims=True)
    denom = np.linalg.norm(b, axis=1) * np.linalg.norm(t)
    if not np.all(denom > 0):
        return None
    return float(np.mean(b @ t / denom))


def analyse_lead(samples_mv: np.ndarray, fs: float, lead: str | None = None) -> EcgMetrics:
    """Metrics of one lead (samples in mV, ``fs`` Hz); null metrics with a reason when the
    lead cannot be analysed. Never raises for a bad signal."""
    out = EcgMetrics(lead=lead, duration_s=samples_mv.size / fs, sampling_frequency=fs)
    if samples_mv.size / fs < MIN_SECONDS:
        out.reason = f"too short: {samples_mv.size / fs:.2f} s (needs {MIN_SECONDS:g} s)"
        return out
    signal = np.asarray(samples_mv, dtype=np.float64)
    if not np.all(np.isfinite(signal)):
        out.reason = "samples are not finite"
        return out
    import neurokit2 as nk

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # neurokit2 warns freely (NaN slices, short signals)
        try:
            clean = np.asarray(nk.ecg_clean(signal, sampling_rate=int(round(fs))), dtype=float)
        except Exception as exc:  # noqa: BLE001 - a library failure is this lead's reason
            out.reason = f"cleaning failed: {type(exc).__name__}: {exc}"
            return out
        spread = float(np.percentile(clean, 99.5) - np.percentile(clean, 0.5))
        if spread < FLAT_MV:
            out.reason = f"flat: {spread:.3f} mV peak to peak (under {FLAT_MV:g} mV)"
            return out
        try:
            _, info = nk.ecg_peaks(clean, sampling_rate=int(round(fs)))
            r_peaks = np.asarray(info["ECG_R_Peaks"], dtype=np.int64)
        except Exception as exc:  # noqa: BLE001
            out.reason = f"R-peak detection failed: {type(exc).__name__}: {exc}"
            return out
        out.n_beats = int(r_peaks.size)
        if r_peaks.size < MIN_BEATS:
            out.reason = f"{r_peaks.size} beat(s) found (needs {MIN_BEATS})"
            return out
        rr = np.diff(r_peaks) / fs
        rate = 60.0 / float(rr.mean())
        if not HR_RANGE[0] <= rate <= HR_RANGE[1]:
            out.reason = f"implausible heart rate {rate:.0f} bpm: noise, not beats"
            out.n_beats = None
            return out
        out.quality = beat_correlation(clean, r_peaks, fs)
        if out.quality is None or out.quality < MIN_QUALITY:
            figure = "none" if out.quality is None else f"{out.quality:.2f}"
            out.reason = (
                f"noisy: beats correlate {figure} with the median beat (needs {MIN_QUALITY:g})"
            )
            out.n_beats = None
            return out
        out.heart_rate_bpm = rate
        out.rr_mean_ms = float(rr.mean() * 1000)
        out.rr_sd_ms = float(rr.std(ddof=1) * 1000) if rr.size > 1 else None
        try:
            _, waves = nk.ecg_delineate(
                clean, r_peaks, sampling_rate=int(round(fs)), method=DELINEATION
            )
        except Exception:  # noqa: BLE001 - intervals stay null; rate is still good
            return out
    ms = 1000.0 / fs
    p_on = _relative_median(waves.get("ECG_P_Onsets"), r_peaks)
    qrs_on = _relative_median(waves.get("ECG_R_Onsets"), r_peaks)
    qrs_off = _relative_median(waves.get("ECG_R_Offsets"), r_peaks)
    t_off = _relative_median(waves.get("ECG_T_Offsets"), r_peaks)
    out.pr_ms = _finite((qrs_on - p_on) * ms)
    out.qrs_ms = _finite((qrs_off - qrs_on) * ms)
    out.qt_ms = _finite((t_off - qrs_on) * ms)
    if out.qt_ms is not None and out.rr_mean_ms:
        out.qtc_ms = out.qt_ms / math.sqrt(out.rr_mean_ms / 1000.0)
    return out


def ecg_leads(channels: Sequence[Channel]) -> tuple[int | None, list[Channel]]:
    """The multiplex group to analyse and its voltage channels: of the groups with a channel in
    volts (Channel Sensitivity Units (003A,0211) uV, mV or V), the longest (a RHYTHM group, not
    a 1.2 s MEDIAN BEAT); (None, []) when there is none."""
    volts = [c for c in channels if c.units in TO_MV]
    if not volts:
        return None, []
    duration: dict[int, float] = {}
    for c in volts:
        duration[c.group] = max(duration.get(c.group, 0.0), c.duration_s)
    group = max(duration, key=lambda g: (duration[g], -g))
    return group, [c for c in volts if c.group == group]


def analyse_instance(channels: Sequence[Channel]) -> tuple[EcgMetrics, list[EcgMetrics]]:
    """(instance metrics, per-lead metrics) of one decoded waveform instance."""
    group, leads = ecg_leads(channels)
    if group is None:
        return EcgMetrics(lead=None, reason="no ECG lead: no channel in volts"), []
    per_lead = []
    names = [c.lead or f"channel {c.channel}" for c in leads]
    for c, name in zip(leads, names, strict=True):
        m = analyse_lead(c.samples.astype(np.float64) * TO_MV[c.units or ""], c.sampling_frequency)
        # ecg_metrics is keyed by (instance, lead): a lead name given twice gets its channel.
        m.lead = name if names.count(name) == 1 else f"{name} (channel {c.channel})"
        m.group = group
        per_lead.append(m)
    first = leads[0]
    summary = EcgMetrics(
        lead=None,
        group=group,
        duration_s=first.duration_s,
        sampling_frequency=first.sampling_frequency,
    )
    good = [m for m in per_lead if m.heart_rate_bpm is not None]
    summary.leads_measured = len(good)
    if not good:
        reasons = sorted({m.reason or "" for m in per_lead})
        summary.reason = "no lead could be analysed: " + "; ".join(reasons)
        return summary, per_lead
    preferred = [m for m in good if m.lead == PREFERRED_LEAD]
    best = preferred[0] if preferred else max(good, key=lambda m: m.quality or 0.0)
    summary.analysis_lead = best.lead
    for name in ("heart_rate_bpm", "rr_mean_ms", "rr_sd_ms", "n_beats", "quality"):
        setattr(summary, name, getattr(best, name))
    for name in ("pr_ms", "qrs_ms", "qt_ms"):
        values = [getattr(m, name) for m in good if getattr(m, name) is not None]
        setattr(summary, name, float(np.median(values)) if values else None)
    if summary.qt_ms is not None and summary.rr_mean_ms:
        summary.qtc_ms = summary.qt_ms / math.sqrt(summary.rr_mean_ms / 1000.0)
    return summary, per_lead
