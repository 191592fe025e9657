"""job_runs rows: written as running at start, completed at the end, abandoned when the driver
died, and tables of an earlier release brought to the declared schema."""

from __future__ import annotations

import os
import socket
import subprocess
from datetime import datetime, timezone

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from medspark.config import PipelineConfig, with_overrides
from medspark.metrics.runs import mark_abandoned, recorded_run
from medspark.tables.small import append_rows, arrow_schema, ensure_schema

pytestmark = pytest.mark.spark


def _rows(path: str) -> list[dict]:
    return DeltaTable(path).to_pyarrow_table().sort_by("run_id").to_pylist()


def test_a_run_is_visible_while_it_runs_and_completed_at_the_end(spark, tmp_path):
    config = with_overrides(PipelineConfig(), warehouse=str(tmp_path / "wh"))
    path = config.table_path("job_runs")
    with recorded_run(spark, config, "ingest", "run-a") as record:
        (during,) = _rows(path)
        record.items_in = 3
    assert during["status"] == "running" and during["ended_at"] is None
    assert during["driver_pid"] == os.getpid() and during["driver_host"] == socket.gethostname()
    (after,) = _rows(path)  # the same row, completed: never two rows for one run
    assert after["status"] == "succeeded" and after["items_in"] == 3
    assert after["ended_at"] >= after["started_at"] and after["seconds"] >= 0
    assert after["driver_pid"] == os.getpid()

    with pytest.raises(RuntimeError), recorded_run(spark, config, "ingest", "run-b"):
        raise RuntimeError("boom")
    failed = _rows(path)[1]
    assert failed["run_id"] == "run-b" and failed["status"] == "failed"
    assert failed["error"] == "RuntimeError: boom"


def test_a_run_whose_driver_died_is_marked_abandoned_by_the_next(tmp_path):
    path = str(tmp_path / "job_runs")
    gone = subprocess.Popen(["true"])
    gone.wait()
    started = datetime.now(timezone.utc)
    base = {"job": "run", "status": "running", "started_at": started}
    append_rows(
        path,
        "job_runs",
        [
            {
                **base,
                "run_id": "killed",
                "driver_host": socket.gethostname(),
                "driver_pid": gone.pid,
            },
            {
                **base,
                "run_id": "alive",
                "driver_host": socket.gethostname(),
                "driver_pid": os.getpid(),
            },
            {**base, "run_id": "elsewhere", "driver_host": "other-host", "driver_pid": gone.pid},
        ],
    )
    assert mark_abandoned(path) == ["killed"]
    status = {r["run_id"]: (r["status"], r["error"]) for r in _rows(path)}
    assert status["killed"][0] == "abandoned" and str(gone.pid) in status["killed"][1]
    assert status["alive"] == ("running", None)
    assert status["elsewhere"] == ("running", None)  # another host's pid cannot be checked
    assert mark_abandoned(path) == []  # once


def test_job_runs_of_an_earlier_release_are_upgraded_with_their_rows(tmp_path):
    path = str(tmp_path / "job_runs")
    declared = arrow_schema("job_runs")
    old_fields = [
        f.with_nullable(False) if f.name in ("ended_at", "seconds") else f
        for f in declared
        if f.name not in ("driver_host", "driver_pid")
    ]
    old = pa.schema(old_fields)
    now = datetime.now(timezone.utc)
    row = {name: None for name in old.names} | {
        "run_id": "old-run",
        "job": "ingest",
        "status": "succeeded",
        "started_at": now,
        "ended_at": now,
        "seconds": 1.5,
    }
    write_deltalake(path, pa.Table.from_pylist([row], schema=old), mode="append")
    with pytest.raises(Exception):  # noqa: B017 - what the upgrade is for: a null ended_at
        append_rows(
            path,
            "job_runs",
            [{"run_id": "new", "job": "run", "status": "running", "started_at": now}],
        )
    assert ensure_schema(path, "job_runs") is True
    assert ensure_schema(path, "job_runs") is False  # once
    assert DeltaTable(path).schema().to_arrow() == declared
    append_rows(
        path, "job_runs", [{"run_id": "new", "job": "run", "status": "running", "started_at": now}]
    )
    (new, kept) = _rows(path)  # sorted by run_id
    assert (kept["run_id"], kept["seconds"], kept["ended_at"]) == ("old-run", 1.5, now)
    assert new["status"] == "running" and new["ended_at"] is None
