"""Decode DICOM waveforms into physical units: pure numpy, no Spark.

A Waveform (PS3.3 C.10.9) is a Waveform Sequence (5400,0100) of multiplex groups; every group
holds channels sampled together at one Sampling Frequency (003A,001A). The samples of a group
are interleaved in Waveform Data (5400,1010), channel fastest (C1S1, C2S1, ..., CnS1, C1S2,
...), each Waveform Bits Allocated (5400,1004) wide and read as Waveform Sample Interpretation
(5400,1006) says: SS/US 16-bit signed/unsigned, SB/UB 8-bit signed/unsigned, MB/AB 8-bit
G.711 mu-law/A-law, and SL/UL/SV/UV 32/64-bit integers.

Physical value of a sample (PS3.3 C.10.9.1.4.2 and Table C.10-9): Channel Sensitivity
(003A,0210) is the value of one least significant bit in Channel Sensitivity Units (003A,0211),
Channel Sensitivity Correction Factor (003A,0212) the ratio of the calibrated to the nominal
sensitivity, and Channel Baseline (003A,0213) the "offset of encoded sample value 0 from actual
0 using the units defined in the Channel Sensitivity Units Sequence": a value in physical units,
so it is added after scaling::

    value = raw * sensitivity * correction_factor + baseline

This is also what pydicom's ``Dataset.waveform_array(index)`` computes
(``pydicom.waveforms.numpy_handler.generate_multiplex``, ``as_raw=False`` path), which the tests
compare against. (Adding the baseline to the raw value before scaling would read it in sample
units, which the standard does not say.) Channels without a sensitivity have arbitrary units:
their raw values are kept and ``units`` is null.

A bad channel definition raises :class:`WaveformError` with a declared error class, so the
Spark step writes an error row naming the file and the reason and goes on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from medspark.errors import MedsparkError
from medspark.tables.error_classes import (
    BAD_CHANNEL_DEFINITION,
    NO_WAVEFORM,
    UNSUPPORTED_WAVEFORM,
    WAVEFORM_DATA_TOO_SHORT,
    WAVEFORM_TOO_LARGE,
)


class WaveformError(MedsparkError):
    """A waveform that cannot be decoded; ``error_class`` is one of
    :data:`medspark.tables.error_classes.WAVEFORM_ERROR_CLASSES`,
    ``group`` the 0-based multiplex group (None: the whole instance)."""

    def __init__(self, error_class: str, message: str, group: int | None = None) -> None:
        super().__init__(message)
        self.error_class = error_class
        self.message = message
        self.group = group


#: (Waveform Bits Allocated, Waveform Sample Interpretation) -> numpy dtype of the raw sample.
DTYPES: dict[tuple[int, str], str] = {
    (8, "SB"): "i1",
    (8, "UB"): "u1",
    (8, "MB"): "u1",  # mu-law, expanded by mulaw_to_linear
    (8, "AB"): "u1",  # A-law, expanded by alaw_to_linear
    (16, "SS"): "i2",
    (16, "US"): "u2",
    (32, "SL"): "i4",
    (32, "UL"): "u4",
    (64, "SV"): "i8",
    (64, "UV"): "u8",
}


def mulaw_to_linear(codes: np.ndarray) -> np.ndarray:
    """G.711 mu-law codes (uint8) -> linear values (int16, 16-bit scale, +-32124).

    The expansion of ITU-T G.711, as ``audioop.ulaw2lin(codes, 2)`` gives it (the tests compare
    all 256 codes).
    """
    u = (~codes.astype(np.uint8)).astype(np.int32)
    sign = u & 0x80
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return np.where(sign != 0, -magnitude, magnitude).astype(np.int16)


def alaw_to_linear(codes: np.ndarray) -> np.ndarray:
    """G.711 A-law codes (uint8) -> linear values (int16, 16-bit scale, +-32256).

    The expansion of ITU-T G.711, as ``audioop.alaw2lin(codes, 2)`` gives it.
    """
    a = (codes.astype(np.uint8) ^ 0x55).astype(np.int32)
    sign = a & 0x80
    exponent = (a >> 4) & 0x07
    mantissa = a & 0x0F
    magnitude = np.where(
        exponent == 0,
        (mantissa << 4) + 8,
        ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0),
    )
    return np.where(sign != 0, magnitude, -magnitude).astype(np.int16)


@dataclass(frozen=True)
class Channel:
    """One decoded channel of one multiplex group."""

    group: int  # 0-based index in the Waveform Sequence (5400,0100)
    channel: int  # 0-based index in the Channel Definition Sequence (003A,0200)
    lead: str | None  # Code Meaning (0008,0104) of Channel Source Sequence (003A,0208)
    source_code: str | None  # Code Value (0008,0100) of the same item
    units: str | None  # Code Value of Channel Sensitivity Units Sequence (003A,0211), UCUM
    units_meaning: str | None  # its Code Meaning, e.g. microvolt
    sampling_frequency: float  # Hz, Sampling Frequency (003A,001A)
    samples: np.ndarray  # float32, physical units (raw units when units is None)
    sensitivity: float | None
    correction_factor: float | None
    baseline: float | None
    sample_interpretation: str  # Waveform Sample Interpretation (5400,1006)
    bits_allocated: int  # Waveform Bits Allocated (5400,1004)
    originality: str | None  # Waveform Originality (003A,0004): ORIGINAL or DERIVED

    @property
    def n_samples(self) -> int:
        return int(self.samples.shape[0])

    @property
    def duration_s(self) -> float:
        return self.n_samples / self.sampling_frequency


def _code(item: Any, keyword: str) -> tuple[str | None, str | None]:
    """(Code Value, Code Meaning) of the first item of a code sequence, or (None, None)."""
    seq = item.get(keyword)
    if not seq:
        return None, None
    code = seq[0]
    value = code.get("CodeValue") or code.get("LongCodeValue") or code.get("URNCodeValue")
    meaning = code.get("CodeMeaning")
    return (str(value) if value else None), (str(meaning) if meaning else None)


def _number(value: Any) -> float | None:
    if value is None or value == "":
        return None
    return float(value)


def decode_group(
    group: Any, index: int, max_samples: int | None = None, little_endian: bool = True
) -> list[Channel]:
    """Decode one Waveform Sequence item (multiplex group) into its channels.

    Raises :class:`WaveformError` (``group`` = ``index``) when Number of Waveform Channels
    (003A,0005) disagrees with the Channel Definition Sequence (003A,0200), a required element
    is missing, Channel Sensitivity (003A,0210) is present without its units, correction factor
    or baseline (Type 1C: required together), the encoding is not one PS3.3 defines, or
    Waveform Data (5400,1010) holds fewer bytes than channels x samples x bytes per sample.
    """
    where = f"multiplex group {index}"

    def bad(cls: str, text: str) -> WaveformError:
        return WaveformError(cls, f"{where}: {text}", index)

    missing = [
        k
        for k in (
            "NumberOfWaveformChannels",
            "NumberOfWaveformSamples",
            "SamplingFrequency",
            "WaveformBitsAllocated",
            "WaveformSampleInterpretation",
            "ChannelDefinitionSequence",
        )
        if group.get(k) in (None, "")
    ]
    if missing:
        raise bad(BAD_CHANNEL_DEFINITION, "missing " + ", ".join(missing))
    if "WaveformData" not in group:
        raise bad(WAVEFORM_DATA_TOO_SHORT, "no Waveform Data (5400,1010)")
    n_channels = int(group.NumberOfWaveformChannels)
    n_samples = int(group.NumberOfWaveformSamples)
    frequency = float(group.SamplingFrequency)
    definitions = list(group.ChannelDefinitionSequence)
    if n_channels < 1 or n_samples < 1:
        raise bad(
            BAD_CHANNEL_DEFINITION,
            f"Number of Waveform Channels (003A,0005) {n_channels} and Number of Waveform "
            f"Samples (003A,0010) {n_samples} must be positive",
        )
    if not frequency > 0:
        raise bad(BAD_CHANNEL_DEFINITION, f"Sampling Frequency (003A,001A) {frequency} Hz")
    if len(definitions) != n_channels:
        raise bad(
            BAD_CHANNEL_DEFINITION,
            f"Number of Waveform Channels (003A,0005) is {n_channels} but the Channel "
            f"Definition Sequence (003A,0200) has {len(definitions)} item(s)",
        )
    if max_samples is not None and n_channels * n_samples > max_samples:
        raise bad(
            WAVEFORM_TOO_LARGE,
            f"{n_channels} channel(s) x {n_samples} samples exceed the limit of {max_samples}",
        )
    bits = int(group.WaveformBitsAllocated)
    interpretation = str(group.WaveformSampleInterpretation).strip()
    dtype = DTYPES.get((bits, interpretation))
    if dtype is None:
        raise bad(
            UNSUPPORTED_WAVEFORM,
            f"Waveform Bits Allocated (5400,1004) {bits} with Waveform Sample Interpretation "
            f"(5400,1006) {interpretation!r} is not an encoding PS3.3 C.10.9.1.5 defines",
        )
    # An empty Waveform Data element reads as None in pydicom (a zero-length value).
    data = bytes(group.WaveformData or b"")
    width = np.dtype(dtype).itemsize
    need = n_channels * n_samples * width
    if len(data) < need:
        raise bad(
            WAVEFORM_DATA_TOO_SHORT,
            f"Waveform Data (5400,1010) has {len(data)} bytes; {n_channels} channel(s) x "
            f"{n_samples} samples x {width} byte(s) need {need}",
        )
    # Waveform Data is OB or OW as stored: OW of a (retired) big endian transfer syntax is big
    # endian in the bytes pydicom hands over.
    order = "<" if little_endian else ">"
    raw = np.frombuffer(data[:need], dtype=np.dtype(dtype).newbyteorder(order))
    raw = raw.reshape(n_samples, n_channels)
    if interpretation == "MB":
        values = mulaw_to_linear(raw).astype(np.float64)
    elif interpretation == "AB":
        values = alaw_to_linear(raw).astype(np.float64)
    else:
        values = raw.astype(np.float64)
    originality = group.get("WaveformOriginality")
    channels: list[Channel] = []
    for c, item in enumerate(definitions):
        source_code, lead = _code(item, "ChannelSourceSequence")
        units, units_meaning = _code(item, "ChannelSensitivityUnitsSequence")
        sensitivity = _number(item.get("ChannelSensitivity"))
        factor = _number(item.get("ChannelSensitivityCorrectionFactor"))
        baseline = _number(item.get("ChannelBaseline"))
        samples = values[:, c]
        if sensitivity is not None:
            lacking = [
                name
                for name, v in (
                    ("Channel Sensitivity Units Sequence (003A,0211)", units),
                    ("Channel Sensitivity Correction Factor (003A,0212)", factor),
                    ("Channel Baseline (003A,0213)", baseline),
                )
                if v is None
            ]
            if lacking:
                raise bad(
                    BAD_CHANNEL_DEFINITION,
                    f"channel {c}: Channel Sensitivity (003A,0210) without " + ", ".join(lacking),
                )
            if not np.isfinite(sensitivity) or sensitivity == 0:
                raise bad(BAD_CHANNEL_DEFINITION, f"channel {c}: Channel Sensitivity {sensitivity}")
            assert factor is not None and baseline is not None
            samples = samples * sensitivity * factor + baseline
        else:
            units = units_meaning = None  # arbitrary units: raw values
        channels.append(
            Channel(
                group=index,
                channel=c,
                lead=lead,
                source_code=source_code,
                units=units,
                units_meaning=units_meaning,
                sampling_frequency=frequency,
                samples=np.ascontiguousarray(samples, dtype=np.float32),
                sensitivity=sensitivity,
                correction_factor=factor,
                baseline=baseline,
                sample_interpretation=interpretation,
                bits_allocated=bits,
                originality=str(originality) if originality else None,
            )
        )
    return channels


def decode_waveforms(ds: Any, max_samples: int | None = None) -> list[Channel]:
    """Every channel of every multiplex group of ``ds`` (a pydicom Dataset), in physical units.

    Raises :class:`WaveformError` for the first bad group (the instance is then one error row:
    a partly decoded ECG would give metrics of the wrong leads), or ``no_waveform`` when the
    Waveform Sequence (5400,0100) is missing or empty. ``max_samples`` bounds channels x
    samples of one group (memory of the worker).
    """
    groups = ds.get("WaveformSequence")
    if not groups:
        raise WaveformError(NO_WAVEFORM, "no Waveform Sequence (5400,0100) or it is empty")
    encoding = getattr(ds, "original_encoding", (None, True))
    little = encoding[1] is not False
    out: list[Channel] = []
    for index, group in enumerate(groups):
        out.extend(decode_group(group, index, max_samples, little))
    return out
