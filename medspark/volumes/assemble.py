"""Volume assembly: the instances of one series, re-read, sorted geometrically, stacked.

Runs on an executor, one series at a time (:func:`assemble_volume`); pure apart from reading
the bytes, which goes through the reader and limits preprocessing uses
(:func:`medspark.sources.members.read_items`), with the same SHA-256 check against ``scans``:
an item whose bytes changed since ingest is an error, never other pixels.

The order of slices and the affine come from :func:`medspark.volumes.geometry.analyse_series`
on the ``scans`` columns, the same computation the ``series`` table shows; only a ``regular``
series is assembled. Values are modality values from :mod:`medspark.dicom.pixels` (Modality
LUT Sequence (0028,3000) or Rescale Slope (0028,1053) / Intercept (0028,1052), per frame for
enhanced objects), so a CT volume is in Hounsfield units.

Memory is bounded before anything is read: a series of more than ``max_voxels`` voxels
(slices x rows x columns) is a ``series_too_large`` error with its size. The volume is one
float32 array allocated once; each instance's bytes are dropped as soon as its frames are in.

Error classes (``series_errors.error_class``): ``irregular_series`` (the verdict is not
``regular``; the message carries verdict and detail), ``series_too_large``, ``not_monochrome``
(colour frames), and per instance, as preprocessing names them, ``unreadable``,
``source_changed``, ``undecodable_file``, ``undecodable_frame`` (and the reader's own classes
such as ``too_large`` for an item over the ingest limits). Messages name the series and the
instance (and frame).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medspark.tables.error_classes import (
    IRREGULAR_SERIES,
    NOT_MONOCHROME,
    SERIES_TOO_LARGE,
    SOURCE_CHANGED,
    UNDECODABLE_FILE,
    UNDECODABLE_FRAME,
    UNREADABLE,
)
from medspark.volumes.geometry import (
    GEOMETRY_COLUMNS,
    SeriesGeometry,
    Slice,
    Tolerances,
    analyse_series,
    slices_of_instance,
)

__all__ = [
    "IRREGULAR_SERIES",
    "NOT_MONOCHROME",
    "SERIES_TOO_LARGE",
    "SOURCE_CHANGED",
    "UNDECODABLE_FILE",
    "UNDECODABLE_FRAME",
    "UNREADABLE",
    "VOLUME_INPUT_COLUMNS",
    "Volume",
    "VolumeError",
    "VolumeSettings",
    "assemble_volume",
    "fill_missing_slices",
    "plan_volume",
]


#: The ``scans`` columns assembly needs per instance.
VOLUME_INPUT_COLUMNS = (
    "sop_instance_uid",
    "series_instance_uid",
    "modality",
    "source_uri",
    "archive_member",
    "sha256",
    *GEOMETRY_COLUMNS,
    "header_json",
)


class VolumeError(Exception):
    """A series that cannot become a volume: ``error_class`` and a message naming it."""

    def __init__(self, error_class: str, message: str) -> None:
        super().__init__(message)
        self.error_class = error_class


@dataclass(frozen=True)
class VolumeSettings:
    """What an executor needs to assemble volumes; pickled into the task closure."""

    max_voxels: int = 2**27
    limits: Any = None  # medspark.sources.archives.Limits of the re-read (None: defaults)
    tolerances: Tolerances = field(default_factory=Tolerances)
    #: Longest run of missing slices filled by interpolation (volumes.max_interpolated when
    #: volumes.missing_slices is interpolate; 0: a series with a gap is not assembled).
    max_interpolated: int = 0


@dataclass(eq=False)
class Volume:
    """One assembled series: ``array[k, j, i]`` (slice, row, column) float32 modality values,
    ``affine`` (k, j, i, 1) -> LPS mm (see :mod:`medspark.volumes.geometry`)."""

    series_instance_uid: str
    modality: str | None
    array: np.ndarray
    affine: np.ndarray
    geometry: SeriesGeometry
    #: (sop_instance_uid, frame) of each slice, in array order; None for a slice filled by
    #: interpolation (no instance was acquired there).
    slices: list[tuple[str, int] | None]

    @property
    def interpolated(self) -> list[int]:
        """Array indices of the slices filled by interpolation."""
        return [k for k, s in enumerate(self.slices) if s is None]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """(slice, row, column) spacing in mm: the lengths of the affine's columns."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]


def plan_volume(
    rows: Sequence[Mapping[str, Any]], settings: VolumeSettings
) -> tuple[SeriesGeometry, list[Slice]]:
    """Geometry of the series from its ``scans`` rows, checked before any pixel is read.

    Raises :class:`VolumeError`: ``irregular_series`` unless the verdict is ``regular`` (or
    ``missing_slices`` with gaps of at most ``settings.max_interpolated``, to be filled),
    ``series_too_large`` over ``settings.max_voxels`` (interpolated slices included).
    """
    uid = rows[0]["series_instance_uid"]
    ordered = sorted(rows, key=lambda r: r["sop_instance_uid"])
    slices = [s for r in ordered for s in slices_of_instance(r)]
    geo = analyse_series(slices, settings.tolerances, settings.max_interpolated)
    if not geo.assemblable:
        raise VolumeError(
            IRREGULAR_SERIES, f"series {uid}: {geo.verdict}: {geo.detail or 'not one grid'}"
        )
    depth = geo.grid_slices
    voxels = depth * int(geo.rows or 0) * int(geo.columns or 0)
    if voxels > settings.max_voxels:
        raise VolumeError(
            SERIES_TOO_LARGE,
            f"series {uid}: {depth} slices x {geo.rows} x {geo.columns} = {voxels} voxels "
            f"({voxels * 4 / 2**20:.0f} MiB as float32) > volumes.max_voxels {settings.max_voxels}",
        )
    return geo, slices


def assemble_volume(rows: Sequence[Mapping[str, Any]], settings: VolumeSettings) -> Volume:
    """Read the instances of one series (``scans`` rows, :data:`VOLUME_INPUT_COLUMNS`) and stack
    their frames in geometric order. Raises :class:`VolumeError` naming the series and, for a
    bad instance, the instance and frame."""
    from medspark.dicom.pixels import DicomPixelError, iter_frames
    from medspark.sources.members import read_verified

    uid = rows[0]["series_instance_uid"]
    geo, slices = plan_volume(rows, settings)
    assert geo.grid_index is not None  # assemblable
    grid = geo.grid_index
    place = {
        (slices[i].sop_instance_uid, slices[i].frame): grid[m] for m, i in enumerate(geo.order)
    }
    depth = geo.grid_slices
    array = np.empty((depth, int(geo.rows or 0), int(geo.columns or 0)), dtype=np.float32)
    filled = np.zeros(depth, dtype=bool)
    acquired = np.zeros(depth, dtype=bool)
    acquired[grid] = True
    by_location = {(r["source_uri"], r["archive_member"]): r for r in rows}
    max_samples = None if settings.limits is None else settings.limits.max_frame_samples
    requests = [(uri, member, r.get("sha256")) for (uri, member), r in by_location.items()]
    for (uri, member), content in read_verified(requests, settings.limits):
        row = by_location[(uri, member)]
        sop = row["sop_instance_uid"]
        where = uri + (f"!{member}" if member else "")
        if isinstance(content, Exception):
            raise VolumeError(content.error_class, f"series {uid}: instance {sop}: {content}")
        try:
            frames = iter_frames(content, max_frame_samples=max_samples)
        except DicomPixelError as exc:
            raise VolumeError(
                UNDECODABLE_FILE, f"series {uid}: instance {sop} ({where}): {exc}"
            ) from None
        for frame in frames:
            k = place.get((sop, frame.index))
            if k is None:
                continue
            if frame.pixels is None:
                raise VolumeError(
                    UNDECODABLE_FRAME,
                    f"series {uid}: instance {sop} frame {frame.index}: {frame.error}",
                )
            if frame.pixels.ndim != 2:
                raise VolumeError(
                    NOT_MONOCHROME,
                    f"series {uid}: instance {sop}: {frame.photometric} frames are not one "
                    "value per voxel",
                )
            if frame.pixels.shape != array.shape[1:]:
                raise VolumeError(
                    UNDECODABLE_FRAME,
                    f"series {uid}: instance {sop} frame {frame.index}: decoded "
                    f"{frame.pixels.shape}, header says {array.shape[1:]}",
                )
            array[k] = frame.pixels
            filled[k] = True
        del content
    if not filled[acquired].all():
        m = int(np.flatnonzero(~filled[grid])[0])
        sop, f = slices[geo.order[m]].sop_instance_uid, slices[geo.order[m]].frame
        raise VolumeError(UNREADABLE, f"series {uid}: instance {sop} frame {f} was not read")
    if geo.interpolated:
        fill_missing_slices(array, acquired)
    assert geo.affine is not None  # assemblable
    in_array: list[tuple[str, int] | None] = [None] * depth
    for m, i in enumerate(geo.order):
        in_array[grid[m]] = (slices[i].sop_instance_uid, slices[i].frame)
    return Volume(
        series_instance_uid=uid,
        modality=rows[0].get("modality"),
        array=array,
        affine=geo.affine,
        geometry=geo,
        slices=in_array,
    )


def fill_missing_slices(array: np.ndarray, acquired: np.ndarray) -> list[int]:
    """Fill, in place, the slices of ``array`` (``[k, j, i]``, a regular grid along ``k``)
    where ``acquired`` is False, by linear interpolation along the slice normal between the
    nearest acquired slices before and after: slice ``k`` between ``a`` and ``b`` becomes
    ``(1 - t) * array[a] + t * array[b]`` with ``t = (k - a) / (b - a)``, as the grid is
    uniform. The first and the last slice must be acquired (a gap is between two slices).
    Returns the indices filled."""
    known = np.flatnonzero(acquired)
    if known.size == 0 or known[0] != 0 or known[-1] != len(acquired) - 1:
        raise ValueError("the first and the last slice must be acquired")
    filled = []
    for a, b in zip(known[:-1], known[1:], strict=True):
        for k in range(int(a) + 1, int(b)):
            t = (k - a) / (b - a)
            array[k] = (1.0 - t) * array[a] + t * array[b]
            filled.append(k)
    return filled
