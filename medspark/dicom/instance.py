"""The de-identified instance of a scan: one DICOM Part 10 file made from the source bytes.

One function, :func:`deidentified_instance`, makes it, and every command that hands out a DICOM
file goes through it: ``medspark export`` writes it, ``medspark serve`` answers WADO-RS with it.
It is made from two things only:

- the header as ``scans`` holds it (``scans.header_json``, DICOM JSON already de-identified by
  :meth:`medspark.dicom.deid.Pseudonymizer.deidentify_dataset_json`): the same attributes, the
  same pseudonymous UIDs, the same shifted dates, and the PS3.15 marks Patient Identity Removed
  (0012,0062) and De-identification Method (0012,0063) / Code Sequence (0012,0064) that
  ``scans`` carries. Nothing of the source header is copied that ``scans`` does not hold, so a
  file can never say more than the analyst table does;
- the bulk data of the source (Pixel Data (7FE0,0010) and any other top-level value that
  ``header_json`` left out as a ``BulkDataURI``), taken from the source bytes. Bulk values
  inside sequences are emptied: ``header_json`` does not say which item they came from.

Pixels follow the one burned-in rule (:func:`medspark.dicom.burned_in.burned_in_rule`), as the
``images`` table does: a flagged instance (``deid.burned_in: clean``) with Sequence of
Ultrasound Regions (0018,6011) has every pixel outside the regions set to 0 in every frame and
is written Explicit VR Little Endian (lossless); one without regions is withheld
(:class:`~medspark.dicom.header.ItemError` ``burned_in_withheld``). A header not marked Patient
Identity Removed (0012,0062) YES (a warehouse written with ``deid.enabled: false``) gives no
file (``not_deidentified``). An instance whose pixels are
not touched keeps its transfer syntax and its Pixel Data bytes as they were. A source in a big
endian or deflated syntax is written Explicit VR Little Endian.

The output is a function of its inputs only (no clock, no random UID), so writing it twice
gives the same bytes. Pure: pydicom and numpy, no Spark.
"""

from __future__ import annotations

import io
import json
from typing import Any

from medspark.dicom.header import ItemError
from medspark.tables.error_classes import BURNED_IN_WITHHELD, NOT_DEIDENTIFIED, UNDECODABLE_FILE

#: Implementation Class UID (0002,0012) of files medspark writes: ``2.25.`` + the integer of a
#: fixed UUID (PS3.5 B.2), so it never changes between releases or runs.
IMPLEMENTATION_CLASS_UID = "2.25.233390310624930470409577446931427011613"
IMPLEMENTATION_VERSION_NAME = "MEDSPARK"

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
#: Transfer syntaxes written as they are (else Explicit VR Little Endian): big endian (retired)
#: and deflated ones are re-encoded, so every file can be framed without inflating it.
_REENCODED_SYNTAXES = frozenset({"1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"})
_PIXEL_TAGS = ("7FE00010", "7FE00008", "7FE00009")


def _source_dataset(source: bytes, where: str) -> Any:
    import pydicom

    try:
        return pydicom.dcmread(io.BytesIO(source), force=True)
    except Exception as exc:
        raise ItemError(UNDECODABLE_FILE, f"{where}: pydicom cannot read it: {exc}") from exc


def _without_bulk(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` with every ``BulkDataURI`` value emptied, in sequences too (pydicom would
    otherwise call a handler for each, and inspect its signature per element)."""
    out: dict[str, Any] = {}
    for tag, element in doc.items():
        if not isinstance(element, dict):
            continue
        if "BulkDataURI" in element:
            out[tag] = {"vr": element.get("vr", "UN")}
        elif element.get("vr") == "SQ" and element.get("Value"):
            items = [_without_bulk(i) for i in element["Value"] if isinstance(i, dict)]
            out[tag] = {"vr": "SQ", "Value": items}
        else:
            out[tag] = element
    return out


def _from_header_json(header_json: str, src: Any) -> Any:
    """The dataset of ``header_json`` (file meta left out) with the top-level bulk values of
    ``src`` filled in and nested ones emptied."""
    from pydicom import Dataset
    from pydicom.tag import Tag

    doc = json.loads(header_json)
    body = {tag: element for tag, element in doc.items() if not tag.startswith("0002")}
    ds = Dataset.from_json(_without_bulk(body))
    for tag, element in body.items():
        if isinstance(element, dict) and "BulkDataURI" in element:
            source_element = src.get(Tag(int(tag, 16)))
            if source_element is None:
                del ds[Tag(int(tag, 16))]
            else:
                ds[Tag(int(tag, 16))] = source_element
    return ds


def _clean_pixels(ds: Any, src: Any, where: str) -> None:
    """Set every pixel outside the ultrasound regions to 0, in every frame (in place)."""
    import numpy as np

    from medspark.dicom import gdcm_jpeg12
    from medspark.dicom.burned_in import black_out_outside, ultrasound_regions

    regions = ultrasound_regions(src)
    if not regions:
        raise ItemError(
            BURNED_IN_WITHHELD,
            f"{where}: flagged for burned-in text and declares no Sequence of Ultrasound "
            "Regions (0018,6011) to keep; withheld",
        )
    gdcm_jpeg12.register()
    try:
        # as_rgb: YBR_FULL(_422) is converted once, so the result is RGB.
        arr = src.pixel_array
    except Exception as exc:
        raise ItemError(UNDECODABLE_FILE, f"{where}: pixels cannot be decoded: {exc}") from exc
    frames = int(src.get("NumberOfFrames", 1) or 1)
    samples = int(src.get("SamplesPerPixel", 1) or 1)
    stack = arr if frames > 1 else arr[np.newaxis]
    cleaned = np.stack([black_out_outside(frame, regions) for frame in stack])
    if frames == 1:
        cleaned = cleaned[0]
    photometric = str(src.PhotometricInterpretation)
    if samples > 1 and photometric.startswith("YBR"):
        photometric = "RGB"
    _set_native(ds, cleaned, photometric)


def _set_native(ds: Any, arr: Any, photometric: str) -> None:
    """Pixel Data (7FE0,0010) of ``ds`` := ``arr``'s values as native little endian bytes,
    samples interleaved (Planar Configuration (0028,0006) 0), padded to an even length."""
    data = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
    if len(data) % 2:
        data += b"\x00"
    ds.PixelData = data
    ds["PixelData"].VR = "OW" if int(ds.BitsAllocated) > 8 else "OB"
    ds.PhotometricInterpretation = photometric
    if int(ds.get("SamplesPerPixel", 1) or 1) > 1:
        ds.PlanarConfiguration = 0


def _first(doc: dict[str, Any], tag: str) -> str | None:
    values = (doc.get(tag) or {}).get("Value") or [None]
    return values[0] if isinstance(values[0], str) else None


def burned_in_flag(header_json: str) -> str | None:
    """The burned-in rule for a ``scans.header_json``: why its pixels may show text, or None."""
    from medspark.dicom.burned_in import burned_in_reason

    doc = json.loads(header_json)
    return burned_in_reason(header_json, _first(doc, "00080060"), _first(doc, "00080016"))


def _meta_values(header_json: str) -> dict[str, str]:
    doc = json.loads(header_json)
    return {tag: v for tag in ("00020002", "00020003") if (v := _first(doc, tag))}


def deidentified_instance(
    header_json: str, source: bytes, burned_in: str = "clean", where: str = "instance"
) -> bytes:
    """The de-identified DICOM Part 10 file of one scan (see the module docstring).

    ``header_json`` is the ``scans`` row's, ``source`` the item's bytes (already checked
    against ``scans.sha256`` by the caller), ``burned_in`` the ``deid.burned_in`` setting
    (``clean`` or ``keep``), ``where`` how messages name the instance (its pseudonymous SOP
    Instance UID: never the path). Raises :class:`ItemError` (``burned_in_withheld``,
    ``undecodable_file``) when no file may be made.
    """
    import warnings

    with warnings.catch_warnings():
        # pydicom warns of every odd value it reads or writes (a TM with colons, say): the
        # file is still written as the source holds it, and the console is for medspark.
        warnings.simplefilter("ignore")
        return _instance(header_json, source, burned_in, where)


def _instance(header_json: str, source: bytes, burned_in: str, where: str) -> bytes:
    import pydicom
    from pydicom.dataset import FileMetaDataset

    if _first(json.loads(header_json), "00120062") != "YES":
        # A warehouse written with deid.enabled false holds the original header: no file of
        # it may leave as "de-identified".
        raise ItemError(
            NOT_DEIDENTIFIED,
            f"{where}: its header is not marked Patient Identity Removed (0012,0062) YES "
            "(written with deid.enabled false); not exported",
        )
    src = _source_dataset(source, where)
    ds = _from_header_json(header_json, src)
    syntax = str(src.file_meta.get("TransferSyntaxUID", "") or "") if src.file_meta else ""
    if not syntax:
        implicit, little = src.original_encoding
        syntax = "1.2.840.10008.1.2" if implicit else EXPLICIT_VR_LITTLE_ENDIAN
    has_pixels = any(tag in ds for tag in (0x7FE00010, 0x7FE00008, 0x7FE00009))
    if has_pixels and burned_in == "clean" and burned_in_flag(header_json) is not None:
        _clean_pixels(ds, src, where)
        syntax = EXPLICIT_VR_LITTLE_ENDIAN
    elif syntax in _REENCODED_SYNTAXES:
        if has_pixels and "PixelData" in src and int(src.get("BitsAllocated", 8)) > 8:
            try:
                arr = src.pixel_array
            except Exception as exc:
                raise ItemError(
                    UNDECODABLE_FILE, f"{where}: pixels cannot be decoded: {exc}"
                ) from exc
            _set_native(ds, arr, str(src.PhotometricInterpretation))
        syntax = EXPLICIT_VR_LITTLE_ENDIAN
    header_meta = _meta_values(header_json)
    meta = FileMetaDataset()
    # A dataset without SOP Class / Instance UID (0008,0016/0018) keeps its file meta's
    # Media Storage SOP Class / Instance UID (0002,0002/0003), pseudonymised in scans.
    meta.MediaStorageSOPClassUID = ds.get("SOPClassUID") or header_meta.get("00020002") or ""
    meta.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID") or header_meta.get("00020003") or ""
    if not meta.MediaStorageSOPClassUID or not meta.MediaStorageSOPInstanceUID:
        raise ItemError(
            UNDECODABLE_FILE, f"{where}: no SOP Class UID (0008,0016) to name the file's kind"
        )
    meta.TransferSyntaxUID = syntax
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    ds.file_meta = meta
    out = io.BytesIO()
    pydicom.dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()
