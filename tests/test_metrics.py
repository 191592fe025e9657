"""Run bookkeeping and utilisation: job_runs, stage_metrics, worker_metrics, scanner_utilization."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from deltalake import DeltaTable
from pyspark.sql import functions as F

from medspark.config import PipelineConfig, with_overrides
from medspark.demo import STATIONS, build_screening_export
from medspark.metrics.runs import recorded_run
from medspark.pipeline import new_run_id, run_all

pytestmark = pytest.mark.spark

N_PATIENTS, SLICES = 6, 3


@pytest.fixture(scope="module")
def flow(spark, tmp_path_factory, test_files):
    root = tmp_path_factory.mktemp("flow")
    export, labels = build_screening_export(root / "in", n_patients=N_PATIENTS, slices=SLICES)
    config = with_overrides(PipelineConfig(), warehouse=str(root / "wh"))
    sources = [str(export), str(test_files / "CT_small.dcm"), str(test_files / "rtdose.dcm")]
    with recorded_run(spark, config, "run", new_run_id()) as record:
        results = run_all(spark, sources, config, record)
    return {"config": config, "record": record, "results": results}


def _table(spark, flow, name):
    return spark.read.format("delta").load(flow["config"].table_path(name))


def test_every_table_exists_and_delta_rs_reads_it(spark, flow):
    for name in (
        "scans",
        "ingest_errors",
        "images",
        "predictions",
        "job_runs",
        "stage_metrics",
        "worker_metrics",
        "scanner_utilization",
    ):
        path = flow["config"].table_path(name)
        rows = _table(spark, flow, name).count()
        assert DeltaTable(path).to_pyarrow_table().num_rows == rows, name
        # Both readers agreeing on an empty table would prove nothing: every input is valid
        # DICOM, so ingest_errors alone is empty (and must be).
        assert (rows == 0) == (name == "ingest_errors"), f"{name}: {rows} rows"


def test_job_run_row_matches_the_tables(spark, flow):
    (run,) = _table(spark, flow, "job_runs").collect()
    assert run.run_id == flow["record"].run_id and run.job == "run"
    assert run.status == "succeeded" and run.error is None and run.deid_enabled is True
    assert run.deid_table_edition == "2026c"
    rows_out = json.loads(run.rows_out)
    for name in ("scans", "images", "predictions"):
        assert rows_out[name] == _table(spark, flow, name).count() > 0, name
    assert run.items_in == N_PATIENTS * SLICES + 2
    assert run.images_per_second > 0 and run.seconds > 0
    assert run.spark_version and run.delta_version and run.torch_version


def test_stage_metrics_are_sparks_own_accounting(spark, flow):
    stages = (
        _table(spark, flow, "stage_metrics")
        .where(F.col("run_id") == flow["record"].run_id)
        .collect()
    )
    assert stages, "the REST API gave no stages"
    assert all(s.num_tasks >= 1 and s.executor_run_time_s >= 0 for s in stages)
    # Every row written to a table went through a Spark write: the records Spark counted as
    # output cover at least the rows now in scans + images + predictions.
    written = sum(_table(spark, flow, n).count() for n in ("scans", "images", "predictions"))
    assert sum(s.output_records for s in stages) >= written
    assert sum(s.executor_cpu_time_s for s in stages) > 0


def test_worker_metrics_phases_fit_in_wall_time(spark, flow):
    rows = _table(spark, flow, "worker_metrics").collect()
    # run: one pass, one row per output batch with every phase (read to model).
    assert Counter(r.step for r in rows) == Counter({"run": len(rows)}) and rows
    assert any(r.seconds_infer for r in rows)
    for r in rows:
        phases = sum(
            x or 0.0
            for x in (r.seconds_read, r.seconds_decode, r.seconds_preprocess, r.seconds_infer)
        )
        assert 0 < phases <= r.seconds_wall + 1e-6, r
        assert r.rss_bytes > 0
        assert r.gpu_utilization is None  # no GPU here: null, not zero
    frames = sum(r.rows for r in rows)
    assert frames == (
        _table(spark, flow, "images").count() + _table(spark, flow, "preprocess_errors").count()
    )


def test_scanner_utilization_matches_an_independent_count(spark, flow):
    util = {
        (r.station_name, str(r.day)): r
        for r in _table(spark, flow, "scanner_utilization").where("modality = 'CT'").collect()
    }
    # What build_screening_export generated: patient p on STATIONS[p % 2], day 2026-03-02 + p // 3,
    # SLICES slices 3 minutes apart, one study per patient.
    expected: dict[tuple[str, str], list[int]] = {}
    for p in range(N_PATIENTS):
        key = (STATIONS[p % len(STATIONS)][0], f"2026-03-{2 + p // 3:02d}")
        expected.setdefault(key, []).append(p)
    for key, patients in expected.items():
        row = util[key]
        assert row.studies == len(patients) and row.patients == len(patients)
        assert row.series == len(patients)  # one series per patient
        assert row.instances == len(patients) * SLICES
        assert row.busy_hours == pytest.approx(len(patients) * (SLICES - 1) * 3 / 60)
        assert sum(row.instances_by_hour) == row.instances
    # And against scans itself: per modality and station, the instance counts agree.
    scans = (
        _table(spark, flow, "scans")
        .where(F.coalesce("acquisition_datetime", "study_datetime").isNotNull())
        .groupBy("modality", "station_name")
        .count()
        .collect()
    )
    per_station = Counter()
    for r in _table(spark, flow, "scanner_utilization").collect():
        per_station[(r.modality, r.station_name)] += r.instances
    assert per_station == Counter({(r.modality, r.station_name): r["count"] for r in scans})


def test_scanner_utilization_rebuild_replaces_the_table(spark, flow):
    from medspark.metrics.utilization import rebuild

    config = flow["config"]
    before = sorted(
        (r.modality, r.station_name, str(r.day), r.instances)
        for r in _table(spark, flow, "scanner_utilization").collect()
    )
    from delta.tables import DeltaTable

    # The first rebuild created the table (an append). A rebuild from the same acquisitions
    # changes nothing and commits nothing; one that changes a figure overwrites, not adds.
    args = (config.table_path("restricted_acquisitions"), config.table_path("scanner_utilization"))
    table = DeltaTable.forPath(spark, args[1])
    version = table.history(1).first()["version"]
    rebuild(spark, *args, "rebuild-same", config.metrics.study_span_cap_hours)
    assert table.history(1).first()["version"] == version
    assert "rebuild-same" not in {
        r.run_id for r in _table(spark, flow, "scanner_utilization").collect()
    }
    rebuild(spark, *args, "rebuild-again", config.metrics.study_span_cap_hours / 1000)
    after = _table(spark, flow, "scanner_utilization").collect()
    assert sorted((r.modality, r.station_name, str(r.day), r.instances) for r in after) == before
    assert {r.run_id for r in after} == {"rebuild-again"}
    assert table.history(1).first()["version"] == version + 1
