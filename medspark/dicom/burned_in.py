"""Burned-in identity in pixels: what can be cleaned, and how.

Ultrasound scanners, screen captures and scanned documents burn text into the pixels: the
patient's name, the institution, dates and times. Header de-identification cannot reach it.
The ultrasound modality itself declares where its data lie: each item of Sequence of Ultrasound
Regions (0018,6011) gives one region's bounding box, Region Location Min X0 (0018,6018), Min
Y0 (0018,601A), Max X1 (0018,601C) and Max Y1 (0018,601E), in pixel columns and rows,
inclusive (PS3.3 C.8.5.5.1). The burned-in annotations lie outside those regions (the text bar
at the top, the scale at the side), so blacking out everything outside their union removes the
text and keeps the image data.

A frame flagged for burned-in text that declares no region has no such rule: preprocessing
withholds its pixels from the analyst tables instead (see :mod:`medspark.preprocess.udf`).
OCR was judged and not adopted: the offline-installable engines (Tesseract through pytesseract,
EasyOCR with a bundled model) need a system package or a model download, and a missed word is
a leak, while the region rule is exact for the files that declare regions.

Pure numpy; tested without Spark.
"""

from __future__ import annotations

from typing import Any

import numpy as np

Region = tuple[int, int, int, int]  # (min_x, min_y, max_x, max_y), inclusive pixel indexes

#: Modalities whose equipment commonly burns text (names, dates) into the pixels.
BURNED_IN_MODALITIES = ("US",)
#: Secondary Capture Image Storage SOP classes (screenshots, scanned documents, exports).
SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"


def burned_in_rule(
    annotation: str | None, modality: str | None, sop_class: str | None
) -> str | None:
    """Why a frame may show burned-in text, or None: Burned In Annotation (0028,0301)
    (``annotation``, its first value) is YES, a modality known for it (ultrasound), or a
    Secondary Capture SOP Class UID (0008,0016). The one rule: ``run``'s pass applies it to
    each item it reads, ``preprocess`` to each ``scans`` row it re-reads."""
    if annotation is not None and str(annotation).upper() == "YES":
        return "Burned In Annotation (0028,0301) is YES"
    if modality in BURNED_IN_MODALITIES:
        return f"modality {modality} often burns in text"
    if sop_class is not None and sop_class.startswith(SECONDARY_CAPTURE_PREFIX):
        return "Secondary Capture SOP class"
    return None


def burned_in_reason(
    header_json: str | None, modality: str | None, sop_class: str | None
) -> str | None:
    """:func:`burned_in_rule` for a parsed header (``scans.header_json``, DICOM JSON)."""
    import json

    annotation = None
    if header_json:
        element = json.loads(header_json).get("00280301") or {}
        annotation = (element.get("Value") or [None])[0]
    return burned_in_rule(annotation, modality, sop_class)


def ultrasound_regions(ds: Any) -> tuple[Region, ...]:
    """The regions of Sequence of Ultrasound Regions (0018,6011), clipped to the image.

    Items with a missing or inverted box are left out (they declare no usable region); an
    empty result means "no sound rule": the caller withholds the frame.
    """
    rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    out: list[Region] = []
    for item in ds.get("SequenceOfUltrasoundRegions", None) or []:
        try:
            x0 = int(item.RegionLocationMinX0)
            y0 = int(item.RegionLocationMinY0)
            x1 = int(item.RegionLocationMaxX1)
            y1 = int(item.RegionLocationMaxY1)
        except (AttributeError, TypeError, ValueError):
            continue
        x0, y0 = max(x0, 0), max(y0, 0)
        x1, y1 = min(x1, columns - 1), min(y1, rows - 1)
        if x0 <= x1 and y0 <= y1:
            out.append((x0, y0, x1, y1))
    return tuple(out)


def black_out_outside(image: np.ndarray, regions: tuple[Region, ...]) -> np.ndarray:
    """A copy of ``image`` (rows x cols, or rows x cols x samples) with every pixel outside
    the union of ``regions`` set to 0 (black in a display image).

    Raises ValueError for an empty ``regions``: blacking out everything is not cleaning.
    """
    if not regions:
        raise ValueError("no region to keep")
    keep = np.zeros(image.shape[:2], dtype=bool)
    for x0, y0, x1, y1 in regions:
        keep[y0 : y1 + 1, x0 : x1 + 1] = True
    out = np.zeros_like(image)
    out[keep] = image[keep]
    return out
