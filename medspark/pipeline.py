"""The medspark jobs: each reads its input, composes the steps (:mod:`medspark.steps`) and
writes the tables, idempotently (MERGE on each table's key).

``ingest``, ``preprocess`` and ``infer`` run one step each, reading the previous step's table;
``run_all`` (``medspark run``) does all three in one executor pass per item
(:mod:`medspark.onepass`). What each returns, and the run's recording, are in
:mod:`medspark.recording`; the steps are re-exported here for callers of earlier releases.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import StringType

from medspark.config import PipelineConfig
from medspark.dicom.deid import (
    ORIGINAL_LOCATION,
    deidentify_scans,
    locate_sources,
    locates,
    phi_map,
    pseudonymizer_from_config,
    restore_sources,
)
from medspark.preprocess.udf import BURNED_IN_WITHHELD
from medspark.recording import (
    InferResult,
    IngestResult,
    PreprocessResult,
    record_infer,
    record_ingest,
    record_preprocess,
    write_metric_rows,
    write_worker_metrics,
)
from medspark.steps import (
    DUPLICATE_COPY,
    DUPLICATE_SOP,
    duplicate_error,
    frame_ranges,
    model_columns,
    phi_rows,
    pixel_instances,
    predict_frames,
    preprocess_frames,
    preprocess_settings,
    read_instances,
    resolve_duplicates,
    saliency_rows,
    split_frames,
    split_instances,
    split_withheld,
)
from medspark.tables.schemas import SOURCE_FIELDS
from medspark.tables.writers import (
    concurrently,
    create_tables,
    delete_matching,
    ensure_restricted_root,
    merge_into,
    replace_table,
    wrote_nothing,
)
from medspark.volumes.series import refresh_series

__all__ = [
    "DUPLICATE_COPY",
    "DUPLICATE_SOP",
    "InferResult",
    "IngestResult",
    "PreprocessResult",
    "evaluate",
    "frame_ranges",
    "infer",
    "ingest",
    "model_inputs",
    "new_run_id",
    "prepare_pass",
    "phi_rows",
    "pixel_instances",
    "predict_frames",
    "preprocess",
    "preprocess_frames",
    "preprocess_settings",
    "read_instances",
    "record_infer",
    "record_ingest",
    "record_preprocess",
    "resolve_duplicates",
    "run_all",
    "split_frames",
    "split_instances",
    "write_metric_rows",
    "write_worker_metrics",
]


def new_run_id() -> str:
    """A sortable, unique run id: UTC time plus random suffix."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]


def _record_acquisitions(
    spark: Any, config: PipelineConfig, raw: DataFrame, kept: DataFrame
) -> dict[str, int]:
    """Keep true acquisition times (restricted table); see :func:`_rebuild_utilization`.
    Returns the MERGE's counts (all zero when every acquisition was there already)."""
    from medspark.metrics.utilization import acquisitions

    return merge_into(
        spark,
        acquisitions(raw, kept),
        config.table_path("restricted_acquisitions"),
        "restricted_acquisitions",
    )


def with_paths(spark: Any, config: PipelineConfig, df: DataFrame) -> DataFrame:
    """Rows of an analyst table with the file paths back in ``source_uri`` and
    ``archive_member`` (from ``restricted_locations``): for data engineers, who can read the
    restricted warehouse. Rows that hold paths already (``deid.keep_paths``) stay as they are."""
    return restore_sources(df, _existing(spark, config.table_path("restricted_locations")))


#: A ``scans`` row is refreshed only by the item it came from: a row another run stored for the
#: same SOP Instance UID from another item is never overwritten (see :func:`_settle_duplicates`).
SAME_ITEM = "t.source_uri <=> s.source_uri AND t.archive_member <=> s.archive_member"


def _settle_duplicates(spark: Any, kept: DataFrame, scans_path: str, run_id: str) -> DataFrame:
    """After this run's ``scans`` write: the items to move from ``scans`` (or keep out of it) to
    ``ingest_errors`` so that each SOP Instance UID has one row, even when a concurrent run
    stored the same UID from another item. Returns their ``ingest_errors`` rows.

    Two races leave a UID to settle: a concurrent run stored it between this run's duplicate
    check and its MERGE (the MERGE keeps that row, :data:`SAME_ITEM`, so this run's item is in
    neither table yet), or two first loads appended it side by side (blind appends do not
    conflict, so ``scans`` holds it twice). Either way the item at the smallest location is
    kept, the order :func:`~medspark.steps.resolve_duplicates` uses, and the others become
    ``duplicate_*`` error rows; a concurrent run that finds the same race settles it the same
    way. One join of the table with this run's UIDs.
    """
    from pyspark.sql import Window

    source = [f.name for f in SOURCE_FIELDS]
    item = ["sop_instance_uid", "source_uri", "archive_member"]
    stored = (
        spark.read.format("delta")
        .load(scans_path)
        .join(kept.select("sop_instance_uid").distinct(), "sop_instance_uid")
        .select("sop_instance_uid", *source)
    )
    order = Window.partitionBy("sop_instance_uid").orderBy(
        F.col("source_uri").asc(), F.col("archive_member").asc_nulls_first()
    )
    ranked = stored.select(
        "*",
        F.row_number().over(order).alias("_n"),
        F.first("source_uri").over(order).alias("_k_uri"),
        F.first("archive_member").over(order).alias("_k_member"),
        F.first("sha256").over(order).alias("_k_sha"),
    )
    first = ranked.where("_n = 1").select("sop_instance_uid", "_k_uri", "_k_member", "_k_sha")
    twice = ranked.where("_n > 1").drop("_n")
    mine = kept.select("sop_instance_uid", *source)
    unstored = mine.join(stored, [mine[c].eqNullSafe(stored[c]) for c in item], "left_anti").join(
        first, "sop_instance_uid"
    )
    return twice.unionByName(unstored).select(
        "sop_instance_uid",
        *source,
        *duplicate_error(
            F.col("_k_uri"), F.col("_k_member"), F.col("_k_sha"), "; stored by a concurrent run"
        ),
        F.lit(run_id).alias("run_id"),
        F.current_timestamp().alias("recorded_at"),
    )


def _write_locations(spark: Any, config: PipelineConfig, rows: DataFrame, run_id: str) -> None:
    """``restricted_locations``: the path of every location key in ``rows`` (items located by
    :func:`~medspark.dicom.deid.locate_sources`, scans and errors alike)."""
    located = rows.select("source_uri", "archive_member", *ORIGINAL_LOCATION).distinct()
    merge_into(
        spark,
        located.withColumns({"run_id": F.lit(run_id), "recorded_at": F.current_timestamp()}),
        config.table_path("restricted_locations"),
        "restricted_locations",
    )


def _rebuild_utilization(spark: Any, config: PipelineConfig, run_id: str) -> None:
    """Rebuild ``scanner_utilization`` from all of ``restricted_acquisitions``."""
    from medspark.metrics.utilization import rebuild

    rebuild(
        spark,
        config.table_path("restricted_acquisitions"),
        config.table_path("scanner_utilization"),
        run_id,
        config.metrics.study_span_cap_hours,
    )


def _is_table(spark: Any, path: str) -> bool:
    from delta.tables import DeltaTable

    return bool(DeltaTable.isDeltaTable(spark, path))


def _stored_from_other_items(candidates: DataFrame, existing: DataFrame) -> bool:
    """Whether ``scans`` (``existing``) holds one of the candidates' SOP Instance UIDs from
    another item (location): then :func:`~medspark.steps.resolve_duplicates` rejects some
    candidate. One join over three columns; the same items again (a re-run) are no conflict."""
    item = ["sop_instance_uid", "source_uri", "archive_member"]
    mine, stored = candidates.select(*item).alias("s"), existing.select(*item).alias("t")
    return not mine.join(stored, "sop_instance_uid").where(~F.expr(SAME_ITEM)).isEmpty()


def _existing(spark: Any, path: str) -> DataFrame | None:
    return spark.read.format("delta").load(path) if _is_table(spark, path) else None


def ingest(
    spark: Any, sources: Sequence[str], config: PipelineConfig, run_id: str | None = None
) -> IngestResult:
    """Ingest scan inputs into the ``scans`` and ``ingest_errors`` Delta tables.

    Idempotent: MERGE on ``sop_instance_uid`` for scans and on ``source_uri`` +
    ``archive_member`` for errors. Bad inputs become error rows; only a failure of the job
    itself (Spark, the warehouse) raises.
    """
    start = time.monotonic()
    run_id = run_id or new_run_id()
    scans_path = config.table_path("scans")
    errors_path = config.table_path("ingest_errors")
    utilization_path = config.table_path("scanner_utilization")
    had_errors = _is_table(spark, errors_path)
    ensure_restricted_root(config)

    pseudonymizer = pseudonymizer_from_config(config.deid)  # None when deid.enabled is false
    # Location keys in place of paths from the start, so every comparison with the tables
    # (duplicates, cleared errors) is between keys.
    instances = locate_sources(
        read_instances(spark, sources, config), pseudonymizer, message="error_message"
    ).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        items = instances.count()
        candidates, read_errors = split_instances(instances)
        # The one place between parsing and writing where identity leaves the data.
        scans, duplicate_errors = resolve_duplicates(
            deidentify_scans(candidates, pseudonymizer), _existing(spark, scans_path)
        )
        scans = scans.persist(StorageLevel.MEMORY_AND_DISK)  # used by two writes below
        stamp = {"run_id": F.lit(run_id), "ingested_at": F.current_timestamp()}
        errors = (
            read_errors.unionByName(duplicate_errors)
            .withColumn("run_id", F.lit(run_id))
            .withColumn("recorded_at", F.current_timestamp())
            .persist(StorageLevel.MEMORY_AND_DISK)
        )

        def write_errors() -> dict[str, int]:
            # The count computes (and caches) the errors; the write then reads the cache.
            counts = errors.groupBy("error_class").agg(F.count("*").alias("n")).collect()
            merge_into(spark, errors, errors_path, "ingest_errors")
            return {r["error_class"]: int(r["n"]) for r in counts}

        def write_acquisitions() -> None:
            # scanner_utilization is rebuilt from restricted_acquisitions, so after it; when
            # no acquisition is new (a re-run), it stands as it is.
            added = _record_acquisitions(spark, config, candidates, scans)
            if not wrote_nothing(added) or not _is_table(spark, utilization_path):
                _rebuild_utilization(spark, config, run_id)

        def write_scans() -> dict[str, int]:
            counts = merge_into(
                spark,
                scans.withColumns(stamp),
                scans_path,
                "scans",
                metrics=True,
                update_if=SAME_ITEM,
            )
            # series rebuilt from the new scans (not when no scans row changed)
            refresh_series(spark, config, scans, run_id, scans_changed=not wrote_nothing(counts))
            return counts

        steps = [
            write_scans,
            write_errors,
            write_acquisitions,
        ]
        if pseudonymizer is not None and config.deid.phi_map:
            phi_rows = phi_map(candidates, pseudonymizer).withColumns(
                {"run_id": F.lit(run_id), "recorded_at": F.current_timestamp()}
            )
            phi_path = config.table_path("restricted_phi_map")
            steps.append(lambda: merge_into(spark, phi_rows, phi_path, "restricted_phi_map"))
        if locates(pseudonymizer):
            steps.append(lambda: _write_locations(spark, config, instances, run_id))
        # Independent writes, one driver thread each. Two of them read the de-identified scans;
        # they share one computation of the cache, because a task that needs a cached block
        # another task is still writing waits for it (Spark's BlockInfoManager: the first
        # writer wins) instead of computing it again.
        scan_metrics, by_class, *_ = concurrently(*steps)
        # A concurrent run may have stored some of these SOP Instance UIDs from other items.
        late = _settle_duplicates(spark, scans, scans_path, run_id).persist()
        stored = scans
        # Settled rows may be the other run's items (it settles the same way): counted there.
        where = [late[c].eqNullSafe(scans[c]) for c in ("source_uri", "archive_member")]
        own = late.join(scans, where, "left_semi")
        late_counts = own.groupBy("error_class").agg(F.count("*").alias("n")).collect()
        for r in late_counts:
            by_class[r["error_class"]] = by_class.get(r["error_class"], 0) + int(r["n"])
        if late.take(1):
            merge_into(spark, late, errors_path, "ingest_errors")
            item = ["sop_instance_uid", "source_uri", "archive_member"]
            delete_matching(spark, late, scans_path, "scans", on=item)
            refresh_series(spark, config, scans, run_id)  # without the items moved out
            stored = scans.join(late, where, "left_anti")  # the same (symmetric) condition
        cleared = delete_matching(spark, stored, errors_path, "ingest_errors") if had_errors else 0
        late.unpersist()
        errors.unpersist()
        scans.unpersist()
    finally:
        instances.unpersist()
    return IngestResult(
        run_id=run_id,
        items=items,
        scans_inserted=scan_metrics.get("numTargetRowsInserted", 0),
        scans_updated=scan_metrics.get("numTargetRowsUpdated", 0),
        errors_by_class=by_class,
        errors_cleared=cleared,
        seconds=time.monotonic() - start,
    )


# --------------------------------------------------------------------------------------
# Preprocessing: scans -> images + preprocess_errors
# --------------------------------------------------------------------------------------


def preprocess(spark: Any, config: PipelineConfig, run_id: str | None = None) -> PreprocessResult:
    """Read ``scans``, write ``images`` and ``preprocess_errors`` (MERGE, idempotent)."""
    start = time.monotonic()
    run_id = run_id or new_run_id()
    scans = spark.read.format("delta").load(config.table_path("scans"))
    # Files are read at their paths (restricted_locations); rows are written with their keys.
    pseudonymizer = pseudonymizer_from_config(config.deid)
    locations = _existing(spark, config.table_path("restricted_locations"))
    instances = restore_sources(pixel_instances(scans), locations).persist(
        StorageLevel.MEMORY_AND_DISK
    )
    try:
        n_instances = instances.count()
        parallelism = spark.sparkContext.defaultParallelism
        partitions = config.preprocess.partitions or max(
            2 * parallelism, min(-(-n_instances // 200), 64 * parallelism)
        )
        chain_hash = config.preprocess.chain().config_hash()
        frames = locate_sources(
            preprocess_frames(instances, config, partitions), pseudonymizer, "error_message"
        ).persist(StorageLevel.MEMORY_AND_DISK)
        images, errors = split_frames(frames)
        stamp = {
            "config_hash": F.lit(chain_hash),
            "run_id": F.lit(run_id),
            "processed_at": F.current_timestamp(),
        }
        stamped_images, restricted = split_withheld(images, stamp)
        stamped_errors = errors.withColumns(
            {"run_id": F.lit(run_id), "recorded_at": F.current_timestamp()}
        )
        # Computes (and caches) every frame once; the writes then read the cache.
        counts = (
            frames.groupBy("error_class", "burned_in_action").agg(F.count("*").alias("n")).collect()
        )
        by_class: dict[str, int] = {}
        for r in counts:
            if r["error_class"] is not None:
                by_class[r["error_class"]] = by_class.get(r["error_class"], 0) + int(r["n"])
        n_withheld = sum(
            int(r["n"])
            for r in counts
            if r["error_class"] is None and r["burned_in_action"] == BURNED_IN_WITHHELD
        )
        steps = [
            lambda: merge_into(spark, stamped_images, config.table_path("images"), "images"),
            lambda: write_worker_metrics(spark, config, frames, "preprocess", run_id),
            lambda: merge_into(
                spark, stamped_errors, config.table_path("preprocess_errors"), "preprocess_errors"
            ),
        ]
        if n_withheld:
            ensure_restricted_root(config)
            path = config.table_path("restricted_images")
            steps.append(lambda: merge_into(spark, restricted, path, "restricted_images"))
        concurrently(*steps)
        frames.unpersist()
    finally:
        instances.unpersist()
    # Frames processed (each has its images row), whether or not the write changed the row.
    processed = sum(int(r["n"]) for r in counts if r["error_class"] is None)
    return PreprocessResult(
        run_id=run_id,
        instances=n_instances,
        frames=processed,
        errors_by_class=by_class,
        seconds=time.monotonic() - start,
        config_hash=chain_hash,
    )


def model_inputs(spark: Any, config: PipelineConfig) -> DataFrame:
    """``(sop_instance_uid, frame, tensor)`` of every frame of ``images`` the model can read,
    and with ``inference.saliency`` on also ``thumbnail_png``, ``frame_rows``, ``frame_columns``
    (what the overlay is drawn on and the boxes are measured in).

    The tensors of frames withheld for burned-in text come from ``restricted_images``: a
    prediction (label and score) carries no pixels, so withheld frames are predicted too.
    Their thumbnail stays the analyst table's, null: their saliency overlay shows no pixel.
    """
    beside = ["thumbnail_png", "frame_rows", "frame_columns"] if config.inference.saliency else []
    images = spark.read.format("delta").load(config.table_path("images"))
    images = images.select("sop_instance_uid", "frame", "tensor", *beside)
    restricted_path = config.table_path("restricted_images")
    if _is_table(spark, restricted_path):
        withheld = (
            spark.read.format("delta")
            .load(restricted_path)
            .select("sop_instance_uid", "frame", F.col("tensor").alias("_withheld"))
        )
        images = images.join(withheld, ["sop_instance_uid", "frame"], "left").select(
            "sop_instance_uid",
            "frame",
            F.coalesce("tensor", "_withheld").alias("tensor"),
            *beside,
        )
    return images.where(F.col("tensor").isNotNull())


def infer(
    spark: Any, config: PipelineConfig, model_name: str | None = None, run_id: str | None = None
) -> InferResult:
    """Read ``images``, write ``predictions`` (MERGE: re-running a model version adds no row),
    and with ``inference.saliency`` on, ``saliency`` from the same batches.

    The model is checked on the driver first (file, format, input and output shape, and the
    saliency convention when saliency is on), so a wrong path or shape fails before any task
    starts.
    """
    from medspark.inference.model import check_model

    start = time.monotonic()
    run_id = run_id or new_run_id()
    model = config.inference.model_config(model_name)
    saliency = config.inference.saliency
    check_model(
        model,
        [config.preprocess.output_size] * 2,
        saliency=saliency,
        method=config.inference.saliency_method,
    )
    images = model_inputs(spark, config)
    predictions = predict_frames(images, config, model_name).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        labels = {
            r["label"]: int(r["n"])
            for r in predictions.groupBy("label").agg(F.count("*").alias("n")).collect()
        }
        write_worker_metrics(spark, config, predictions, "infer", run_id)
        stamp = {"run_id": F.lit(run_id), "predicted_at": F.current_timestamp()}
        writes = [
            lambda: merge_into(
                spark,
                predictions.withColumns(stamp),
                config.table_path("predictions"),
                "predictions",
                metrics=True,
                only_changed=True,  # re-running a model version on the same images: no commit
            )
        ]
        if saliency:
            writes.append(
                lambda: merge_into(
                    spark,
                    saliency_rows(predictions).withColumns(stamp),
                    config.table_path("saliency"),
                    "saliency",
                    only_changed=True,  # deterministic maps and PNGs: a re-run commits nothing
                )
            )
        metrics, *_ = concurrently(*writes) if len(writes) > 1 else [writes[0]()]
    finally:
        predictions.unpersist()
    return InferResult(
        run_id=run_id,
        model=model.name,
        model_version=model.version,
        frames=sum(labels.values()),
        inserted=metrics.get("numTargetRowsInserted", 0),
        labels=labels,
        seconds=time.monotonic() - start,
    )


@dataclass
class EvaluationResult:
    """What ``evaluate`` wrote: ``model_metrics`` rows (the overall one first), and the rows of
    ``model_evaluation``, ``model_calibration`` and ``model_roc``."""

    metrics: list[dict[str, Any]]
    evaluation: list[dict[str, Any]]
    calibration: list[dict[str, Any]]
    roc: list[dict[str, Any]]

    def figure(
        self, metric: str, level: str = "frame", subgroup: str = "all"
    ) -> dict[str, Any] | None:
        """The ``model_evaluation`` row of one metric, level and subgroup (None if absent)."""
        for row in self.evaluation:
            if (row["metric"], row["level"], row["subgroup"]) == (metric, level, subgroup):
                return row
        return None

    def summary_lines(self, config: PipelineConfig) -> list[str]:
        """The console summary: counts, then each level's figures with their intervals."""
        return _evaluation_summary(self, config)


def _interval(row: dict[str, Any] | None) -> str:
    """``0.912 [0.871, 0.946]``, or the value and why there is no interval."""
    if row is None:
        return "-"
    if row["value"] is None:
        return f"n/a ({row['note']})"
    if row["ci_low"] is None:
        return f"{row['value']:.3f} (no interval: {row['note']})"
    return f"{row['value']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"


def _evaluation_summary(result: EvaluationResult, config: PipelineConfig) -> list[str]:
    """The console lines of ``evaluate``: counts, then each level's figures with intervals."""
    overall = result.metrics[0]
    counts = {
        r["metric"]: int(r["value"])
        for r in result.evaluation
        if r["note"] and r["note"].startswith("a count")
    }
    ev = config.evaluation
    lines = [
        f"model {overall['model']} v{overall['model_version']}: {overall['support']} labelled "
        f"frame(s) with a prediction; {counts.get('labels_without_prediction', 0)} label(s) "
        f"without prediction, {counts.get('predictions_without_label', 0)} prediction(s) "
        f"without label, {counts.get('frames_without_patient', 0)} frame(s) without a patient",
        f"{int(ev.confidence * 100)} % intervals: patient bootstrap, {ev.bootstrap_resamples} "
        f"resamples, seed {ev.seed}; threshold rule {ev.threshold_rule}",
    ]
    for level in ("frame", "instance", "patient"):
        auc = result.figure("auc", level)
        if auc is None:
            continue
        threshold = result.figure("sensitivity", level)["threshold"]
        lines.append(
            f"  {level:<8} n={auc['n']} ({auc['n_positive']} positive, "
            f"{auc['n_patients']} patients), threshold {threshold:.3f}"
        )
        for metric in ("auc", "sensitivity", "specificity", "ppv", "npv", "accuracy"):
            lines.append(f"    {metric:<12} {_interval(result.figure(metric, level))}")
        lines.append(
            f"    {'brier':<12} {_interval(result.figure('brier', level))}   "
            f"ece {_interval(result.figure('ece', level))}"
        )
    subgroups = sorted({r["subgroup"] for r in result.evaluation} - {"all"})
    if subgroups:
        lines.append(f"  subgroups (model_evaluation): {', '.join(subgroups)}")
    return lines


def evaluation_settings(config: PipelineConfig) -> Any:
    """:class:`medspark.inference.stats.EvaluationSettings` from the ``evaluation`` section."""
    from medspark.inference.stats import BootstrapSpec, EvaluationSettings

    ev = config.evaluation
    return EvaluationSettings(
        threshold_rule=ev.threshold_rule,
        threshold=ev.threshold,
        target_sensitivity=ev.target_sensitivity,
        aggregation=ev.aggregation,
        subgroups=tuple(ev.subgroups),
        spec=BootstrapSpec(
            n_resamples=ev.bootstrap_resamples,
            seed=ev.seed,
            confidence=ev.confidence,
            min_patients=ev.min_patients,
            calibration_bins=ev.calibration_bins,
        ),
    )


def evaluate(
    spark: Any,
    config: PipelineConfig,
    labels_source: str,
    model_name: str | None = None,
    run_id: str | None = None,
) -> EvaluationResult:
    """Compare ``predictions`` of one model version with labels; write ``model_metrics``,
    ``model_evaluation``, ``model_calibration`` and ``model_roc``."""
    import logging

    from delta.tables import DeltaTable

    from medspark.inference.evaluate import (
        collect_columns,
        evaluate_predictions,
        evaluation_frames,
        read_labels,
    )
    from medspark.inference.stats import age_band, evaluate_frames
    from medspark.tables.schemas import (
        MODEL_CALIBRATION,
        MODEL_EVALUATION,
        MODEL_METRICS,
        MODEL_ROC,
    )

    log = logging.getLogger(__name__)
    run_id = run_id or new_run_id()
    model = config.inference.model_config(model_name)
    ev = config.evaluation
    positive_class = ev.positive_class_of(model.class_names, model.name)
    predictions = (
        spark.read.format("delta")
        .load(config.table_path("predictions"))
        .where((F.col("model") == model.name) & (F.col("model_version") == model.version))
    )
    labels = read_labels(spark, labels_source)
    pseudonymizer = pseudonymizer_from_config(config.deid)
    if pseudonymizer is not None:
        # Labels come from the hospital with original UIDs; the tables hold pseudonyms.
        uid = pseudonymizer.uid

        def pseudonym(original: str | None) -> str | None:
            return None if original is None else uid(original)

        # An explicit return type and no Arrow: pyspark would otherwise try to infer a pandas
        # eval type from the type hints and warn that it cannot.
        labels = labels.withColumn(
            "sop_instance_uid", F.udf(pseudonym, StringType(), useArrow=False)("sop_instance_uid")
        )
    labels = labels.persist()
    try:
        rows = evaluate_predictions(predictions, labels, model.class_names)
        scans_path = config.table_path("scans")
        scans = (
            spark.read.format("delta").load(scans_path)
            if DeltaTable.isDeltaTable(spark, scans_path)
            else None
        )
        frames, unmatched = evaluation_frames(
            predictions,
            labels,
            scans,
            model.class_names.index(positive_class),
            positive_class,
            list(ev.subgroups),
        )
        columns = collect_columns(frames, ev.max_driver_frames)
        counts = {name: df.count() for name, df in unmatched.items()}
    finally:
        labels.unpersist()
    if "patient_age_band" in ev.subgroups:
        columns["patient_age_band"] = np.array(
            [age_band(a, ev.age_bands) for a in columns["patient_age"]], dtype=object
        )
    for column in ev.subgroups:
        if not any(v is not None for v in columns[column]):
            log.info(
                "evaluate: no subgroup %s (the column is empty after de-identification)", column
            )
    counts["frames_without_patient"] = int(sum(p is None for p in columns["patient"]))
    figures = evaluate_frames(columns, evaluation_settings(config))
    now = datetime.now(timezone.utc)
    stamp = {"run_id": run_id, "model": model.name, "model_version": model.version}
    full = [
        {
            **{f.name: None for f in MODEL_METRICS.fields},
            **r,
            **stamp,
            "labels_source": labels_source,
            "evaluated_at": now,
        }
        for r in rows
    ]
    common = {
        **stamp,
        "confidence": ev.confidence,
        "threshold_rule": ev.threshold_rule,
        "positive_class": positive_class,
        "resamples": ev.bootstrap_resamples,
        "seed": ev.seed,
        "labels_source": labels_source,
        "evaluated_at": now,
    }
    threshold_notes = {t["level"]: t["note"] for t in figures["thresholds"]}
    evaluation = [
        {
            **common,
            **r,
            "note": "; ".join(
                n for n in (r["note"], threshold_notes[r["level"]] if r["threshold"] else None) if n
            )
            or None,
        }
        for r in figures["metrics"]
    ]
    n_frames = len(columns["score"])
    evaluation += [
        {
            **common,
            "level": "frame",
            "subgroup": "all",
            "metric": name,
            "value": float(count),
            "n": n_frames,
            "n_positive": int(columns["positive"].sum()),
            "n_patients": len({p for p in columns["patient"] if p is not None}),
            "confidence": None,
            "note": "a count, not a figure: rows that could not be evaluated",
        }
        for name, count in counts.items()
    ]
    calibration = [{**stamp, **r, "evaluated_at": now} for r in figures["calibration"]]
    roc = [{**stamp, **r, "evaluated_at": now} for r in figures["roc"]]

    def write(table: str, schema: Any, data: list[dict[str, Any]]) -> Any:
        rows = [tuple(r.get(f.name) for f in schema.fields) for r in data]
        df = spark.createDataFrame(rows, schema)
        return lambda: merge_into(spark, df, config.table_path(table), table)

    # Four small tables: their commits overlap (mostly driver work), each one atomic.
    concurrently(
        write("model_metrics", MODEL_METRICS, full),
        write("model_evaluation", MODEL_EVALUATION, evaluation),
        write("model_calibration", MODEL_CALIBRATION, calibration),
        write("model_roc", MODEL_ROC, roc),
    )
    return EvaluationResult(full, evaluation, calibration, roc)


@dataclass
class PassPlan:
    """What ``run`` decided before Spark is needed: the work units, the executor settings
    (secret and model included), and, for a small local input, the pass already computed."""

    bins: list[Any]
    settings: Any  # medspark.onepass.PassSettings
    computed: Any | None = None  # pyarrow.Table of PASS rows, or None: executors compute it


def prepare_pass(sources: Sequence[str], config: PipelineConfig, master: str) -> PassPlan:
    """Plan ``run`` (driver only, no Spark): the model checked, the input planned, and on a
    ``local`` master an input of at most ``ingest.driver_pass_max_bytes`` computed in this
    process (:func:`medspark.onepass.compute_in_driver`).

    The CLI calls it while the JVM starts, so on a small input the pass costs no wall time of
    its own: what Spark would add to it (a Python worker started per core, its imports, the
    first job's planning) is more than the work. The tables are written by Spark either way.
    """
    from medspark.inference.model import check_model
    from medspark.inference.predict import predict_settings
    from medspark.onepass import PassSettings, compute_in_driver, limits
    from medspark.sources.dicom_source import plan_partitions

    model = config.inference.model_config(None)
    check_model(
        model,
        [config.preprocess.output_size] * 2,
        saliency=config.inference.saliency,
        method=config.inference.saliency_method,
    )
    pseudonymizer = pseudonymizer_from_config(config.deid)
    inference = config.inference
    settings = PassSettings(
        limits=limits(config.ingest),
        preprocess=preprocess_settings(config),
        pseudonymizer=pseudonymizer,
        predict=predict_settings(inference, model, config.preprocess.thumbnail_size),
        batch_size=inference.batch_size,
        phi_map=pseudonymizer is not None and config.deid.phi_map,
    )
    cores = _local_cores(master)
    bins = plan_partitions(
        list(sources),
        config.ingest.min_partitions or 2 * (cores or 1),
        config.ingest.max_partition_bytes,
    )
    size = sum(u.size for units, _ in bins for u in units)
    small = size <= config.ingest.driver_pass_max_bytes
    computed = compute_in_driver(bins, settings) if cores and small else None
    return PassPlan(bins=bins, settings=settings, computed=computed)


def _local_cores(master: str) -> int | None:
    """The cores of a ``local`` master (``local[*]``: this machine's), else None."""
    import os
    import re

    m = re.fullmatch(r"local(?:\[(\*|\d+)(?:,\s*\d+)?\])?", master.strip())
    if m is None:
        return None
    if m.group(1) is None:
        return 1
    if m.group(1) == "*":
        return os.cpu_count() or 1
    return int(m.group(1))


def _executor_pass(spark: Any, plan: PassPlan) -> DataFrame:
    """The pass on the executors: one task per planned bin (see :mod:`medspark.onepass`)."""
    import pickle

    from medspark.onepass import PASS, pass_batches

    settings = plan.settings
    blobs = [(pickle.dumps(b),) for b in plan.bins]
    units = spark.createDataFrame(spark.sparkContext.parallelize(blobs, len(blobs)), "units binary")
    return units.mapInArrow(lambda it: pass_batches(it, settings), PASS)


def run_all(
    spark: Any,
    sources: Sequence[str],
    config: PipelineConfig,
    record: Any,
    prepared: PassPlan | None = None,
) -> tuple[IngestResult, PreprocessResult, InferResult]:
    """Ingest, preprocess and infer in one executor pass per item, under one run id.

    Every item is opened once (:mod:`medspark.onepass`): read, hashed, parsed, de-identified,
    decoded, cleaned of burned-in text, run through the chain and the model in the same task.
    The cached result is then split into ``scans``, ``ingest_errors``,
    ``restricted_acquisitions`` (and ``scanner_utilization``), ``images``,
    ``preprocess_errors``, ``predictions`` (and ``restricted_images``, ``restricted_phi_map``
    when used), written concurrently; ``worker_metrics`` from the driver. The tables and their
    keys are the same as after ``ingest``, ``preprocess`` and ``infer`` run one after another
    (a test compares them). ``prepared`` is the plan :func:`prepare_pass` made beforehand (the
    CLI makes it while Spark starts); without it, it is made here.
    """
    from medspark.onepass import FRAME, INGEST_ERROR, SCAN
    from medspark.tables.schemas import RESTRICTED_ACQUISITIONS

    start = time.monotonic()
    run_id = record.run_id
    model = config.inference.model_config(None)
    scans_path = config.table_path("scans")
    errors_path = config.table_path("ingest_errors")
    had_errors = _is_table(spark, errors_path)
    ensure_restricted_root(config)
    plan = prepared or prepare_pass(sources, config, spark.sparkContext.master)
    settings = plan.settings
    if plan.computed is not None:  # a small local input, computed in this process
        # Its figures come from the Arrow table itself; Spark only writes (a local relation
        # is cheap to read again, so it is not cached either).
        out = spark.createDataFrame(plan.computed)
        parts = max(1, spark.sparkContext.defaultParallelism)
    else:
        out = _executor_pass(spark, plan).persist(StorageLevel.MEMORY_AND_DISK)
        parts = len(plan.bins)
    saliency = config.inference.saliency
    tables = (
        "scans",
        "ingest_errors",
        "restricted_acquisitions",
        "scanner_utilization",
        "images",
        "preprocess_errors",
        "predictions",
        *(("saliency",) if saliency else ()),
    )
    try:
        # Missing tables are created while the executors compute (see create_tables).
        stats, fresh = concurrently(
            lambda: _pass_stats(out) if plan.computed is None else _arrow_stats(plan.computed),
            lambda: create_tables(spark, {name: config.table_path(name) for name in tables}),
        )
        metric_rows = [{**m, "rows": m["batch_rows"]} for r in stats for m in r["metrics"]]

        def n(kind: str, **where: Any) -> int:
            return sum(
                int(r["n"])
                for r in stats
                if r["kind"] == kind and all(r[k] == v for k, v in where.items())
            )

        n_scans = n(SCAN)
        acquisitions_path = config.table_path("restricted_acquisitions")
        first_acquisitions = "restricted_acquisitions" in fresh
        existing = None if "scans" in fresh else _existing(spark, scans_path)
        candidates = out.where(F.col("kind") == SCAN)
        frames = out.where(F.col("kind") == FRAME)
        read_errors = out.where(F.col("kind") == INGEST_ERROR).select(
            *[f.name for f in SOURCE_FIELDS], "error_class", F.col("error_message").alias("message")
        )
        distinct = sum(int(r["sops"]) for r in stats if r["kind"] == SCAN)
        # Fast path (no duplicate UID in the input, none stored from another item: a first
        # load, or a re-run of the same input): every candidate is kept, every frame belongs
        # to a kept item, and the counts above are exact.
        exact = distinct == n_scans and (
            existing is None or not _stored_from_other_items(candidates, existing)
        )
        if exact:
            kept, errors = candidates, read_errors
        else:
            kept, duplicate_errors = resolve_duplicates(candidates, existing)
            errors = read_errors.unionByName(duplicate_errors)
            location = ["sop_instance_uid", "source_uri", "archive_member"]
            owners = kept.select(*location)
            frames = frames.join(
                owners,
                [frames[c].eqNullSafe(owners[c]) for c in location],
                "left_semi",
            )
        images, frame_errors = split_frames(frames)
        stamp_images = {
            "config_hash": F.lit(config.preprocess.chain().config_hash()),
            "run_id": F.lit(run_id),
            "processed_at": F.current_timestamp(),
        }
        analyst_images, restricted = split_withheld(images, stamp_images)
        predictions = images.where(F.col("label").isNotNull()).select(
            "sop_instance_uid",
            "frame",
            *model_columns(model),
            "label",
            "score",
            "probabilities",
            F.lit(run_id).alias("run_id"),
            F.current_timestamp().alias("predicted_at"),
        )
        ids = [f.name for f in RESTRICTED_ACQUISITIONS.fields]
        acquired = kept.select(*ids)

        def write_acquisitions() -> None:
            added = merge_into(
                spark,
                acquired,
                acquisitions_path,
                "restricted_acquisitions",
                fresh=first_acquisitions,
            )
            # Utilisation covers every acquisition ever ingested; a run that added none (a
            # re-run) leaves it as it is.
            if not first_acquisitions and not wrote_nothing(added):
                _rebuild_utilization(spark, config, run_id)

        def write_utilization_from_this_run() -> None:
            # A first load: this run's acquisitions are all there are, so utilisation is built
            # from them at once, beside their write, instead of read back after it.
            from medspark.metrics.utilization import scanner_utilization

            replace_table(
                spark,
                scanner_utilization(acquired, run_id, config.metrics.study_span_cap_hours),
                config.table_path("scanner_utilization"),
                "scanner_utilization",
                fresh="scanner_utilization" in fresh,
            )

        def write(df: DataFrame, name: str, rows: int | None) -> dict[str, int]:
            """MERGE (or first-load append) ``df`` into table ``name``. A write known to hold
            no row only makes sure the table exists (no Spark job); one of known size is
            written in as many tasks (and files) as its rows need, not one per cached
            partition: fewer tasks, fewer small files."""
            path = config.table_path(name)
            if rows == 0:
                return {}  # the table exists (created above if it was missing)
            if rows is not None:
                per_file = _ROWS_PER_FILE.get(name, 100_000)
                wanted = max(1, -(-rows // per_file))
                if wanted < parts:
                    df = df.coalesce(wanted)
            # Rows equal to the stored ones (a re-run; deterministic CPU inference) commit
            # nothing (merge_into's only_changed).
            return merge_into(spark, df, path, name, fresh=name in fresh)

        known = (lambda count: count) if exact else (lambda count: None)
        n_frame_errors = sum(int(r["n"]) for r in stats if r["kind"] == FRAME and r["error_class"])
        n_labels = sum(int(r["n"]) for r in stats if r["kind"] == FRAME and r["label"])

        def write_scans() -> dict[str, int]:
            stamped = kept.withColumns(
                {"run_id": F.lit(run_id), "ingested_at": F.current_timestamp()}
            )
            counts = write(stamped, "scans", known(n_scans))
            # series rebuilt from the new scans (not when no scans row changed)
            refresh_series(spark, config, kept, run_id, scans_changed=not wrote_nothing(counts))
            return counts

        steps = [
            write_scans,
            lambda: write(
                errors.withColumns({"run_id": F.lit(run_id), "recorded_at": F.current_timestamp()}),
                "ingest_errors",
                known(n(INGEST_ERROR)),
            ),
            write_acquisitions,
            lambda: write(analyst_images, "images", known(n(FRAME, error_class=None))),
            lambda: write(
                frame_errors.withColumns(
                    {"run_id": F.lit(run_id), "recorded_at": F.current_timestamp()}
                ),
                "preprocess_errors",
                known(n_frame_errors),
            ),
            lambda: write(predictions, "predictions", known(n_labels)),
        ]
        if saliency:
            salient = saliency_rows(images.select("*", *model_columns(model))).withColumns(
                {"run_id": F.lit(run_id), "predicted_at": F.current_timestamp()}
            )
            steps.append(lambda: write(salient, "saliency", known(n_labels)))
        if first_acquisitions:
            steps.append(write_utilization_from_this_run)
        if n(FRAME, error_class=None, burned_in_action=BURNED_IN_WITHHELD):
            steps.append(
                lambda: merge_into(
                    spark, restricted, config.table_path("restricted_images"), "restricted_images"
                )
            )
        if settings.phi_map:
            phi = phi_rows(kept).withColumns(
                {"run_id": F.lit(run_id), "recorded_at": F.current_timestamp()}
            )
            steps.append(
                lambda: merge_into(
                    spark, phi, config.table_path("restricted_phi_map"), "restricted_phi_map"
                )
            )
        if locates(settings.pseudonymizer):
            items = out.where(F.col("kind").isin(SCAN, INGEST_ERROR))
            steps.append(lambda: _write_locations(spark, config, items, run_id))
        scan_counts, _, _, _, _, prediction_counts, *_ = concurrently(*steps)
        write_metric_rows(config, metric_rows, "run", run_id)
        cleared = delete_matching(spark, kept, errors_path, "ingest_errors") if had_errors else 0
        if exact:
            ingest_errors = _sum_by(stats, "error_class", kind=INGEST_ERROR)
            frame_classes = _sum_by(stats, "error_class", kind=FRAME)
            labels = _sum_by(stats, "label", kind=FRAME)
            pixel_instances_n = n(SCAN, has_pixels=True)
        else:  # duplicates were dropped: count what was written
            ingest_errors = _counts(errors, "error_class")
            frame_classes = _counts(frame_errors, "error_class")
            labels = _counts(predictions, "label")
            pixel_instances_n = kept.where(F.col("has_pixels")).count()
    finally:
        if plan.computed is None:
            out.unpersist()
    seconds = time.monotonic() - start
    n_images = n(FRAME, error_class=None) if exact else sum(labels.values())
    n_inserted = scan_counts.get("numTargetRowsInserted", n_scans if exact else 0)
    ingested = IngestResult(
        run_id=run_id,
        items=n_scans + n(INGEST_ERROR),
        scans_inserted=n_inserted,
        scans_updated=scan_counts.get("numTargetRowsUpdated", 0),
        errors_by_class=ingest_errors,
        seconds=seconds,
        errors_cleared=cleared,
    )
    record_ingest(record, ingested)
    preprocessed = PreprocessResult(
        run_id=run_id,
        instances=pixel_instances_n,
        frames=n_images,
        errors_by_class=frame_classes,
        seconds=seconds,
        config_hash=config.preprocess.chain().config_hash(),
    )
    record_preprocess(record, preprocessed)
    n_predicted = sum(labels.values())
    inferred = InferResult(
        run_id=run_id,
        model=model.name,
        model_version=model.version,
        frames=n_predicted,
        inserted=prediction_counts.get("numTargetRowsInserted", n_predicted),
        labels=labels,
        seconds=seconds,
    )
    record_infer(record, inferred)
    return ingested, preprocessed, inferred


#: Rows per written file where a table's rows are large (``images``: a 224x224 tensor and a
#: thumbnail, ~60 KB a row, so ~120 MB a file; ``saliency``: a ~10 KB PNG); other tables:
#: 100,000 rows a file.
_ROWS_PER_FILE = {"images": 2_000, "restricted_images": 2_000, "saliency": 10_000}

#: Columns of the pass's ``metrics`` rows (``worker_metrics``, with ``batch_rows`` as ``rows``).
_METRIC_COLUMNS = frozenset(
    {
        "partition",
        "batch",
        "batch_rows",
        "seconds_read",
        "seconds_decode",
        "seconds_preprocess",
        "seconds_infer",
        "seconds_wall",
        "rss_bytes",
        "gpu_utilization",
        "gpu_memory_bytes",
    }
)


def _pass_stats(out: DataFrame) -> list[Any]:
    """The one job that computes (and caches) every item of the pass: row counts by kind,
    error class, burned-in action, pixels and label, distinct SOP Instance UIDs, and the
    per-batch ``metrics`` rows (few: one per output batch)."""
    from medspark.onepass import METRICS, PASS

    metric_columns = [f.name for f in PASS.fields if f.name in _METRIC_COLUMNS]
    rows = (
        out.groupBy("kind", "error_class", "burned_in_action", "has_pixels", "label")
        .agg(
            F.count("*").alias("n"),
            F.countDistinct("sop_instance_uid").alias("sops"),
            F.collect_list(F.when(F.col("kind") == METRICS, F.struct(*metric_columns))).alias(
                "metrics"
            ),
        )
        .collect()
    )
    return [{**r.asDict(), "metrics": [m.asDict() for m in r["metrics"]]} for r in rows]


def _arrow_stats(table: Any) -> list[dict[str, Any]]:
    """:func:`_pass_stats` of a pass computed in the driver, from its Arrow table (no job)."""
    from medspark.onepass import METRICS

    keys = ("kind", "error_class", "burned_in_action", "has_pixels", "label")
    groups: dict[tuple[Any, ...], dict[str, Any]] = {}
    sops: dict[tuple[Any, ...], set[str]] = {}
    metric_columns = [name for name in table.column_names if name in _METRIC_COLUMNS]
    for row in table.select([*keys, "sop_instance_uid", *metric_columns]).to_pylist():
        key = tuple(row[k] for k in keys)
        group = groups.setdefault(key, {**dict(zip(keys, key, strict=True)), "n": 0, "metrics": []})
        group["n"] += 1
        if row["sop_instance_uid"] is not None:
            sops.setdefault(key, set()).add(row["sop_instance_uid"])
        if row["kind"] == METRICS:
            group["metrics"].append({c: row[c] for c in metric_columns})
    for key, group in groups.items():
        group["sops"] = len(sops.get(key, ()))
    return list(groups.values())


def _sum_by(stats: list[Any], column: str, **where: Any) -> dict[str, int]:
    """``{value of column: rows}`` over the collected ``stats`` groups that match ``where``
    (null values of ``column`` left out)."""
    out: dict[str, int] = {}
    for r in stats:
        if r[column] is not None and all(r[k] == v for k, v in where.items()):
            out[r[column]] = out.get(r[column], 0) + int(r["n"])
    return out


def _counts(df: DataFrame, column: str) -> dict[str, int]:
    rows = df.groupBy(column).agg(F.count("*").alias("n")).collect()
    return {r[column]: int(r["n"]) for r in rows}
