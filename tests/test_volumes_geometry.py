"""Series geometry on series whose truth is known (pure numpy, no Spark)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from medspark.volumes.geometry import (
    DUPLICATE_POSITIONS,
    GANTRY_TILT,
    MISSING_SLICES,
    MIXED_ORIENTATION,
    MIXED_SIZE,
    NO_GEOMETRY,
    REGULAR,
    SINGLE_SLICE,
    VARYING_SPACING,
    Slice,
    analyse_series,
    frame_planes,
    slice_normal,
    slices_of_instance,
)

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def _stack(
    zs: list[float],
    orientation: tuple[float, ...] = AXIAL,
    origin: tuple[float, float, float] = (-100.0, -120.0, 0.0),
    spacing: tuple[float, float] = (0.7, 0.8),
    size: tuple[int, int] = (64, 48),
) -> list[Slice]:
    """Slices at distance z along the normal of ``orientation`` from ``origin``; UIDs numbered
    in list order (so file order = list order)."""
    n = slice_normal(orientation)
    return [
        Slice(
            f"1.2.3.{i}",
            0,
            tuple(float(v) for v in np.asarray(origin) + z * n),
            orientation,
            size[0],
            size[1],
            spacing,
            2.0,
        )
        for i, z in enumerate(zs)
    ]


def test_normal_is_row_cross_column():
    assert slice_normal(AXIAL).tolist() == [0.0, 0.0, 1.0]
    # Sagittal: rows along P (+y), columns along -z (feet): normal = (0,1,0) x (0,0,-1) = -x.
    assert slice_normal((0, 1, 0, 0, 0, -1)).tolist() == [-1.0, 0.0, 0.0]


def test_shuffled_order_is_sorted_geometrically():
    slices = _stack([2.5 * k for k in range(20)])
    shuffled = slices[:]
    random.Random(7).shuffle(shuffled)
    geo = analyse_series(shuffled)
    assert geo.verdict == REGULAR and geo.detail is None
    assert [shuffled[i].sop_instance_uid for i in geo.order] == [s.sop_instance_uid for s in slices]
    assert geo.slice_spacing == pytest.approx(2.5)
    assert geo.first_position == (-100.0, -120.0, 0.0)
    assert geo.last_position == (-100.0, -120.0, 47.5)


def test_descending_positions_give_the_same_volume_ascending():
    slices = _stack([30.0 - 1.25 * k for k in range(12)])  # file order head to feet
    geo = analyse_series(slices)
    assert geo.verdict == REGULAR
    assert geo.order == list(range(11, -1, -1))
    assert geo.slice_spacing == pytest.approx(1.25)
    # (k, j, i) -> LPS: voxel (k=11, j=2, i=3) is slice at z=30, row 2 (y + 2*0.7), col 3.
    point = geo.affine @ np.array([11, 2, 3, 1.0])
    assert point[:3] == pytest.approx([-100 + 3 * 0.8, -120 + 2 * 0.7, 30.0])


def test_oblique_orientation_spacing_and_affine():
    # Rows along (cos a, sin a, 0), columns along (0, 0, -1) rotated: a double-oblique plane.
    a, b = np.radians(25.0), np.radians(-10.0)
    x = np.array([np.cos(a), np.sin(a), 0.0])
    y = np.array([-np.sin(a) * np.sin(b), np.cos(a) * np.sin(b), -np.cos(b)])
    y -= (y @ x) * x
    y /= np.linalg.norm(y)
    orientation = tuple(float(v) for v in (*x, *y))
    slices = _stack([3.3 * k for k in range(15)], orientation=orientation, origin=(5.0, -7.0, 9.0))
    random.Random(3).shuffle(slices)
    geo = analyse_series(slices)
    assert geo.verdict == REGULAR
    assert geo.slice_spacing == pytest.approx(3.3)
    normal = np.cross(x, y)
    assert geo.normal == pytest.approx(normal)
    # Each input slice's first voxel, through the affine, is its own Image Position (Patient).
    for k, i in enumerate(geo.order):
        assert (geo.affine @ [k, 0, 0, 1])[:3] == pytest.approx(slices[i].position, abs=1e-9)
    # Row and column steps: Y * row spacing, X * column spacing.
    assert geo.affine[:3, 1] == pytest.approx(y * 0.7)
    assert geo.affine[:3, 2] == pytest.approx(x * 0.8)


def test_missing_slice_says_where():
    zs = [2.0 * k for k in range(10) if k != 6]
    geo = analyse_series(_stack(zs))
    assert geo.verdict == MISSING_SLICES
    assert geo.slice_spacing == pytest.approx(2.0)
    assert "1 missing" in geo.detail and "after slice 6 of 9 (at 10 mm)" in geo.detail
    assert geo.affine is None


def test_duplicate_position():
    zs = [1.5 * k for k in range(8)] + [4.5]
    geo = analyse_series(_stack(zs))
    assert geo.verdict == DUPLICATE_POSITIONS
    assert "1 slices share a position" in geo.detail and "4.5" in geo.detail


def test_varying_spacing():
    geo = analyse_series(_stack([0.0, 1.0, 2.0, 3.0, 4.4, 5.4, 6.4]))
    assert geo.verdict == VARYING_SPACING
    assert "1.4" in geo.detail


def test_mixed_sizes():
    slices = _stack([0.0, 1.0, 2.0]) + _stack([3.0], size=(32, 32))
    geo = analyse_series(slices)
    assert geo.verdict == MIXED_SIZE
    assert "32x32" in geo.detail and "64x48" in geo.detail
    spacing = _stack([0.0, 1.0]) + _stack([2.0], spacing=(0.5, 0.5))
    assert analyse_series(spacing).verdict == MIXED_SIZE


def test_mixed_orientation():
    slices = _stack([0.0, 1.0, 2.0]) + _stack([0.0], orientation=(0, 1, 0, 0, 0, -1))
    geo = analyse_series(slices)
    assert geo.verdict == MIXED_ORIENTATION
    assert "2 orientations" in geo.detail


def test_gantry_tilt():
    # Axial cosines tilted 15 deg about x; the table moves along z, not along the normal.
    t = np.radians(15.0)
    orientation = (1.0, 0.0, 0.0, 0.0, float(np.cos(t)), float(np.sin(t)))
    slices = [
        Slice(f"u{k}", 0, (0.0, 0.0, 2.0 * k), orientation, 16, 16, (0.5, 0.5), 2.0)
        for k in range(10)
    ]
    geo = analyse_series(slices)
    assert geo.verdict == GANTRY_TILT
    assert "tilt 15.00 deg" in geo.detail


def test_rounded_positions_are_still_regular():
    # Positions written with 2 decimals (DS), spacing 0.625 mm.
    slices = _stack([round(0.625 * k, 2) for k in range(40)])
    assert analyse_series(slices).verdict == REGULAR


def test_single_slice_and_no_geometry():
    one = analyse_series(_stack([5.0]))
    assert one.verdict == SINGLE_SLICE
    assert one.affine[:3, 0] == pytest.approx([0, 0, 2.0])  # slice thickness along the normal
    assert analyse_series([]).verdict == NO_GEOMETRY
    bare = [Slice("u", 0, None, None, 8, 8)]
    geo = analyse_series(_stack([0.0, 1.0]) + bare)
    assert geo.verdict == NO_GEOMETRY and "1 of 3 slices" in geo.detail


def _seq(*items: dict) -> dict:
    return {"vr": "SQ", "Value": list(items)}


def _ds(tag_values: dict) -> dict:
    return {tag: {"vr": "DS", "Value": value} for tag, value in tag_values.items()}


def _enhanced_header(zs: list[float], per_frame_orientation: bool) -> str:
    shared = {
        "00289110": _seq(_ds({"00280030": [0.5, 0.6], "00180050": [1.0]})),
    }
    frames = []
    for z in zs:
        item = {"00209113": _seq(_ds({"00200032": [-10.0, 20.0, z]}))}
        if per_frame_orientation:
            item["00209116"] = _seq(_ds({"00200037": list(AXIAL)}))
        frames.append(item)
    if not per_frame_orientation:
        shared["00209116"] = _seq(_ds({"00200037": list(AXIAL)}))
    return json.dumps({"52009229": _seq(shared), "52009230": _seq(*frames)})


@pytest.mark.parametrize("per_frame_orientation", [True, False])
def test_enhanced_multiframe_positions_from_functional_groups(per_frame_orientation):
    zs = [9.0, 3.0, 6.0, 0.0, 12.0]  # frames stored out of order
    header = _enhanced_header(zs, per_frame_orientation)
    planes = frame_planes(header)
    assert [p.position[2] for p in planes] == zs
    assert all(p.pixel_spacing == [0.5, 0.6] and p.thickness == 1.0 for p in planes)
    row = {
        "sop_instance_uid": "1.9",
        "rows": 32,
        "columns": 32,
        "number_of_frames": 5,
        "pixel_spacing": [0.5, 0.6],
        "slice_thickness": 1.0,
        "image_position_patient": None,
        "image_orientation_patient": None,
        "header_json": header,
    }
    slices = slices_of_instance(row)
    geo = analyse_series(slices)
    assert geo.verdict == REGULAR
    assert [slices[i].frame for i in geo.order] == [3, 1, 2, 0, 4]
    assert geo.slice_spacing == pytest.approx(3.0)
    assert (geo.affine @ [4, 1, 1, 1])[:3] == pytest.approx([-10 + 0.6, 20 + 0.5, 12.0])


def test_multiframe_without_per_frame_positions_has_no_geometry():
    row = {
        "sop_instance_uid": "1.8",
        "rows": 8,
        "columns": 8,
        "number_of_frames": 3,
        "image_position_patient": [0.0, 0.0, 0.0],
        "image_orientation_patient": list(AXIAL),
        "header_json": "{}",
    }
    geo = analyse_series(slices_of_instance(row))
    assert geo.verdict == NO_GEOMETRY and "3 of 3 slices" in geo.detail


def _real(test_files, *names):
    from medspark.dicom.header import parse_header

    rows = [parse_header((test_files / n).read_bytes(), n) for n in names]
    return [s for r in rows for s in slices_of_instance(r)]


def test_real_files(test_files):
    """pydicom's real files: an RT Dose grid placed by Grid Frame Offset Vector (3004,000C),
    one MR image in three encodings (same place), an enhanced SEG whose per-frame groups do not
    match its frame count."""
    dose = analyse_series(_real(test_files, "rtdose.dcm"))
    assert dose.verdict == REGULAR and len(dose.order) == 15
    assert dose.slice_spacing == pytest.approx(5.0)
    assert dose.first_position == pytest.approx((189.43125, 199.43125, -761.87))
    assert dose.last_position == pytest.approx((189.43125, 199.43125, -691.87))
    assert (dose.rows, dose.columns, dose.pixel_spacing) == (10, 10, (10.0, 10.0))

    mr = analyse_series(
        _real(test_files, "MR_small.dcm", "MR_small_RLE.dcm", "MR_small_bigendian.dcm")
    )
    assert mr.verdict == DUPLICATE_POSITIONS
    assert "2 slices share a position with another, at 6.6406 mm" in mr.detail

    seg = analyse_series(_real(test_files, "liver_1frame.dcm"))
    assert seg.verdict == NO_GEOMETRY
    assert "has 3 items for 1 frames" in seg.detail
