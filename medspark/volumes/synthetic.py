"""Synthetic CT series with known geometry and content, as real DICOM files (tests, demo, bench).

A series is written one CT Image Storage file per slice (:func:`medspark.synthetic.ct_dataset`)
with Image Position (Patient) (0020,0032), Image Orientation (Patient) (0020,0037), Pixel
Spacing (0028,0030) and Slice Thickness (0018,0050) set from the affine, so the truth of every
voxel's position is known. File names are random, and Instance Number (0020,0013) runs opposite
to the geometric order, so a reader that sorts by either gets the volume upside down.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["save_threshold_model", "sphere_hu", "sphere_volume_ml", "write_series"]


def sphere_volume_ml(radius_mm: float) -> float:
    """Analytic volume of a ball, mL (1 mL = 1000 mm3)."""
    return 4.0 / 3.0 * math.pi * radius_mm**3 / 1000.0


def sphere_hu(
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    center_mm: tuple[float, float, float],
    radius_mm: float,
    inside: float = 60.0,
    outside: float = -900.0,
    supersample: int = 4,
    noise: float = 0.0,
    seed: int = 0,
) -> np.ndarray:
    """HU volume ``[slice, row, column]`` with a ball of ``radius_mm`` at ``center_mm``.

    ``center_mm`` is measured from the first voxel's centre along (slice, row, column).
    Partial volume is modelled: each voxel is the mean over ``supersample``^3 sub-points, so
    the edge is blurred as a scanner's is and a threshold halfway between ``inside`` and
    ``outside`` recovers the ball's volume, not a staircase of it.
    """
    s = supersample
    offsets = (np.arange(s) + 0.5) / s - 0.5
    axes = [
        (np.arange(n)[:, None] + offsets[None, :]).ravel() * d - c
        for n, d, c in zip(shape, spacing, center_mm, strict=True)
    ]
    sq = [a**2 for a in axes]
    inside_fraction = np.zeros(shape, dtype=np.float32)
    r2 = radius_mm**2
    for k in range(shape[0]):
        dz = sq[0][k * s : (k + 1) * s]
        hits = (dz[:, None, None] + sq[1][None, :, None] + sq[2][None, None, :]) <= r2
        # (s, rows*s, cols*s) -> (rows, cols) mean over sub-points.
        inside_fraction[k] = (
            hits.reshape(s, shape[1], s, shape[2], s).mean(axis=(0, 2, 4)).astype(np.float32)
        )
    hu = outside + (inside - outside) * inside_fraction
    if noise:
        hu = hu + np.random.default_rng(seed).normal(0.0, noise, hu.shape)
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16)


def write_series(
    out_dir: str | Path,
    hu: np.ndarray,
    spacing: tuple[float, float, float],
    *,
    series_uid: str,
    study_uid: str,
    orientation: Sequence[float] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    origin: Sequence[float] = (0.0, 0.0, 0.0),
    patient_id: str = "SYNTH-VOL-1",
    skip: Sequence[int] = (),
    seed: int = 0,
    first_slice: int = 0,
) -> list[Path]:
    """Write ``hu`` (``[slice, row, column]``) as one CT file per slice under ``out_dir``.

    ``spacing`` is (slice, row, column) mm; slice ``k`` lies at ``origin + k * spacing[0] * n``
    with ``n`` the normal of ``orientation``. Slices in ``skip`` are not written (a series with
    missing slices). ``first_slice`` numbers the slices from there (SOP Instance UIDs and
    positions), to add slices to a series written before. Returns the written paths.
    """
    import datetime as dt

    from pydicom.uid import generate_uid

    from medspark.synthetic import ct_dataset
    from medspark.volumes.geometry import slice_normal

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    normal = slice_normal(orientation)
    rng = np.random.default_rng(seed)
    paths = []
    n = hu.shape[0]
    for k in range(first_slice, first_slice + n):
        if k in skip:
            continue
        sop = generate_uid(entropy_srcs=[series_uid, str(k)])
        ds = ct_dataset(
            hu[k - first_slice],
            sop_uid=sop,
            study_uid=study_uid,
            series_uid=series_uid,
            patient_id=patient_id,
            instance_number=first_slice + n - k,  # opposite to the geometric order on purpose
            acquired=dt.datetime(2026, 1, 5, 9, 0, 0) + dt.timedelta(seconds=k),
        )
        ds.PixelSpacing = [float(spacing[1]), float(spacing[2])]
        ds.SliceThickness = float(spacing[0])
        ds.ImageOrientationPatient = [float(v) for v in orientation]
        position = np.asarray(origin, dtype=float) + k * float(spacing[0]) * normal
        ds.ImagePositionPatient = [round(float(v), 4) for v in position]
        path = out / f"{rng.integers(0, 2**62):016x}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def save_threshold_model(path: str | Path, threshold: float = 0.5) -> Path:
    """A TorchScript "model" that labels voxels above ``threshold`` (two channels: background,
    foreground): for tests and the demo of the volume path, not a trained model."""
    import torch

    class Threshold(torch.nn.Module):
        def __init__(self, t: float) -> None:
            super().__init__()
            self.t = t

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            fg = (x > self.t).to(x.dtype)
            return torch.cat([1.0 - fg, fg], dim=1)

    path = Path(path)
    torch.jit.save(torch.jit.script(Threshold(threshold)), str(path))
    return path
