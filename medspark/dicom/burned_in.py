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
