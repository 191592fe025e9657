"""Recording every run: ``job_runs`` (one row per run) and ``stage_metrics`` (Spark's own).

Both are written from the driver with delta-rs (:mod:`medspark.tables.small`): no Spark job.

:func:`recorded_run` wraps a step: its ``job_runs`` row is written as ``running`` when the step
starts (so a run killed with ``kill -9`` stays visible), its Spark jobs are tagged with the run
id, and when the step ends, successfully or not, the row gets the outcome and the run's
``stage_metrics`` rows are written. A run whose driver died while ``running`` is marked
``abandoned`` by the next run on the same host (:func:`mark_abandoned`). A failure to write
these bookkeeping rows is reported on stderr and never hides the step's own outcome.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from medspark.config import PipelineConfig, to_dict

LOG = logging.getLogger(__name__)


def config_hash(config: PipelineConfig) -> str:
    """sha256 of the resolved config (warehouse excluded: the same job on another folder)."""
    data = to_dict(dataclasses.replace(config, warehouse=None))
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _deid_edition() -> str:
    from medspark.dicom.deid_table import edition

    return edition()


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


@dataclass
class RunRecord:
    """Filled in by the step while it runs; written to ``job_runs`` when it ends."""

    run_id: str
    job: str
    items_in: int | None = None
    rows_out: dict[str, int] = field(default_factory=dict)
    errors: int | None = None
    frames: int | None = None
    uses_torch: bool = False


@contextmanager
def recorded_run(spark: Any, config: PipelineConfig, job: str, run_id: str) -> Iterator[RunRecord]:
    """Run the block as medspark run ``run_id`` and record it (see module docstring)."""
    from medspark.metrics.spark_stages import job_group

    record = RunRecord(run_id=run_id, job=job)
    started = datetime.now(timezone.utc)
    t0 = time.monotonic()
    row: dict[str, Any] | None = None  # the row as written at start, completed at the end
    try:
        row = _row(spark, config, record, started)
        _start(config, row)
    except Exception as exc:  # noqa: BLE001 - bookkeeping must not stop the step
        LOG.warning("could not record the start of run %s: %s", run_id, exc)
    error: BaseException | None = None
    try:
        with job_group(spark, run_id, f"medspark {job} {run_id}"):
            yield record
    except BaseException as exc:
        error = exc
        raise
    finally:
        from medspark.failures import log_dir, stderr_to

        seconds = time.monotonic() - t0
        try:
            if row is None:
                row = _row(spark, config, record, started)
            # delta-rs writes these rows; a Rust panic inside it (a full disk) would print its
            # header on the console, so its stderr goes to the log folder meanwhile.
            with stderr_to(log_dir() / f"medspark-{run_id}-record.log"):
                _write(spark, config, record, row, seconds, error)
        except Exception as exc:  # noqa: BLE001 - bookkeeping must not mask the step's result
            if error is None or row is None:
                LOG.warning("could not record run %s: %s", run_id, exc)
            else:  # the step's own failure is the one line the CLI prints
                # The log folder's disk full too: the run stays running (then abandoned).
                with suppress(OSError):
                    _keep_outcome(config, row, error)


def _pending_dir() -> Path:
    from medspark.failures import log_dir

    return log_dir() / "pending-outcomes"


def _keep_outcome(config: PipelineConfig, row: dict[str, Any], error: BaseException) -> None:
    """A failed run whose outcome could not be written (its warehouse's disk is full, say)
    leaves it in the log folder; the next run on the same ``job_runs`` records it
    (:func:`record_pending`) instead of calling the run abandoned."""
    from medspark.failures import disk_full

    folder = _pending_dir()
    folder.mkdir(parents=True, exist_ok=True)
    reason = f"{type(error).__name__}: {error}"
    if disk_full(error):
        reason = "the warehouse's disk was full (No space left on device): " + reason
    outcome = {
        "path": config.table_path("job_runs"),
        "run_id": row["run_id"],
        "error": reason[:4000],
    }
    # Written whole or not at all: on a full disk a plain write can leave an empty file.
    partial = folder / f".{row['run_id']}.{os.getpid()}.tmp"
    try:
        partial.write_text(json.dumps(outcome))
        os.replace(partial, folder / f"{row['run_id']}.json")
    finally:
        partial.unlink(missing_ok=True)


def record_pending(path: str) -> list[str]:
    """Mark ``failed``, with their reasons, the ``running`` rows of ``job_runs`` at ``path``
    whose run left its outcome in the log folder (:func:`_keep_outcome`); returns their ids."""
    from deltalake import DeltaTable

    folder = _pending_dir()
    done = []
    for file in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            outcome = json.loads(file.read_text())
            if outcome["path"] != path or not DeltaTable.is_deltatable(path):
                continue
        except (OSError, ValueError, KeyError, TypeError):
            continue  # unreadable, or taken by a concurrent start
        run_id = outcome["run_id"].replace("'", "''")
        DeltaTable(path).update(
            predicate=f"run_id = '{run_id}' AND status = 'running'",
            # As SQL literals: a Java error text holds quotes and '$', which delta-rs's
            # new_values passes to its SQL parser unescaped.
            updates={
                "status": "'failed'",
                "error": "'" + outcome["error"].replace("'", "''") + "'",
            },
        )
        file.unlink(missing_ok=True)
        done.append(outcome["run_id"])
    return done


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


def mark_abandoned(path: str, host: str | None = None) -> list[str]:
    """Mark ``abandoned`` the ``running`` rows of this host whose driver process is gone.

    A driver killed with ``kill -9`` (or by the OOM killer, or a lost machine) never writes its
    outcome; its row would say ``running`` forever. Only rows of this host can be checked (a
    process id means nothing elsewhere); a pid reused by a new process keeps the row
    ``running`` until that process ends too. Returns the run ids marked.
    """
    import pyarrow.compute as pc
    from deltalake import DeltaTable

    if not DeltaTable.is_deltatable(path):
        return []
    host = host or socket.gethostname()
    table = DeltaTable(path)
    rows = table.to_pyarrow_table(columns=["run_id", "status", "driver_host", "driver_pid"])
    running = rows.filter(
        pc.and_(pc.equal(rows["status"], "running"), pc.equal(rows["driver_host"], host))
    ).to_pylist()
    dead = [
        r for r in running if r["driver_pid"] is not None and not _process_alive(r["driver_pid"])
    ]
    for r in dead:
        run_id = r["run_id"].replace("'", "''")
        table.update(
            predicate=f"run_id = '{run_id}' AND status = 'running'",
            new_values={
                "status": "abandoned",
                "error": f"driver process {r['driver_pid']} on {host} ended without recording "
                "an outcome (killed?); rows it committed stay, a re-run completes the rest",
            },
        )
    return [r["run_id"] for r in dead]


def _row(
    spark: Any, config: PipelineConfig, record: RunRecord, started: datetime
) -> dict[str, Any]:
    """The ``job_runs`` row of a run that has started: status ``running``, no outcome yet."""
    sc = spark.sparkContext
    return {
        "run_id": record.run_id,
        "job": record.job,
        "status": "running",
        "config_hash": config_hash(config),
        "deid_enabled": config.deid.enabled,
        "deid_table_edition": _deid_edition() if config.deid.enabled else None,
        "medspark_version": _version("medspark"),
        "spark_version": spark.version,
        "delta_version": _version("delta-spark"),
        "master": sc.master,
        "default_parallelism": sc.defaultParallelism,
        "started_at": started,
        "driver_host": socket.gethostname(),
        "driver_pid": os.getpid(),
    }


def _start(config: PipelineConfig, row: dict[str, Any]) -> None:
    from medspark.tables.small import append_rows, ensure_schema

    path = config.table_path("job_runs")
    if ensure_schema(path, "job_runs"):
        LOG.warning("%s: job_runs upgraded to this release's schema (rows kept)", path)
    for run_id in record_pending(path):
        LOG.warning("run %s failed before it could record why: recorded now", run_id)
    for run_id in mark_abandoned(path):
        LOG.warning("run %s was killed before it ended: marked abandoned", run_id)
    append_rows(path, "job_runs", [row])


def _write(
    spark: Any,
    config: PipelineConfig,
    record: RunRecord,
    started_row: dict[str, Any],
    seconds: float,
    error: BaseException | None,
) -> None:
    """Complete the run's ``job_runs`` row (``started_row``, as written at start) with its
    outcome, and write its ``stage_metrics``."""
    from medspark.metrics.spark_stages import stage_metrics_rows
    from medspark.tables.small import append_rows, upsert_row

    row = {
        **started_row,
        "status": "failed" if error else "succeeded",
        "error": None if error is None else f"{type(error).__name__}: {error}"[:4000],
        "torch_version": _version("torch") if record.uses_torch else None,
        "ended_at": datetime.now(timezone.utc),
        "seconds": seconds,
        "items_in": record.items_in,
        "rows_out": json.dumps(record.rows_out, sort_keys=True),
        "errors": record.errors,
        "images_per_second": (record.frames / seconds) if record.frames and seconds else None,
    }
    upsert_row(config.table_path("job_runs"), "job_runs", row)
    stages = stage_metrics_rows(spark, record.run_id)
    # Written even when empty (Spark UI off), so readers find the table.
    append_rows(config.table_path("stage_metrics"), "stage_metrics", stages)
    if stages:
        slowest = max(stages, key=lambda r: r["executor_run_time_s"])
        LOG.info(
            "run %s (%s): %.1f s, %d Spark stage(s); slowest stage %s (%s): %.1f s executor "
            "time over %d task(s)",
            record.run_id,
            record.job,
            seconds,
            len(stages),
            slowest["stage_id"],
            slowest["name"],
            slowest["executor_run_time_s"],
            slowest["num_tasks"],
        )
