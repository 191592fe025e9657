"""The one-pass ``run``: the same tables as ``ingest``, ``preprocess`` and ``infer`` in turn.

Pure tests of :func:`medspark.onepass.process_units` first (no Spark), then one comparison on
Spark: real pydicom files (CT, MR, ultrasound with and without regions, multi-frame, broken
ones, a copy of one file in a zip: a duplicate) go through both flows into two warehouses, and
every table must hold the same rows, apart from run ids, times and worker timings.
"""

from __future__ import annotations

import json
import shutil
import zipfile

import pydicom
import pytest
from helpers import RUN_COLUMNS, assert_rows_equal, table_versions
from pydicom.encaps import encapsulate, generate_frames

from medspark.config import DeidConfig, PipelineConfig, with_overrides
from medspark.dicom.deid import Pseudonymizer
from medspark.onepass import (
    FRAME,
    INGEST_ERROR,
    SCAN,
    PassSettings,
    limits,
    process_units,
)
from medspark.pipeline import preprocess_settings
from medspark.sources.dicom_source import plan_partitions
from medspark.tables.schemas import TABLES

NAMES = (
    "CT_small.dcm",
    "MR_small.dcm",
    "examples_ybr_color.dcm",  # ultrasound with regions: cleaned
    "examples_rgb_color.dcm",  # ultrasound without regions: withheld
    "rtdose.dcm",  # 15 frames
    "rtplan.dcm",  # no pixels
    "SC_rgb_rle_2frame.dcm",  # secondary capture, 2 frames
)


def _settings(config: PipelineConfig, secret: bytes = b"pass-secret") -> PassSettings:
    return PassSettings(
        limits=limits(config.ingest),
        preprocess=preprocess_settings(config),
        pseudonymizer=Pseudonymizer(secret, config.deid),
        predict=None,
    )


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, test_files):
    root = tmp_path_factory.mktemp("onepass_in")
    loose = root / "loose"
    loose.mkdir()
    for name in NAMES:
        shutil.copyfile(test_files / name, loose / name)
    (loose / "garbage.dcm").write_bytes(b"not a dicom file at all")
    # A file that ingests but whose second frame cannot be decoded (its RLE segments cut).
    ds = pydicom.dcmread(test_files / "SC_rgb_rle_2frame.dcm")
    first, second = generate_frames(ds.PixelData, number_of_frames=2)
    ds.PixelData = encapsulate([first, second[:100]])
    ds.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=["onepass-cut-frame"])
    ds.save_as(loose / "cut_frame.dcm")
    with zipfile.ZipFile(root / "copy.zip", "w") as zf:  # the same CT again: duplicate_copy
        zf.write(test_files / "CT_small.dcm", "again/CT_small.dcm")
    return [str(loose), str(root / "copy.zip")]


def test_process_units_yields_each_item_once_then_its_frames(inputs):
    config = PipelineConfig()
    settings = _settings(config)
    rows = [
        r
        for units, errors in plan_partitions(inputs, 1, 1 << 30)
        for r in process_units(units, errors, settings)
    ]
    scans = [r for r in rows if r["kind"] == SCAN]
    errors = [r for r in rows if r["kind"] == INGEST_ERROR]
    frames = [r for r in rows if r["kind"] == FRAME]
    assert len(scans) == len(NAMES) + 2 and [e["error_class"] for e in errors] == ["not_dicom"]
    # De-identified before anything leaves the item: the frames carry the pseudonymous UID.
    ct = pydicom.dcmread(inputs[0] + "/CT_small.dcm", stop_before_pixels=True)
    pseudo = settings.pseudonymizer.uid(ct.SOPInstanceUID)
    assert {r["sop_instance_uid"] for r in scans} >= {pseudo}
    assert ct.SOPInstanceUID not in json.dumps([r.get("header_json") for r in scans])
    assert {r["sop_instance_uid"] for r in frames} <= {r["sop_instance_uid"] for r in scans}
    assert sum(r["sop_instance_uid"] == pseudo for r in frames) == 2  # loose and zipped copy
    dose = [r for r in frames if r["original_source_uri"].endswith("rtdose.dcm")]
    # Rows carry location keys; the paths only in original_* (bound for restricted_locations).
    assert all(r["source_uri"].startswith("loc-") for r in rows if r["source_uri"])
    assert [r["frame"] for r in dose] == list(range(15))
    # The true acquisition time stays beside the shifted one, for restricted_acquisitions.
    row = next(r for r in scans if r["sop_instance_uid"] == pseudo and not r["archive_member"])
    assert row["acquired_at"] is not None and row["acquired_at"] != row["acquisition_datetime"]
    # The model is not applied without predict settings; the tensors are there for it.
    assert all(r.get("label") is None for r in frames)


@pytest.mark.spark
def test_preprocess_reads_the_burned_in_rule_inputs_the_pass_reads(spark, test_files):
    """The one burned-in rule gives the same reason on ``pixel_instances``' columns (what
    ``preprocess`` feeds it, extracted in Spark SQL) as on the whole header (what the pass
    feeds it), for real files."""
    from pyspark.sql.types import StructType

    from medspark.dicom.burned_in import burned_in_reason, burned_in_rule
    from medspark.dicom.header import ItemError, parse_header
    from medspark.pipeline import pixel_instances
    from medspark.tables.schemas import HEADER_FIELDS, SOURCE_FIELDS

    rows = []
    for path in sorted(test_files.glob("*.dcm")):
        try:
            header = parse_header(path.read_bytes(), path.name)
        except ItemError:
            continue
        rows.append(
            {
                **header,
                "source_uri": path.name,
                "archive_member": None,
                "size": 1,
                "sha256": "",
                "container": "plain",
            }
        )
    schema = StructType(HEADER_FIELDS + SOURCE_FIELDS)
    df = spark.createDataFrame([tuple(r[f.name] for f in schema) for r in rows], schema)
    sql = {
        r.source_uri: burned_in_rule(r.burned_in_value, r.modality, r.sop_class_uid)
        for r in pixel_instances(df).collect()
    }
    python = {
        r["source_uri"]: burned_in_reason(r["header_json"], r["modality"], r["sop_class_uid"])
        for r in rows
        if r["has_pixels"]
    }
    assert sql == python and sum(v is not None for v in sql.values()) >= 5


def _table(spark, config, table):
    return spark.read.format("delta").load(config.table_path(table))


@pytest.fixture(scope="module")
def steps(spark, inputs, tmp_path_factory):
    """The inputs through ``ingest``, ``preprocess`` and ``infer``, once for both passes."""
    from medspark.pipeline import infer, ingest, preprocess

    deid = DeidConfig(phi_map=True)
    warehouse = tmp_path_factory.mktemp("onepass_steps")
    config = with_overrides(PipelineConfig(), warehouse=str(warehouse), deid=deid)
    ingest(spark, inputs, config)
    preprocess(spark, config)
    infer(spark, config)
    return config


@pytest.mark.spark
@pytest.mark.parametrize("where", ["executors", "driver"])
def test_run_equals_ingest_preprocess_infer(spark, inputs, steps, tmp_path, where):
    """The pass on the executors, or in the driver (a small local input): same tables."""
    import dataclasses

    from medspark.metrics.runs import RunRecord
    from medspark.metrics.spark_stages import job_group
    from medspark.pipeline import run_all

    deid = DeidConfig(phi_map=True)
    driver_bytes = 64 * 1024 * 1024 if where == "driver" else 0
    ingest_config = dataclasses.replace(PipelineConfig().ingest, driver_pass_max_bytes=driver_bytes)
    onepass = with_overrides(
        PipelineConfig(), warehouse=str(tmp_path / "pass"), deid=deid, ingest=ingest_config
    )
    with job_group(spark, "pass-1", "first load"):
        ingested, preprocessed, inferred = run_all(
            spark, inputs, onepass, RunRecord(run_id="pass-1", job="run")
        )
    assert ingested.errors_by_class == {"not_dicom": 1, "duplicate_copy": 1}
    assert preprocessed.errors_by_class == {"undecodable_frame": 1}
    for table in (
        "scans",
        "ingest_errors",
        "images",
        "preprocess_errors",
        "restricted_acquisitions",
        "scanner_utilization",
        "restricted_images",
        "restricted_phi_map",
    ):
        assert_rows_equal(
            _table(spark, onepass, table),
            _table(spark, steps, table),
            keys=TABLES[table].key,
            drop=RUN_COLUMNS,
            what=table,
        )
    # Predictions: the same frames and labels; scores equal up to float noise of batching.
    assert_rows_equal(
        _table(spark, onepass, "predictions"),
        _table(spark, steps, "predictions"),
        keys=TABLES["predictions"].key,
        drop=RUN_COLUMNS,
        approx=["score", "probabilities"],
        what="predictions",
    )
    b = _table(spark, onepass, "predictions").collect()
    assert inferred.frames == len(b) == preprocessed.frames
    from delta.tables import DeltaTable

    for config in (steps, onepass):  # inference.saliency is off by default: no table
        assert not DeltaTable.isDeltaTable(spark, config.table_path("saliency"))

    # A second run of the same input changes no row and commits nothing to a data table.
    written = ("scans", "ingest_errors", "images", "predictions", "restricted_acquisitions")
    written += ("scanner_utilization", "series", "preprocess_errors")

    def versions() -> dict[str, int]:
        return table_versions({t: onepass.table_path(t) for t in written})

    before = versions()
    with job_group(spark, "pass-2", "re-run"):
        again = run_all(spark, inputs, onepass, RunRecord(run_id="pass-2", job="run"))
    assert again[0].scans_inserted == 0 and again[0].scans_updated == 0
    assert versions() == before
    # And it costs about what the first load cost, in Spark jobs (before it cost 5.8x the first
    # load's on 20 slices: bench/bench_run.py).
    tracker = spark.sparkContext.statusTracker()
    first_jobs, rerun_jobs = (len(tracker.getJobIdsForGroup(g)) for g in ("pass-1", "pass-2"))
    print(f"Spark jobs: first load {first_jobs}, re-run {rerun_jobs}")
    assert rerun_jobs <= 1.75 * first_jobs  # measured: 100 vs 64 (driver), 189 vs 124 (executors)
    for table in written[:5]:
        first = _table(spark, steps, table).count()
        assert _table(spark, onepass, table).count() == first, table
    for table in ("scans", "ingest_errors", "images", "predictions", "series"):
        ids = {r[0] for r in _table(spark, onepass, table).select("run_id").distinct().collect()}
        assert "pass-2" not in ids, table
