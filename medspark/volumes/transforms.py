"""3D preprocessing of an assembled volume, from config, with MONAI's affine-aware transforms.

Why MONAI (``monai`` on PyPI, pure Python on top of torch, 16 MB installed, no new
dependency beyond torch and numpy): its ``Spacing`` and ``Orientation`` resample and reorient
a ``MetaTensor`` *together with its affine*, so the spacing and position of every output voxel
stay known; a hand-written resampler would have to get the half-voxel and direction
conventions right on its own. The cost is import time (see docs/volumes.md), paid once per
Python worker: every MONAI import is inside the functions, never at module import.

Conventions: arrays are ``[k, j, i]`` (slice, row, column) and medspark's affines map
``(k, j, i, 1)`` to LPS mm (:mod:`medspark.volumes.geometry`). Resampling, intensity and
crop/pad are MONAI's (``Spacing``, ``ScaleIntensityRange``, ``ResizeWithPadOrCrop``), which
only scale and shift the affine and so do not care whether the world is LPS or RAS. The
reorientation is done here, with numpy (:func:`reorient`): it is a permutation and flips of
the axes, exact and without resampling, and MONAI's ``Orientation`` needs nibabel (another
dependency) for the same. ``target_spacing`` is in array-axis order after reorientation.

Steps, each optional, in this order: reorient (``orientation``, e.g. ``SPL``: slices toward
superior, rows toward posterior, columns toward the patient's left, the usual axial display),
resample to ``target_spacing`` (trilinear), clip and scale ``intensity_range`` [low, high] of
modality values (HU for CT) to [0, 1], centre crop or pad to ``spatial_size``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["VolumePreprocess", "preprocess_volume", "reorient", "spacing_of"]

#: Orientation letters: the LPS axis (0 x, 1 y, 2 z) and the direction an index increases.
_LETTERS = {"L": (0, 1), "R": (0, -1), "P": (1, 1), "A": (1, -1), "S": (2, 1), "I": (2, -1)}


def check_orientation(codes: str) -> list[tuple[int, int]]:
    """The (LPS axis, sign) of each letter of ``codes`` (e.g. ``SPL``); ValueError if it is not
    three letters of L/R, P/A, S/I naming three different axes."""
    if len(codes) != 3 or any(c not in _LETTERS for c in codes.upper()):
        raise ValueError(f"orientation {codes!r}: three letters of L/R, P/A, S/I, e.g. SPL")
    want = [_LETTERS[c] for c in codes.upper()]
    if len({axis for axis, _ in want}) != 3:
        raise ValueError(f"orientation {codes!r}: one letter per axis (L/R, P/A, S/I)")
    return want


def reorient(array: np.ndarray, affine: np.ndarray, codes: str) -> tuple[np.ndarray, np.ndarray]:
    """Permute and flip the axes of ``array`` so that axis n increases toward ``codes[n]``.

    Each array axis is assigned the patient axis its affine column points along most (an
    oblique series keeps its obliquity in the affine); no voxel is interpolated.
    """
    want = check_orientation(codes)
    a = np.asarray(affine, dtype=float)
    current = [int(np.argmax(np.abs(a[:3, n]))) for n in range(3)]
    if len(set(current)) != 3:
        raise ValueError(f"affine columns {a[:3, :3].T.tolist()} do not span three axes")
    perm = [current.index(axis) for axis, _ in want]
    out = np.transpose(array, perm)
    a = a[:, [*perm, 3]].copy()
    for n, (axis, sign) in enumerate(want):
        if np.sign(a[axis, n]) != sign:
            out = np.flip(out, n)
            a[:3, 3] += a[:3, n] * (out.shape[n] - 1)
            a[:3, n] *= -1
    return np.ascontiguousarray(out), a


@dataclass(frozen=True)
class VolumePreprocess:
    """The 3D chain (``volumes.preprocess`` in the config); every step None is skipped."""

    orientation: str | None = None
    target_spacing: tuple[float, float, float] | None = None
    intensity_range: tuple[float, float] | None = None
    spatial_size: tuple[int, int, int] | None = None


def preprocess_volume(
    array: np.ndarray, affine: np.ndarray, settings: VolumePreprocess
) -> tuple[np.ndarray, np.ndarray]:
    """``(array, affine)`` -> the preprocessed ``(float32 array [k, j, i], affine -> LPS)``."""
    import torch
    from monai.data import MetaTensor
    from monai.transforms import ResizeWithPadOrCrop, ScaleIntensityRange, Spacing

    if settings.orientation:
        array, affine = reorient(array, affine, settings.orientation)
    image = MetaTensor(
        torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)[None]),
        affine=torch.as_tensor(affine, dtype=torch.float64),
    )
    if settings.target_spacing:
        image = Spacing(pixdim=list(settings.target_spacing), mode="bilinear", dtype=np.float32)(
            image
        )
    if settings.intensity_range:
        low, high = settings.intensity_range
        image = ScaleIntensityRange(a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True)(image)
    if settings.spatial_size:
        image = ResizeWithPadOrCrop(list(settings.spatial_size))(image)
    out_affine = image.affine.detach().cpu().numpy().astype(np.float64)
    return image.as_tensor()[0].detach().cpu().numpy().astype(np.float32), out_affine


def spacing_of(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel spacing (mm) along the three array axes: the lengths of the affine's columns."""
    return tuple(float(v) for v in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0))  # type: ignore[return-value]


def as_triple(values: Sequence[float] | None) -> tuple[float, float, float] | None:
    return None if values is None else tuple(float(v) for v in values)  # type: ignore[return-value]
