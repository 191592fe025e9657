"""Measurements of a binary segmentation mask: area (pixels and mm^2), components, intensity."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np

from medspark.preprocess.ops import to_gray

__all__ = ["MaskStats", "mask_stats"]


@dataclass(frozen=True)
class MaskStats:
    """Statistics of one mask over its frame.

    ``area_px``: number of foreground (nonzero) pixels.
    ``area_mm2``: ``area_px * row_spacing * col_spacing``, or None when it cannot be computed;
    ``area_mm2_reason`` then says why (None when it was computed).
    ``components``: number of 8-connected foreground components.
    ``mean_intensity``: mean grey value of the image inside the mask; None for an empty mask.
    """

    area_px: int
    area_mm2: float | None
    area_mm2_reason: str | None
    components: int
    mean_intensity: float | None

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the fields (JSON/Spark-row friendly Python scalars)."""
        return asdict(self)


def _spacing_problem(pixel_spacing: object) -> str | None:
    if pixel_spacing is None:
        return "no pixel spacing"
    try:
        values = [float(v) for v in pixel_spacing]  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        return f"invalid pixel spacing {pixel_spacing!r}"
    if len(values) != 2 or not all(math.isfinite(v) and v > 0 for v in values):
        return f"invalid pixel spacing {pixel_spacing!r}"
    return None


def mask_stats(
    mask: np.ndarray,
    image: np.ndarray,
    pixel_spacing: tuple[float, float] | None,
) -> MaskStats:
    """Measure ``mask`` (2-D; nonzero = foreground, e.g. 0/255 or bool) over ``image``.

    ``image`` must have the mask's height and width; an RGB frame is converted to grey (BT.601)
    for ``mean_intensity``, which is in the image's own units. ``pixel_spacing`` is DICOM
    PixelSpacing order, (row spacing, column spacing) in mm; when it is None or not two positive
    finite numbers, ``area_mm2`` is None and ``area_mm2_reason`` says why.
    """
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    if image.shape[:2] != mask.shape:
        raise ValueError(f"image shape {image.shape} does not match mask shape {mask.shape}")

    fg = mask != 0
    area_px = int(np.count_nonzero(fg))

    reason = _spacing_problem(pixel_spacing)
    area_mm2: float | None = None
    if reason is None:
        row, col = (float(v) for v in pixel_spacing)  # type: ignore[union-attr]
        area_mm2 = area_px * row * col

    n_labels = cv2.connectedComponents(fg.astype(np.uint8), connectivity=8)[0]
    components = int(n_labels) - 1  # label 0 is the background

    mean_intensity: float | None = None
    if area_px:
        gray = image
        if image.ndim == 3:
            src = image if image.dtype in (np.uint8, np.float32) else image.astype(np.float32)
            gray = to_gray(src)
        mean_intensity = float(np.mean(gray[fg], dtype=np.float64))

    return MaskStats(
        area_px=area_px,
        area_mm2=area_mm2,
        area_mm2_reason=reason,
        components=components,
        mean_intensity=mean_intensity,
    )
