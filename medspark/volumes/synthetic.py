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
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "CHEST_LABELS",
    "Chest",
    "chest_hu",
    "chest_labels",
    "random_chest",
    "save_threshold_model",
    "sphere_hu",
    "sphere_volume_ml",
    "write_series",
]


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
        # Frame of Reference UID (0020,0052): one per series here (a SEG refers to it).
        ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[series_uid, "frame-of-reference"])
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


# -- synthetic chest CT: lungs and nodules of known size (the demonstration 3D model) ----------

#: Label values of the chest phantom (and of the bundled demonstration 3D model's output).
CHEST_LABELS = ("lung", "nodule")


@dataclass(frozen=True)
class Chest:
    """A chest phantom in mm, measured from the first voxel's centre along (slice, row,
    column) like :func:`sphere_hu`'s ``center_mm``: an elliptic body cylinder along the slice
    axis (soft tissue), two lung ellipsoids, vessels (thin tubes along the slice axis, inside the
    lungs) and nodules (balls inside the lungs, each of known radius)."""

    body: tuple[float, float, float, float]  # row, column centre; row, column semi-axes
    lungs: tuple[tuple[float, ...], ...]  # (slice, row, column centre, three semi-axes) each
    vessels: tuple[tuple[float, float, float], ...]  # (row, column, radius) each
    nodules: tuple[tuple[float, float, float, float], ...]  # (slice, row, column, radius) each
    hu_body: float = 40.0
    hu_lung: float = -850.0
    hu_vessel: float = 40.0
    hu_nodule: float = 30.0

    def nodule_volumes_ml(self) -> list[float]:
        return [sphere_volume_ml(n[3]) for n in self.nodules]

    def labels_at(self, d: np.ndarray, r: np.ndarray, c: np.ndarray) -> np.ndarray:
        """Label (0 background, 1 lung, 2 nodule) of the points (mm, broadcast arrays)."""
        out = np.zeros(np.broadcast(d, r, c).shape, dtype=np.uint8)
        for ld, lr, lc, ad, ar, ac in self.lungs:
            out[((d - ld) / ad) ** 2 + ((r - lr) / ar) ** 2 + ((c - lc) / ac) ** 2 <= 1.0] = 1
        for nd, nr, nc, rad in self.nodules:
            out[(d - nd) ** 2 + (r - nr) ** 2 + (c - nc) ** 2 <= rad**2] = 2
        return out

    def hu_at(self, d: np.ndarray, r: np.ndarray, c: np.ndarray) -> np.ndarray:
        """HU of the points (mm): air -1000 outside the body."""
        br, bc, sr, sc = self.body
        shape = np.broadcast(d, r, c).shape
        hu = np.full(shape, -1000.0, dtype=np.float32)
        hu[np.broadcast_to(((r - br) / sr) ** 2 + ((c - bc) / sc) ** 2 <= 1.0, shape)] = (
            self.hu_body
        )
        lung = np.zeros(shape, dtype=bool)
        for ld, lr, lc, ad, ar, ac in self.lungs:
            lung |= ((d - ld) / ad) ** 2 + ((r - lr) / ar) ** 2 + ((c - lc) / ac) ** 2 <= 1.0
        hu[lung] = self.hu_lung
        for vr, vc, rad in self.vessels:
            hu[lung & np.broadcast_to((r - vr) ** 2 + (c - vc) ** 2 <= rad**2, shape)] = (
                self.hu_vessel
            )
        for nd, nr, nc, rad in self.nodules:
            hu[(d - nd) ** 2 + (r - nr) ** 2 + (c - nc) ** 2 <= rad**2] = self.hu_nodule
        return hu


def random_chest(
    seed: int,
    extent_mm: tuple[float, float, float],
    max_nodules: int = 2,
    nodule_radius_mm: tuple[float, float] = (3.0, 10.0),
) -> Chest:
    """A seeded random :class:`Chest` filling ``extent_mm`` (slice, row, column): lungs of
    jittered size, 2-5 vessels, 0..``max_nodules`` nodules wholly inside a lung."""
    rng = np.random.default_rng(seed)
    D, H, W = extent_mm
    j = lambda: 1.0 + rng.uniform(-0.08, 0.08)  # noqa: E731 - a jitter factor
    body = (H / 2, W / 2, 0.40 * H * j(), 0.46 * W * j())
    lungs = tuple(
        (D / 2, 0.50 * H, side * W, 0.62 * D * j(), 0.26 * H * j(), 0.15 * W * j())
        for side in (0.30, 0.70)
    )
    vessels = []
    for _ in range(int(rng.integers(2, 6))):
        ld, lr, lc, ad, ar, ac = lungs[int(rng.integers(0, 2))]
        t, a = rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.7)
        vessels.append((lr + a * ar * np.sin(t), lc + a * ac * np.cos(t), rng.uniform(0.8, 1.6)))
    nodules = []
    for _ in range(int(rng.integers(0, max_nodules + 1))):
        rad = float(rng.uniform(*nodule_radius_mm))
        for _attempt in range(50):
            ld, lr, lc, ad, ar, ac = lungs[int(rng.integers(0, 2))]
            u = rng.uniform(-1, 1, 3)
            if (u**2).sum() > 1:
                continue
            p = (ld + u[0] * ad, lr + u[1] * ar, lc + u[2] * ac)
            # Wholly inside the lung (with a margin) and inside the field of view.
            shrink = [(ad - rad - 2) / ad, (ar - rad - 2) / ar, (ac - rad - 2) / ac]
            if min(shrink) <= 0 or ((u / np.array(shrink)) ** 2).sum() > 1:
                continue
            if not (rad + 1 < p[0] < D - rad - 1):
                continue
            nodules.append((*p, rad))
            break
    return Chest(body=body, lungs=lungs, vessels=tuple(vessels), nodules=tuple(nodules))


def chest_hu(
    chest: Chest,
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    supersample: int = 2,
    noise: float = 15.0,
    seed: int = 0,
) -> np.ndarray:
    """HU volume ``[slice, row, column]`` (int16) of ``chest`` on a grid of ``spacing`` mm,
    with partial volume (mean over ``supersample``^3 sub-points per voxel) and Gaussian
    noise. Built slice by slice, so a 300 x 512 x 512 series needs one slice's sub-points."""
    s = supersample
    offsets = (np.arange(s) + 0.5) / s - 0.5
    rows = ((np.arange(shape[1])[:, None] + offsets[None, :]).ravel() * spacing[1])[:, None]
    cols = ((np.arange(shape[2])[:, None] + offsets[None, :]).ravel() * spacing[2])[None, :]
    rng = np.random.default_rng(seed)
    out = np.empty(shape, dtype=np.int16)
    for k in range(shape[0]):
        acc = np.zeros((shape[1], shape[2]), dtype=np.float32)
        for o in offsets:
            hu = chest.hu_at(np.float64((k + o) * spacing[0]), rows, cols)
            acc += hu.reshape(shape[1], s, shape[2], s).mean(axis=(1, 3))
        hu = acc / s
        if noise:
            hu = hu + rng.normal(0.0, noise, hu.shape).astype(np.float32)
        out[k] = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    return out


def chest_labels(
    chest: Chest, affine: np.ndarray, shape: tuple[int, int, int], origin: Sequence[float]
) -> np.ndarray:
    """True labels of ``chest`` at the voxel centres of a grid ``affine`` (``(k, j, i, 1)`` ->
    LPS mm) of ``shape``, for a series written axially by :func:`write_series` at ``origin``
    (array mm (slice, row, column) = (z, y, x) - origin)."""
    a = np.asarray(affine, dtype=float)
    k, j, i = (np.arange(n, dtype=float) for n in shape)
    o = np.asarray(origin, dtype=float)
    # LPS point = a[:3,0] k + a[:3,1] j + a[:3,2] i + a[:3,3]; array mm = (z, y, x) - origin.
    lps = (
        a[:3, 0][:, None, None, None] * k[None, :, None, None]
        + a[:3, 1][:, None, None, None] * j[None, None, :, None]
        + a[:3, 2][:, None, None, None] * i[None, None, None, :]
        + a[:3, 3][:, None, None, None]
    )
    return chest.labels_at(lps[2] - o[2], lps[1] - o[1], lps[0] - o[0])
