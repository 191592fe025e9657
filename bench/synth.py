"""Synthetic CT series as real DICOM files, for benchmarks.

:func:`make_ct_series` writes ``n`` axial CT slices (CT Image Storage, MONOCHROME2, 16-bit
signed, Rescale Slope 1 / Intercept -1024, so stored value = HU + 1024) of a plausible body: an
elliptical soft-tissue trunk (~40 HU) inside a fat rim, two air-filled lungs, a spine and a few
ribs (bone-like, 400-1200 HU), all changing slowly from slice to slice, plus Gaussian noise so
the pixel data does not compress trivially.

UIDs come from :func:`pydicom.uid.generate_uid` with entropy sources derived from ``seed`` and
the slice index: they are unique per slice and per seed, and the same seed writes byte-identical
files (reproducible input). Two series with the same seed share UIDs, so do not ingest both into
one warehouse.

Run it directly to write a series: ``python bench/synth.py OUT_DIR --n 40 --compression rle``.
"""

from __future__ import annotations

import argparse
import io
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import (
    CTImageStorage,
    JPEG2000Lossless,
    RLELossless,
    generate_uid,
)

from medspark.synthetic import new_dataset, set_hu_pixels

Compression = Literal["jpeg2000", "rle"] | None
COMPRESSIONS: dict[str, str] = {"jpeg2000": JPEG2000Lossless, "rle": RLELossless}

_SLICE_THICKNESS_MM = 1.0
_PIXEL_SPACING_MM = 0.7


def _uid(seed: int, *parts: object) -> str:
    return generate_uid(entropy_srcs=["medspark-bench-synth", str(seed), *map(str, parts)])


def _ellipse(
    grid: tuple[np.ndarray, np.ndarray], cx: float, cy: float, rx: float, ry: float
) -> tuple[tuple[slice, slice], np.ndarray]:
    """Bounding-box window and mask of the ellipse at (cx, cy) with radii (rx, ry).

    Only the box is evaluated, which keeps small structures (ribs) cheap on large images.
    """
    yy, xx = grid
    size = xx.shape[0]

    def span(c: float, r: float) -> slice:
        lo = int(np.floor((c - r + 1) / 2 * (size - 1)))
        hi = int(np.ceil((c + r + 1) / 2 * (size - 1))) + 1
        return slice(max(0, lo), min(size, hi))

    box = (span(cy, ry), span(cx, rx))
    mask = ((xx[box] - cx) / rx) ** 2 + ((yy[box] - cy) / ry) ** 2 <= 1.0
    return box, mask


def ct_slice_hu(
    index: int, n: int, size: int, rng: np.random.Generator, grid: tuple[np.ndarray, np.ndarray]
) -> np.ndarray:
    """One synthetic axial slice in Hounsfield units (int16, ``size`` x ``size``).

    ``grid`` is ``np.meshgrid(axis, axis, indexing="ij")`` of ``axis = linspace(-1, 1, size)``.
    """
    yy, xx = grid  # both in [-1, 1], float32
    t = index / max(1, n - 1)  # 0 at the first slice, 1 at the last
    phase = 2 * np.pi * t
    hu = np.full((size, size), -1000.0, dtype=np.float32)  # air

    # Trunk: ellipse whose axes breathe along z; fat rim, then soft tissue.
    ax, ay = 0.78 + 0.06 * np.sin(phase), 0.56 + 0.05 * np.cos(1.3 * phase)
    body = (xx / ax) ** 2 + (yy / ay) ** 2
    inside = body <= 1.0
    hu[inside] = -100.0  # fat
    inner = body <= 0.82
    # Soft tissue with organ-like low-frequency texture (+-15 HU).
    texture = np.sin(6 * xx[0] + 3 * t)[None, :] * np.cos(5 * yy[:, 0] - 2 * t)[:, None]
    hu[inner] = 40.0 + 15.0 * texture[inner]

    # Lungs: two ellipses that grow toward the middle of the series, with vessel-like texture.
    lung_scale = 0.55 + 0.45 * np.sin(np.pi * t)
    for side in (-1.0, 1.0):
        cx, cy = side * 0.36 * ax / 0.78, -0.05
        rx, ry = 0.24 * lung_scale * ax / 0.78, 0.36 * lung_scale * ay / 0.56
        box, lung = _ellipse(grid, cx, cy, rx, ry)
        region = hu[box]
        vessels = np.sin(25 * xx[box] + 19 * yy[box] + 7 * t)
        region[lung] = -850.0 + 60.0 * vessels[lung]

    # Spine: a vertebral body (cortical rim, spongy inside) posterior-middle.
    vy = 0.40 * ay / 0.56
    box, cortex = _ellipse(grid, 0.0, vy, 0.11, 0.09)
    hu[box][cortex] = 1100.0
    box, spongy = _ellipse(grid, 0.0, vy, 0.11 * 0.77, 0.09 * 0.77)
    hu[box][spongy] = 350.0
    # Ribs: small bright blobs along the fat rim, rotating slowly along z.
    for k in range(8):
        angle = np.pi * (0.15 + 0.7 * k / 7) + 0.3 * t
        rx_, ry_ = 0.9 * ax * np.cos(angle), 0.9 * ay * np.sin(angle)
        for sign in (-1.0, 1.0):
            box, rib = _ellipse(grid, sign * rx_, ry_, 0.035, 0.025)
            hu[box][rib] = 700.0
    # Aorta with contrast, anterior to the spine.
    box, aorta = _ellipse(grid, -0.05, vy - 0.17, 0.06, 0.06)
    hu[box][aorta] = 250.0

    # Scanner noise (stronger inside the body), then stored as int16.
    noise = rng.standard_normal((size, size), dtype=np.float32)
    noise *= np.where(inside, np.float32(18.0), np.float32(6.0))
    hu += noise
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16)


def ct_dataset(
    index: int, size: int, seed: int, hu: np.ndarray, study: str, series: str
) -> Dataset:
    """A CT Image Storage dataset (explicit VR little endian) holding ``hu`` as slice ``index``."""
    ds = new_dataset(CTImageStorage, _uid(seed, "sop", index))
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240101"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.AccessionNumber = f"BENCH{seed:06d}"
    ds.Modality = "CT"
    ds.Manufacturer = "medspark synthetic"
    ds.PatientName = f"Bench^Synthetic{seed}"
    ds.PatientID = f"BENCH-{seed}"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.BodyPartExamined = "CHEST"
    ds.SliceThickness = _SLICE_THICKNESS_MM
    ds.KVP = 120
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.FrameOfReferenceUID = _uid(seed, "for")
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = index + 1
    z = -index * _SLICE_THICKNESS_MM
    half = (size - 1) / 2 * _PIXEL_SPACING_MM
    ds.ImagePositionPatient = [-half, -half, z]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SliceLocation = z
    set_hu_pixels(ds, hu)  # size x size, stored = HU + 1024
    ds.PixelSpacing = [_PIXEL_SPACING_MM, _PIXEL_SPACING_MM]
    ds.WindowCenter = 40
    ds.WindowWidth = 400
    ds.RescaleType = "HU"
    return ds


def _encode(ds: Dataset, compression: Compression) -> bytes:
    if compression is not None:
        # pydicom 3: JPEG 2000 lossless through pylibjpeg-openjpeg, RLE Lossless natively.
        ds.compress(COMPRESSIONS[compression], encoding_plugin=_plugin(compression))
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _plugin(compression: str) -> str:
    return {"jpeg2000": "pylibjpeg", "rle": "pydicom"}[compression]


def make_ct_series(
    out_dir: str | Path,
    n: int,
    size: int = 512,
    seed: int = 0,
    compression: Compression = None,
    zipped: bool = False,
) -> list[Path] | Path:
    """Write ``n`` synthetic CT slices under ``out_dir``.

    Loose files ``slice_0000.dcm`` ... are returned as a list; with ``zipped`` all slices go
    into one uncompressed (ZIP_STORED) ``ct_series.zip`` as ``series/slice_0000.dcm`` ... and the
    zip's path is returned. ``compression``: None (explicit VR little endian), ``"jpeg2000"``
    (JPEG 2000 lossless) or ``"rle"`` (RLE Lossless).
    """
    if compression is not None and compression not in COMPRESSIONS:
        raise ValueError(f"compression must be None or one of {sorted(COMPRESSIONS)}")
    if n < 1:
        raise ValueError("n must be >= 1")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    axis = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    grid = np.meshgrid(axis, axis, indexing="ij")  # (yy, xx)
    study, series = _uid(seed, "study"), _uid(seed, "series")

    def encoded() -> Iterator[tuple[str, bytes]]:
        for i in range(n):
            hu = ct_slice_hu(i, n, size, rng, grid)
            yield (
                f"slice_{i:04d}.dcm",
                _encode(ct_dataset(i, size, seed, hu, study, series), compression),
            )

    if zipped:
        path = out / "ct_series.zip"
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
            for name, data in encoded():
                zf.writestr(f"series/{name}", data)
        return path
    paths = []
    for name, data in encoded():
        path = out / name
        path.write_bytes(data)
        paths.append(path)
    return paths


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compression", choices=sorted(COMPRESSIONS), default=None)
    parser.add_argument("--zipped", action="store_true")
    args = parser.parse_args(argv)
    result = make_ct_series(
        args.out_dir, args.n, args.size, args.seed, args.compression, args.zipped
    )
    print(result if isinstance(result, Path) else f"{len(result)} files in {args.out_dir}")


if __name__ == "__main__":
    main()
