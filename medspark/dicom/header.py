"""DICOM header -> typed columns and DICOM JSON (PS3.18 Annex F).

:func:`parse_header` takes one item's bytes and returns the ``scans`` header columns, or raises
:class:`ItemError` with an error class and a reason. It is pure Python (pydicom only), so it is
tested without Spark and runs unchanged inside the ``dicom`` data source on executors.

Why the whole file is parsed and not only the header: pydicom does not always raise on a
truncated file. It returns what it could read, so truncation is detected here by comparing each
top-level element's declared Value Length with the bytes actually present, by checking that
encapsulated Pixel Data (7FE0,0010) ends with its Sequence Delimitation Item (FFFE,E0DD), and
by comparing native Pixel Data's length with Rows x Columns x Samples x Frames x Bits Allocated.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import warnings
from collections.abc import Callable
from typing import Any

from medspark.tables.error_classes import (
    DECOMPRESSION_BOMB,
    INVALID_DICOM,
    NOT_DICOM,
    TOO_LARGE,
    TRUNCATED,
)
from medspark.tables.error_classes import MISSING_SOP_INSTANCE_UID as MISSING_UID

# Error classes raised here (declared in medspark.tables.error_classes; the data source adds the
# archive-level ones): NOT_DICOM, TRUNCATED, INVALID_DICOM, MISSING_UID, BOMB, TOO_LARGE.
BOMB = DECOMPRESSION_BOMB

DEFLATED_EXPLICIT_VR_LE = "1.2.840.10008.1.2.1.99"
_INFLATE_CHUNK = 16 * 1024 * 1024

_UNDEFINED_LENGTH = 0xFFFFFFFF
_SEQ_DELIMITER_LE = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
_SEQ_DELIMITER_BE = b"\xff\xfe\xe0\xdd\x00\x00\x00\x00"
# Binary values above this many bytes are left out of the JSON header (bulk data).
BULK_DATA_THRESHOLD = 1024


class ItemError(Exception):
    """An input item that cannot become a ``scans`` row; ``error_class`` goes to the table."""

    def __init__(self, error_class: str, message: str) -> None:
        super().__init__(message)
        self.error_class = error_class
        self.message = message


def looks_like_dicom_without_meta(data: bytes) -> bool:
    """Heuristic for files written without the 128-byte preamble and ``DICM`` prefix.

    Such files (older equipment, PS3.10 violations) start directly with a data element. Real
    datasets start with a low group number: (0008,xxxx) Identifying, or (0002,xxxx) meta, or a
    group length element. Checking the first tag's group in both byte orders keeps arbitrary
    text and binary out while accepting the files pydicom itself can read with ``force``.
    """
    if len(data) < 8:
        return False
    group_le = int.from_bytes(data[0:2], "little")
    group_be = int.from_bytes(data[0:2], "big")
    return group_le in (0x0002, 0x0008) or group_be in (0x0002, 0x0008)


def _truncation(ds: Any, data: bytes) -> str | None:
    """Return why ``ds`` (parsed from ``data``) is truncated, or None when it is complete."""
    from pydicom.dataelem import RawDataElement

    for tag, elem in ds._dict.items():
        if isinstance(elem, RawDataElement):
            length, value = elem.length, elem.value
            if length != _UNDEFINED_LENGTH and isinstance(value, bytes) and len(value) < length:
                return f"element {tag} declares {length} bytes but only {len(value)} are present"
    pixel = ds._dict.get(0x7FE00010)
    if pixel is None:
        return None
    if getattr(pixel, "length", None) == _UNDEFINED_LENGTH or getattr(
        pixel, "is_undefined_length", False
    ):
        last_tag = max(ds._dict.keys())
        if last_tag == 0x7FE00010 and not data.endswith((_SEQ_DELIMITER_LE, _SEQ_DELIMITER_BE)):
            return "encapsulated Pixel Data (7FE0,0010) has no Sequence Delimitation Item"
        return None
    try:
        from pydicom.pixels.utils import get_expected_length

        expected = get_expected_length(ds)
    except Exception:  # noqa: BLE001 - attributes needed for the check are missing
        return None
    actual = len(ds.PixelData)
    if actual < expected:
        return f"Pixel Data (7FE0,0010) holds {actual} bytes, {expected} expected"
    return None


def _read_dataset(data: bytes) -> Any:
    import pydicom
    from pydicom.errors import InvalidDicomError

    has_preamble = len(data) >= 132 and data[128:132] == b"DICM"
    if not has_preamble and not looks_like_dicom_without_meta(data):
        raise ItemError(NOT_DICOM, "no DICM prefix and no DICOM data element at the start")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = pydicom.dcmread(io.BytesIO(data), force=not has_preamble)
            # Checked while elements are still raw: their declared lengths are visible.
            reason = _truncation(ds, data)
            # Sequences are parsed lazily: walk everything now so errors surface here.
            for _ in ds.iterall():
                pass
        except InvalidDicomError as exc:
            raise ItemError(NOT_DICOM, str(exc)) from None
        except EOFError as exc:
            raise ItemError(TRUNCATED, f"unexpected end of file: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - pydicom raises many types on bad input
            raise ItemError(INVALID_DICOM, f"{type(exc).__name__}: {exc}") from None
    for w in caught:
        text = str(w.message)
        if "End of file" in text or "EOF" in text:
            raise ItemError(TRUNCATED, text)
    if reason:
        raise ItemError(TRUNCATED, reason)
    if len(ds._dict) == 0:
        raise ItemError(NOT_DICOM, "no data elements could be read")
    return ds


def _text(ds: Any, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        value = "\\".join(str(v) for v in value)
    text = str(value).strip()
    return text or None


def _number(ds: Any, keyword: str, kind: Callable[[Any], Any]) -> Any:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    try:
        return kind(value)
    except (TypeError, ValueError):
        return None


def _int(ds: Any, keyword: str) -> int | None:
    return _number(ds, keyword, int)


def _float(ds: Any, keyword: str) -> float | None:
    return _number(ds, keyword, float)


def _floats(ds: Any, keyword: str) -> list[float] | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    try:
        values = list(value) if not isinstance(value, str | bytes) else [value]
        return [float(v) for v in values]
    except (TypeError, ValueError):
        return None


def _date(value: object) -> dt.date | None:
    """DA 'YYYYMMDD' -> date; malformed or partial dates become None rather than errors."""
    text = str(value or "").strip().replace(".", "")  # ACR-NEMA used YYYY.MM.DD
    if len(text) != 8 or not text.isdigit():
        return None
    try:
        return dt.date(int(text[0:4]), int(text[4:6]), int(text[6:8]))
    except ValueError:
        return None


def _time(value: object) -> dt.time | None:
    """TM 'HHMMSS.FFFFFF' (components optional from the right) -> time."""
    text = str(value or "").strip().replace(":", "")
    if not text:
        return None
    main, _, frac = text.partition(".")
    if not main.isdigit() or len(main) not in (2, 4, 6):
        return None
    hh, mm, ss = int(main[0:2]), int(main[2:4] or 0), int(main[4:6] or 0)
    micro = int((frac + "000000")[:6]) if frac.isdigit() else 0
    try:
        return dt.time(hh, mm, min(ss, 59), micro)  # TM allows a leap second 60
    except ValueError:
        return None


def _datetime(date_value: object, time_value: object) -> dt.datetime | None:
    day = _date(date_value)
    if day is None:
        return None
    return dt.datetime.combine(day, _time(time_value) or dt.time(0, 0))


def _dt_value(value: object) -> dt.datetime | None:
    """DT 'YYYYMMDDHHMMSS.FFFFFF&ZZXX' -> naive local datetime (offset dropped, as in TM)."""
    text = str(value or "").strip()
    if len(text) < 8:
        return None
    for sign in ("+", "-"):
        idx = text.find(sign, 8)
        if idx > 0:
            text = text[:idx]
    return _datetime(text[:8], text[8:] or None)


def _shared_group_value(ds: Any, sequence: str, keyword: str) -> Any:
    """Attribute from Shared Functional Groups Sequence (5200,9229) of enhanced objects."""
    shared = ds.get("SharedFunctionalGroupsSequence")
    if not shared:
        return None
    item = shared[0]
    seq = item.get(sequence)
    if not seq:
        return None
    return seq[0].get(keyword)


def header_json(ds: Any, bulk_uri: Callable[[str], str]) -> str:
    """The dataset as DICOM JSON (PS3.18 Annex F), file meta included, bulk data left out.

    Binary values larger than :data:`BULK_DATA_THRESHOLD` become ``BulkDataURI`` references
    (``bulk_uri(tag)``) instead of base64 inline data: a waveform or icon image would otherwise
    bloat every row of an analyst table.
    """

    def handler(elem: Any) -> str:
        return bulk_uri(f"{elem.tag:08X}")

    body = ds.to_json_dict(BULK_DATA_THRESHOLD, handler)
    meta = getattr(ds, "file_meta", None)
    if meta:
        body = {**meta.to_json_dict(BULK_DATA_THRESHOLD, handler), **body}
    return json.dumps(body, sort_keys=True, separators=(",", ":"))


def check_inflated_size(data: bytes, max_inflated_bytes: int) -> None:
    """Refuse a Deflated Explicit VR Little Endian item (Transfer Syntax UID (0002,0010)
    1.2.840.10008.1.2.1.99) whose data set inflates past ``max_inflated_bytes``.

    pydicom inflates the whole data set into memory when it reads such a file, so a 1 MB file
    can cost gigabytes before a single attribute is seen. Here the file meta is read alone and
    the rest inflated in bounded chunks that are counted and dropped: the cost is one pass of
    zlib and 16 MiB of memory, and the item is an error row ``decompression_bomb`` with the
    figures instead of an executor out of memory. Anything else (not deflated, no file meta,
    a corrupt stream) is left to the parser.
    """
    if len(data) < 132 or data[128:132] != b"DICM":
        return
    import zlib

    from pydicom.filereader import _read_file_meta_info

    fp = io.BytesIO(data)
    fp.seek(132)
    try:
        meta = _read_file_meta_info(fp)
    except Exception:  # noqa: BLE001 - the parser reports a broken meta group
        return
    if str(meta.get("TransferSyntaxUID", "")).strip() != DEFLATED_EXPLICIT_VR_LE:
        return
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    pending = memoryview(data)[fp.tell() :]
    total = 0
    try:
        while pending and not inflater.eof:  # after the end, only padding may be left
            total += len(inflater.decompress(pending, _INFLATE_CHUNK))
            if total > max_inflated_bytes:
                raise ItemError(
                    BOMB,
                    f"deflated data set of {len(data)} bytes inflates past "
                    f"ingest.max_inflated_bytes={max_inflated_bytes} (stopped at {total})",
                )
            pending = inflater.unconsumed_tail
    except zlib.error:
        return


def check_frame_size(ds: Any, max_frame_samples: int) -> None:
    """Refuse an item whose frames would each allocate more than ``max_frame_samples`` pixel
    samples once decoded: Rows (0028,0010) x Columns (0028,0011) x Samples per Pixel
    (0028,0002). A compressed frame of 16384 x 16384 is small on disk and 1 GiB as float32;
    the item is an error row ``too_large`` with the figures, decided before any decode."""
    try:
        rows = int(ds.get("Rows", 0) or 0)
        columns = int(ds.get("Columns", 0) or 0)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
    except (TypeError, ValueError):
        return
    if rows * columns * samples > max_frame_samples:
        raise ItemError(
            TOO_LARGE,
            f"frames of {rows} x {columns} x {samples} samples exceed "
            f"ingest.max_frame_samples={max_frame_samples}",
        )


def parse_header(data: bytes, location: str, limits: Any = None) -> dict[str, Any]:
    """Parse one DICOM item's bytes into the ``scans`` header columns.

    ``location`` (``uri`` or ``uri!member``) is used for bulk-data URIs in the JSON header.
    Raises :class:`ItemError` for non-DICOM, truncated or unparsable input, and for an
    instance without SOP Instance UID (0008,0018) or Media Storage SOP Instance UID
    (0002,0003): without one, a row cannot be keyed. ``limits`` (a
    :class:`~medspark.sources.archives.Limits`; None: its defaults) bounds what the item may
    cost: :func:`check_inflated_size` before parsing, :func:`check_frame_size` after.
    """
    if limits is None:
        from medspark.sources.archives import Limits

        limits = Limits()
    check_inflated_size(data, limits.max_inflated_bytes)
    ds = _read_dataset(data)
    check_frame_size(ds, limits.max_frame_samples)
    meta = getattr(ds, "file_meta", None) or {}
    sop_uid = _text(ds, "SOPInstanceUID") or (
        str(meta.get("MediaStorageSOPInstanceUID", "")).strip() or None
    )
    if not sop_uid:
        raise ItemError(
            MISSING_UID,
            "no SOP Instance UID (0008,0018) nor Media Storage SOP Instance UID (0002,0003)",
        )
    sop_class = _text(ds, "SOPClassUID") or (
        str(meta.get("MediaStorageSOPClassUID", "")).strip() or None
    )
    transfer_syntax = meta.get("TransferSyntaxUID")
    if transfer_syntax is None:
        # Files without meta: pydicom records what it detected while reading.
        little = getattr(ds, "is_little_endian", None)
        implicit = getattr(ds, "is_implicit_VR", None)
        if little is not None and implicit is not None:
            transfer_syntax = {
                (True, True): "1.2.840.10008.1.2",
                (True, False): "1.2.840.10008.1.2.1",
                (False, False): "1.2.840.10008.1.2.2",
            }.get((bool(little), bool(implicit)))
    has_pixels = any(t in ds for t in (0x7FE00010, 0x7FE00008, 0x7FE00009))

    pixel_spacing = _floats(ds, "PixelSpacing")
    if pixel_spacing is None:
        shared = _shared_group_value(ds, "PixelMeasuresSequence", "PixelSpacing")
        pixel_spacing = [float(v) for v in shared] if shared else None
    slice_thickness = _float(ds, "SliceThickness")
    if slice_thickness is None:
        shared = _shared_group_value(ds, "PixelMeasuresSequence", "SliceThickness")
        slice_thickness = float(shared) if shared not in (None, "") else None

    acquisition = _dt_value(ds.get("AcquisitionDateTime")) or _datetime(
        ds.get("AcquisitionDate") or ds.get("ContentDate") or ds.get("SeriesDate"),
        ds.get("AcquisitionTime") or ds.get("ContentTime") or ds.get("SeriesTime"),
    )
    study_time = _time(ds.get("StudyTime"))
    frames = _int(ds, "NumberOfFrames")
    if frames is None and has_pixels:
        frames = 1

    return {
        "sop_instance_uid": sop_uid,
        "sop_class_uid": sop_class,
        "study_instance_uid": _text(ds, "StudyInstanceUID"),
        "series_instance_uid": _text(ds, "SeriesInstanceUID"),
        "patient_id": _text(ds, "PatientID"),
        "modality": _text(ds, "Modality"),
        "body_part_examined": _text(ds, "BodyPartExamined"),
        "study_date": _date(ds.get("StudyDate")),
        "study_time": study_time.isoformat() if study_time else None,
        "study_datetime": _datetime(ds.get("StudyDate"), ds.get("StudyTime")),
        "acquisition_datetime": acquisition,
        "station_name": _text(ds, "StationName"),
        "manufacturer": _text(ds, "Manufacturer"),
        "manufacturer_model_name": _text(ds, "ManufacturerModelName"),
        "institution_name": _text(ds, "InstitutionName"),
        "rows": _int(ds, "Rows"),
        "columns": _int(ds, "Columns"),
        "number_of_frames": frames,
        "samples_per_pixel": _int(ds, "SamplesPerPixel"),
        "bits_allocated": _int(ds, "BitsAllocated"),
        "bits_stored": _int(ds, "BitsStored"),
        "photometric_interpretation": _text(ds, "PhotometricInterpretation"),
        "pixel_spacing": pixel_spacing,
        "imager_pixel_spacing": _floats(ds, "ImagerPixelSpacing"),
        "slice_thickness": slice_thickness,
        "image_position_patient": _floats(ds, "ImagePositionPatient"),
        "image_orientation_patient": _floats(ds, "ImageOrientationPatient"),
        "transfer_syntax_uid": str(transfer_syntax) if transfer_syntax else None,
        "has_pixels": has_pixels,
        "header_json": header_json(ds, lambda tag: f"{location}#{tag}"),
    }
