"""Spark's own accounting of a run: stage metrics from the application's monitoring REST API.

Each medspark run tags its Spark jobs with a job group (the run id). After the run,
:func:`stage_metrics_rows` asks the driver's REST API (``/api/v1/applications/<app>/jobs`` and
``/stages``, two requests) for the stages of that group and returns Spark's figures as they
are: task counts, executor run and CPU time, JVM GC time, input/output bytes and records,
shuffle, spill, peak execution memory. Nothing is estimated. The REST API lives on the Spark UI
port; when the UI is disabled (``spark.ui.enabled=false``) there is nothing to read and no rows
are returned.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_NS = 1_000_000_000


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - the local driver UI
        return json.loads(resp.read().decode("utf-8"))


@contextmanager
def job_group(spark: Any, run_id: str, description: str) -> Iterator[None]:
    """Tag every Spark job started inside the block with ``run_id`` (Spark's job group)."""
    sc = spark.sparkContext
    sc.setJobGroup(run_id, description, interruptOnCancel=False)
    try:
        yield
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)
        sc.setLocalProperty("spark.job.description", None)


def stage_metrics_rows(spark: Any, run_id: str) -> list[dict[str, Any]]:
    """One dict per stage attempt of the jobs in group ``run_id`` (schema ``STAGE_METRICS``)."""
    sc = spark.sparkContext
    base = sc.uiWebUrl
    if not base:
        return []
    app = f"{base}/api/v1/applications/{sc.applicationId}"
    try:
        jobs = _get(f"{app}/jobs")
    except OSError:
        return []
    stage_ids = {s for j in jobs if j.get("jobGroup") == run_id for s in j["stageIds"]}
    if not stage_ids:
        return []
    try:
        # Every stage attempt in one request (a request per stage cost seconds in a cold JVM);
        # a skipped stage (its output was reused) has no attempt and is not listed.
        attempts = _get(f"{app}/stages")
    except OSError:
        return []
    rows: list[dict[str, Any]] = []
    for a in sorted(attempts, key=lambda a: (a["stageId"], a.get("attemptId", 0))):
        if a["stageId"] not in stage_ids or a.get("status") not in ("COMPLETE", "FAILED"):
            continue
        rows.append(
            {
                "run_id": run_id,
                "stage_id": int(a["stageId"]),
                "attempt_id": int(a.get("attemptId", 0)),
                "name": a.get("name"),
                "status": a.get("status"),
                "num_tasks": int(a.get("numTasks", 0)),
                "num_failed_tasks": int(a.get("numFailedTasks", 0)),
                "executor_run_time_s": a.get("executorRunTime", 0) / 1000.0,
                "executor_cpu_time_s": a.get("executorCpuTime", 0) / _NS,
                "jvm_gc_time_s": a.get("jvmGcTime", 0) / 1000.0,
                "input_bytes": int(a.get("inputBytes", 0)),
                "input_records": int(a.get("inputRecords", 0)),
                "output_bytes": int(a.get("outputBytes", 0)),
                "output_records": int(a.get("outputRecords", 0)),
                "shuffle_read_bytes": int(a.get("shuffleReadBytes", 0)),
                "shuffle_write_bytes": int(a.get("shuffleWriteBytes", 0)),
                "memory_spilled_bytes": int(a.get("memoryBytesSpilled", 0)),
                "disk_spilled_bytes": int(a.get("diskBytesSpilled", 0)),
                "peak_execution_memory": int(a.get("peakExecutionMemory", 0)),
            }
        )
    return rows
