"""Evaluating predictions against labels: accuracy, per-class precision/recall/F1, ROC AUC.

Everything that grows with the data stays in Spark: the join, the confusion counts (a k x k
aggregate) and the ROC AUC (Spark ML's BinaryClassificationEvaluator, one-vs-rest per class).
Only the k x k matrix and k AUC values reach the driver.
"""

from __future__ import annotations

from typing import Any

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from medspark.errors import ConfigError


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
    return df.select(
        F.col("sop_instance_uid").cast("string"),
        F.col("frame").cast("int"),
        F.col("label").cast("string").alias("true_label"),
    )


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
