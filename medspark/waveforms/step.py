"""The waveforms step: ``scans`` -> ``waveforms``, ``ecg_metrics`` and ``waveform_errors``.

::

    scans ─► waveform_instances ─► analyse_waveforms (mapInPandas) ─► split_waveforms
                                                                        ├─► waveforms
                                                                        ├─► ecg_metrics
                                                                        └─► waveform_errors

Like preprocessing, only locations go into the UDF: each instance is re-read on the executor
through the reader and limits of ingest (:func:`medspark.sources.members.read_items`), its
SHA-256 checked against the one ingest recorded (``source_changed`` otherwise), parsed with
the same parser (:mod:`medspark.dicom.header`), decoded (:mod:`medspark.waveforms.decode`) and
analysed (:mod:`medspark.waveforms.ecg`). neurokit2 and pydicom are imported there, on the
executor. :func:`run_waveforms` is the job (``medspark waveforms``): it reads ``scans`` and
MERGEs the three tables.

De-identification: rows are keyed by the pseudonymous SOP Instance UID of ``scans``; the
re-read file's own identifiers never leave the executor. Files are read at their paths from
``restricted_locations`` and rows written with the location keys of ``scans`` (paths are
identity: docs/deid.md), as preprocess does. Of the waveform attributes PS3.15
Table E.1-1 removes Channel Label (003A,0203), Multiplex Group Label (003A,0020) and the
filter descriptions: none of them is stored. The lead name is the Code Meaning of the Channel
Source Sequence (003A,0208), a coded term.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import StringType, StructField, StructType

from medspark.recording import error_lines
from medspark.tables.schemas import ECG_METRICS, WAVEFORM_ERRORS, WAVEFORMS

#: Waveform IODs share this SOP Class UID prefix (PS3.4 B.5: 1.2.840.10008.5.1.4.1.1.9.x.y:
#: 12-lead, General and Ambulatory ECG, Hemodynamic, Basic Voice Audio, Arterial Pulse, ...).
WAVEFORM_SOP_PREFIX = "1.2.840.10008.5.1.4.1.1.9."

WAVEFORM = "waveform"
METRICS = "metrics"
ERROR = "error"

_STAMPS = {"run_id", "processed_at", "computed_at", "recorded_at"}


def _rows_schema() -> StructType:
    fields: dict[str, StructField] = {"kind": StructField("kind", StringType(), False)}
    for schema in (WAVEFORMS, ECG_METRICS, WAVEFORM_ERRORS):
        for f in schema.fields:
            if f.name not in _STAMPS and f.name not in fields:
                fields[f.name] = StructField(f.name, f.dataType, True)
    return StructType(list(fields.values()))


#: Output of :func:`analyse_waveforms`: rows of the three kinds in one schema.
WAVEFORM_ROWS = _rows_schema()


@dataclass(frozen=True)
class WaveformSettings:
    """Everything an executor needs; pickled into the UDF closure."""

    limits: Any = None  # medspark.sources.archives.Limits (None: the defaults)
    instances_per_batch: int = 16  # a 12-lead 10 s ECG at 500 Hz is ~240 KB of float32
    # ... but a 24 h Holter (3 leads at 200 Hz) is ~200 MB: a batch is also cut after this
    # many samples (64 MB of float32), so one Arrow batch stays far below its 2 GB bound.
    samples_per_batch: int = 16_000_000


def waveform_instances(scans: DataFrame) -> DataFrame:
    """``scans`` rows that carry a Waveform Sequence (5400,0100) in their header, or a waveform
    SOP Class UID (0008,0016): the input of :func:`analyse_waveforms`."""
    has_sequence = F.get_json_object("header_json", "$.54000100").isNotNull()
    by_class = F.coalesce(F.col("sop_class_uid").startswith(WAVEFORM_SOP_PREFIX), F.lit(False))
    return scans.where(has_sequence | by_class).select(
        "sop_instance_uid", "source_uri", "archive_member", "sha256"
    )


def method_text() -> str:
    """``ecg_metrics.method``: the library, its version and the delineation method."""
    from importlib.metadata import version

    from medspark.waveforms.ecg import DELINEATION

    return f"neurokit2 {version('neurokit2')} ({DELINEATION} delineation)"


def process_instance(
    data: bytes, key: dict[str, Any], limits: Any = None, method: str | None = None
) -> list[dict[str, Any]]:
    """Rows (``kind`` waveform / metrics / error) of one instance's bytes; never raises for bad
    input. ``key`` holds ``sop_instance_uid``, ``source_uri`` and ``archive_member``."""
    from medspark.dicom.header import ItemError, _read_dataset, check_inflated_size
    from medspark.tables.error_classes import UNREADABLE_WAVEFORM
    from medspark.waveforms.decode import WaveformError, decode_waveforms
    from medspark.waveforms.ecg import analyse_instance

    where = key["source_uri"] + (f"!{key['archive_member']}" if key["archive_member"] else "")
    try:
        if limits is not None:
            check_inflated_size(data, limits.max_inflated_bytes)
        ds = _read_dataset(data)
        channels = decode_waveforms(ds, None if limits is None else limits.max_frame_samples)
    except WaveformError as exc:
        return [error_row(key, exc.error_class, f"{where}: {exc.message}", exc.group)]
    except ItemError as exc:
        return [error_row(key, exc.error_class, f"{where}: {exc.message}")]
    except Exception as exc:  # noqa: BLE001 - a parser bug is this file's error, not the task's
        return [error_row(key, UNREADABLE_WAVEFORM, f"{where}: {type(exc).__name__}: {exc}")]
    rows: list[dict[str, Any]] = []
    for c in channels:
        rows.append(
            {
                **key,
                "kind": WAVEFORM,
                "multiplex_group": c.group,
                "channel": c.channel,
                "lead": c.lead,
                "lead_code": c.source_code,
                "units": c.units,
                "units_meaning": c.units_meaning,
                "sampling_frequency": c.sampling_frequency,
                "n_samples": c.n_samples,
                "duration_s": c.duration_s,
                "samples": c.samples,
                "channel_sensitivity": c.sensitivity,
                "correction_factor": c.correction_factor,
                "channel_baseline": c.baseline,
                "sample_interpretation": c.sample_interpretation,
                "bits_allocated": c.bits_allocated,
                "originality": c.originality,
            }
        )
    try:
        summary, per_lead = analyse_instance(channels)
    except Exception as exc:  # noqa: BLE001 - the samples stand; the metrics get the reason
        from medspark.waveforms.ecg import EcgMetrics

        summary, per_lead = EcgMetrics(lead=None, reason=f"{type(exc).__name__}: {exc}"), []
    for m in [summary, *per_lead]:
        row = m.as_row()
        row["multiplex_group"] = row.pop("group")
        rows.append(
            {"sop_instance_uid": key["sop_instance_uid"], "kind": METRICS, "method": method, **row}
        )
    return rows


def error_row(
    key: dict[str, Any], error_class: str, message: str, group: int | None = None
) -> dict[str, Any]:
    return {
        **key,
        "kind": ERROR,
        "multiplex_group": group,
        "error_class": error_class,
        "message": message,
    }


def waveform_batches(batches: Iterator[Any], settings: WaveformSettings) -> Iterator[Any]:
    """``mapInPandas`` body: (sop_instance_uid, source_uri, archive_member, sha256) in, rows of
    :data:`WAVEFORM_ROWS` out, about ``instances_per_batch`` instances per output batch."""
    import numpy as np
    import pandas as pd

    from medspark.sources.members import read_verified

    columns = WAVEFORM_ROWS.fieldNames()
    method = method_text()
    out: list[dict[str, Any]] = []
    done = held = 0

    def frame(rows: list[dict[str, Any]]) -> Any:
        records = []
        for r in rows:
            samples = r.get("samples")
            if isinstance(samples, np.ndarray):
                r["samples"] = samples.astype(np.float32, copy=False)
            records.append(tuple(r.get(c) for c in columns))
        return pd.DataFrame.from_records(records, columns=columns)

    for batch in batches:
        keys: dict[tuple[str, str | None], list[tuple[dict[str, Any], str | None]]] = {}
        for sop, uri, member, sha in zip(
            batch["sop_instance_uid"],
            batch["source_uri"],
            batch["archive_member"],
            batch["sha256"],
            strict=True,
        ):
            member = member if isinstance(member, str) else None
            key = {"sop_instance_uid": sop, "source_uri": uri, "archive_member": member}
            keys.setdefault((uri, member), []).append((key, sha if isinstance(sha, str) else None))
        requests = [(uri, member, keyed[0][1]) for (uri, member), keyed in keys.items()]
        for (uri, member), content in read_verified(requests, settings.limits):
            for key, _ in keys[(uri, member)]:
                if isinstance(content, Exception):
                    out.append(error_row(key, content.error_class, str(content)))
                else:
                    rows = process_instance(content, key, settings.limits, method)
                    out.extend(rows)
                    held += sum(int(r.get("n_samples") or 0) for r in rows)
                done += 1
                if done % settings.instances_per_batch == 0 or held >= settings.samples_per_batch:
                    yield frame(out)
                    out, held = [], 0
    if out:
        yield frame(out)


def analyse_waveforms(
    instances: DataFrame, settings: WaveformSettings, partitions: int
) -> DataFrame:
    """Decode and analyse every instance of :func:`waveform_instances` on the executors."""
    return (
        instances.repartition(partitions, "sop_instance_uid")
        .sortWithinPartitions("source_uri", "archive_member")
        .mapInPandas(lambda it: waveform_batches(it, settings), WAVEFORM_ROWS)
    )


def split_waveforms(rows: DataFrame) -> tuple[DataFrame, DataFrame, DataFrame]:
    """(``waveforms``, ``ecg_metrics``, ``waveform_errors``) rows of :func:`analyse_waveforms`
    (unstamped: no run id, no time)."""

    def columns(schema: StructType) -> list[str]:
        return [f.name for f in schema.fields if f.name not in _STAMPS]

    kind = F.col("kind")
    return (
        rows.where(kind == WAVEFORM).select(columns(WAVEFORMS)),
        rows.where(kind == METRICS).select(columns(ECG_METRICS)),
        rows.where(kind == ERROR).select(columns(WAVEFORM_ERRORS)),
    )


@dataclass
class WaveformsResult:
    """What a waveforms run did; printed as the end-of-run summary."""

    run_id: str
    instances: int
    channels: int
    measured: int  # instances with a heart rate
    metric_rows: int = 0  # ecg_metrics rows: one per instance and one per analysed lead
    unmeasured: dict[str, int] = field(default_factory=dict)  # reason -> instances
    errors_by_class: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> str:
        lines = [
            f"run {self.run_id}: {self.instances} instance(s) with a waveform, "
            f"{self.channels} channel(s) written in {self.seconds:.1f} s",
            f"  ecg_metrics: {self.measured} instance(s) with a heart rate, "
            f"{sum(self.unmeasured.values())} without",
        ]
        for reason, n in sorted(self.unmeasured.items()):
            lines.append(f"    {n:>5}  {reason}")
        return "\n".join(lines + error_lines(self.errors_by_class))


def run_waveforms(
    spark: Any, config: Any, run_id: str, scans: DataFrame | None = None
) -> WaveformsResult:
    """Read ``scans`` (or the given rows of it), MERGE ``waveforms``, ``ecg_metrics`` and
    ``waveform_errors``.

    An instance that decodes now leaves ``waveform_errors`` (an earlier run's error row for it
    is deleted), as ingest clears ``ingest_errors``.
    """
    from delta.tables import DeltaTable
    from pyspark import StorageLevel

    from medspark.dicom.deid import (
        ORIGINAL_LOCATION,
        locate_sources,
        pseudonymizer_from_config,
        restore_sources,
    )
    from medspark.onepass import limits
    from medspark.tables.writers import concurrently, delete_matching, merge_into

    start = time.monotonic()
    errors_path = config.table_path("waveform_errors")
    had_errors = DeltaTable.isDeltaTable(spark, errors_path)
    if scans is None:
        scans = spark.read.format("delta").load(config.table_path("scans"))
    # Files are read at their paths (restricted_locations); rows are written with the location
    # keys of scans (the paths are identity), as preprocess does.
    locations_path = config.table_path("restricted_locations")
    locations = (
        spark.read.format("delta").load(locations_path)
        if DeltaTable.isDeltaTable(spark, locations_path)
        else None
    )
    pseudonymizer = pseudonymizer_from_config(config.deid)
    instances = restore_sources(waveform_instances(scans), locations).persist(
        StorageLevel.MEMORY_AND_DISK
    )
    try:
        n = instances.count()
        if locations is not None:
            from medspark.access import record_access

            record_access(config, "waveforms", ["restricted_locations"], n)
        partitions = max(1, min(n, 2 * spark.sparkContext.defaultParallelism))
        settings = WaveformSettings(limits=limits(config.ingest))
        rows = analyse_waveforms(instances, settings, partitions).persist(
            StorageLevel.MEMORY_AND_DISK
        )
        waves, metrics, errors = split_waveforms(rows)
        waves = locate_sources(waves, pseudonymizer).drop(*ORIGINAL_LOCATION)
        errors = locate_sources(errors, pseudonymizer, "message").drop(*ORIGINAL_LOCATION)
        counts = (
            rows.groupBy(
                "kind",
                "error_class",
                F.col("heart_rate_bpm").isNotNull().alias("hr"),
                F.col("lead").isNull().alias("instance"),
            )
            .agg(F.count("*").alias("n"))
            .collect()
        )
        unmeasured = (
            (F.col("kind") == METRICS) & F.col("lead").isNull() & F.col("reason").isNotNull()
        )
        reasons = (
            rows.where(unmeasured)
            .groupBy(F.substring_index("reason", ":", 1).alias("reason"))
            .count()
            .collect()
        )
        now = F.current_timestamp()
        stamp = {"run_id": F.lit(run_id)}
        concurrently(
            lambda: merge_into(
                spark,
                waves.withColumns({**stamp, "processed_at": now}),
                config.table_path("waveforms"),
                "waveforms",
            ),
            lambda: merge_into(
                spark,
                metrics.withColumns({**stamp, "computed_at": now}),
                config.table_path("ecg_metrics"),
                "ecg_metrics",
            ),
            lambda: merge_into(
                spark,
                errors.withColumns({**stamp, "recorded_at": now}),
                errors_path,
                "waveform_errors",
            ),
        )
        if had_errors:  # error rows of earlier runs whose instance decodes now
            decoded = waves.select("sop_instance_uid").distinct()
            delete_matching(spark, decoded, errors_path, "waveform_errors")
        rows.unpersist()
    finally:
        instances.unpersist()
    result = WaveformsResult(run_id=run_id, instances=n, channels=0, measured=0)
    for r in counts:
        if r["kind"] == WAVEFORM:
            result.channels += int(r["n"])
        elif r["kind"] == METRICS:
            result.metric_rows += int(r["n"])
            if r["hr"] and r["instance"]:
                result.measured += int(r["n"])
        elif r["kind"] == ERROR:
            cls = r["error_class"]
            result.errors_by_class[cls] = result.errors_by_class.get(cls, 0) + int(r["n"])
    result.unmeasured = {r["reason"]: int(r["count"]) for r in reasons}
    result.seconds = time.monotonic() - start
    return result


def record_waveforms(record: Any, result: WaveformsResult) -> None:
    """Copy a waveforms result into a ``job_runs`` record."""
    errors = sum(result.errors_by_class.values())
    if record.items_in is None:
        record.items_in = result.instances
    record.rows_out["waveforms"] = result.channels
    record.rows_out["ecg_metrics"] = result.metric_rows
    record.rows_out["waveform_errors"] = errors
    record.errors = (record.errors or 0) + errors


def waveforms_after_run(spark: Any, config: Any, record: Any) -> WaveformsResult | None:
    """``medspark run``'s waveforms step: the instances with a waveform that this run wrote to
    ``scans`` (``scans.run_id``), or that no run has analysed yet, re-read and analysed; None
    (and no table touched) when there are none. One more read of those items only: the one
    executor pass of ``run`` (:mod:`medspark.onepass`) does not decode waveforms yet."""
    from medspark.tables.writers import this_run_or_pending

    scans = spark.read.format("delta").load(config.table_path("scans"))
    outcomes = [config.table_path(t) for t in ("waveforms", "waveform_errors")]
    mine = this_run_or_pending(spark, scans, record.run_id, "sop_instance_uid", outcomes)
    if waveform_instances(mine).isEmpty():
        return None
    result = run_waveforms(spark, config, record.run_id, mine)
    record_waveforms(record, result)
    return result
