"""The medspark jobs: each reads its input, composes the steps (:mod:`medspark.steps`) and
writes the tables, idempotently (MERGE on each table's key).

``ingest`` and ``run_all`` (``medspark run``) are one executor pass per item
(:mod:`medspark.onepass`), with decoding off and on, written by one commit
(:func:`_commit_pass`); ``preprocess`` and ``infer`` run one step each, reading the previous
step's table. What each returns, and the run's recording, are in :mod:`medspark.recording`;
the steps are re-exported here for callers of earlier releases.
"""

from __future__ import annotations

import time
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
    locate_sources,
    locates,
    pseudonymizer_from_config,
    restore_sources,
)
from medspark.preprocess.udf import BURNED_IN_WITHHELD
from medspark.recording import (
    InferResult,
    IngestResult,
    PreprocessResult,
    new_run_id,
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
    resolve_duplicates,
    saliency_rows,
    split_frames,
    split_withheld,
)
from medspark.tables.error_classes import ERASED_SUBJECT
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
    "record_infer",
    "record_ingest",
    "record_preprocess",
    "resolve_duplicates",
    "run_all",
    "split_frames",
    "write_metric_rows",
    "write_worker_metrics",
]


def with_paths(
    spark: Any, config: PipelineConfig, df: DataFrame, function: str = "with_paths"
) -> DataFrame:
    """Rows of an analyst table with the file paths back in ``source_uri`` and
    ``archive_member`` (from ``restricted_locations``): for data engineers, who can read the
    restricted warehouse. Rows that hold paths already (``deid.keep_paths``) stay as they are.
    The read is logged in ``restricted_access_log`` under ``function``."""
    from medspark.access import record_access

    locations = _existing(spark, config.table_path("restricted_locations"))
    if locations is not None:
        record_access(config, function, ["restricted_locations"])
    return restore_sources(df, locations)


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


def _written_by_others(path: str) -> bool:
    """Whether the table this run created and appended to (versions 0 and 1) has a later
    commit: another writer's. delta-rs lists the log from the driver (no Spark job)."""
    from deltalake import DeltaTable as RustTable

    return RustTable(path).version() > 1


def _existing(spark: Any, path: str) -> DataFrame | None:
    return spark.read.format("delta").load(path) if _is_table(spark, path) else None


def ingest(
    spark: Any, sources: Sequence[str], config: PipelineConfig, run_id: str | None = None
) -> IngestResult:
    """Ingest scan inputs into ``scans`` and ``ingest_errors`` (and the tables beside them:
    ``series``, ``restricted_acquisitions``, ``scanner_utilization``, the restricted maps).

    The pass of ``run`` with decoding off (:func:`prepare_pass`): each item read, hashed,
    parsed and de-identified once, by the same code, and committed by the same
    :func:`_commit_pass`, which also settles SOP Instance UIDs a concurrent ingest stored from
    other items. Idempotent: MERGE on ``sop_instance_uid`` for scans and on ``source_uri`` +
    ``archive_member`` for errors. Bad inputs become error rows; only a failure of the job
    itself (Spark, the warehouse) raises.
    """
    start = time.monotonic()
    run_id = run_id or new_run_id()
    sc = spark.sparkContext
    plan = prepare_pass(sources, config, sc.master, decode=False, parallelism=sc.defaultParallelism)
    done = _commit_pass(spark, config, plan, run_id, settle=True)
    return IngestResult(
        run_id=run_id,
        items=done.items,
        scans_inserted=done.inserted_scans,
        scans_updated=done.scans.get("numTargetRowsUpdated", 0),
        errors_by_class=done.ingest_errors,
        errors_cleared=done.cleared,
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
        if locations is not None:
            from medspark.access import record_access

            record_access(config, "preprocess", ["restricted_locations"], n_instances)
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
        from medspark.access import record_access

        record_access(config, "infer", ["restricted_images"])
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


def pass_settings(config: PipelineConfig, decode: bool = True) -> Any:
    """The executor settings of the pass (:class:`medspark.onepass.PassSettings`).

    ``decode`` off is ``ingest``: items are read, hashed, parsed and de-identified, and no
    frame is decoded (no chain, no model). On, it is ``run``: the model is checked here (file,
    format, input and output shape, the saliency convention), before any task starts.
    """
    from medspark.erasure import erased_hashes
    from medspark.inference.model import check_model
    from medspark.inference.predict import predict_settings
    from medspark.onepass import PassSettings, limits

    pseudonymizer = pseudonymizer_from_config(config.deid)
    phi = pseudonymizer is not None and config.deid.phi_map
    erased = erased_hashes(config) if pseudonymizer is not None else frozenset()
    if not decode:
        return PassSettings(
            limits(config.ingest), None, pseudonymizer, None, phi_map=phi, erased=erased
        )
    model = config.inference.model_config(None)
    check_model(
        model,
        [config.preprocess.output_size] * 2,
        saliency=config.inference.saliency,
        method=config.inference.saliency_method,
    )
    inference = config.inference
    return PassSettings(
        limits=limits(config.ingest),
        preprocess=preprocess_settings(config),
        pseudonymizer=pseudonymizer,
        predict=predict_settings(inference, model, config.preprocess.thumbnail_size),
        batch_size=inference.batch_size,
        phi_map=phi,
        erased=erased,
    )


def prepare_pass(
    sources: Sequence[str],
    config: PipelineConfig,
    master: str,
    decode: bool = True,
    parallelism: int | None = None,
) -> PassPlan:
    """Plan the pass (driver only, no Spark): its settings (:func:`pass_settings`), the input
    planned, and on a ``local`` master an input of at most ``ingest.driver_pass_max_bytes``
    computed in this process (:func:`medspark.onepass.compute_in_driver`).

    The CLI calls it while the JVM starts, so on a small input the pass costs no wall time of
    its own: what Spark would add to it (a Python worker started per core, its imports, the
    first job's planning) is more than the work. The tables are written by Spark either way.
    ``parallelism`` (Spark's default parallelism, when Spark runs already) sets the least
    number of tasks; without it, twice the local cores.
    """
    from medspark.onepass import compute_in_driver
    from medspark.sources.dicom_source import plan_partitions

    settings = pass_settings(config, decode)
    cores = _local_cores(master)
    bins = plan_partitions(
        list(sources),
        config.ingest.min_partitions or 2 * (parallelism or cores or 1),
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


#: The tables every pass writes; a pass that decodes also writes :data:`_FRAME_TABLES`.
_SCAN_TABLES = ("scans", "ingest_errors", "restricted_acquisitions", "scanner_utilization")
_FRAME_TABLES = ("images", "preprocess_errors", "predictions")


@dataclass
class _PassRows:
    """One pass's output while it is committed: the rows, their statistics (one job, see
    :func:`_pass_stats`), and the rows to write once duplicates are resolved."""

    out: DataFrame
    stats: list[dict[str, Any]]
    parts: int  # partitions of ``out``
    fresh: set[str]  # tables created empty by this run
    kept: DataFrame  # ``scans`` rows: de-identified, one item per SOP Instance UID
    errors: DataFrame  # ``ingest_errors`` rows (read errors, duplicates), not stamped
    frames: DataFrame  # frame rows of the kept items
    exact: bool  # no duplicate: every candidate kept, and the statistics are the written counts

    def n(self, kind: str, **where: Any) -> int:
        """Rows of ``kind`` whose statistics columns equal ``where``."""
        return sum(
            int(r["n"])
            for r in self.stats
            if r["kind"] == kind and all(r[k] == v for k, v in where.items())
        )

    def known(self, count: int) -> int | None:
        """``count`` when the statistics are the written counts, else None (unknown)."""
        return count if self.exact else None


def _pass_rows(
    spark: Any, config: PipelineConfig, plan: PassPlan, tables: Sequence[str]
) -> _PassRows:
    """Compute the pass (or take the one computed in the driver), create the missing
    ``tables`` meanwhile, and resolve duplicate SOP Instance UIDs against ``scans``.

    Fast path (no duplicate UID in the input, none stored from another item: a first load, or
    a re-run of the same input): every candidate is kept, every frame belongs to a kept item,
    and the statistics are exact. Otherwise :func:`~medspark.steps.resolve_duplicates` decides.
    """
    from medspark.onepass import FRAME, INGEST_ERROR, SCAN

    if plan.computed is not None:  # a small local input, computed in this process
        # Its figures come from the Arrow table itself; Spark only writes (a local relation
        # is cheap to read again, so it is not cached either).
        out = spark.createDataFrame(plan.computed)
        parts = max(1, spark.sparkContext.defaultParallelism)
    else:
        out = _executor_pass(spark, plan).persist(StorageLevel.MEMORY_AND_DISK)
        parts = len(plan.bins)
    # Missing tables are created while the executors compute (see create_tables).
    stats, fresh = concurrently(
        lambda: _pass_stats(out) if plan.computed is None else _arrow_stats(plan.computed),
        lambda: create_tables(spark, {name: config.table_path(name) for name in tables}),
    )
    existing = None if "scans" in fresh else _existing(spark, config.table_path("scans"))
    candidates = out.where(F.col("kind") == SCAN)
    frames = out.where(F.col("kind") == FRAME)
    errors = out.where(F.col("kind") == INGEST_ERROR).select(
        *[f.name for f in SOURCE_FIELDS], "error_class", F.col("error_message").alias("message")
    )
    rows = _PassRows(out, stats, parts, fresh, candidates, errors, frames, exact=True)
    distinct = sum(int(r["sops"]) for r in stats if r["kind"] == SCAN)
    rows.exact = distinct == rows.n(SCAN) and (
        existing is None or not _stored_from_other_items(candidates, existing)
    )
    if not rows.exact:
        rows.kept, duplicates = resolve_duplicates(candidates, existing)
        rows.errors = errors.unionByName(duplicates)
        location = ["sop_instance_uid", "source_uri", "archive_member"]
        owners = rows.kept.select(*location)
        rows.frames = frames.join(
            owners, [frames[c].eqNullSafe(owners[c]) for c in location], "left_semi"
        )
    return rows


def _write(
    spark: Any,
    config: PipelineConfig,
    rows: _PassRows,
    df: DataFrame,
    name: str,
    count: int | None,
    **merge: Any,
) -> dict[str, int]:
    """MERGE (or first-load append) ``df`` into table ``name``. A write known to hold no row
    only makes sure the table exists (no Spark job); one of known size is written in as many
    tasks (and files) as its rows need, not one per cached partition: fewer tasks, fewer small
    files. Rows equal to the stored ones (a re-run) commit nothing (merge_into's
    ``only_changed``)."""
    if count == 0:
        return {}  # the table exists (created with the pass)
    if count is not None:
        wanted = max(1, -(-count // _ROWS_PER_FILE.get(name, 100_000)))
        if wanted < rows.parts:
            df = df.coalesce(wanted)
    return merge_into(spark, df, config.table_path(name), name, fresh=name in rows.fresh, **merge)


def _write_acquisitions(
    spark: Any, config: PipelineConfig, acquired: DataFrame, run_id: str, first: bool
) -> None:
    """``restricted_acquisitions``, then ``scanner_utilization`` rebuilt from all of it: it
    covers every acquisition ever ingested; a run that added none (a re-run) leaves it as it
    is, and a first load builds it from its own rows (:func:`_utilization_from`)."""
    added = merge_into(
        spark,
        acquired,
        config.table_path("restricted_acquisitions"),
        "restricted_acquisitions",
        fresh=first,
    )
    if not first and not wrote_nothing(added):
        _rebuild_utilization(spark, config, run_id)


def _utilization_from(
    spark: Any, config: PipelineConfig, acquired: DataFrame, run_id: str, fresh: bool
) -> None:
    """A first load: this run's acquisitions are all there are, so ``scanner_utilization``
    is built from them at once, beside their write, instead of read back after it."""
    from medspark.metrics.utilization import scanner_utilization

    replace_table(
        spark,
        scanner_utilization(acquired, run_id, config.metrics.study_span_cap_hours),
        config.table_path("scanner_utilization"),
        "scanner_utilization",
        fresh=fresh,
    )


def _scan_writes(
    spark: Any, config: PipelineConfig, rows: _PassRows, settings: Any, run_id: str
) -> dict[str, Any]:
    """The writes of every pass: ``scans`` (and ``series``), ``ingest_errors``,
    ``restricted_acquisitions`` and ``scanner_utilization``, and ``restricted_phi_map`` and
    ``restricted_locations`` when used. Named, to run concurrently."""
    from medspark.onepass import INGEST_ERROR, SCAN
    from medspark.tables.schemas import RESTRICTED_ACQUISITIONS

    first_acquisitions = "restricted_acquisitions" in rows.fresh
    first_scans = "scans" in rows.fresh
    acquired = rows.kept.select(*[f.name for f in RESTRICTED_ACQUISITIONS.fields])
    stamp = {"run_id": F.lit(run_id), "recorded_at": F.current_timestamp()}

    def scans() -> dict[str, int]:
        stamped = rows.kept.withColumns(
            {"run_id": F.lit(run_id), "ingested_at": F.current_timestamp()}
        )
        # Delta's counts of an append are read from the table's history only when the
        # statistics cannot say them (duplicates were dropped).
        counts = _write(
            spark,
            config,
            rows,
            stamped,
            "scans",
            rows.known(rows.n(SCAN)),
            metrics=not rows.exact,
            update_if=SAME_ITEM,
        )
        if not first_scans:  # series rebuilt from the new scans (not when no row changed)
            refresh_series(spark, config, rows.kept, run_id, not wrote_nothing(counts))
        return counts

    writes: dict[str, Any] = {
        "scans": scans,
        "ingest_errors": lambda: _write(
            spark,
            config,
            rows,
            rows.errors.withColumns(stamp),
            "ingest_errors",
            rows.known(rows.n(INGEST_ERROR)),
        ),
        "restricted_acquisitions": lambda: _write_acquisitions(
            spark, config, acquired, run_id, first=first_acquisitions
        ),
    }
    if first_acquisitions:
        writes["scanner_utilization"] = lambda: _utilization_from(
            spark, config, acquired, run_id, fresh="scanner_utilization" in rows.fresh
        )
    if first_scans:  # this run's instances are all there are: series from them, beside scans
        writes["series"] = lambda: refresh_series(spark, config, rows.kept, run_id, only_these=True)
    if settings.phi_map:
        phi = phi_rows(rows.kept).withColumns(stamp)
        path = config.table_path("restricted_phi_map")
        writes["restricted_phi_map"] = lambda: merge_into(spark, phi, path, "restricted_phi_map")
    if locates(settings.pseudonymizer):
        # an erased subject's items are never located: their paths can name the patient
        erased = F.col("error_class").eqNullSafe(ERASED_SUBJECT)
        items = rows.out.where(F.col("kind").isin(SCAN, INGEST_ERROR) & ~erased)
        writes["restricted_locations"] = lambda: _write_locations(spark, config, items, run_id)
    return writes


def _frame_writes(
    spark: Any, config: PipelineConfig, rows: _PassRows, run_id: str
) -> dict[str, Any]:
    """The writes of a pass that decodes: ``images`` (and ``restricted_images``),
    ``preprocess_errors``, ``predictions`` and ``saliency``. Named, to run concurrently."""
    from medspark.onepass import FRAME

    model = config.inference.model_config(None)
    images, frame_errors = split_frames(rows.frames)
    stamp_images = {
        "config_hash": F.lit(config.preprocess.chain().config_hash()),
        "run_id": F.lit(run_id),
        "processed_at": F.current_timestamp(),
    }
    analyst_images, restricted = split_withheld(images, stamp_images)
    predicted = {"run_id": F.lit(run_id), "predicted_at": F.current_timestamp()}
    predictions = (
        images.where(F.col("label").isNotNull())
        .select(
            "sop_instance_uid", "frame", *model_columns(model), "label", "score", "probabilities"
        )
        .withColumns(predicted)
    )
    n_errors = sum(int(r["n"]) for r in rows.stats if r["kind"] == FRAME and r["error_class"])
    n_labels = sum(int(r["n"]) for r in rows.stats if r["kind"] == FRAME and r["label"])
    recorded = {"run_id": F.lit(run_id), "recorded_at": F.current_timestamp()}
    writes: dict[str, Any] = {
        "images": lambda: _write(
            spark,
            config,
            rows,
            analyst_images,
            "images",
            rows.known(rows.n(FRAME, error_class=None)),
        ),
        "preprocess_errors": lambda: _write(
            spark,
            config,
            rows,
            frame_errors.withColumns(recorded),
            "preprocess_errors",
            rows.known(n_errors),
        ),
        "predictions": lambda: _write(
            spark, config, rows, predictions, "predictions", rows.known(n_labels)
        ),
    }
    if config.inference.saliency:
        salient = saliency_rows(images.select("*", *model_columns(model))).withColumns(predicted)
        writes["saliency"] = lambda: _write(
            spark, config, rows, salient, "saliency", rows.known(n_labels)
        )
    if rows.n(FRAME, error_class=None, burned_in_action=BURNED_IN_WITHHELD):
        path = config.table_path("restricted_images")
        writes["restricted_images"] = lambda: merge_into(
            spark, restricted, path, "restricted_images"
        )
    return writes


def _settle_and_clear(
    spark: Any, config: PipelineConfig, rows: _PassRows, run_id: str, settle: bool, clear: bool
) -> tuple[int, dict[str, int]]:
    """After the writes: with ``settle``, move the items a concurrent run stored first (see
    :func:`_settle_duplicates`) from ``scans`` to ``ingest_errors``; with ``clear``, delete the
    ``ingest_errors`` rows of earlier runs whose item is a scan now. Returns the rows cleared
    and the errors by class the settling added."""
    errors_path = config.table_path("ingest_errors")

    def cleared(stored: DataFrame) -> int:
        return delete_matching(spark, stored, errors_path, "ingest_errors") if clear else 0

    if not settle:
        return cleared(rows.kept), {}
    scans_path = config.table_path("scans")
    late = _settle_duplicates(spark, rows.kept, scans_path, run_id).persist()
    try:
        # Settled rows may be the other run's items (it settles the same way): counted there.
        where = [late[c].eqNullSafe(rows.kept[c]) for c in ("source_uri", "archive_member")]
        own = late.join(rows.kept, where, "left_semi")
        by_class = {
            r["error_class"]: int(r["n"])
            for r in own.groupBy("error_class").agg(F.count("*").alias("n")).collect()
        }
        if not late.take(1):
            return cleared(rows.kept), by_class
        merge_into(spark, late, errors_path, "ingest_errors")
        item = ["sop_instance_uid", "source_uri", "archive_member"]
        delete_matching(spark, late, scans_path, "scans", on=item)
        refresh_series(spark, config, rows.kept, run_id)  # without the items moved out
        return cleared(rows.kept.join(late, where, "left_anti")), by_class  # symmetric
    finally:
        late.unpersist()


@dataclass
class _Committed:
    """What a committed pass reports: the figures of ingest's, preprocess's and infer's
    results."""

    items: int
    scans: dict[str, int]  # Delta's counts of the scans write ({} for a first-load append)
    predictions: dict[str, int]
    ingest_errors: dict[str, int]
    cleared: int
    frame_errors: dict[str, int]
    labels: dict[str, int]
    pixel_instances: int
    images: int
    inserted_scans: int


def _commit_pass(
    spark: Any, config: PipelineConfig, plan: PassPlan, run_id: str, settle: bool = False
) -> _Committed:
    """Write what the pass computed, every table concurrently, each committed on its own
    (:func:`_scan_writes`, and :func:`_frame_writes` when the pass decoded), then clear the
    ``ingest_errors`` rows of items that are scans now. ``settle`` (ingest) also settles the
    SOP Instance UIDs a concurrent run stored from other items (:func:`_settle`)."""
    from medspark.onepass import FRAME, INGEST_ERROR, SCAN

    decode = plan.settings.preprocess is not None
    saliency = decode and config.inference.saliency
    tables = (
        *_SCAN_TABLES,
        *(_FRAME_TABLES if decode else ()),
        *(("saliency",) if saliency else ()),
    )
    errors_path = config.table_path("ingest_errors")
    had_errors = _is_table(spark, errors_path)
    ensure_restricted_root(config)
    rows = _pass_rows(spark, config, plan, tables)
    try:
        writes = _scan_writes(spark, config, rows, plan.settings, run_id)
        if decode:
            writes.update(_frame_writes(spark, config, rows, run_id))
        done = dict(zip(writes, concurrently(*writes.values()), strict=True))
        if "series" in writes and _written_by_others(config.table_path("scans")):
            # Another first load appended to scans too: its instances may share series with
            # ours, so ours are rebuilt from the table (the last run to check sees them all).
            refresh_series(spark, config, rows.kept, run_id)
        if decode:
            metric_rows = [{**m, "rows": m["batch_rows"]} for r in rows.stats for m in r["metrics"]]
            write_metric_rows(config, metric_rows, "run", run_id)
        cleared, late = _settle_and_clear(spark, config, rows, run_id, settle, had_errors)
        if rows.exact:
            ingest_errors = _sum_by(rows.stats, "error_class", kind=INGEST_ERROR)
            frame_errors = _sum_by(rows.stats, "error_class", kind=FRAME)
            labels = _sum_by(rows.stats, "label", kind=FRAME)
            pixel_instances_n = rows.n(SCAN, has_pixels=True)
        else:  # duplicates were dropped: count what was written
            ingest_errors = _counts(rows.errors, "error_class")
            frame_errors = _counts(rows.frames.where("error_class IS NOT NULL"), "error_class")
            labels = _counts(rows.frames.where("label IS NOT NULL"), "label")
            pixel_instances_n = rows.kept.where(F.col("has_pixels")).count()
    finally:
        if plan.computed is None:
            rows.out.unpersist()
    for error_class, n in late.items():
        ingest_errors[error_class] = ingest_errors.get(error_class, 0) + n
    n_scans = rows.n(SCAN)
    scans = done["scans"]
    return _Committed(
        items=n_scans + rows.n(INGEST_ERROR),
        scans=scans,
        predictions=done.get("predictions") or {},
        ingest_errors=ingest_errors,
        cleared=cleared,
        frame_errors=frame_errors,
        labels=labels,
        pixel_instances=pixel_instances_n,
        images=rows.n(FRAME, error_class=None) if rows.exact else sum(labels.values()),
        inserted_scans=scans.get("numTargetRowsInserted", n_scans if rows.exact else 0),
    )


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
    The result is then split into ``scans``, ``ingest_errors``, ``restricted_acquisitions``
    (and ``scanner_utilization``), ``images``, ``preprocess_errors``, ``predictions`` (and
    ``saliency``, ``restricted_images``, ``restricted_phi_map`` when used), written
    concurrently by :func:`_commit_pass`, the commit ``ingest`` uses too; ``worker_metrics``
    from the driver. The tables and their keys are the same as after ``ingest``,
    ``preprocess`` and ``infer`` run one after another (a test compares them). ``prepared`` is
    the plan :func:`prepare_pass` made beforehand (the CLI makes it while Spark starts);
    without it, it is made here.
    """
    start = time.monotonic()
    run_id = record.run_id
    plan = prepared or prepare_pass(sources, config, spark.sparkContext.master)
    done = _commit_pass(spark, config, plan, run_id)
    seconds = time.monotonic() - start
    ingested = IngestResult(
        run_id=run_id,
        items=done.items,
        scans_inserted=done.inserted_scans,
        scans_updated=done.scans.get("numTargetRowsUpdated", 0),
        errors_by_class=done.ingest_errors,
        seconds=seconds,
        errors_cleared=done.cleared,
    )
    record_ingest(record, ingested)
    preprocessed = PreprocessResult(
        run_id=run_id,
        instances=done.pixel_instances,
        frames=done.images,
        errors_by_class=done.frame_errors,
        seconds=seconds,
        config_hash=config.preprocess.chain().config_hash(),
    )
    record_preprocess(record, preprocessed)
    model = config.inference.model_config(None)
    n_predicted = sum(done.labels.values())
    inferred = InferResult(
        run_id=run_id,
        model=model.name,
        model_version=model.version,
        frames=n_predicted,
        inserted=done.predictions.get("numTargetRowsInserted", n_predicted),
        labels=done.labels,
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
