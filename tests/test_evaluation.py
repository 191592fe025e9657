"""The statistics of ``medspark evaluate`` (pure numpy), against scikit-learn and known answers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss, confusion_matrix, roc_auc_score, roc_curve

from medspark.inference.stats import (
    ROC_GRID,
    BootstrapSpec,
    bootstrap,
    choose_threshold,
    cluster_draws,
    evaluate_units,
    expected_calibration_error,
    group_units,
    grouped_folds,
    point_figures,
    roc_auc,
)


def _clustered(
    rng: np.random.Generator, patients: int, frames: int, d: float, spread: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scores of ``frames`` frames for each of ``patients`` patients; a patient is positive or
    negative as a whole, and shares a random effect N(0, spread^2) across their frames.

    Every positive/negative pair is then from two patients, and its score difference is
    N(d, 2 (1 + spread^2)): the true AUC is Phi(d / sqrt(2 (1 + spread^2))).
    """
    y_patient = rng.random(patients) < 0.4
    effect = rng.normal(0, spread, patients)
    cluster = np.repeat(np.arange(patients), frames)
    logit = d * y_patient[cluster] + effect[cluster] + rng.normal(0, 1, patients * frames)
    return 1 / (1 + np.exp(-logit)), y_patient[cluster], cluster


def _data(seed: int = 1, n: int = 600) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    score, label, cluster = _clustered(rng, n // 4, 4, 1.2, 0.7)
    score = np.round(score, 2)  # ties, as a model's rounded outputs have
    return score, label, cluster


def test_point_figures_equal_scikit_learn():
    score, label, _ = _data()
    for threshold in (0.3, 0.5, 0.71):
        got = point_figures(score, label, threshold, 10)
        tn, fp, fn, tp = confusion_matrix(label, score >= threshold).ravel()
        assert got["sensitivity"] == pytest.approx(tp / (tp + fn), abs=1e-12)
        assert got["specificity"] == pytest.approx(tn / (tn + fp), abs=1e-12)
        assert got["ppv"] == pytest.approx(tp / (tp + fp), abs=1e-12)
        assert got["npv"] == pytest.approx(tn / (tn + fn), abs=1e-12)
        assert got["accuracy"] == pytest.approx((tp + tn) / len(label), abs=1e-12)
        assert abs(got["auc"] - roc_auc_score(label, score)) < 1e-9
        assert abs(got["brier"] - brier_score_loss(label, score)) < 1e-9
    observed, predicted = calibration_curve(label, score, n_bins=10, strategy="uniform")
    ids = np.searchsorted(np.linspace(0, 1, 11)[1:-1], score)
    weights = np.bincount(ids, minlength=10)
    weights = weights[weights > 0] / len(score)
    ece = float(np.sum(weights * np.abs(observed - predicted)))
    assert abs(expected_calibration_error(score, label, 10) - ece) < 1e-9
    rows = evaluate_units(
        score, label, np.arange(len(score)), 0.5, BootstrapSpec(n_resamples=0), "x"
    ).calibration
    np.testing.assert_allclose([r["observed_rate"] for r in rows], observed, atol=1e-9)
    np.testing.assert_allclose([r["mean_predicted"] for r in rows], predicted, atol=1e-9)
    assert sum(r["n"] for r in rows) == len(score)
    # Scores on a bin edge go to the lower bin, as scikit-learn's do: 0.1 and 0.2 in bin 0 and 1.
    edge = evaluate_units(
        np.array([0.1, 0.2, 0.9]),
        np.array([0, 1, 1]),
        np.arange(3),
        0.5,
        BootstrapSpec(n_resamples=0),
        "x",
    ).calibration
    assert [(r["bin_low"], r["n"]) for r in edge] == [
        (0.0, 1),
        (pytest.approx(0.1), 1),
        (pytest.approx(0.8), 1),
    ]


def test_weighted_bootstrap_equals_evaluating_the_resample_itself():
    # One resample as weights must give the figures of the resampled units, listed out.
    score, label, cluster = _data(seed=2, n=200)
    draws = cluster_draws(len(np.unique(cluster)), 5, 7, "all")
    figures, curves = bootstrap(score, label, cluster, 0.5, draws, 10, roc=True)
    for r in range(5):
        take = np.repeat(np.arange(len(score)), draws[r][cluster])
        s, y = score[take], label[take]
        tn, fp, fn, tp = confusion_matrix(y, s >= 0.5, labels=[False, True]).ravel()
        assert abs(figures["auc"][r] - roc_auc_score(y, s)) < 1e-9
        assert abs(figures["brier"][r] - brier_score_loss(y, s)) < 1e-9
        assert abs(figures["sensitivity"][r] - tp / (tp + fn)) < 1e-9
        assert abs(figures["ppv"][r] - tp / (tp + fp)) < 1e-9
        assert abs(figures["ece"][r] - expected_calibration_error(s, y, 10)) < 1e-9
        fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
        expected = [tpr[np.searchsorted(fpr, g, side="right") - 1] for g in ROC_GRID]
        np.testing.assert_allclose(curves[r], expected, atol=1e-12)
    assert draws.sum(axis=1).tolist() == [len(np.unique(cluster))] * 5


def test_thresholds_by_rule():
    score, label, _ = _data(seed=3)
    assert choose_threshold(score, label, "fixed", 0.42) == (0.42, None)
    t, note = choose_threshold(score, label, "sensitivity", 0.9)
    sens = ((score >= t) & label).sum() / label.sum()
    assert note is None and sens >= 0.9
    # the highest such threshold: any higher score reaches less than the target
    higher = np.unique(score[score > t])
    assert all(((score >= h) & label).sum() / label.sum() < 0.9 for h in higher)
    t, _ = choose_threshold(score, label, "youden", 0.5)
    fpr, tpr, thresholds = roc_curve(label, score, drop_intermediate=False)
    assert t == thresholds[int(np.argmax(tpr - fpr))]
    t, note = choose_threshold(score, np.zeros(len(score), bool), "youden", 0.5)
    assert t == 0.5 and "Youden" in note


def test_levels_aggregate_max_or_mean_and_any_positive():
    score = np.array([0.1, 0.8, 0.3, 0.2, 0.4])
    label = np.array([0, 1, 0, 0, 0], bool)
    patient = np.array([5, 5, 5, 9, 9])
    s, y, c = group_units(score, label, patient, patient, "max")
    assert s.tolist() == [0.8, 0.4] and y.tolist() == [True, False] and c.tolist() == [5, 9]
    s, _, _ = group_units(score, label, patient, patient, "mean")
    np.testing.assert_allclose(s, [0.4, 0.3])


def test_small_and_undefined_subgroups_say_so():
    score, label, cluster = _data(seed=4, n=40)
    few = np.isin(cluster, [cluster[label][0], cluster[~label][0], cluster[~label][-1]])
    rows = {
        r["metric"]: r
        for r in evaluate_units(
            score[few], label[few], cluster[few], 0.5, BootstrapSpec(), "s"
        ).metrics
    }
    assert rows["auc"]["ci_low"] is None and "too few for an interval" in rows["auc"]["note"]
    assert rows["auc"]["n_patients"] == 3 and rows["auc"]["n"] == 12
    negatives = ~label
    rows = {
        r["metric"]: r
        for r in evaluate_units(
            score[negatives], label[negatives], cluster[negatives], 0.5, BootstrapSpec(), "n"
        ).metrics
    }
    assert rows["sensitivity"]["value"] is None and rows["sensitivity"]["note"]
    assert rows["auc"]["value"] is None and rows["specificity"]["value"] is not None


def test_interval_is_reproducible_and_covers_a_known_auc():
    d, spread = 1.0, 1.0
    true_auc = norm.cdf(d / math.sqrt(2 * (1 + spread**2)))
    spec = BootstrapSpec(n_resamples=400, seed=11)
    rng = np.random.default_rng(2026)
    covered_patient = covered_frame = 0
    reps = 200
    for rep in range(reps):
        score, label, cluster = _clustered(rng, 60, 5, d, spread)
        row = evaluate_units(score, label, cluster, 0.5, spec, f"rep{rep}").metrics[0]
        assert row["metric"] == "auc"
        covered_patient += row["ci_low"] <= true_auc <= row["ci_high"]
        # the same data resampled by frame, as if frames were independent
        frame = evaluate_units(score, label, np.arange(len(score)), 0.5, spec, f"rep{rep}")
        covered_frame += frame.metrics[0]["ci_low"] <= true_auc <= frame.metrics[0]["ci_high"]
    # Measured: 0.950 of 200 intervals cover the true AUC (0.6915) resampling patients, 0.755
    # resampling frames (the wrong unit: frames of a patient share its random effect).
    assert 0.90 <= covered_patient / reps <= 0.99
    assert covered_frame / reps < 0.85
    again = evaluate_units(score, label, cluster, 0.5, spec, f"rep{reps - 1}").metrics[0]
    assert (again["ci_low"], again["ci_high"]) == (row["ci_low"], row["ci_high"])
    assert roc_auc(score, label) == row["value"]


def test_grouped_folds_keep_each_patient_in_one_fold():
    patients = [f"p{i // 3}" for i in range(60)] + ["big"] * 10
    folds = grouped_folds(patients, 4, seed=1)
    assert sorted(np.concatenate(folds).tolist()) == list(range(70))
    owner = {}
    for f, idx in enumerate(folds):
        for i in idx:
            assert owner.setdefault(patients[i], f) == f
    sizes = [len(f) for f in folds]
    assert max(sizes) - min(sizes) <= 10
    assert [f.tolist() for f in grouped_folds(patients, 4, seed=1)] == [f.tolist() for f in folds]
    with pytest.raises(ValueError, match="folds"):
        grouped_folds(["a", "b"], 3, seed=1)


def _write_warehouse(spark, config, pseudo, rng):
    """predictions, scans and a labels CSV for 13 patients of 3 frames over 2 scanner models,
    with one label without prediction, one prediction without label and one frame whose
    instance has no scans row. Returns the labels path and the expected joined frames."""
    import pandas as pd

    rows, scans, labels = [], [], ["sop_instance_uid,frame,label"]
    for p in range(13):
        sick = p % 3 != 0
        original = f"1.2.840.77.{p}"
        model_name = "SYN-A" if p < 7 else "SYN-B"
        sex = "MF"[p % 2] if p < 10 else None  # de-identified without it from patient 10 on
        header = json.dumps({"00100040": {"vr": "CS", "Value": [sex]}} if sex else {})
        if p == 12:  # patient 12's instance never reached scans
            model_name = None
        else:
            scans.append((pseudo.uid(original), f"PAT{p}", "ACME", model_name, "CT", header))
        for f in range(3):
            positive = sick and f != 1
            score = float(np.clip(rng.normal(0.65 if positive else 0.35, 0.2), 0.001, 0.999))
            score = round(score, 3)
            rows.append((pseudo.uid(original), f, original, positive, score, p, model_name, sex))
            labels.append(f"{original},{f},{'nodule' if positive else 'no_nodule'}")
    labels.append("1.2.840.77.404,0,nodule")  # a label without prediction
    frames = pd.DataFrame(
        rows, columns=["uid", "frame", "original", "positive", "score", "p", "model", "sex"]
    )
    predictions = [
        (r.uid, r.frame, "medspark-nodule-demo", "1", "x", [1 - r.score, r.score])
        for r in frames.itertuples()
    ] + [(pseudo.uid("1.2.840.77.0"), 7, "medspark-nodule-demo", "1", "x", [0.5, 0.5])]
    spark.createDataFrame(
        predictions,
        "sop_instance_uid string, frame int, model string, model_version string, label string, "
        "probabilities array<float>",
    ).write.format("delta").save(config.table_path("predictions"))
    spark.createDataFrame(
        scans,
        "sop_instance_uid string, patient_id string, manufacturer string, "
        "manufacturer_model_name string, modality string, header_json string",
    ).write.format("delta").save(config.table_path("scans"))
    path = config.table_path("predictions") + "_labels.csv"
    with open(path, "w") as out:
        out.write("\n".join(labels) + "\n")
    # the score as the table holds it (float32)
    frames["score"] = frames["score"].astype(np.float32).astype(np.float64)
    return path, frames


def test_evaluate_writes_figures_equal_to_scikit_learn(spark, tmp_path, pseudo):
    import dataclasses

    from medspark.config import EvaluationConfig, PipelineConfig, with_overrides
    from medspark.errors import ConfigError
    from medspark.inference.evaluate import read_labels
    from medspark.pipeline import evaluate

    config = with_overrides(PipelineConfig(), warehouse=str(tmp_path))
    config = dataclasses.replace(
        config,
        evaluation=EvaluationConfig(
            bootstrap_resamples=200, subgroups=["manufacturer_model_name", "patient_sex"]
        ),
    )
    labels, frames = _write_warehouse(spark, config, pseudo, np.random.default_rng(5))
    result = evaluate(spark, config, labels, run_id="eval-1")
    fig = result.figure
    y, s = frames["positive"].to_numpy(), frames["score"].to_numpy()
    assert abs(fig("auc")["value"] - roc_auc_score(y, s)) < 1e-9
    assert abs(fig("brier")["value"] - brier_score_loss(y, s)) < 1e-9
    tn, fp, fn, tp = confusion_matrix(y, s >= 0.5).ravel()
    assert fig("sensitivity")["value"] == pytest.approx(tp / (tp + fn), abs=1e-12)
    assert fig("npv")["value"] == pytest.approx(tn / (tn + fn), abs=1e-12)
    assert (fig("auc")["n"], fig("auc")["n_positive"]) == (39, int(y.sum()))
    assert fig("auc")["n_patients"] == 13  # patient 12 (no scans row) is its instance
    low, high = fig("auc")["ci_low"], fig("auc")["ci_high"]
    assert low < fig("auc")["value"] < high and fig("sensitivity")["threshold"] == 0.5
    # patient level: max over a patient's frames, positive when any frame is
    by_patient = frames.groupby("p").agg(score=("score", "max"), positive=("positive", "any"))
    assert (
        abs(fig("auc", "patient")["value"] - roc_auc_score(by_patient.positive, by_patient.score))
        < 1e-9
    )
    assert fig("auc", "patient")["n"] == 13 and fig("auc", "instance")["n"] == 13
    # calibration of the frame level, as scikit-learn bins it
    observed, predicted = calibration_curve(y, s, n_bins=10)
    bins = sorted((r for r in result.calibration if r["level"] == "frame"), key=lambda r: r["bin"])
    np.testing.assert_allclose([r["observed_rate"] for r in bins], observed, atol=1e-9)
    np.testing.assert_allclose([r["mean_predicted"] for r in bins], predicted, atol=1e-9)
    # subgroups: a scanner model, and sex from the header where de-identification kept it
    sub = frames[frames.model == "SYN-B"]
    b = fig("auc", "frame", "manufacturer_model_name=SYN-B")
    assert abs(b["value"] - roc_auc_score(sub.positive, sub.score)) < 1e-9
    assert b["ci_low"] is None and "too few for an interval" in b["note"]  # 5 patients
    assert fig("auc", "frame", "patient_sex=F")["n"] == 15
    assert fig("auc", "frame", "manufacturer_model_name=SYN-A")["n"] == 21
    # every row that could not be evaluated is counted
    counts = {r["metric"]: r["value"] for r in result.evaluation if "without" in r["metric"]}
    assert counts["labels_without_prediction"] == 1
    assert counts["predictions_without_label"] == 1
    assert counts["frames_without_patient"] == 3
    band = [r for r in result.roc if r["level"] == "frame"]
    assert len(band) == 101 and all(r["tpr_low"] <= r["tpr"] <= r["tpr_high"] for r in band)

    # Same run again: the tables keep one row per key.
    again = evaluate(spark, config, labels, run_id="eval-1")
    assert again.evaluation == [
        {**r, "evaluated_at": again.evaluation[0]["evaluated_at"]} for r in result.evaluation
    ]
    for table in ("model_evaluation", "model_calibration", "model_roc"):
        df = spark.read.format("delta").load(config.table_path(table))
        assert df.count() == len(getattr(result, table.split("_")[1]))
    stored = spark.read.format("delta").load(config.table_path("model_evaluation"))
    assert stored.where("level = 'frame' and subgroup = 'all' and metric = 'auc'").first()[
        "ci_low"
    ] == pytest.approx(low)

    # Bad label files are one ConfigError naming --labels.
    bad = tmp_path / "bad.csv"
    bad.write_text("sop_instance_uid,frame,label\n1.2.3,zero,nodule\n")
    with pytest.raises(ConfigError, match="frame number"):
        read_labels(spark, str(bad))
    bad.write_text("sop_instance_uid,frame,label\n1.2.3,0,nodule\n1.2.3,0,no_nodule\n")
    with pytest.raises(ConfigError, match="one label per frame"):
        read_labels(spark, str(bad))


def test_train_demo_cross_validates_with_patient_grouped_folds(tmp_path):
    from medspark.inference.train import SLICES_PER_PATIENT, train_demo_model

    card = train_demo_model(tmp_path, n_train=48, n_test=8, epochs=1, folds=3)
    cv = card["cross_validation"]
    assert cv["folds"] == 3 and len(cv["per_fold"]) == 3
    assert sum(f["n_test"] for f in cv["per_fold"]) == 48
    assert all(f["n_train"] + f["n_test"] == 48 for f in cv["per_fold"])
    assert sum(f["patients_test"] for f in cv["per_fold"]) == 48 // SLICES_PER_PATIENT
    aucs = [f["auc"] for f in cv["per_fold"]]
    assert cv["summary"]["auc"]["mean"] == pytest.approx(np.mean(aucs), abs=1e-4)
    assert cv["summary"]["auc"]["sd"] == pytest.approx(np.std(aucs, ddof=1), abs=1e-4)
    assert cv["summary"]["auc"]["min"] == min(aucs)
    assert (tmp_path / "model.pt").is_file()
    assert json.loads((tmp_path / "model_card.json").read_text())["cross_validation"] == cv


def test_age_bands_and_evaluation_config_refuse_what_they_cannot_use(tmp_path, capsys):
    from medspark.cli import main
    from medspark.config import EvaluationConfig, config_from_dict
    from medspark.errors import ConfigError
    from medspark.inference.stats import age_band, age_in_years

    edges = [18, 40, 65]
    assert [age_band(a, edges) for a in ("017Y", "018Y", "039Y", "040Y", "065Y", "090Y")] == [
        "<18",
        "18-39",
        "18-39",
        "40-64",
        "65+",
        "65+",
    ]
    assert age_in_years("006M") == 0.5 and age_band("010D", edges) == "<18"
    assert age_band(None, edges) is None and age_band("abcY", edges) is None
    with pytest.raises(ConfigError, match=r"evaluation.subgroups\[1\]"):
        config_from_dict({"evaluation": {"subgroups": ["modality", "patient_id"]}})
    with pytest.raises(ConfigError, match="evaluation.age_bands"):
        config_from_dict({"evaluation": {"age_bands": [40, 18]}})
    with pytest.raises(ConfigError, match="evaluation.threshold_rule"):
        config_from_dict({"evaluation": {"threshold_rule": "best"}})
    assert EvaluationConfig().positive_class_of(["no_nodule", "nodule"], "m") == "nodule"
    # A positive class the model does not have: one line, exit 2, before Spark starts.
    conf = tmp_path / "c.yaml"
    conf.write_text("evaluation:\n  positive_class: tumour\n")
    labels = tmp_path / "labels.csv"
    labels.write_text("sop_instance_uid,frame,label\n")
    code = main(
        ["evaluate", "--warehouse", str(tmp_path / "wh"), "--labels", str(labels)]
        + ["--conf", str(conf)]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "evaluation.positive_class" in err
    assert "tumour" in err and not (tmp_path / "wh").exists()
