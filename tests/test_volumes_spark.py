"""Series as volumes on Spark: the ``series`` table from a real ingest of synthetic CT series."""

from __future__ import annotations

import numpy as np
import pytest

from medspark.config import PipelineConfig, with_overrides
from medspark.volumes.synthetic import sphere_hu, write_series

# Anisotropic CT: 2.5 mm between slices, 0.8 x 0.7 mm pixels (rows, columns).
SPACING = (2.5, 0.8, 0.7)
SHAPE = (16, 40, 44)
RADIUS = 11.0
CENTER = (19.0, 15.6, 15.4)  # mm from the first voxel, (slice, row, column)
ORIGIN = (-15.0, -20.0, 40.0)
STUDY = "1.2.826.0.1.3680043.8.498.1"
UIDS = {
    "sphere": "1.2.826.0.1.3680043.8.498.11",
    "missing": "1.2.826.0.1.3680043.8.498.12",
    "mixed": "1.2.826.0.1.3680043.8.498.13",
}


@pytest.fixture(scope="module")
def volumes_warehouse(spark, tmp_path_factory):
    src = tmp_path_factory.mktemp("volumes_src")
    hu = sphere_hu(SHAPE, SPACING, CENTER, RADIUS)
    write_series(src / "a", hu, SPACING, series_uid=UIDS["sphere"], study_uid=STUDY, origin=ORIGIN)
    write_series(
        src / "b", hu, SPACING, series_uid=UIDS["missing"], study_uid=STUDY, skip=(5,), seed=1
    )
    write_series(src / "c", hu[:3], SPACING, series_uid=UIDS["mixed"], study_uid=STUDY, seed=2)
    write_series(
        src / "c2",
        hu[3:4, :20, :20],
        SPACING,
        series_uid=UIDS["mixed"],
        study_uid=STUDY,
        first_slice=3,
        seed=3,
    )
    config = with_overrides(PipelineConfig(), warehouse=str(tmp_path_factory.mktemp("vol_wh")))
    from medspark.pipeline import ingest

    ingest(spark, [str(src)], config)
    return {"config": config, "hu": hu}


def _rows(spark, config, name):
    return spark.read.format("delta").load(config.table_path(name)).collect()


def test_series_table_after_ingest(spark, volumes_warehouse, pseudo):
    config = volumes_warehouse["config"]
    by_uid = {r["series_instance_uid"]: r for r in _rows(spark, config, "series")}
    # Keys are the pseudonyms scans holds, never the original UIDs.
    assert set(by_uid) == {pseudo.uid(u) for u in UIDS.values()}
    scans_series = {r["series_instance_uid"] for r in _rows(spark, config, "scans")}
    assert set(by_uid) == scans_series

    sphere = by_uid[pseudo.uid(UIDS["sphere"])]
    assert sphere["verdict"] == "regular" and sphere["verdict_detail"] is None
    assert (sphere["instances"], sphere["frames"]) == (16, 16)
    assert (sphere["rows"], sphere["columns"]) == (40, 44)
    assert sphere["pixel_spacing"] == [0.8, 0.7]
    assert sphere["slice_spacing"] == pytest.approx(2.5)
    assert sphere["slice_thickness"] == pytest.approx(2.5)
    assert sphere["first_position"] == pytest.approx(list(ORIGIN))
    assert sphere["last_position"] == pytest.approx([ORIGIN[0], ORIGIN[1], ORIGIN[2] + 37.5])
    assert sphere["orientation"] == [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    assert sphere["acquisition_seconds"] == 15.0  # one slice a second (whole seconds in DICOM TM)
    affine = np.array(sphere["affine"]).reshape(4, 4)
    assert (affine @ [15, 39, 43, 1])[:3] == pytest.approx(
        [ORIGIN[0] + 43 * 0.7, ORIGIN[1] + 39 * 0.8, ORIGIN[2] + 37.5]
    )
    assert sphere["modality"] == "CT" and sphere["body_part_examined"] == "CHEST"

    missing = by_uid[pseudo.uid(UIDS["missing"])]
    assert missing["verdict"] == "missing_slices" and missing["instances"] == 15
    assert "1 missing" in missing["verdict_detail"]
    assert "after slice 5 of 15 (at 10 mm)" in missing["verdict_detail"]
    assert missing["affine"] is None

    mixed = by_uid[pseudo.uid(UIDS["mixed"])]
    assert mixed["verdict"] == "mixed_size" and "20x20" in mixed["verdict_detail"]
