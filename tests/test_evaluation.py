"""The statistics of ``medspark evaluate`` (pure numpy), against scikit-learn and known answers."""

from __future__ import annotations

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
