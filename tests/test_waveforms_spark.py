"""The waveforms step on Spark: scans -> waveforms, ecg_metrics, waveform_errors (one ingest,
one waveforms run on real and synthetic DICOM ECGs; the last test runs it again through the
``medspark run`` hook and checks that the re-run adds no row)."""

from __future__ import annotations

import shutil

import numpy as np
import pydicom
import pytest

from medspark.config import PipelineConfig, with_overrides
from medspark.pipeline import ingest, with_paths
from medspark.waveforms.decode import decode_waveforms
from medspark.waveforms.step import run_waveforms
from medspark.waveforms.synthetic import write_ecg

pytestmark = pytest.mark.spark

RATES = (50, 72, 120)


@pytest.fixture(scope="module")
def warehouse(spark, tmp_path_factory, test_files):
    root = tmp_path_factory.mktemp("ecg")
    src = root / "in"
    src.mkdir()
    for rate in RATES:
        write_ecg(src / f"ecg{rate}.dcm", rate, seed=rate, sop_instance_uid=f"2.25.{rate}")
    write_ecg(src / "short.dcm", 72, duration=3.0, sop_instance_uid="2.25.3")
    write_ecg(src / "bad.dcm", 72, bad_channel_count=True, sop_instance_uid="2.25.4")
    shutil.copy(test_files / "waveform_ecg.dcm", src / "real.dcm")
    shutil.copy(test_files / "CT_small.dcm", src / "ct.dcm")  # no waveform: not read
    config = with_overrides(PipelineConfig(), warehouse=str(root / "wh"))
    ingest(spark, [str(src)], config, "ingest-1")
    first = run_waveforms(spark, config, "run-1")
    return {"config": config, "src": src, "first": first}


def _load(spark, warehouse, name):
    return spark.read.format("delta").load(warehouse["config"].table_path(name))


def _sop_by_file(spark, warehouse):
    scans = with_paths(spark, warehouse["config"], _load(spark, warehouse, "scans"))
    scans = scans.select("sop_instance_uid", "source_uri").collect()
    return {r["source_uri"].rsplit("/", 1)[1]: r["sop_instance_uid"] for r in scans}


def test_tables(spark, warehouse):
    first = warehouse["first"]
    assert first.instances == 6  # 4 + bad synthetic, the real ECG
    assert first.channels == 4 * 12 + 24
    assert first.measured == 4 and first.unmeasured == {"no lead could be analysed": 1}
    assert first.errors_by_class == {"bad_channel_definition": 1}
    assert first.metric_rows == 5 * 13
    assert _load(spark, warehouse, "waveforms").count() == 72
    assert _load(spark, warehouse, "ecg_metrics").count() == 5 * 13


def test_heart_rates_within_2_bpm_and_real_ecg(spark, warehouse):
    sops = _sop_by_file(spark, warehouse)
    rows = {
        r["sop_instance_uid"]: r
        for r in _load(spark, warehouse, "ecg_metrics").where("lead is null").collect()
    }
    for rate in RATES:
        row = rows[sops[f"ecg{rate}.dcm"]]
        assert abs(row["heart_rate_bpm"] - rate) <= 2, (rate, row)
        assert row["reason"] is None and row["analysis_lead"] == "Lead II"
    real = rows[sops["real.dcm"]]
    assert real["heart_rate_bpm"] == pytest.approx(61.07, abs=0.1)
    assert real["n_beats"] == 10 and real["leads_measured"] == 12
    assert real["method"].startswith("neurokit2 ")
    short = rows[sops["short.dcm"]]
    assert short["heart_rate_bpm"] is None and short["n_beats"] is None
    assert short["reason"].startswith("no lead could be analysed: too short: 3.00 s")


def test_samples_are_the_decoded_physical_values(spark, warehouse, test_files):
    sops = _sop_by_file(spark, warehouse)
    real = sops["real.dcm"]
    rows = (
        _load(spark, warehouse, "waveforms")
        .where(f"sop_instance_uid = '{real}' and multiplex_group = 1 and channel = 1")
        .collect()
    )
    (row,) = rows
    expected = pydicom.dcmread(test_files / "waveform_ecg.dcm").waveform_array(1)[:, 1]
    np.testing.assert_array_equal(np.asarray(row["samples"], np.float32), expected)
    assert (row["lead"], row["units"], row["sampling_frequency"]) == ("Lead II", "uV", 1000.0)
    assert (row["n_samples"], row["duration_s"]) == (1200, 1.2)
    # De-identified: keyed by the pseudonym of scans, never the file's own SOP Instance UID.
    original = str(pydicom.dcmread(test_files / "waveform_ecg.dcm").SOPInstanceUID)
    assert real != original
    assert (
        _load(spark, warehouse, "waveforms").where(f"sop_instance_uid = '{original}'").count() == 0
    )
    synthetic = decode_waveforms(pydicom.dcmread(warehouse["src"] / "ecg72.dcm"))
    lead = (
        _load(spark, warehouse, "waveforms")
        .where(f"sop_instance_uid = '{sops['ecg72.dcm']}' and channel = 6")
        .collect()[0]
    )
    assert lead["lead"] == "Lead V1"
    np.testing.assert_array_equal(np.asarray(lead["samples"], np.float32), synthetic[6].samples)


def test_bad_channel_definition_is_an_error_row(spark, warehouse):
    sops = _sop_by_file(spark, warehouse)
    errors = _load(spark, warehouse, "waveform_errors")
    (err,) = errors.collect()
    assert err["sop_instance_uid"] == sops["bad.dcm"]
    assert err["error_class"] == "bad_channel_definition" and err["multiplex_group"] == 0
    assert ": multiplex group 0: Number of Waveform Channels (003A,0005) is 11" in err["message"]
    # Paths are identity: the analyst table holds the location key, restricted_locations the
    # path (as for preprocess_errors).
    assert "bad.dcm" not in err["message"] and "bad.dcm" not in err["source_uri"]
    (located,) = with_paths(spark, warehouse["config"], errors).collect()
    assert located["source_uri"].endswith("/bad.dcm")
    bad = _load(spark, warehouse, "waveforms").where(f"sop_instance_uid = '{sops['bad.dcm']}'")
    assert bad.count() == 0


def test_scanner_utilization_counts_ecg_carts(spark, warehouse):
    rows = _load(spark, warehouse, "scanner_utilization").where("modality = 'ECG'").collect()
    by_station = {r["station_name"]: r["instances"] for r in rows}
    assert by_station["ECG-CART-1"] == 5  # the synthetic files, the bad one included
    assert sum(by_station.values()) == 6  # and pydicom's Mortara cart


def test_medspark_run_hook_takes_the_waveforms_of_its_own_run(spark, warehouse):
    """Runs last: it analyses the instances a second time (same rows, so nothing written)."""
    from medspark.metrics.runs import RunRecord
    from medspark.waveforms.step import waveforms_after_run

    config = warehouse["config"]
    assert waveforms_after_run(spark, config, RunRecord(run_id="other", job="run")) is None
    record = RunRecord(run_id="ingest-1", job="run", items_in=8)
    result = waveforms_after_run(spark, config, record)
    assert (result.instances, result.channels, result.measured) == (6, 72, 4)
    assert record.rows_out == {"waveforms": 72, "ecg_metrics": 65, "waveform_errors": 1}
    assert record.items_in == 8 and record.errors == 1
    # The re-run found every row as it was: it added none, and each keeps the id of the run
    # that wrote it (no commit: merge_into's only_changed).
    for table, rows in (("waveforms", 72), ("ecg_metrics", 65), ("waveform_errors", 1)):
        runs = [r["run_id"] for r in _load(spark, warehouse, table).select("run_id").collect()]
        assert len(runs) == rows and set(runs) == {"run-1"}, table
    # An instance no run has analysed (as after a run killed between its scans commit and its
    # waveforms step): a later run's hook takes it although that run wrote no scans row.
    from delta.tables import DeltaTable

    real = _sop_by_file(spark, warehouse)["real.dcm"]
    for table in ("waveforms", "ecg_metrics"):
        DeltaTable.forPath(spark, config.table_path(table)).delete(f"sop_instance_uid = '{real}'")
    later = waveforms_after_run(spark, config, RunRecord(run_id="later", job="run"))
    assert later is not None and later.instances == 1
    restored = _load(spark, warehouse, "waveforms").where(f"sop_instance_uid = '{real}'")
    assert {r["run_id"] for r in restored.collect()} == {"later"}
