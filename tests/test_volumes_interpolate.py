"""Missing slices filled by interpolation (volumes.missing_slices: interpolate), without Spark:
the geometry, a sphere's volume, real files assembled, and the DICOM SEG's references."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import scans_row
from test_volumes_geometry import _stack

from medspark.volumes.assemble import (
    IRREGULAR_SERIES,
    VolumeError,
    VolumeSettings,
    assemble_volume,
    fill_missing_slices,
)
from medspark.volumes.geometry import MISSING_SLICES, analyse_series
from medspark.volumes.series import summarise_series
from medspark.volumes.synthetic import sphere_hu, sphere_volume_ml, write_series


def test_gaps_within_the_limit_keep_the_verdict_and_get_a_grid():
    zs = [2.0 * k for k in range(10)]
    for removed, filled in (({6}, 1), ({6, 7}, 2), ({2, 6, 7}, 3)):
        geo = analyse_series(_stack([z for k, z in enumerate(zs) if k not in removed]), None, 2)
        assert geo.verdict == MISSING_SLICES and geo.interpolated == filled
        assert geo.grid_index == [k for k in range(10) if k not in removed]
        assert geo.grid_slices == 10 and "filled by linear interpolation" in geo.detail
        assert geo.affine[:3, 0] == pytest.approx([0.0, 0.0, 2.0])  # the full grid's step
        assert geo.affine[:3, 3] == pytest.approx([-100.0, -120.0, 0.0])
    # Longer than the limit, or no limit (flag): flagged as before, no grid.
    three = _stack([z for k, z in enumerate(zs) if k not in (4, 5, 6)])
    geo = analyse_series(three, None, 2)
    assert geo.interpolated == 0 and geo.affine is None and not geo.assemblable
    assert "not filled: 3 in a row, more than volumes.max_interpolated (2)" in geo.detail
    flagged = analyse_series(_stack([z for k, z in enumerate(zs) if k != 6]))
    assert flagged.interpolated == 0 and flagged.affine is None
    assert "filled" not in flagged.detail


def test_fill_is_linear_between_the_neighbours():
    array = np.zeros((5, 2, 2), np.float32)
    array[0], array[4] = 10.0, 50.0
    acquired = np.array([True, False, False, False, True])
    assert fill_missing_slices(array, acquired) == [1, 2, 3]
    assert array[:, 0, 0].tolist() == [10.0, 20.0, 30.0, 40.0, 50.0]
    with pytest.raises(ValueError):
        fill_missing_slices(array, np.array([False, True, True, True, True]))


@pytest.mark.parametrize("removed", [(8,), (8, 9), (5,), (5, 6)])
def test_sphere_volume_stays_within_3_percent_of_the_complete_series(removed):
    # A 12 mm ball on 2.5 mm slices (0.8 mm pixels), partial volume modelled; slices removed
    # through its middle (8, 9) and its flank (5, 6), where its section changes fastest.
    spacing, radius = (2.5, 0.8, 0.8), 12.0
    hu = sphere_hu((18, 40, 40), spacing, (21.0, 15.6, 15.6), radius).astype(np.float32)
    zs = [spacing[0] * k for k in range(18)]
    kept = [k for k in range(18) if k not in removed]
    geo = analyse_series(_stack([zs[k] for k in kept]), None, 2)
    assert geo.interpolated == len(removed)
    array = np.full(hu.shape, np.nan, np.float32)
    acquired = np.zeros(18, bool)
    for m, i in enumerate(geo.order):
        array[geo.grid_index[m]] = hu[kept[i]]
        acquired[geo.grid_index[m]] = True
    assert fill_missing_slices(array, acquired) == list(removed)
    voxel_ml = float(np.prod(spacing)) / 1000
    complete = float((hu > -420).sum()) * voxel_ml
    filled = float((array > -420).sum()) * voxel_ml
    gapped = float((hu[kept] > -420).sum()) * voxel_ml  # the slices alone, stacked
    assert abs(complete - sphere_volume_ml(radius)) / sphere_volume_ml(radius) < 0.03
    assert abs(filled - complete) / complete < 0.03, (filled, complete)
    assert abs(gapped - complete) / complete > 0.05  # leaving the gap out is not close


@pytest.fixture()
def ramp_with_gap(tmp_path):
    """Slices 0-6 of a volume linear along the normal (100 HU a slice), slice 3 not written."""
    k, j, i = np.mgrid[0:7, 0:5, 0:6]
    hu = (100 * k + 10 * j + i - 500).astype(np.int16)
    paths = write_series(
        tmp_path / "s", hu, (3.0, 0.9, 0.6), series_uid="1.2.3.4.6", study_uid="1.2.3.4", skip=[3]
    )
    return hu, [scans_row(p) for p in paths]


def test_assembled_volume_fills_the_gap_and_the_series_row_counts_it(ramp_with_gap):
    hu, rows = ramp_with_gap
    with pytest.raises(VolumeError) as err:
        assemble_volume(rows, VolumeSettings())  # flag: not assembled
    assert err.value.error_class == IRREGULAR_SERIES and "missing_slices" in str(err.value)
    volume = assemble_volume(rows, VolumeSettings(max_interpolated=2))
    assert volume.array.shape == (7, 5, 6) and volume.interpolated == [3]
    # Linear along the normal: the interpolated slice is the true one.
    assert np.array_equal(volume.array, hu.astype(np.float32))
    assert volume.slices[3] is None and sum(s is not None for s in volume.slices) == 6
    assert volume.spacing == pytest.approx((3.0, 0.9, 0.6), abs=1e-4)
    row = summarise_series(rows, max_interpolated=2)
    assert (row["verdict"], row["interpolated_slices"], row["frames"]) == (MISSING_SLICES, 1, 6)
    assert summarise_series(rows)["interpolated_slices"] == 0


def test_seg_refers_only_to_the_acquired_instances(tmp_path):
    import pydicom

    from medspark.volumes.dicom_seg import seg_header
    from medspark.volumes.segment import VolumeModel
    from medspark.volumes.steps import VolumeTask, write_seg
    from medspark.volumes.transforms import VolumePreprocess

    spacing = (2.5, 0.8, 0.7)
    hu = sphere_hu((16, 40, 44), spacing, (19.0, 15.6, 15.4), 11.0)
    paths = write_series(
        tmp_path / "src", hu, spacing, series_uid="1.2.3.9.1", study_uid="1.2.3.9", skip=[7, 8]
    )
    rows = []
    for p in paths:
        row = scans_row(p)
        row["seg_header"] = seg_header(row["header_json"])
        rows.append(row)
    volume = assemble_volume(rows, VolumeSettings(max_interpolated=2))
    assert volume.interpolated == [7, 8]
    labels = (volume.array > -420).astype(np.uint8)
    assert labels[7].any() and labels[8].any()  # the ball crosses the filled slices
    model = VolumeModel(name="threshold", version="1", path="none", labels=("sphere",))
    task = VolumeTask(VolumeSettings(), VolumePreprocess(), model, seg_root=str(tmp_path / "wh"))
    source_grid = (volume.affine, volume.array.shape, volume.slices)
    relative = write_seg(rows, labels, volume.affine, source_grid, task)
    ds = pydicom.dcmread(tmp_path / "wh" / relative)
    referenced = {
        item.ReferencedSOPInstanceUID
        for series in ds.ReferencedSeriesSequence
        for item in series.ReferencedInstanceSequence
    }
    real = {r["sop_instance_uid"] for r in rows}
    assert len(real) == 14 and referenced == real
    # Every frame derives from an acquired instance; none stands for slices 7 and 8.
    sources = {
        src.ReferencedSOPInstanceUID
        for frame in ds.PerFrameFunctionalGroupsSequence
        for derivation in frame.DerivationImageSequence
        for src in derivation.SourceImageSequence
    }
    assert sources <= real
    positions = sorted(
        float(f.PlanePositionSequence[0].ImagePositionPatient[2])
        for f in ds.PerFrameFunctionalGroupsSequence
    )
    acquired_z = {round(float(r["image_position_patient"][2]), 3) for r in rows}
    assert {round(z, 3) for z in positions} <= acquired_z
    assert not {round(7 * 2.5, 3), round(8 * 2.5, 3)} & {round(z, 3) for z in positions}
