"""Pixel decoding a radiologist would trust: DICOM frames to modality units and display.

This module is pure numpy + pydicom (no Spark) so it can run on executors. It turns the
Pixel Data (7FE0,0010) / Float Pixel Data (7FE0,0008) / Double Float Pixel Data (7FE0,0009)
of one DICOM file into one :class:`Frame` per frame, in *modality units* (for CT: Hounsfield
units), and renders frames to 8-bit images for viewing or for models trained on screenshots.

Pipeline, per frame (PS3.3 C.11 "Look Up Tables and Presentation States"):

1. Decode the stored values one frame at a time with pydicom's decoder for the Transfer
   Syntax UID (0002,0010). YBR_FULL / YBR_FULL_422 are converted to RGB by pydicom exactly
   once (the decoder reports the photometric interpretation it produced, and we trust that
   report instead of converting again).
2. Modality LUT: Modality LUT Sequence (0028,3000) if present, else Rescale Slope (0028,1053)
   and Rescale Intercept (0028,1052). For enhanced multi-frame objects the Pixel Value
   Transformation Sequence (0028,9145) is taken from the frame's item of the Per-Frame
   Functional Groups Sequence (5200,9230), else from the Shared Functional Groups Sequence
   (5200,9229): pydicom's ``apply_modality_lut`` only reads top-level attributes, which an
   enhanced CT does not have, so it would silently return raw stored values instead of HU.
   RT Dose has no Modality LUT module; its Dose Grid Scaling (3004,000E) is the equivalent
   factor to Dose Units (3004,0002) and is applied instead.
3. Colour images (RGB) are never rescaled: rescale attributes describe single-sample data.
   PALETTE COLOR images are mapped through their palette to RGB.
4. The VOI (window) that the file recommends is carried with the frame but *not* applied:
   :func:`to_display` applies it, so analytics see modality values and viewers see windows.

Whole-file problems (unparsable, no pixel data, unsupported transfer syntax, missing Image
Pixel module attributes) raise :class:`DicomPixelError`. A single frame that fails to decode
yields a :class:`Frame` with ``pixels=None`` and ``error`` set, so one corrupt fragment in a
500-frame cine does not lose the other 499.
"""

from __future__ import annotations

import io
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from medspark.errors import MedsparkError

__all__ = [
    "WINDOW_PRESETS",
    "DicomPixelError",
    "Frame",
    "VoiLut",
    "iter_frames",
    "modality_frames",
    "to_display",
]

LOG = logging.getLogger(__name__)

# CT windows as (center, width) in Hounsfield units. Values are the common radiology practice
# settings tabulated by Radiopaedia, "Windowing (CT)" (brain W80 L40; lungs W1500 L-600;
# bone W1800 L400; abdomen soft tissue W400 L50; soft tissues W350 L50; mediastinum W350 L50;
# liver W150 L30). They only make sense for CT frames already in HU.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "brain": (40.0, 80.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "abdomen": (50.0, 400.0),
    "soft_tissue": (50.0, 350.0),
    "mediastinum": (50.0, 350.0),
    "liver": (30.0, 150.0),
}

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
# Photometric Interpretation (0028,0004) values we can turn into grey or RGB faithfully.
_MONO = ("MONOCHROME1", "MONOCHROME2")
_SUPPORTED_PHOTOMETRIC = (
    *_MONO,
    "PALETTE COLOR",
    "RGB",
    "YBR_FULL",
    "YBR_FULL_422",
    "YBR_ICT",
    "YBR_RCT",
    "YBR_PARTIAL_420",
)


class DicomPixelError(MedsparkError):
    """The file as a whole cannot give pixels: unparsable, no Pixel Data, or unsupported."""


@dataclass(frozen=True, eq=False)
class VoiLut:
    """One item of a VOI LUT Sequence (0028,3010), already parsed to numpy.

    ``first_mapped`` is the second value of LUT Descriptor (0028,3002): the input value that
    maps to ``data[0]``; inputs below/above the table clamp to its first/last entry.
    ``bits`` is the third value, the bit depth of the output, which defines full-scale
    (2**bits - 1) when rescaling the LUT output to 8 bits for display.
    """

    first_mapped: int
    bits: int
    data: np.ndarray
    explanation: str | None = None


@dataclass(frozen=True, eq=False)
class Frame:
    """One decoded frame and the presentation metadata that belongs to it.

    ``pixels`` is float32 in modality units (rows x cols) or RGB (rows x cols x 3), in native
    byte order; ``None`` when this frame failed, with ``error`` saying why. ``window`` is the
    first (center, width) of Window Center (0028,1050) / Window Width (0028,1051) for this
    frame (Frame VOI LUT Sequence (0028,9132) for enhanced objects). ``voi_lut`` is the first
    VOI LUT Sequence (0028,3010) item. ``voi_function`` is VOI LUT Function (0028,1056),
    LINEAR when absent. ``pixel_spacing`` is (row, col) spacing in mm and ``spacing_source``
    names the attribute it came from, or why there is none. ``regions`` are the data regions
    of Sequence of Ultrasound Regions (0018,6011) (see :mod:`medspark.dicom.burned_in`),
    empty when the file declares none.

    Equality is identity (``eq=False``): comparing numpy arrays with ``==`` is ambiguous.
    """

    index: int
    pixels: np.ndarray | None
    error: str | None
    window: tuple[float, float] | None
    voi_lut: VoiLut | None
    photometric: str
    pixel_spacing: tuple[float, float] | None
    spacing_source: str
    voi_function: str = "LINEAR"
    regions: tuple[tuple[int, int, int, int], ...] = ()


# --------------------------------------------------------------------------------------
# Opening the file
# --------------------------------------------------------------------------------------


@dataclass
class _Opened:
    """Everything decided once per file before frames are decoded."""

    ds: Any  # pydicom Dataset
    decoder: Any  # pydicom Decoder for the transfer syntax
    options: dict[str, Any]
    n_frames: int
    photometric: str
    samples: int
    validate: bool
    little_endian: bool
    regions: tuple[tuple[int, int, int, int], ...] = ()


def _read_dataset(source: bytes | bytearray | memoryview | str | os.PathLike) -> Any:
    """Parse the whole file once with pydicom.

    The file is read a single time; frames are then decoded one by one from the in-memory
    (still encoded) Pixel Data, so peak memory is the file size plus one decoded frame rather
    than every frame decoded at once. Files without the 128-byte preamble / "DICM" prefix
    (raw datasets, old ACR-NEMA-like exports) are retried with ``force=True`` and accepted only
    if they turn out to contain pixel data, so random bytes are still rejected.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    if isinstance(source, bytes | bytearray | memoryview):
        fp: Any = io.BytesIO(source)
        name = f"<{len(source)} bytes>"
    else:
        try:
            fp = open(os.fspath(source), "rb")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise DicomPixelError(f"cannot open {os.fspath(source)!r}: {exc}") from exc
        name = os.fspath(source)

    try:
        try:
            return pydicom.dcmread(fp)
        except InvalidDicomError:
            fp.seek(0)
            try:
                ds = pydicom.dcmread(fp, force=True)
            except Exception as exc:
                raise DicomPixelError(f"{name}: not a parsable DICOM file ({exc})") from exc
            if not any(k in ds for k in _PIXEL_KEYWORDS):
                raise DicomPixelError(
                    f"{name}: not a DICOM file (no preamble/'DICM' prefix) and no Pixel Data "
                    "(7FE0,0010) found when forcing a read"
                ) from None
            return ds
        except DicomPixelError:
            raise
        except Exception as exc:
            raise DicomPixelError(
                f"{name}: cannot parse DICOM ({type(exc).__name__}: {exc})"
            ) from exc
    finally:
        fp.close()


def _transfer_syntax(ds: Any) -> Any:
    """Return the Transfer Syntax UID (0002,0010), inferring it when the meta is missing.

    pydicom needs the transfer syntax to pick a decoder. Files without File Meta (or with an
    incomplete one) still record how pydicom actually parsed them (implicit/explicit VR,
    little/big endian); for *native* (non-encapsulated) pixel data that is all a decoder
    needs, so we infer it rather than reject a perfectly readable image.
    """
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import (
        UID,
        ExplicitVRBigEndian,
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
    )

    meta = getattr(ds, "file_meta", None)
    tsyntax = meta.get("TransferSyntaxUID", None) if meta is not None else None
    if tsyntax:
        return UID(str(tsyntax))

    keyword = next(k for k in _PIXEL_KEYWORDS if k in ds)
    if ds[keyword].is_undefined_length:
        raise DicomPixelError(
            "encapsulated (compressed) pixel data but no Transfer Syntax UID (0002,0010): "
            "cannot tell which codec to use"
        )
    implicit, little = ds.original_encoding
    if implicit is None:
        raise DicomPixelError("no Transfer Syntax UID (0002,0010) and encoding unknown")
    if implicit:
        tsyntax = ImplicitVRLittleEndian
    else:
        tsyntax = ExplicitVRLittleEndian if little else ExplicitVRBigEndian
    if meta is None:
        ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = tsyntax
    return tsyntax


def _number_of_frames(ds: Any) -> int:
    """Number of Frames (0028,0008); absent, empty or 0 means a single frame (PS3.3 C.7.6.6)."""
    try:
        value = ds.get("NumberOfFrames", None)
        n = int(value) if value not in (None, "") else 1
    except (TypeError, ValueError) as exc:
        raise DicomPixelError(f"invalid Number of Frames (0028,0008): {exc}") from exc
    if n < 1:
        LOG.warning("Number of Frames (0028,0008) is %s; treating as 1", n)
        n = 1
    return n


def _open(
    source: bytes | bytearray | memoryview | str | os.PathLike,
    max_frame_samples: int | None = None,
) -> _Opened:
    """Parse the file and check everything that would make *every* frame fail; with
    ``max_frame_samples``, refuse frames larger than that before decoding any
    (:func:`medspark.dicom.header.check_frame_size`, raising ``ItemError``)."""
    from pydicom.pixels import get_decoder
    from pydicom.pixels.utils import as_pixel_options, get_expected_length

    from medspark.dicom import gdcm_jpeg12

    gdcm_jpeg12.register()  # 12-bit JPEG Extended, which pydicom's own plugins cannot decode
    ds = _read_dataset(source)
    if max_frame_samples is not None:
        from medspark.dicom.header import check_frame_size

        check_frame_size(ds, max_frame_samples)
    keyword = next((k for k in _PIXEL_KEYWORDS if k in ds), None)
    if keyword is None:
        sop = ds.get("SOPClassUID", None)
        kind = f" ({getattr(sop, 'name', sop)})" if sop else ""
        raise DicomPixelError(
            f"no Pixel Data (7FE0,0010), Float Pixel Data (7FE0,0008) or Double Float "
            f"Pixel Data (7FE0,0009) in this dataset{kind}"
        )

    # Type 1 attributes of the Image Pixel module (PS3.3 C.7.6.3): without them the bytes
    # cannot be shaped into an image, so this is a whole-file failure, not a per-frame one.
    required = [
        ("Rows", "(0028,0010)"),
        ("Columns", "(0028,0011)"),
        ("BitsAllocated", "(0028,0100)"),
        ("SamplesPerPixel", "(0028,0002)"),
        ("PhotometricInterpretation", "(0028,0004)"),
    ]
    if keyword == "PixelData":
        required.append(("PixelRepresentation", "(0028,0103)"))
    for kw, tag in required:
        try:
            value = ds.get(kw, None)
        except Exception as exc:
            raise DicomPixelError(f"unreadable {kw} {tag}: {exc}") from exc
        if value in (None, ""):
            raise DicomPixelError(f"missing required Image Pixel attribute {kw} {tag}")
    if int(ds.Rows) < 1 or int(ds.Columns) < 1:
        raise DicomPixelError(f"empty image: Rows={ds.Rows} Columns={ds.Columns}")

    photometric = str(ds.PhotometricInterpretation).strip().upper()
    if photometric not in _SUPPORTED_PHOTOMETRIC:
        raise DicomPixelError(
            f"unsupported Photometric Interpretation (0028,0004) {photometric!r}; supported: "
            + ", ".join(_SUPPORTED_PHOTOMETRIC)
        )

    n_frames = _number_of_frames(ds)
    tsyntax = _transfer_syntax(ds)
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError as exc:
        raise DicomPixelError(
            f"unsupported Transfer Syntax UID (0002,0010) {tsyntax} ({tsyntax.name}): "
            "pydicom has no decoder for it"
        ) from exc
    if not decoder.is_available:
        raise DicomPixelError(
            f"no decoding plugin installed for {tsyntax.name}: "
            + "; ".join(decoder.missing_dependencies)
        )

    try:
        options = as_pixel_options(ds)
    except Exception as exc:
        raise DicomPixelError(f"invalid Image Pixel module: {exc}") from exc
    options["number_of_frames"] = n_frames

    # pydicom validates the *total* length of native pixel data and would fail every frame of
    # a truncated multi-frame file. Skip that check when the data is short: the native
    # reader still refuses any individual frame whose bytes are not all present.
    validate = True
    if decoder.is_native:
        try:
            expected = get_expected_length(ds, "bytes")
            validate = len(ds[keyword].value) >= expected
        except Exception:
            validate = True

    implicit, little = ds.original_encoding
    from medspark.dicom.burned_in import ultrasound_regions

    return _Opened(
        ds=ds,
        decoder=decoder,
        options=options,
        n_frames=n_frames,
        photometric=photometric,
        samples=int(ds.SamplesPerPixel),
        validate=validate,
        little_endian=tsyntax.is_little_endian if little is None else bool(little),
        regions=ultrasound_regions(ds),
    )


# --------------------------------------------------------------------------------------
# Per-frame metadata (enhanced multi-frame aware)
# --------------------------------------------------------------------------------------


def _functional_group(ds: Any, index: int, sequence: str) -> Any | None:
    """First item of ``sequence`` for frame ``index``: per-frame item wins over shared.

    Per-Frame Functional Groups Sequence (5200,9230) item ``index`` is checked first, then
    Shared Functional Groups Sequence (5200,9229) item 0 (PS3.3 C.7.6.16): a macro appears in
    one or the other, and per-frame is the more specific statement.
    """
    for container, item_index in (
        ("PerFrameFunctionalGroupsSequence", index),
        ("SharedFunctionalGroupsSequence", 0),
    ):
        groups = ds.get(container, None)
        if groups and item_index < len(groups):
            inner = groups[item_index].get(sequence, None)
            if inner:
                return inner[0]
    return None


def _first_float(value: Any) -> float | None:
    """First value of a possibly multi-valued DS element as float, or None."""
    if value is None or value == "":
        return None
    from pydicom.multival import MultiValue

    if isinstance(value, list | tuple | MultiValue):
        if len(value) == 0:
            return None
        value = value[0]
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _parse_lut(item: Any, signed_input: bool, little_endian: bool) -> VoiLut:
    """Parse LUT Descriptor (0028,3002) + LUT Data (0028,3006) of a Modality/VOI LUT item.

    Descriptor: [entries (0 means 65536), first mapped input value, bits per entry]. LUT Data
    may arrive as a list of US values or raw OW bytes; 8-bit tables may be packed one entry
    per byte (PS3.3 C.11.1.1.1).
    """
    desc = [int(v) for v in item.LUTDescriptor]
    if len(desc) != 3:
        raise ValueError(f"LUT Descriptor (0028,3002) must have 3 values, got {desc}")
    entries = desc[0] or 65536
    first = desc[1]
    if signed_input and first >= 32768:
        # 'US or SS' read as US: reinterpret as two's complement for signed stored values.
        first -= 65536
    bits = desc[2]
    raw = item.LUTData
    if isinstance(raw, bytes | bytearray):
        if bits <= 8 and len(raw) in (entries, entries + 1):
            data = np.frombuffer(raw, dtype=np.uint8)
        else:
            data = np.frombuffer(raw, dtype="<u2" if little_endian else ">u2")
    else:
        data = np.atleast_1d(np.asarray(raw))
    if data.size < entries:
        raise ValueError(f"LUT Data (0028,3006) has {data.size} entries, descriptor says {entries}")
    explanation = item.get("LUTExplanation", None)
    return VoiLut(
        first_mapped=first,
        bits=bits,
        data=data[:entries].astype(np.float64),
        explanation=str(explanation) if explanation else None,
    )


def _lookup(values: np.ndarray, lut: VoiLut) -> np.ndarray:
    """Map values through a LUT, clamping out-of-range inputs to the end entries."""
    idx = np.rint(values).astype(np.int64) - lut.first_mapped
    np.clip(idx, 0, lut.data.size - 1, out=idx)
    return lut.data[idx]


def _window_for_frame(
    opened: _Opened, index: int
) -> tuple[tuple[float, float] | None, VoiLut | None, str]:
    """Window (center, width), VOI LUT and VOI LUT Function (0028,1056) for one frame.

    Enhanced objects put these in the Frame VOI LUT Sequence (0028,9132) functional group;
    classic objects at top level. A width below 1 is invalid for the LINEAR function
    (PS3.3 C.11.2.1.2) and is dropped rather than guessed at.
    """
    ds = opened.ds
    source = _functional_group(ds, index, "FrameVOILUTSequence") or ds
    center = _first_float(source.get("WindowCenter", None))
    width = _first_float(source.get("WindowWidth", None))
    function = str(source.get("VOILUTFunction", "") or "LINEAR").strip().upper()
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        function = "LINEAR"
    window = None
    if (
        center is not None
        and width is not None
        and (width >= 1 or (function != "LINEAR" and width > 0))
    ):
        window = (center, width)
    voi_lut = None
    sequence = source.get("VOILUTSequence", None) or ds.get("VOILUTSequence", None)
    if sequence:
        try:
            voi_lut = _parse_lut(
                sequence[0], int(ds.get("PixelRepresentation", 0) or 0) == 1, opened.little_endian
            )
        except Exception as exc:
            LOG.warning("ignoring unusable VOI LUT Sequence (0028,3010): %s", exc)
    return window, voi_lut, function


def _spacing(value: Any) -> tuple[float, float] | None:
    """Two positive finite floats from a DS pair, else None."""
    try:
        pair = [float(v) for v in value]
    except (TypeError, ValueError):
        return None
    if len(pair) != 2 or not all(math.isfinite(v) and v > 0 for v in pair):
        return None
    return pair[0], pair[1]


def _spacing_for_frame(ds: Any, index: int) -> tuple[tuple[float, float] | None, str]:
    """(row, col) spacing in mm and where it came from.

    Order: Pixel Measures Sequence (0028,9110) per-frame/shared (enhanced objects), then
    Pixel Spacing (0028,0030) (calibrated to the patient), then Imager Pixel Spacing
    (0018,1164) (at the detector plane: projection images without Pixel Spacing; measurements
    with it are magnified by the source geometry, which is why it is reported by name).
    """
    measures = _functional_group(ds, index, "PixelMeasuresSequence")
    candidates = []
    if measures is not None:
        candidates.append(("PixelMeasuresSequence", measures.get("PixelSpacing", None)))
    candidates.append(("PixelSpacing", ds.get("PixelSpacing", None)))
    candidates.append(("ImagerPixelSpacing", ds.get("ImagerPixelSpacing", None)))
    invalid = []
    for name, value in candidates:
        if value in (None, ""):
            continue
        pair = _spacing(value)
        if pair is not None:
            return pair, name
        invalid.append(f"{name}={list(value) if not isinstance(value, str) else value}")
    if invalid:
        return None, "invalid " + ", ".join(invalid)
    return None, "absent"


# --------------------------------------------------------------------------------------
# Modality LUT
# --------------------------------------------------------------------------------------


def _to_modality(opened: _Opened, index: int, stored: np.ndarray) -> np.ndarray:
    """Apply the Modality LUT stage to one single-sample frame, returning float32.

    Precedence: Pixel Value Transformation Sequence (0028,9145) of this frame (per-frame, then
    shared functional group); top-level Modality LUT Sequence (0028,3000); top-level Rescale
    Slope/Intercept (0028,1053)/(0028,1052); for RT Dose, Dose Grid Scaling (3004,000E).
    Arithmetic is done in float64 so 32-bit stored values are not rounded before scaling.
    """
    ds = opened.ds
    values = stored.astype(np.float64, copy=False)

    pvt = _functional_group(ds, index, "PixelValueTransformationSequence")
    if pvt is not None and ("RescaleSlope" in pvt or "RescaleIntercept" in pvt):
        slope = _first_float(pvt.get("RescaleSlope", None))
        intercept = _first_float(pvt.get("RescaleIntercept", None))
        return _rescale(values, slope, intercept)

    lut_sequence = ds.get("ModalityLUTSequence", None)
    if lut_sequence:
        signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
        lut = _parse_lut(lut_sequence[0], signed, opened.little_endian)
        return _lookup(values, lut).astype(np.float32)

    if "RescaleSlope" in ds or "RescaleIntercept" in ds:
        slope = _first_float(ds.get("RescaleSlope", None))
        intercept = _first_float(ds.get("RescaleIntercept", None))
        return _rescale(values, slope, intercept)

    if str(ds.get("Modality", "")).upper() == "RTDOSE" and "DoseGridScaling" in ds:
        return _rescale(values, _first_float(ds.DoseGridScaling), 0.0)

    return values.astype(np.float32)


def _rescale(values: np.ndarray, slope: float | None, intercept: float | None) -> np.ndarray:
    """``slope * values + intercept`` as float32; a missing value means identity for it."""
    slope = 1.0 if slope is None else slope
    intercept = 0.0 if intercept is None else intercept
    if slope == 1.0 and intercept == 0.0:
        return values.astype(np.float32)
    return (values * slope + intercept).astype(np.float32)


# --------------------------------------------------------------------------------------
# Frames
# --------------------------------------------------------------------------------------


def _decode_frame(opened: _Opened, index: int) -> tuple[np.ndarray, str]:
    """Decode frame ``index`` only; return (float32 pixels, photometric as decoded)."""
    from pydicom.pixels.processing import apply_color_lut

    arr, props = opened.decoder.as_array(
        opened.ds,
        index=index,
        validate=opened.validate,
        raw=False,  # lets pydicom convert YBR_FULL(_422) -> RGB, once
        **opened.options,
    )
    photometric = str(props.get("photometric_interpretation", opened.photometric)).upper()

    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(arr, opened.ds)
        if rgb.ndim == 3 and rgb.shape[-1] == 4:
            rgb = rgb[..., :3]  # alpha palette: drop alpha, keep colour
        return rgb.astype(np.float32), "RGB"
    if photometric.startswith("YBR"):
        raise ValueError(
            f"decoder returned {photometric} data that cannot be converted to RGB faithfully"
        )
    if opened.samples > 1 or arr.ndim == 3:
        # Colour: no Modality LUT (it is defined for single-sample data only).
        return arr.astype(np.float32), photometric
    return _to_modality(opened, index, arr), photometric


def _frames(opened: _Opened, frames: range | None = None) -> Iterator[Frame]:
    """Generate frames lazily; each iteration decodes exactly one frame."""
    indexes = range(opened.n_frames)
    if frames is not None:
        indexes = indexes[frames.start : frames.stop]
    for index in indexes:
        window, voi_lut, function = _window_for_frame(opened, index)
        spacing, spacing_source = _spacing_for_frame(opened.ds, index)
        try:
            pixels, photometric = _decode_frame(opened, index)
            error = None
        except Exception as exc:  # one bad frame must not lose the others
            pixels, photometric = None, opened.photometric
            error = " ".join(f"{type(exc).__name__}: {exc}".split())
        yield Frame(
            index=index,
            pixels=pixels,
            error=error,
            window=window,
            voi_lut=voi_lut,
            photometric=photometric,
            pixel_spacing=spacing,
            spacing_source=spacing_source,
            voi_function=function,
            regions=opened.regions,
        )


def iter_frames(
    source: bytes | str | os.PathLike,
    frames: range | None = None,
    max_frame_samples: int | None = None,
) -> Iterator[Frame]:
    """Yield every frame of a DICOM file as a :class:`Frame`, decoding one at a time.

    ``source`` is the file content (bytes) or a path. The file is parsed eagerly, so
    :class:`DicomPixelError` is raised by this call itself for whole-file problems (not on the
    first ``next()``); frames are then decoded lazily. Per-frame decode failures never raise:
    they come back as ``Frame(pixels=None, error=...)``.

    ``frames`` (a ``range`` of 0-based frame indexes, step 1) limits the output to those frames,
    so that several tasks can share the frames of one large multi-frame file; indexes past
    Number of Frames (0028,0008) are ignored. Frames are addressed directly (native data by
    offset, encapsulated data by fragment), not decoded and skipped.
    """
    return _frames(_open(source, max_frame_samples), frames)


def modality_frames(source: bytes | str | os.PathLike) -> Iterator[np.ndarray]:
    """Yield the float32 modality-unit array of every frame, in frame order.

    A frame that cannot be decoded raises :class:`DicomPixelError` naming its index and the
    reason when the iteration reaches it: a stream of frames must never be shorter than Number
    of Frames (0028,0008) without saying so. Use :func:`iter_frames` to keep the frames that
    decoded and get the others as error values. Whole-file failures raise at call time.
    """
    frames = iter_frames(source)

    def generate() -> Iterator[np.ndarray]:
        for frame in frames:
            if frame.pixels is None:
                raise DicomPixelError(f"frame {frame.index} cannot be decoded: {frame.error}")
            yield frame.pixels

    return generate()


# --------------------------------------------------------------------------------------
# Display
# --------------------------------------------------------------------------------------


def _linear_window(
    values: np.ndarray, center: float, width: float, function: str = "LINEAR"
) -> np.ndarray:
    """VOI window to [0, 1] per PS3.3 C.11.2.1.2.

    LINEAR (C.11.2.1.2.1) uses the half-pixel offsets ``(x - (c - 0.5)) / (w - 1) + 0.5``, so a
    width of 1 is a hard threshold and integer inputs hit 0 and 1 exactly at the edges.
    LINEAR_EXACT (C.11.2.1.3.2) is ``(x - c) / w + 0.5``; SIGMOID (C.11.2.1.3.1) is
    ``1 / (1 + exp(-4 (x - c) / w))``.
    """
    x = values.astype(np.float64, copy=False)
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(np.clip(-4.0 * (x - center) / width, -700, 700)))
    if function == "LINEAR_EXACT":
        out = (x - center) / width + 0.5
    elif width <= 1.0:
        out = (x > center - 0.5).astype(np.float64)
    else:
        out = (x - (center - 0.5)) / (width - 1.0) + 0.5
    return np.clip(out, 0.0, 1.0)


def _min_max(values: np.ndarray) -> np.ndarray | None:
    """Stretch finite values to [0, 1]; None when there is no contrast (constant/empty)."""
    finite = np.isfinite(values)
    if not finite.any():
        return None
    low = float(values[finite].min())
    high = float(values[finite].max())
    if high <= low:
        return None
    out = (values.astype(np.float64) - low) / (high - low)
    out[~finite] = 0.0
    return out


def _rgb_to_uint8(values: np.ndarray) -> np.ndarray:
    """Colour to uint8 without changing hue.

    Values already in 0..255 pass through (rounded, clipped). Non-negative deeper data
    (16/32-bit RGB, 16-bit palettes) keeps its high byte for the smallest bit depth (16 or 32)
    that holds it, so black stays black, full scale is 255 and colours keep their balance
    (palette tables often top out at 0xFF00, which must still be 255); a per-image min-max
    would brighten dark photographs. Anything with negative values uses a shared min-max.
    """
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.zeros(values.shape, dtype=np.uint8)
    low, high = float(finite.min()), float(finite.max())
    if low >= 0.0 and high <= 255.0:
        scaled = np.rint(np.nan_to_num(values.astype(np.float64)))
    elif low >= 0.0:
        bits = 16 if high < 2.0**16 else 32
        scaled = np.floor(np.nan_to_num(values.astype(np.float64)) / 2.0 ** (bits - 8))
    else:
        unit = _min_max(values)
        if unit is None:
            return np.zeros(values.shape, dtype=np.uint8)
        scaled = np.rint(unit * 255.0)
    return np.clip(scaled, 0, 255).astype(np.uint8)


def _resolve_window(window: str | tuple[float, float] | None) -> str | tuple[float, float]:
    """Validate the ``window`` argument of :func:`to_display`; return 'auto'/'minmax'/tuple."""
    if window is None:
        return "minmax"
    if isinstance(window, str):
        key = window.strip().lower()
        if key in ("auto", "minmax"):
            return key
        if key in WINDOW_PRESETS:
            return WINDOW_PRESETS[key]
        raise ValueError(
            f"unknown window preset {window!r}; use 'auto', 'minmax', None, a (center, width) "
            f"tuple or one of: {', '.join(sorted(WINDOW_PRESETS))}"
        )
    try:
        center, width = (float(v) for v in window)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"window must be a preset name or (center, width), got {window!r}"
        ) from exc
    if not (math.isfinite(center) and math.isfinite(width)) or width < 1.0:
        raise ValueError(f"window width must be >= 1 (PS3.3 C.11.2.1.2), got {window!r}")
    return center, width


def to_display(frame: Frame, window: str | tuple[float, float] | None = "auto") -> np.ndarray:
    """Render a frame to uint8 for viewing: rows x cols, or rows x cols x 3 for colour.

    ``window``:

    * ``"auto"``: the frame's VOI LUT Sequence (0028,3010) if present, else its Window Center
      (0028,1050) / Window Width (0028,1051) with VOI LUT Function (0028,1056), else min-max.
    * a name from :data:`WINDOW_PRESETS` or a ``(center, width)`` tuple: LINEAR window in
      modality units (HU for CT).
    * ``None`` or ``"minmax"``: stretch the frame's finite min..max to 0..255. A constant
      frame has no contrast and renders as zeros.

    MONOCHROME1 means low values are white (PS3.3 C.7.6.3.1.2), so after windowing the output
    is inverted: bright is always dense/high. Colour frames ignore the window (a VOI applies
    to single-sample data only) and are converted by :func:`_rgb_to_uint8`.
    """
    chosen = _resolve_window(window)
    if frame.pixels is None:
        raise ValueError(f"frame {frame.index} has no pixels: {frame.error}")
    pixels = frame.pixels
    if pixels.ndim == 3:
        return _rgb_to_uint8(pixels)

    if chosen == "auto":
        if frame.voi_lut is not None:
            lut = frame.voi_lut
            full = float(2**lut.bits - 1) if lut.bits > 0 else 1.0
            full = max(full, float(lut.data.max()) if lut.data.size else 1.0)
            unit = _lookup(pixels, lut) / full
        elif frame.window is not None:
            unit = _linear_window(pixels, *frame.window, frame.voi_function)
        else:
            unit = _min_max(pixels)
    elif chosen == "minmax":
        unit = _min_max(pixels)
    else:
        unit = _linear_window(pixels, *chosen)

    if unit is None:
        return np.zeros(pixels.shape, dtype=np.uint8)
    out = np.clip(np.rint(np.nan_to_num(unit, nan=0.0) * 255.0), 0, 255).astype(np.uint8)
    if frame.photometric == "MONOCHROME1":
        # Invert after quantising so MONOCHROME1 is exactly 255 - its MONOCHROME2 twin.
        out = 255 - out
    return out
