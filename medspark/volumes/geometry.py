"""Series geometry: which slices make one volume, in what order, and where it lies in the patient.

Pure numpy (no Spark, no pydicom): the ``series`` table (:mod:`medspark.volumes.series`) and
volume assembly (:mod:`medspark.volumes.assemble`) both call :func:`analyse_series`.

Every slice (a single-frame instance, or one frame of an enhanced multi-frame instance) is
placed by two attributes (PS3.3 C.7.6.2 Image Plane Module):

- Image Orientation (Patient) (0020,0037): the direction cosines of the first row ``X`` and the
  first column ``Y`` in the patient's LPS axes;
- Image Position (Patient) (0020,0032): where the centre of the first transmitted voxel lies, in
  mm, LPS.

The slice normal is ``n = X x Y``. Slices are ordered by the projection ``d = P . n`` of their
position on the normal, ascending, never by file name or Instance Number (0020,0013): exports
number slices in either direction, skip numbers, or restart them. The slice spacing is the
median step of ``d``; Slice Thickness (0018,0050) is the width of the slab a slice integrates
over and says nothing about spacing (overlapping reconstructions have thickness > spacing).

The verdict says whether the sorted slices form one regular grid that can be stacked into an
array with a single affine, and if not, why (first failing check wins, in this order):

``no_geometry``
    no slice, or a slice without Image Position / Orientation (e.g. a multi-frame object
    without per-frame Plane Position Sequence (0020,9113), a secondary capture, a radiograph).
``single_slice``
    only one slice: it has geometry, but no spacing between slices.
``mixed_orientation``
    the Image Orientation differs between slices (a localizer among axial slices).
``mixed_size``
    Rows (0028,0010) x Columns (0028,0011) or Pixel Spacing (0028,0030) differ.
``duplicate_positions``
    two slices at the same place along the normal (a re-acquisition, two echoes, two phases).
``gantry_tilt``
    the positions do not move along the normal: the stack is sheared (CT with tilted gantry).
``missing_slices``
    some steps are whole multiples of the spacing; ``detail`` says where. With
    ``max_interpolated`` > 0 (``volumes.missing_slices: interpolate``) and no gap longer than
    it, the verdict stays but the series is still one grid: :attr:`SeriesGeometry.affine`
    covers the acquired and the missing positions, :attr:`SeriesGeometry.grid_index` places
    each acquired slice on it, and :attr:`SeriesGeometry.interpolated` counts the missing
    ones that assembly fills (:func:`medspark.volumes.assemble.fill_missing_slices`).
``varying_spacing``
    the steps differ by more than the tolerance and are not whole multiples.
``regular``
    one grid; :attr:`SeriesGeometry.affine` maps array indices to LPS mm.

Volumes are numpy arrays indexed ``[k, j, i]`` = ``[slice, row, column]``, and the affine maps
``(k, j, i, 1)`` to LPS mm: column 0 is the step between slices, column 1 the step between rows
(``Y`` x Pixel Spacing[0], the row spacing), column 2 the step between columns (``X`` x Pixel
Spacing[1], the column spacing), column 3 the position of the first voxel of the first slice.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "GEOMETRY_COLUMNS",
    "DUPLICATE_POSITIONS",
    "GANTRY_TILT",
    "MISSING_SLICES",
    "MIXED_ORIENTATION",
    "MIXED_SIZE",
    "NO_GEOMETRY",
    "REGULAR",
    "SINGLE_SLICE",
    "VARYING_SPACING",
    "VERDICTS",
    "SeriesGeometry",
    "Slice",
    "Tolerances",
    "analyse_series",
    "frame_planes",
    "slice_normal",
    "slices_of_instance",
]

#: The ``scans`` columns that place an instance's slices in space (:func:`slices_of_instance`,
#: with ``header_json`` for enhanced multi-frame objects).
GEOMETRY_COLUMNS = (
    "rows",
    "columns",
    "number_of_frames",
    "pixel_spacing",
    "slice_thickness",
    "image_position_patient",
    "image_orientation_patient",
)

REGULAR = "regular"
NO_GEOMETRY = "no_geometry"
SINGLE_SLICE = "single_slice"
MIXED_ORIENTATION = "mixed_orientation"
MIXED_SIZE = "mixed_size"
DUPLICATE_POSITIONS = "duplicate_positions"
GANTRY_TILT = "gantry_tilt"
MISSING_SLICES = "missing_slices"
VARYING_SPACING = "varying_spacing"

#: Every verdict, in the order the checks run.
VERDICTS = (
    NO_GEOMETRY,
    SINGLE_SLICE,
    MIXED_ORIENTATION,
    MIXED_SIZE,
    DUPLICATE_POSITIONS,
    GANTRY_TILT,
    MISSING_SLICES,
    VARYING_SPACING,
    REGULAR,
)


@dataclass(frozen=True)
class Tolerances:
    """How far real exports may deviate and still count as one grid.

    Positions and cosines are decimal strings (DS, at most 16 characters), often rounded to
    0.01 mm or to 5-6 decimals, so exact equality is never asked for.
    """

    #: Largest difference of a direction cosine between slices of one orientation.
    orientation: float = 1e-3
    #: A step may differ from the median step by this fraction of it (and by at least
    #: ``spacing_mm``) and still be regular.
    spacing_fraction: float = 0.02
    spacing_mm: float = 0.01
    #: Two slices closer than this along the normal (mm) are at the same position.
    duplicate_mm: float = 0.01
    #: The in-plane drift of the positions over the series (perpendicular to the normal) may
    #: reach this fraction of the smallest pixel spacing before it is a gantry tilt.
    tilt_pixel_fraction: float = 0.1


@dataclass(frozen=True)
class Slice:
    """One 2D plane of a series: a single-frame instance, or one frame of a multi-frame one."""

    sop_instance_uid: str
    frame: int
    #: Image Position (Patient) (0020,0032), mm LPS; None when absent.
    position: tuple[float, float, float] | None
    #: Image Orientation (Patient) (0020,0037): row cosines then column cosines.
    orientation: tuple[float, float, float, float, float, float] | None
    rows: int | None
    columns: int | None
    #: Pixel Spacing (0028,0030): [row spacing, column spacing] mm.
    pixel_spacing: tuple[float, float] | None = None
    #: Slice Thickness (0018,0050), mm.
    thickness: float | None = None
    #: Why the slice has no position, when the header says more than that it is absent.
    note: str | None = None


@dataclass
class SeriesGeometry:
    """What :func:`analyse_series` found; ``order`` indexes the slices it was given."""

    verdict: str
    detail: str | None
    order: list[int] = field(default_factory=list)
    normal: np.ndarray | None = None
    #: Projections of the sorted positions on the normal, mm (ascending).
    distances: np.ndarray | None = None
    slice_spacing: float | None = None
    #: 4x4, (k, j, i, 1) -> LPS mm; set when the verdict is regular or single_slice.
    affine: np.ndarray | None = None
    first_position: tuple[float, float, float] | None = None
    last_position: tuple[float, float, float] | None = None
    orientation: tuple[float, ...] | None = None
    rows: int | None = None
    columns: int | None = None
    pixel_spacing: tuple[float, float] | None = None
    #: Missing slices filled by interpolation (``missing_slices`` within ``max_interpolated``).
    interpolated: int = 0
    #: Index of each sorted slice on the grid of the affine (0, 1, 2, ... when regular; with
    #: the missing positions skipped when ``interpolated``).
    grid_index: list[int] | None = None

    @property
    def regular(self) -> bool:
        return self.verdict == REGULAR

    @property
    def assemblable(self) -> bool:
        """One grid: regular, or missing slices that are to be interpolated."""
        return self.verdict == REGULAR or self.interpolated > 0

    @property
    def grid_slices(self) -> int:
        """Slices of the assembled volume: the acquired ones plus the interpolated ones."""
        return len(self.order) + self.interpolated


def slice_normal(orientation: Sequence[float]) -> np.ndarray:
    """Unit normal ``X x Y`` of Image Orientation (Patient) (0020,0037) ``[X, Y]``."""
    iop = np.asarray(orientation, dtype=float)
    n = np.cross(iop[:3], iop[3:6])
    norm = float(np.linalg.norm(n))
    if norm == 0.0 or not math.isfinite(norm):
        raise ValueError(f"Image Orientation (Patient) {list(orientation)} has no normal")
    return n / norm


def _fmt(v: float) -> str:
    return f"{v:.6g}"


def analyse_series(
    slices: Sequence[Slice], tol: Tolerances | None = None, max_interpolated: int = 0
) -> SeriesGeometry:
    """Sort ``slices`` geometrically, measure the spacing, judge the grid, build the affine.

    ``max_interpolated``: the longest run of consecutive missing slices that may be filled by
    interpolation (0: none; see ``missing_slices`` in the module docstring)."""
    tol = tol or Tolerances()
    n = len(slices)
    if n == 0:
        return SeriesGeometry(NO_GEOMETRY, "no slice with pixels")
    lacking = [
        s
        for s in slices
        if s.position is None or s.orientation is None or not _finite(s.position, s.orientation)
    ]
    if lacking:
        example = lacking[0]
        return SeriesGeometry(
            NO_GEOMETRY,
            f"{len(lacking)} of {n} slices lack Image Position (Patient) (0020,0032) or "
            f"Image Orientation (Patient) (0020,0037), e.g. {example.sop_instance_uid} "
            f"frame {example.frame}" + (f" ({example.note})" if example.note else ""),
            rows=slices[0].rows,
            columns=slices[0].columns,
        )

    orientations = np.array([s.orientation for s in slices], dtype=float)
    reference = orientations[0]
    try:
        normal = slice_normal(reference)
    except ValueError as e:
        return SeriesGeometry(NO_GEOMETRY, str(e))
    positions = np.array([s.position for s in slices], dtype=float)
    distances = positions @ normal
    # Geometric order; ties (duplicates) broken by UID and frame so the order is reproducible.
    order = sorted(
        range(n), key=lambda i: (distances[i], slices[i].sop_instance_uid, slices[i].frame)
    )
    d = distances[order]
    first, last = slices[order[0]], slices[order[-1]]
    geo = SeriesGeometry(
        REGULAR,
        None,
        order=order,
        normal=normal,
        distances=d,
        first_position=tuple(float(v) for v in first.position),  # type: ignore[union-attr]
        last_position=tuple(float(v) for v in last.position),  # type: ignore[union-attr]
        orientation=tuple(float(v) for v in reference),
        rows=first.rows,
        columns=first.columns,
        pixel_spacing=first.pixel_spacing,
    )
    steps = np.diff(d)
    positive = steps[steps > tol.duplicate_mm]
    if positive.size:
        geo.slice_spacing = float(np.median(positive))

    def verdict(name: str, detail: str) -> SeriesGeometry:
        geo.verdict, geo.detail = name, detail
        return geo

    if n == 1:
        thickness = first.thickness if first.thickness and first.thickness > 0 else 1.0
        geo.affine = _affine(first, normal * thickness)
        return verdict(SINGLE_SLICE, "one slice: no spacing between slices")

    off = np.abs(orientations - reference).max(axis=1)
    if float(off.max()) > tol.orientation:
        kinds = _distinct(orientations, tol.orientation)
        return verdict(
            MIXED_ORIENTATION,
            f"{len(kinds)} orientations among {n} slices (largest cosine difference "
            f"{_fmt(float(off.max()))}); e.g. {[round(v, 4) for v in kinds[1]]} "
            f"besides {[round(v, 4) for v in kinds[0]]}",
        )

    sizes = {(s.rows, s.columns) for s in slices}
    if len(sizes) > 1:
        listed = ", ".join(f"{r}x{c}" for r, c in sorted(sizes, key=str))
        return verdict(MIXED_SIZE, f"rows x columns differ: {listed}")
    spacings = {s.pixel_spacing for s in slices}
    if len(spacings) > 1:
        values = [np.asarray(p, dtype=float) for p in spacings if p is not None]
        if len(values) < len(spacings) or np.ptp(np.stack(values), axis=0).max() > 1e-4:
            listed = ", ".join(str(list(p)) if p else "none" for p in sorted(spacings, key=str))
            return verdict(MIXED_SIZE, f"Pixel Spacing (0028,0030) differs: {listed}")

    duplicates = np.flatnonzero(steps <= tol.duplicate_mm)
    if duplicates.size:
        places = sorted({_fmt(float(d[i])) for i in duplicates}, key=float)
        where = ", ".join(places[:5])
        more = "" if len(places) <= 5 else f" and {len(places) - 5} more places"
        return verdict(
            DUPLICATE_POSITIONS,
            f"{duplicates.size} slices share a position with another, at {where}{more} mm "
            "along the normal",
        )

    sorted_positions = positions[order]
    drift = sorted_positions - sorted_positions[0]
    in_plane = drift - np.outer(drift @ normal, normal)
    shift = float(np.linalg.norm(in_plane, axis=1).max())
    pixel = min(first.pixel_spacing) if first.pixel_spacing else 1.0
    if shift > tol.tilt_pixel_fraction * pixel:
        along = float(d[-1] - d[0])
        angle = math.degrees(math.atan2(float(np.linalg.norm(in_plane[-1])), along))
        return verdict(
            GANTRY_TILT,
            f"positions drift {_fmt(shift)} mm within the slice plane over {_fmt(along)} mm "
            f"along the normal (tilt {angle:.2f} deg)",
        )

    spacing = geo.slice_spacing
    assert spacing is not None  # no duplicates and n >= 2: every step is positive
    allowed = max(tol.spacing_mm, tol.spacing_fraction * spacing)
    ratio = steps / spacing
    whole = np.rint(ratio)
    off_grid = np.abs(steps - spacing) > allowed
    if off_grid.any():
        gaps = off_grid & (whole >= 2) & (np.abs(steps - whole * spacing) <= allowed * whole)
        if gaps.any() and not (off_grid & ~gaps).any():
            parts = [
                f"{int(whole[i]) - 1} after slice {i + 1} of {n} (at {_fmt(float(d[i]))} mm)"
                for i in np.flatnonzero(gaps)
            ]
            missing = int((whole[gaps] - 1).sum())
            longest = int(whole[gaps].max()) - 1
            detail = (
                f"{missing} missing at spacing {_fmt(spacing)} mm: "
                + "; ".join(parts[:5])
                + ("" if len(parts) <= 5 else f"; and {len(parts) - 5} more gaps")
            )
            if 0 < longest <= max_interpolated:
                steps_on_grid = np.where(gaps, whole, 1).astype(int)
                geo.grid_index = [0, *np.cumsum(steps_on_grid).tolist()]
                geo.interpolated = missing
                last_k = geo.grid_index[-1]
                geo.affine = _affine(first, (sorted_positions[-1] - sorted_positions[0]) / last_k)
                detail += f"; filled by linear interpolation (at most {max_interpolated} in a row)"
            elif max_interpolated > 0:
                detail += (
                    f"; not filled: {longest} in a row, more than volumes.max_interpolated "
                    f"({max_interpolated})"
                )
            return verdict(MISSING_SLICES, detail)
        return verdict(
            VARYING_SPACING,
            f"steps from {_fmt(float(steps.min()))} to {_fmt(float(steps.max()))} mm "
            f"(median {_fmt(spacing)} mm, tolerance {_fmt(allowed)} mm)",
        )

    step = (sorted_positions[-1] - sorted_positions[0]) / (n - 1)
    geo.affine = _affine(first, step)
    geo.grid_index = list(range(n))
    return geo


def _finite(*values: Sequence[float]) -> bool:
    return all(math.isfinite(float(v)) for vs in values for v in vs)


def _distinct(orientations: np.ndarray, tolerance: float) -> list[list[float]]:
    kinds: list[np.ndarray] = []
    for o in orientations:
        if not any(np.abs(o - k).max() <= tolerance for k in kinds):
            kinds.append(o)
    return [[float(v) for v in k] for k in kinds]


def _affine(first: Slice, slice_step: np.ndarray) -> np.ndarray:
    """(k, j, i, 1) -> LPS mm, from the first slice (see the module docstring)."""
    iop = np.asarray(first.orientation, dtype=float)
    row_spacing, column_spacing = first.pixel_spacing or (1.0, 1.0)
    affine = np.eye(4)
    affine[:3, 0] = slice_step
    affine[:3, 1] = iop[3:6] * float(row_spacing)
    affine[:3, 2] = iop[:3] * float(column_spacing)
    affine[:3, 3] = np.asarray(first.position, dtype=float)
    return affine


# --------------------------------------------------------------------------------------
# Slices from the scans columns and the DICOM JSON header
# --------------------------------------------------------------------------------------

_PER_FRAME = "52009230"  # Per-frame Functional Groups Sequence
_SHARED = "52009229"  # Shared Functional Groups Sequence
_PLANE_POSITION = "00209113"  # Plane Position Sequence
_PLANE_ORIENTATION = "00209116"  # Plane Orientation Sequence
_PIXEL_MEASURES = "00289110"  # Pixel Measures Sequence
_IPP = "00200032"
_IOP = "00200037"
_PIXEL_SPACING = "00280030"
_SLICE_THICKNESS = "00180050"
_GRID_FRAME_OFFSETS = "3004000C"  # Grid Frame Offset Vector (RT Dose)


def _item(element: Any) -> Mapping[str, Any] | None:
    """The first item of a sequence element of DICOM JSON (PS3.18 F.2), or None."""
    if not isinstance(element, Mapping):
        return None
    value = element.get("Value")
    if isinstance(value, list) and value and isinstance(value[0], Mapping):
        return value[0]
    return None


def _numbers(group: Mapping[str, Any] | None, tag: str) -> list[float] | None:
    if group is None:
        return None
    element = group.get(tag)
    if not isinstance(element, Mapping) or not isinstance(element.get("Value"), list):
        return None
    try:
        return [float(v) for v in element["Value"]]
    except (TypeError, ValueError):
        return None


def _from_groups(
    groups: Sequence[Mapping[str, Any] | None], sequence: str, tag: str
) -> list[float] | None:
    """``tag`` inside ``sequence`` of the first group (per-frame, then shared) that has it."""
    for group in groups:
        if group is None:
            continue
        values = _numbers(_item(group.get(sequence)), tag)
        if values is not None:
            return values
    return None


@dataclass(frozen=True)
class FramePlane:
    """Plane attributes of one frame of an enhanced multi-frame object."""

    position: list[float] | None
    orientation: list[float] | None
    pixel_spacing: list[float] | None
    thickness: float | None


def frame_planes(header: Mapping[str, Any] | str) -> list[FramePlane] | None:
    """Per-frame planes of an enhanced multi-frame object from its DICOM JSON header.

    Position from Per-frame Functional Groups Sequence (5200,9230) > Plane Position Sequence
    (0020,9113) > Image Position (Patient); orientation from Plane Orientation Sequence
    (0020,9116), pixel spacing and thickness from Pixel Measures Sequence (0028,9110), each
    taken from the frame's item, else from Shared Functional Groups Sequence (5200,9229) (the
    standard allows either place). None when the header has no per-frame groups.
    """
    ds = json.loads(header) if isinstance(header, str) else header
    per_frame = ds.get(_PER_FRAME)
    if not isinstance(per_frame, Mapping) or not isinstance(per_frame.get("Value"), list):
        return None
    shared = _item(ds.get(_SHARED))
    planes = []
    for item in per_frame["Value"]:
        groups = (item if isinstance(item, Mapping) else None, shared)
        thickness = _from_groups(groups, _PIXEL_MEASURES, _SLICE_THICKNESS)
        planes.append(
            FramePlane(
                position=_from_groups(groups, _PLANE_POSITION, _IPP),
                orientation=_from_groups(groups, _PLANE_ORIENTATION, _IOP),
                pixel_spacing=_from_groups(groups, _PIXEL_MEASURES, _PIXEL_SPACING),
                thickness=thickness[0] if thickness else None,
            )
        )
    return planes


def _grid_frames(
    uid: str,
    position: tuple[float, float, float],
    orientation: tuple[float, float, float, float, float, float],
    offsets: list[float],
    rows: int | None,
    columns: int | None,
    spacing: tuple[float, float] | None,
) -> list[Slice]:
    """Frames of a multi-frame object placed by Grid Frame Offset Vector (3004,000C) (RT Dose,
    PS3.3 C.8.8.3.2): frame f lies at Image Position (Patient) + (o[f] - o[0]) along the normal.
    With o[0] = 0 the offsets are relative to the position; the older absolute form (o[0] the
    z of the position, axial planes only) gives the same by subtracting o[0]."""
    normal = slice_normal(orientation)
    origin = np.asarray(position, dtype=float)
    return [
        Slice(
            uid,
            f,
            tuple(float(v) for v in origin + (o - offsets[0]) * normal),  # type: ignore[arg-type]
            orientation,
            rows,
            columns,
            spacing,
            None,
        )
        for f, o in enumerate(offsets)
    ]


def _tuple(values: Sequence[float] | None, length: int) -> Any:
    if values is None or len(values) != length:
        return None
    return tuple(float(v) for v in values)


def slices_of_instance(row: Mapping[str, Any]) -> list[Slice]:
    """The slices of one ``scans`` row (its columns; ``header_json`` for multi-frame objects).

    A single-frame instance is one slice with its top-level Image Position / Orientation. A
    multi-frame instance (or an enhanced one of one frame, which has no top-level position)
    gives one slice per frame from its functional groups (:func:`frame_planes`), else, for RT
    Dose, from Grid Frame Offset Vector (3004,000C); one without either gives frames without
    position (they cannot be placed: cine, NM, ultrasound), which makes the series
    ``no_geometry``.
    """
    uid = row["sop_instance_uid"]
    rows, columns = row.get("rows"), row.get("columns")
    frames = int(row.get("number_of_frames") or 1)
    spacing = _tuple(row.get("pixel_spacing"), 2)
    thickness = row.get("slice_thickness")
    # An enhanced object of one frame keeps its geometry in its functional groups too.
    in_groups = row.get("image_position_patient") is None and bool(row.get("header_json"))
    if frames <= 1 and not in_groups:
        return [
            Slice(
                uid,
                0,
                _tuple(row.get("image_position_patient"), 3),
                _tuple(row.get("image_orientation_patient"), 6),
                rows,
                columns,
                spacing,
                thickness,
            )
        ]
    header = json.loads(row["header_json"]) if row.get("header_json") else {}
    planes = frame_planes(header) if header else None
    top_orientation = row.get("image_orientation_patient")
    if planes is None:
        offsets = _numbers(header, _GRID_FRAME_OFFSETS)
        position = _tuple(row.get("image_position_patient"), 3)
        orientation = _tuple(top_orientation, 6)
        if offsets and len(offsets) == frames and position and orientation:
            return _grid_frames(uid, position, orientation, offsets, rows, columns, spacing)
    if planes is None or len(planes) != frames:
        note = (
            "multi-frame without Plane Position Sequence (0020,9113) per frame"
            if planes is None
            else f"Per-frame Functional Groups Sequence (5200,9230) has {len(planes)} items "
            f"for {frames} frames"
        )
        return [
            Slice(uid, f, None, None, rows, columns, spacing, thickness, note)
            for f in range(frames)
        ]
    return [
        Slice(
            uid,
            f,
            _tuple(p.position, 3),
            _tuple(p.orientation or top_orientation, 6),
            rows,
            columns,
            _tuple(p.pixel_spacing, 2) or spacing,
            p.thickness if p.thickness is not None else thickness,
        )
        for f, p in enumerate(planes)
    ]
