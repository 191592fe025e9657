"""Evaluation with patient-bootstrap intervals: medspark's numpy bootstrap against a plain
scikit-learn loop, same frames, same run.

    python bench/bench_evaluate.py --frames 100000 --patients 10000 --resamples 1000 \\
        [--spark] [--json out.json]

Input: ``--frames`` labelled frames of ``--patients`` synthetic patients (frames per patient
equal; a patient is positive or negative as a whole and shares a random effect across its
frames; scores rounded to float32 as the ``predictions`` table holds them; seeded).

Variants, each timed once with its peak of Python-tracked memory (``tracemalloc``: numpy's
buffers included):

``medspark_frame``  :func:`medspark.inference.stats.evaluate_units` at frame level: the eight
                    metrics with intervals from ``--resamples`` patient resamples, the
                    calibration bins and the ROC band.
``medspark_all``    :func:`medspark.inference.stats.evaluate_frames`: what ``evaluate`` does on
                    the driver: three levels x (all + 4 subgroups of 2 scanner models and 2
                    sexes), every one with intervals.
``sklearn_loop``    the baseline, on the first ``--baseline-resamples`` (100) of the same
                    resamples (1,000 of them take over ten minutes on 100,000 frames here):
                    per resample, the resampled frames listed out
                    (``np.repeat``) and scored with ``roc_auc_score``, ``brier_score_loss``,
                    ``confusion_matrix`` and ``calibration_curve``: the frame-level figures
                    of ``medspark_frame`` without the ROC band.
``spark_collect``   (``--spark``) the Spark side of ``evaluate``: labels, predictions and scans
                    as Delta tables joined by :func:`evaluation_frames` and collected through
                    Arrow by :func:`collect_columns` (warm session: second of two runs).
``spark_evaluate``  (``--spark``) :func:`medspark.pipeline.evaluate` end to end, all four
                    tables written (a fresh run id each time; warm session).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np


def synthetic(frames: int, patients: int, seed: int = 7) -> dict[str, np.ndarray]:
    """Clustered frames: score = sigmoid(1.2 y + u_patient + e), y per patient (40 % positive)."""
    rng = np.random.default_rng(seed)
    per = frames // patients
    y_patient = rng.random(patients) < 0.4
    effect = rng.normal(0, 1, patients)
    cluster = np.repeat(np.arange(patients), per)
    logit = 1.2 * y_patient[cluster] + effect[cluster] + rng.normal(0, 1, len(cluster))
    score = (1 / (1 + np.exp(-logit))).astype(np.float32).astype(np.float64)
    return {
        "score": score,
        "positive": y_patient[cluster],
        "cluster": cluster,
        "frame": np.tile(np.arange(per), patients),
        "model": np.where(cluster % 2 == 0, "SYN-A", "SYN-B").astype(object),
        "sex": np.where(cluster % 3 == 0, "F", "M").astype(object),
    }


def measured(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """Seconds and peak traced MiB of ``fn()``, and its result."""
    tracemalloc.start()
    t0 = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return seconds, peak / 2**20, result


def sklearn_loop(data: dict[str, np.ndarray], resamples: int, seed: int) -> dict[str, Any]:
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import brier_score_loss, confusion_matrix, roc_auc_score

    from medspark.inference.stats import cluster_draws

    score, y, cluster = data["score"], data["positive"], data["cluster"]
    draws = cluster_draws(int(cluster.max()) + 1, resamples, seed, "frame|all")
    aucs = []
    for r in range(resamples):
        take = np.repeat(np.arange(len(score)), draws[r][cluster])
        s, t = score[take], y[take]
        aucs.append(roc_auc_score(t, s))
        brier_score_loss(t, s)
        confusion_matrix(t, s >= 0.5, labels=[False, True])
        calibration_curve(t, s, n_bins=10)
    return {"auc_ci": np.percentile(aucs, [2.5, 97.5]).tolist()}


def medspark_frame(data: dict[str, np.ndarray], resamples: int, seed: int) -> dict[str, Any]:
    from medspark.inference.stats import BootstrapSpec, evaluate_units

    spec = BootstrapSpec(n_resamples=resamples, seed=seed)
    result = evaluate_units(
        data["score"], data["positive"], data["cluster"], 0.5, spec, "frame|all", roc=True
    )
    auc = result.metrics[0]
    return {"auc_ci": [auc["ci_low"], auc["ci_high"]]}


def medspark_all(data: dict[str, np.ndarray], resamples: int, seed: int) -> dict[str, Any]:
    from medspark.inference.stats import BootstrapSpec, EvaluationSettings, evaluate_frames

    columns = {
        "score": data["score"],
        "positive": data["positive"],
        "sop_instance_uid": np.char.add(
            data["cluster"].astype(str), np.char.add(".", data["frame"].astype(str))
        ).astype(object),
        "patient": data["cluster"].astype(str).astype(object),
        "manufacturer_model_name": data["model"],
        "patient_sex": data["sex"],
    }
    settings = EvaluationSettings(
        subgroups=("manufacturer_model_name", "patient_sex"),
        spec=BootstrapSpec(n_resamples=resamples, seed=seed),
    )
    out = evaluate_frames(columns, settings)
    return {"rows": len(out["metrics"])}


def spark_variants(data: dict[str, np.ndarray], resamples: int, seed: int) -> dict[str, Any]:
    """Delta tables of the synthetic frames, then the Spark side of ``evaluate``, warm."""
    import dataclasses

    import pandas as pd

    from medspark.config import EvaluationConfig, PipelineConfig, SparkConfig, with_overrides
    from medspark.inference.evaluate import collect_columns, evaluation_frames, read_labels
    from medspark.pipeline import evaluate
    from medspark.session import build_session

    spark = build_session(SparkConfig(master="local[2]", shuffle_partitions=2))
    spark.sparkContext.setLogLevel("ERROR")
    root = tempfile.mkdtemp(prefix="bench-evaluate-")
    config = with_overrides(PipelineConfig(), warehouse=root)
    config = dataclasses.replace(
        config,
        deid=dataclasses.replace(config.deid, enabled=False),  # labels hold the tables' UIDs
        evaluation=EvaluationConfig(
            bootstrap_resamples=resamples,
            seed=seed,
            subgroups=["manufacturer_model_name"],
        ),
    )
    uid = pd.Series(data["cluster"]).astype(str) + ".1"
    frames = pd.DataFrame({"sop_instance_uid": uid, "frame": data["frame"].astype("int32")})
    labels = frames.assign(label=np.where(data["positive"], "nodule", "no_nodule"))
    labels.to_csv(os.path.join(root, "labels.csv"), index=False)
    predictions = frames.assign(
        model="medspark-nodule-demo",
        model_version="1",
        label="x",
        probabilities=[[1 - s, s] for s in data["score"].astype(np.float32)],
    )
    spark.createDataFrame(
        predictions,
        "sop_instance_uid string, frame int, model string, model_version string, "
        "label string, probabilities array<float>",
    ).write.format("delta").save(config.table_path("predictions"))
    scans = pd.DataFrame(
        {
            "sop_instance_uid": uid.unique(),
            "patient_id": ("P" + pd.Series(uid.unique()).str.split(".").str[0]),
            "manufacturer": "ACME",
            "manufacturer_model_name": np.where(
                np.arange(len(uid.unique())) % 2 == 0, "SYN-A", "SYN-B"
            ),
            "modality": "CT",
            "header_json": "{}",
        }
    )
    spark.createDataFrame(scans).write.format("delta").save(config.table_path("scans"))
    labels_path = os.path.join(root, "labels.csv")
    out: dict[str, Any] = {}

    def collect() -> int:
        preds = spark.read.format("delta").load(config.table_path("predictions"))
        scans_df = spark.read.format("delta").load(config.table_path("scans"))
        joined, _ = evaluation_frames(
            preds,
            read_labels(spark, labels_path),
            scans_df,
            1,
            "nodule",
            ["manufacturer_model_name"],
        )
        return len(collect_columns(joined, 5_000_000)["score"])

    for name, fn in (
        ("spark_collect", collect),
        ("spark_evaluate", lambda: len(evaluate(spark, config, labels_path).evaluation)),
    ):
        fn()  # warm: Python workers, JIT, Delta log cache
        seconds, peak, result = measured(fn)
        out[name] = {"seconds": round(seconds, 2), "peak_mib": round(peak, 1), "result": result}
    spark.stop()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=100_000)
    parser.add_argument("--patients", type=int, default=10_000)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=20261204)
    parser.add_argument("--spark", action="store_true", help="also time the Spark side")
    parser.add_argument("--baseline-resamples", type=int, default=100)
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    data = synthetic(args.frames, args.patients)
    results: dict[str, Any] = {
        "frames": args.frames,
        "patients": args.patients,
        "resamples": args.resamples,
        "baseline_resamples": args.baseline_resamples,
        "load_average_start": os.getloadavg(),
        "variants": {},
    }
    variants: list[tuple[str, Callable[[], Any]]] = [
        ("medspark_frame", lambda: medspark_frame(data, args.resamples, args.seed)),
        ("medspark_all", lambda: medspark_all(data, args.resamples, args.seed)),
    ]
    if not args.skip_baseline:
        variants.append(
            ("sklearn_loop", lambda: sklearn_loop(data, args.baseline_resamples, args.seed))
        )
    for name, fn in variants:
        seconds, peak, result = measured(fn)
        results["variants"][name] = {
            "seconds": round(seconds, 2),
            "peak_mib": round(peak, 1),
            "result": result,
        }
        print(f"{name:<16} {seconds:8.2f} s  peak {peak:8.1f} MiB  {result}", flush=True)
    if args.spark:
        for name, row in spark_variants(data, args.resamples, args.seed).items():
            results["variants"][name] = row
            print(
                f"{name:<16} {row['seconds']:8.2f} s  peak {row['peak_mib']:8.1f} MiB (driver "
                f"Python)  {row['result']}",
                flush=True,
            )
    results["load_average_end"] = os.getloadavg()
    print(f"load average: start {results['load_average_start']}, end {results['load_average_end']}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
