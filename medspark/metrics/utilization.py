"""How the hospital's scanners are used: modality x station x day, built from ingested scans.

Real days are needed here: a per-patient date shift (de-identification) would scatter one
station's day over many days. So ingestion keeps, in ``restricted_acquisitions``, the *true*
acquisition time of each instance next to pseudonymous ids only, and
:func:`scanner_utilization` aggregates it. The analyst table holds counts per station and day,
never a patient-level row. The restricted table is not for analysts (see docs/deid.md).

Busy hours of a day are the sum over its studies of the study's acquisition span (last minus
first acquisition time of its instances), each capped at ``study_span_cap_hours`` so that a
study left open or re-acquired the next morning cannot make one day look 20 hours busy. A study
with one instance has a span of zero.
"""

from __future__ import annotations

from typing import Any

from pyspark.sql import DataFrame
from pyspark.sql import functions as F


def scanner_utilization(acq: DataFrame, run_id: str, study_span_cap_hours: float) -> DataFrame:
    """Aggregate acquisitions to modality x station x day (schema ``SCANNER_UTILIZATION``).

    Two aggregations, no join: first per study within a (modality, station, day) cell (its span,
    instance count, per-hour counts and the sets of series and patients), then per cell. Busy
    hours are each study's span, capped, summed; series and patients are counted distinct over
    the cell by merging the per-study sets.
    """
    dated = acq.where(F.col("acquired_at").isNotNull()).withColumn("day", F.to_date("acquired_at"))
    keys = ["modality", "station_name", "day"]
    cap = study_span_cap_hours * 3600.0
    hour = F.hour("acquired_at")
    per_study = dated.groupBy(*keys, "study_instance_uid").agg(
        (
            F.unix_timestamp(F.max("acquired_at").cast("timestamp"))
            - F.unix_timestamp(F.min("acquired_at").cast("timestamp"))
        ).alias("span_s"),
        F.count("*").alias("n"),
        F.min("acquired_at").alias("first"),
        F.max("acquired_at").alias("last"),
        F.collect_set("series_instance_uid").alias("series_set"),
        F.collect_set("patient_id").alias("patient_set"),
        *[F.count(F.when(hour == h, 1)).alias(f"h{h}") for h in range(24)],
    )
    return per_study.groupBy(*keys).agg(
        F.count("study_instance_uid").alias("studies"),
        F.size(F.array_distinct(F.flatten(F.collect_list("series_set")))).alias("series"),
        F.sum("n").alias("instances"),
        F.size(F.array_distinct(F.flatten(F.collect_list("patient_set")))).alias("patients"),
        F.min("first").alias("first_acquisition"),
        F.max("last").alias("last_acquisition"),
        (F.sum(F.least(F.col("span_s"), F.lit(cap))) / 3600.0).alias("busy_hours"),
        F.array(*[F.sum(f"h{h}") for h in range(24)]).alias("instances_by_hour"),
        F.lit(run_id).alias("run_id"),
    )


def rebuild(spark: Any, acq_path: str, out_path: str, run_id: str, cap_hours: float) -> None:
    """Recompute ``scanner_utilization`` from all acquisitions and replace the table."""
    from medspark.tables.writers import replace_table

    acq = spark.read.format("delta").load(acq_path)
    replace_table(
        spark, scanner_utilization(acq, run_id, cap_hours), out_path, "scanner_utilization"
    )
