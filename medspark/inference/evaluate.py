"""Evaluating predictions against labels.

``model_metrics`` (accuracy, per-class precision/recall/F1, ROC AUC): everything that grows
with the data stays in Spark: the join, the confusion counts (a k x k aggregate) and the ROC AUC
(Spark ML's BinaryClassificationEvaluator, one-vs-rest per class). Only the k x k matrix and k
AUC values reach the driver.

``model_evaluation``, ``model_calibration``, ``model_roc`` (intervals, operating point,
calibration, subgroups, levels): Spark joins labels, predictions and ``scans`` and selects the
few columns the statistics need (score, label, instance, patient, subgroup columns: about 100
bytes a frame); they reach the driver through Arrow and :mod:`medspark.inference.stats`
bootstraps them in numpy. A patient bootstrap needs all frames of a patient together and
resamples the patients a thousand times: on the driver that is a matrix product over patients
(100,000 frames, 1,000 resamples: seconds, bench/README.md), where Spark would shuffle the
data once per resample. ``evaluation.max_driver_frames`` bounds what is collected.
"""

from __future__ import annotations

from typing import Any

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from medspark.errors import ConfigError, MedsparkError

#: DICOM JSON paths of Patient's Sex (0010,0040) and Patient's Age (0010,1010) in
#: ``scans.header_json``: present only where the de-identification keeps them
#: (``deid.retain_patient_characteristics``).
_SEX_PATH = "$['00100040'].Value[0]"
_AGE_PATH = "$['00101010'].Value[0]"


def read_labels(spark: Any, source: str) -> DataFrame:
    """Labels from a CSV file (header: sop_instance_uid, frame, label) or a Delta table path."""
    from delta.tables import DeltaTable

    if DeltaTable.isDeltaTable(spark, source):
        df = spark.read.format("delta").load(source)
    else:
        df = spark.read.option("header", True).csv(source)
    missing = {"sop_instance_uid", "frame", "label"} - set(df.columns)
    if missing:
        raise ConfigError(
            "--labels",
            source,
            f"a CSV or Delta table with columns sop_instance_uid, frame, label "
            f"(missing: {', '.join(sorted(missing))})",
        )
    typed = df.select(
        F.col("sop_instance_uid").cast("string"),
        # try_cast: a frame that is not a number becomes null and is reported below (a plain
        # cast fails the job under ANSI mode with a Java trace).
        F.col("frame").try_cast("int").alias("frame"),
        F.col("label").cast("string").alias("true_label"),
        F.col("frame").cast("string").alias("_frame_text"),
    )
    bad = typed.where(
        F.col("sop_instance_uid").isNull()
        | F.col("frame").isNull()
        | (F.col("frame") < 0)
        | F.col("true_label").isNull()
    )
    first = bad.limit(1).collect()
    if first:
        row = first[0]
        raise ConfigError(
            "--labels",
            source,
            f"a sop_instance_uid, a frame number (0 or more) and a label on every row "
            f"({bad.count()} row(s) without, first: {row['sop_instance_uid']!r}, "
            f"frame {row['_frame_text']!r}, label {row['true_label']!r})",
        )
    conflicting = (
        typed.groupBy("sop_instance_uid", "frame")
        .agg(F.countDistinct("true_label").alias("labels"))
        .where(F.col("labels") > 1)
    )
    clash = conflicting.limit(1).collect()
    if clash:
        raise ConfigError(
            "--labels",
            source,
            f"one label per frame ({conflicting.count()} frame(s) with different labels, "
            f"first: {clash[0]['sop_instance_uid']} frame {clash[0]['frame']})",
        )
    # The same label twice for a frame is one label.
    return typed.drop("_frame_text").dropDuplicates(["sop_instance_uid", "frame"])


def evaluate_predictions(
    predictions: DataFrame, labels: DataFrame, class_names: list[str]
) -> list[dict[str, Any]]:
    """Metric rows (see ``MODEL_METRICS``) for one model version's ``predictions``.

    Returns one overall row (``class_name`` None: accuracy, macro precision/recall/F1/AUC,
    confusion matrix) and one row per class. Labels without a prediction are counted in
    ``unmatched_labels``, never silently dropped.
    """
    from pyspark.ml.evaluation import BinaryClassificationEvaluator

    joined = labels.join(
        predictions.select("sop_instance_uid", "frame", "label", "probabilities"),
        ["sop_instance_uid", "frame"],
        "left",
    ).persist()
    try:
        unmatched = joined.where(F.col("label").isNull()).count()
        matched = joined.where(F.col("label").isNotNull())
        counts = {
            (r["true_label"], r["label"]): int(r["n"])
            for r in matched.groupBy("true_label", "label").agg(F.count("*").alias("n")).collect()
        }
        index = {c: i for i, c in enumerate(class_names)}
        unknown = sorted({t for t, _ in counts if t not in index})
        if unknown:
            raise ConfigError(
                "--labels", unknown, f"labels among the model's classes {class_names}"
            )
        k = len(class_names)
        matrix = [[counts.get((t, p), 0) for p in class_names] for t in class_names]
        total = sum(map(sum, matrix))
        rows: list[dict[str, Any]] = []
        aucs: list[float | None] = []
        for i, name in enumerate(class_names):
            tp = matrix[i][i]
            fp = sum(matrix[j][i] for j in range(k)) - tp
            fn = sum(matrix[i]) - tp
            precision = tp / (tp + fp) if tp + fp else None
            recall = tp / (tp + fn) if tp + fn else None
            f1 = (
                2 * precision * recall / (precision + recall)
                if precision and recall
                else (0.0 if precision is not None and recall is not None else None)
            )
            positives = sum(matrix[i])
            auc = None
            if 0 < positives < total:
                scored = matched.select(
                    F.element_at("probabilities", i + 1).cast("double").alias("score"),
                    (F.col("true_label") == name).cast("double").alias("y"),
                )
                auc = BinaryClassificationEvaluator(
                    rawPredictionCol="score", labelCol="y", metricName="areaUnderROC"
                ).evaluate(scored)
            aucs.append(auc)
            rows.append(
                {
                    "class_name": name,
                    "support": positives,
                    "precision": precision,
                    "recall": recall,
                    "f1": f1,
                    "roc_auc": auc,
                }
            )
    finally:
        joined.unpersist()

    def macro(key: str) -> float | None:
        values = [r[key] for r in rows if r[key] is not None]
        return sum(values) / len(values) if values else None

    overall = {
        "class_name": None,
        "support": total,
        "accuracy": sum(matrix[i][i] for i in range(k)) / total if total else None,
        "precision": macro("precision"),
        "recall": macro("recall"),
        "f1": macro("f1"),
        "roc_auc": macro("roc_auc"),
        "confusion_matrix": matrix,
        "class_names": class_names,
        "unmatched_labels": unmatched,
    }
    return [overall, *rows]


def evaluation_frames(
    predictions: DataFrame,
    labels: DataFrame,
    scans: DataFrame | None,
    positive_index: int,
    positive_class: str,
    subgroups: list[str],
) -> tuple[DataFrame, dict[str, DataFrame]]:
    """The rows the statistics need, one per labelled frame with a prediction, and the rows
    that could not be evaluated, for counting.

    Columns: ``score`` (the positive class's probability), ``positive``, ``sop_instance_uid``,
    ``patient`` (``scans.patient_id``, pseudonymous; null without a scans row) and one column
    per subgroup (``patient_sex`` and ``patient_age`` from the header, the raw AS value).
    """
    keys = ["sop_instance_uid", "frame"]
    scored = predictions.select(
        *keys, F.element_at("probabilities", positive_index + 1).cast("double").alias("score")
    )
    joined = labels.join(scored, keys, "inner")
    wanted = [c for c in subgroups if c not in ("patient_sex", "patient_age_band")]
    if scans is not None:
        info = scans.select(
            "sop_instance_uid",
            F.col("patient_id").alias("patient"),
            *wanted,
            F.get_json_object("header_json", _SEX_PATH).alias("patient_sex"),
            F.get_json_object("header_json", _AGE_PATH).alias("patient_age"),
        )
        joined = joined.join(info, "sop_instance_uid", "left")
    else:
        joined = joined.select(
            "*",
            F.lit(None).cast("string").alias("patient"),
            *[F.lit(None).cast("string").alias(c) for c in wanted],
            F.lit(None).cast("string").alias("patient_sex"),
            F.lit(None).cast("string").alias("patient_age"),
        )
    frames = joined.select(
        "score",
        (F.col("true_label") == positive_class).alias("positive"),
        "sop_instance_uid",
        "patient",
        *wanted,
        "patient_sex",
        "patient_age",
    )
    unmatched = {
        "labels_without_prediction": labels.join(scored, keys, "left_anti"),
        "predictions_without_label": scored.join(labels, keys, "left_anti"),
    }
    return frames, unmatched


def collect_columns(frames: DataFrame, limit: int) -> dict[str, Any]:
    """``frames`` on the driver as numpy arrays (through Arrow); a clear error above ``limit``
    rows (``evaluation.max_driver_frames``)."""
    import numpy as np

    table = frames.limit(limit + 1).toArrow()
    if table.num_rows > limit:
        raise MedsparkError(
            f"more than {limit} labelled frames to evaluate: above evaluation.max_driver_frames "
            f"({limit}), the bound on what is collected to the driver (about 100 bytes a frame); "
            "raise it with spark.driver_memory to match, or evaluate a subset of the labels"
        )
    out: dict[str, Any] = {}
    for name in table.column_names:
        column = table.column(name)
        if name == "score":
            out[name] = column.to_numpy(zero_copy_only=False).astype(np.float64)
        elif name == "positive":
            out[name] = column.to_numpy(zero_copy_only=False).astype(bool)
        else:
            out[name] = np.asarray(column.to_pylist(), dtype=object)
    return out
