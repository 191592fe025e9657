"""Series as volumes on Spark: the ``series`` table from a real ingest of synthetic CT series."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from medspark.config import PipelineConfig, VolumeModelConfig, VolumesConfig, with_overrides
from medspark.sources.archives import to_uri
from medspark.volumes.synthetic import (
    save_threshold_model,
    sphere_hu,
    sphere_volume_ml,
    write_series,
)

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
    "corrupt": "1.2.826.0.1.3680043.8.498.14",
    "single": "1.2.826.0.1.3680043.8.498.15",  # one slice: a series, not a volume
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
    corrupt = write_series(
        src / "d", hu[:6], SPACING, series_uid=UIDS["corrupt"], study_uid=STUDY, seed=4
    )
    write_series(src / "e", hu[8:9], SPACING, series_uid=UIDS["single"], study_uid=STUDY, seed=5)
    config = with_overrides(PipelineConfig(), warehouse=str(tmp_path_factory.mktemp("vol_wh")))
    from medspark.pipeline import ingest

    ingest(spark, [str(src)], config)
    data = corrupt[2].read_bytes()
    corrupt[2].write_bytes(data[:-100])  # a slice damaged after ingest
    return {"config": config, "hu": hu, "corrupt": corrupt[2], "corrupt_bytes": data}


def _rows(spark, config, name):
    return spark.read.format("delta").load(config.table_path(name)).collect()


def test_series_table_after_ingest(spark, volumes_warehouse, pseudo):
    config = volumes_warehouse["config"]
    by_uid = {r["series_instance_uid"]: r for r in _rows(spark, config, "series")}
    # Keys are the pseudonyms scans holds, never the original UIDs.
    assert set(by_uid) == {pseudo.uid(u) for u in UIDS.values()}
    assert len(by_uid) == 5
    assert by_uid[pseudo.uid(UIDS["single"])]["verdict"] == "single_slice"
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


def _check_seg_file(spark, config, seg, truth):
    """The DICOM SEG beside the warehouse opens with highdicom and pydicom, refers only to
    instances of scans (pseudonymous UIDs), and its frames hold the segment's volume."""
    import highdicom as hd
    import pydicom

    assert seg["seg_path"] == (f"segmentations/{seg['series_instance_uid']}/threshold-1.dcm")
    path = f"{config.warehouse}/{seg['seg_path']}"
    ds = pydicom.dcmread(path)
    read = hd.seg.segread(path)
    referenced = {
        item.ReferencedSOPInstanceUID
        for series in ds.ReferencedSeriesSequence
        for item in series.ReferencedInstanceSequence
    }
    scans = _rows(spark, config, "scans")
    sops = {
        r["sop_instance_uid"]
        for r in scans
        if r["series_instance_uid"] == seg["series_instance_uid"]
    }
    assert referenced == sops and len(sops) == 16
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == seg["series_instance_uid"]
    patient = {
        r["patient_id"] for r in scans if r["series_instance_uid"] == seg["series_instance_uid"]
    }
    assert {ds.PatientID} == patient and ds.PatientIdentityRemoved == "YES"
    # Frames on the source grid (2.5 x 0.8 x 0.7 mm): the volume the segmented 1 mm grid gave,
    # within the nearest-neighbour resampling back to it.
    voxels = int((read.get_volume(combine_segments=True).array > 0).sum())
    seg_ml = voxels * 2.5 * 0.8 * 0.7 / 1000
    assert abs(seg_ml - seg["volume_ml"]) / seg["volume_ml"] < 0.05, (seg_ml, seg["volume_ml"])
    assert abs(seg_ml - truth) / truth < 0.05


def test_volumes_segments_the_sphere_and_reports_bad_series(
    spark, volumes_warehouse, pseudo, tmp_path
):
    from medspark.volumes.steps import volumes

    model = save_threshold_model(tmp_path / "threshold.ts", 0.5)
    volume_config = VolumesConfig(
        target_spacing=[1.0, 1.0, 1.0],
        intensity_range=[-900.0, 60.0],
        model=VolumeModelConfig(
            path=str(model), labels=["sphere"], name="threshold", version="1", roi_size=[32] * 3
        ),
    )
    config = with_overrides(volumes_warehouse["config"], volumes=volume_config)
    result = volumes(spark, config, "test-volumes-run")
    # The single slice is no volume and no error: its series row says single_slice.
    assert (result.series, result.segmented, result.segments) == (5, 1, 1)
    assert result.peak_rss_bytes > 50 * 2**20  # a Python worker with torch loaded
    assert result.errors_by_class == {"irregular_series": 2, "source_changed": 1}

    (seg,) = _rows(spark, config, "series_segments")
    assert seg["series_instance_uid"] == pseudo.uid(UIDS["sphere"])
    assert (seg["label"], seg["model"], seg["model_version"]) == ("sphere", "threshold", "1")
    truth = sphere_volume_ml(RADIUS)
    assert abs(seg["volume_ml"] - truth) / truth < 0.03
    center = np.array(ORIGIN) + [CENTER[2], CENTER[1], CENTER[0]]  # LPS: i->x, j->y, k->z
    assert np.linalg.norm(np.array(seg["centroid"]) - center) < min(SPACING)
    assert seg["slices"] == 16 and seg["voxel_spacing"] == pytest.approx([1.0, 1.0, 1.0])
    _check_seg_file(spark, config, seg, truth)
    seg_bytes = (Path(config.warehouse) / seg["seg_path"]).read_bytes()

    errors = {r["series_instance_uid"]: r for r in _rows(spark, config, "series_errors")}
    assert errors[pseudo.uid(UIDS["missing"])]["error_class"] == "irregular_series"
    assert "missing_slices" in errors[pseudo.uid(UIDS["missing"])]["message"]
    assert "mixed_size" in errors[pseudo.uid(UIDS["mixed"])]["message"]
    damaged = errors[pseudo.uid(UIDS["corrupt"])]
    assert damaged["error_class"] == "source_changed"
    # Named by its location key (series_errors is an analyst table), never by its path.
    corrupt = volumes_warehouse["corrupt"]
    assert pseudo.location_keys(to_uri(corrupt), None)[0] in damaged["message"]
    assert corrupt.name not in damaged["message"]

    # The damaged file restored: a second run segments that series too and clears its error
    # row; the sphere's row is updated, not added again.
    volumes_warehouse["corrupt"].write_bytes(volumes_warehouse["corrupt_bytes"])
    # This second run goes through medspark run's hook (volumes.in_run): the series of the
    # ingest's run, all five here, are segmented again; a run that wrote no scans row, or
    # in_run off, touches nothing.
    from medspark.metrics.runs import RunRecord
    from medspark.volumes.steps import volumes_after_run

    assert volumes_after_run(spark, config, RunRecord(run_id="x", job="run")) is None
    in_run = with_overrides(config, volumes=dataclasses.replace(config.volumes, in_run=True))
    assert volumes_after_run(spark, in_run, RunRecord(run_id="none", job="run")) is None
    (ingest_run,) = {r["run_id"] for r in _rows(spark, config, "scans")}
    record = RunRecord(run_id=ingest_run, job="run", items_in=7)
    again = volumes_after_run(spark, in_run, record)
    assert (again.series, again.segmented, again.errors_cleared) == (5, 2, 1)
    assert record.rows_out == {"series_segments": 2, "series_errors": 2}
    assert record.items_in == 7 and record.errors == 2
    segments = _rows(spark, config, "series_segments")
    assert sorted(r["series_instance_uid"] for r in segments) == sorted(
        pseudo.uid(UIDS[k]) for k in ("sphere", "corrupt")
    )
    # The sphere's row was there, unchanged: it keeps the first run's id (no commit for it).
    assert {r["series_instance_uid"]: r["run_id"] for r in segments} == {
        pseudo.uid(UIDS["sphere"]): result.run_id,
        pseudo.uid(UIDS["corrupt"]): ingest_run,
    }
    # The rerun wrote the same SEG bytes at the same path; the restored series got its own.
    assert result.seg_files == 1 and again.seg_files == 2
    paths = sorted((Path(config.warehouse) / "segmentations").rglob("*"))
    assert [p.name for p in paths if p.is_file()] == ["threshold-1.dcm"] * 2
    assert (Path(config.warehouse) / seg["seg_path"]).read_bytes() == seg_bytes
    remaining = {r["series_instance_uid"] for r in _rows(spark, config, "series_errors")}
    assert remaining == {pseudo.uid(UIDS["missing"]), pseudo.uid(UIDS["mixed"])}


def test_missing_slice_interpolated_on_spark(spark, volumes_warehouse, pseudo, tmp_path):
    """volumes.missing_slices: interpolate through medspark volumes: the series with one slice
    missing keeps its verdict, counts the slice in interpolated_slices, is segmented (the
    ball's volume as the complete series gives it), and its SEG refers to the 15 acquired
    instances only."""
    import pydicom

    from medspark.volumes.steps import volumes

    model = save_threshold_model(tmp_path / "threshold.ts", 0.5)
    config = with_overrides(
        volumes_warehouse["config"],
        volumes=VolumesConfig(
            target_spacing=[1.0, 1.0, 1.0],
            intensity_range=[-900.0, 60.0],
            missing_slices="interpolate",
            model=VolumeModelConfig(
                path=str(model), labels=["sphere"], name="threshold", version="1", roi_size=[32] * 3
            ),
        ),
    )
    volumes(spark, config, "test-interpolate-run")
    uid = pseudo.uid(UIDS["missing"])
    series = {r["series_instance_uid"]: r for r in _rows(spark, config, "series")}
    assert series[uid]["verdict"] == "missing_slices" and series[uid]["interpolated_slices"] == 1
    assert series[pseudo.uid(UIDS["sphere"])]["interpolated_slices"] == 0
    segments = {r["series_instance_uid"]: r for r in _rows(spark, config, "series_segments")}
    filled, complete = segments[uid], segments[pseudo.uid(UIDS["sphere"])]
    assert filled["slices"] == 16  # 15 acquired + 1 interpolated
    assert abs(filled["volume_ml"] - complete["volume_ml"]) / complete["volume_ml"] < 0.03
    errors = {r["series_instance_uid"] for r in _rows(spark, config, "series_errors")}
    assert uid not in errors
    ds = pydicom.dcmread(Path(config.warehouse) / filled["seg_path"])
    referenced = {
        item.ReferencedSOPInstanceUID
        for s in ds.ReferencedSeriesSequence
        for item in s.ReferencedInstanceSequence
    }
    acquired = {
        r["sop_instance_uid"]
        for r in _rows(spark, config, "scans")
        if r["series_instance_uid"] == uid
    }
    assert referenced == acquired and len(acquired) == 15
