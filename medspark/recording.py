"""What a run did, and how it is recorded: the result of each step, its ``job_runs``
figures (:func:`record_ingest`, ...), and its ``worker_metrics`` rows (written from the driver
with delta-rs, :mod:`medspark.tables.small`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from medspark.config import PipelineConfig


def new_run_id() -> str:
    """A sortable, unique run id: UTC time plus random suffix."""
    import uuid
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]


def error_lines(errors_by_class: dict[str, int], cleared: int = 0, now: str = "") -> list[str]:
    """The errors part of a step's summary: the total, one line per class, and how many error
    rows of earlier runs were removed because their item (``now`` says what it is) is fine."""
    lines = [f"  errors: {sum(errors_by_class.values())}"]
    lines += [f"    {cls:<24} {n}" for cls, n in sorted(errors_by_class.items())]
    if cleared:
        lines.append(f"  {cleared} error row(s) of earlier runs removed: {now}")
    return lines


@dataclass
class IngestResult:
    """What an ingest run did; printed as the end-of-run summary."""

    run_id: str
    items: int
    scans_inserted: int
    scans_updated: int
    errors_by_class: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    errors_cleared: int = 0  # error rows of earlier runs whose item is a scan now

    @property
    def errors(self) -> int:
        return sum(self.errors_by_class.values())

    @property
    def scans(self) -> int:
        return self.items - self.errors

    def summary(self) -> str:
        lines = [
            f"run {self.run_id}: {self.items} item(s) read in {self.seconds:.1f} s",
            f"  scans:  {self.scans} instance(s) "
            f"({self.scans_inserted} new, {self.scans_updated} already present, updated)",
        ]
        lines += error_lines(self.errors_by_class, self.errors_cleared, "those items are scans now")
        return "\n".join(lines)


@dataclass
class PreprocessResult:
    """What a preprocess run did; printed as the end-of-run summary."""

    run_id: str
    instances: int
    frames: int
    errors_by_class: dict[str, int]
    seconds: float
    config_hash: str

    @property
    def images_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        lines = [
            f"run {self.run_id}: {self.instances} instance(s) with pixels, "
            f"{self.frames} frame(s) processed in {self.seconds:.1f} s "
            f"({self.images_per_second:.1f} images/s)",
            f"  chain {self.config_hash[:12]}",
        ]
        return "\n".join(lines + error_lines(self.errors_by_class))


def write_worker_metrics(
    spark: Any, config: PipelineConfig, rows: DataFrame, step: str, run_id: str
) -> None:
    """Aggregate the per-row batch columns of a UDF's output into ``worker_metrics``.

    One row per output batch: few, so they are collected and written from the driver with
    delta-rs (:func:`write_metric_rows`).
    """
    phases = ["seconds_read", "seconds_decode", "seconds_preprocess", "seconds_infer"]
    present = set(rows.columns)
    aggs = [F.count("*").alias("rows")]
    for name in phases:
        if name == "seconds_infer" and name in present:
            aggs.append(F.max(name).alias(name))  # one value per batch, repeated on its rows
        elif name in present:
            aggs.append(F.sum(name).alias(name))
        else:
            aggs.append(F.lit(None).cast("double").alias(name))
    aggs += [F.max("seconds_wall").alias("seconds_wall"), F.max("rss_bytes").alias("rss_bytes")]
    for name, dtype in (("gpu_utilization", "double"), ("gpu_memory_bytes", "long")):
        source = F.max(name) if name in present else F.lit(None)
        aggs.append(source.cast(dtype).alias(name))
    metrics = rows.groupBy("partition", "batch").agg(*aggs).collect()
    write_metric_rows(config, [m.asDict() for m in metrics], step, run_id)


def write_metric_rows(
    config: PipelineConfig, rows: list[dict[str, Any]], step: str, run_id: str
) -> None:
    """Append ``worker_metrics`` rows (one per batch) from the driver with delta-rs."""
    from medspark.tables.small import append_rows

    stamped = [{**r, "run_id": run_id, "step": step} for r in rows]
    append_rows(config.table_path("worker_metrics"), "worker_metrics", stamped)


@dataclass
class InferResult:
    """What an inference run did."""

    run_id: str
    model: str
    model_version: str
    frames: int
    inserted: int
    labels: dict[str, int]
    seconds: float

    def summary(self) -> str:
        rate = self.frames / self.seconds if self.seconds > 0 else 0.0
        lines = [
            f"run {self.run_id}: model {self.model} v{self.model_version} on {self.frames} "
            f"frame(s) in {self.seconds:.1f} s ({rate:.1f} images/s); {self.inserted} new row(s)",
        ]
        lines += [f"    {label:<24} {n}" for label, n in sorted(self.labels.items())]
        return "\n".join(lines)


def record_ingest(record: Any, result: IngestResult) -> None:
    """Copy an ingest result into a ``job_runs`` record."""
    record.items_in = (record.items_in or 0) + result.items
    for table, n in (("scans", result.scans), ("ingest_errors", result.errors)):
        record.rows_out[table] = record.rows_out.get(table, 0) + n  # summed over micro-batches
    record.errors = (record.errors or 0) + result.errors


def record_preprocess(record: Any, result: PreprocessResult) -> None:
    """Copy a preprocess result into a ``job_runs`` record."""
    errors = sum(result.errors_by_class.values())
    if record.items_in is None:
        record.items_in = result.instances
    record.rows_out["images"] = result.frames
    record.rows_out["preprocess_errors"] = errors
    record.errors = (record.errors or 0) + errors
    record.frames = result.frames


def record_infer(record: Any, result: InferResult) -> None:
    """Copy an inference result into a ``job_runs`` record."""
    record.uses_torch = True
    if record.items_in is None:
        record.items_in = result.frames
    record.rows_out["predictions"] = result.frames
    record.frames = record.frames or result.frames
