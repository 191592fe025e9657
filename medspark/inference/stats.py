"""The statistics of ``medspark evaluate`` as pure numpy: no Spark here.

A clinical reviewer asks of a model's figures: how sure (a 95 % interval), at which operating
point (sensitivity, specificity, PPV, NPV at a recorded threshold), how well calibrated (Brier
score, expected calibration error, the reliability curve) and for whom (subgroups, levels).
This module answers each question for one set of *units* (frames, instances or patients):
a score in [0, 1] for the positive class, a binary label and the *cluster* (patient) each unit
belongs to.

Intervals are percentile bootstraps that resample **patients**, not units: frames of one
patient share anatomy, scanner and reader, so they are not independent, and resampling frames
would give intervals that are too narrow (the coverage test in ``tests/test_evaluation.py``
shows both). A resample draws ``n_clusters`` patients with replacement; each unit then counts
as often as its patient was drawn. That makes every figure a *weighted* figure, and the weights
of many resamples are computed at once:

- the counts at the threshold, the Brier score and the calibration bins are sums over units,
  so they are summed per patient once (a patients x k matrix) and each resample is one row of
  ``draws @ sums``;
- the ROC AUC needs the order of the scores: units are sorted once, tied scores grouped, and
  each resample's weighted positives and negatives per distinct score give the AUC by the
  rank-sum formula (ties count one half), in blocks of resamples that bound memory.

The operating threshold is chosen once on the data evaluated and held fixed in the resamples:
the intervals are conditional on it (re-choosing it per resample would answer another
question: how stable the rule is).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

#: The metrics of ``model_evaluation``, in the order they are written.
METRICS = ("auc", "sensitivity", "specificity", "ppv", "npv", "accuracy", "brier", "ece")
#: Metrics that depend on the operating threshold (the others have ``threshold`` null).
THRESHOLD_METRICS = frozenset({"sensitivity", "specificity", "ppv", "npv", "accuracy"})
#: The false positive rates at which the ROC band is tabulated (0, 0.01, ..., 1).
ROC_GRID = np.linspace(0.0, 1.0, 101)
#: Bound on the elements of one block of resamples x units (float64): about 32 MB per array.
_BLOCK_ELEMENTS = 4_000_000

ThresholdRule = Literal["fixed", "sensitivity", "youden"]
Aggregation = Literal["max", "mean"]


@dataclass(frozen=True)
class BootstrapSpec:
    """How intervals are drawn: resamples, seed, level (0.95), minimum patients, bins."""

    n_resamples: int = 1000
    seed: int = 20261204
    confidence: float = 0.95
    min_patients: int = 10
    calibration_bins: int = 10


@dataclass
class LevelResult:
    """The figures of one set of units: metric rows, calibration bins and the ROC band."""

    metrics: list[dict[str, Any]] = field(default_factory=list)
    calibration: list[dict[str, Any]] = field(default_factory=list)
    roc: list[dict[str, Any]] = field(default_factory=list)


def group_units(
    score: np.ndarray,
    label: np.ndarray,
    cluster: np.ndarray,
    key: np.ndarray,
    how: Aggregation,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Units of a coarser level: one per distinct ``key`` (an instance, a patient).

    Its score is the ``max`` or ``mean`` of its members' scores, its label positive when any
    member is (a patient with a nodule on one slice has a nodule), its cluster the cluster of
    its members (a key must lie within one cluster: an instance within a patient).
    """
    _, inverse = np.unique(key, return_inverse=True)
    inverse = inverse.ravel()
    n = int(inverse.max()) + 1 if len(inverse) else 0
    order = np.argsort(inverse, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(inverse[order]) != 0]) if n else np.array([], int)
    if how == "max":
        agg = np.maximum.reduceat(score[order], starts) if n else np.array([], float)
    elif how == "mean":
        agg = np.bincount(inverse, weights=score, minlength=n) / np.bincount(inverse, minlength=n)
    else:  # the config refuses anything else; a bug if reached
        raise ValueError(f"aggregation {how!r}")
    positive = np.bincount(inverse, weights=label.astype(np.float64), minlength=n) > 0
    return agg.astype(np.float64), positive, cluster[order][starts] if n else cluster[:0]


def roc_auc(score: np.ndarray, label: np.ndarray) -> float:
    """Area under the ROC curve (rank-sum, ties one half); NaN without both classes."""
    value = _weighted_auc(_SortedUnits(score, label), np.ones((1, len(score))))
    return float(value[0])


def confusion_counts(score: np.ndarray, label: np.ndarray, threshold: float) -> dict[str, int]:
    """TP, FP, FN, TN when a unit with ``score >= threshold`` is called positive."""
    called = score >= threshold
    label = label.astype(bool)
    return {
        "tp": int((called & label).sum()),
        "fp": int((called & ~label).sum()),
        "fn": int((~called & label).sum()),
        "tn": int((~called & ~label).sum()),
    }


def brier_score(score: np.ndarray, label: np.ndarray) -> float:
    """Mean squared difference between the score and the 0/1 label."""
    return float(np.mean((score - label) ** 2)) if len(score) else math.nan


def calibration_bin_ids(score: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-width bins over [0, 1]: (low, high], the first one closed ([0, 1/n_bins]), as
    scikit-learn's ``calibration_curve(strategy="uniform")`` cuts them."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.searchsorted(edges[1:-1], score)


def calibration_table(score: np.ndarray, label: np.ndarray, n_bins: int) -> list[dict[str, Any]]:
    """The reliability curve: per non-empty bin its edges, mean score, observed rate and n."""
    ids = calibration_bin_ids(score, n_bins)
    n = np.bincount(ids, minlength=n_bins)
    sum_score = np.bincount(ids, weights=score, minlength=n_bins)
    sum_label = np.bincount(ids, weights=label.astype(np.float64), minlength=n_bins)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return [
        {
            "bin": b,
            "bin_low": float(edges[b]),
            "bin_high": float(edges[b + 1]),
            "mean_predicted": float(sum_score[b] / n[b]),
            "observed_rate": float(sum_label[b] / n[b]),
            "n": int(n[b]),
        }
        for b in range(n_bins)
        if n[b]
    ]


def expected_calibration_error(score: np.ndarray, label: np.ndarray, n_bins: int) -> float:
    """ECE: the bins' |mean score - observed rate|, weighted by their share of the units."""
    if not len(score):
        return math.nan
    ids = calibration_bin_ids(score, n_bins)
    gap = np.bincount(ids, weights=score - label, minlength=n_bins)
    return float(np.abs(gap).sum() / len(score))


def choose_threshold(
    score: np.ndarray, label: np.ndarray, rule: ThresholdRule, value: float
) -> tuple[float, str | None]:
    """The operating threshold (a unit is positive when ``score >= threshold``) and a note.

    ``fixed``: ``value``. ``sensitivity``: the highest threshold whose sensitivity is at least
    ``value`` (the k-th highest positive score, k = ceil(value x positives)). ``youden``: the
    threshold among the scores that maximises sensitivity + specificity - 1 (the highest one
    on a tie). Without positives (or negatives, for Youden) the rule falls back to 0.5 and
    says so (``value`` is then a sensitivity, not a threshold).
    """
    if rule == "fixed":
        return float(value), None
    label = label.astype(bool)
    positives = np.sort(score[label])[::-1]
    if rule == "sensitivity":
        if not len(positives):
            return 0.5, "no positive units: threshold 0.5 instead of the target sensitivity"
        k = max(1, math.ceil(value * len(positives) - 1e-12))
        return float(positives[k - 1]), None
    if not len(positives) or label.all():
        return 0.5, "Youden's J needs positive and negative units: threshold 0.5 instead"
    order = np.argsort(-score, kind="mergesort")
    s, y = score[order], label[order]
    last = np.r_[s[1:] != s[:-1], True]  # last unit of each distinct score, descending
    tpr = np.cumsum(y)[last] / y.sum()
    fpr = np.cumsum(~y)[last] / (~y).sum()
    best = int(np.argmax(tpr - fpr))
    return float(s[last][best]), None


def threshold_figures(
    tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, tn: np.ndarray
) -> dict[str, np.ndarray]:
    """Sensitivity, specificity, PPV, NPV, accuracy from (weighted) counts; NaN where a
    denominator is zero. Works on arrays of resamples as on scalars."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "sensitivity": np.divide(tp, tp + fn),
            "specificity": np.divide(tn, tn + fp),
            "ppv": np.divide(tp, tp + fp),
            "npv": np.divide(tn, tn + fn),
            "accuracy": np.divide(tp + tn, tp + fp + fn + tn),
        }


def point_figures(
    score: np.ndarray, label: np.ndarray, threshold: float, n_bins: int
) -> dict[str, float]:
    """Every metric of :data:`METRICS` on the units as they are (NaN where undefined)."""
    counts = confusion_counts(score, label, threshold)
    figures = {
        k: float(v)
        for k, v in threshold_figures(
            *(np.float64(counts[c]) for c in ("tp", "fp", "fn", "tn"))
        ).items()
    }
    figures["auc"] = roc_auc(score, label)
    figures["brier"] = brier_score(score, label)
    figures["ece"] = expected_calibration_error(score, label, n_bins)
    return figures


class _SortedUnits:
    """Units sorted by score once, with the boundaries of tied scores, for the weighted AUC."""

    def __init__(self, score: np.ndarray, label: np.ndarray) -> None:
        self.order = np.argsort(score, kind="mergesort")
        s = score[self.order]
        self.positive = label.astype(bool)[self.order]
        self.starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]]) if len(s) else np.array([], int)
        self.values = s[self.starts] if len(s) else s


def _per_score(sorted_units: _SortedUnits, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted positives and negatives per distinct score (ascending): blocks x distinct.

    ``w``: blocks x units, in the sorted order.
    """
    pos = np.where(sorted_units.positive, w, 0.0)
    neg = w - pos
    return (
        np.add.reduceat(pos, sorted_units.starts, axis=1),
        np.add.reduceat(neg, sorted_units.starts, axis=1),
    )


def _auc_from(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """AUC per row from weighted positives and negatives per distinct score (ascending)."""
    below = np.cumsum(neg, axis=1) - neg
    total_pos, total_neg = pos.sum(axis=1), neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (pos * (below + 0.5 * neg)).sum(axis=1) / (total_pos * total_neg)
    auc[(total_pos == 0) | (total_neg == 0)] = math.nan
    return auc


def _weighted_auc(sorted_units: _SortedUnits, weights: np.ndarray) -> np.ndarray:
    """AUC per row of ``weights`` (blocks x units, in the units' original order)."""
    if not len(sorted_units.order):
        return np.full(len(weights), math.nan)
    return _auc_from(*_per_score(sorted_units, weights[:, sorted_units.order]))


def _roc_from(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """TPR at :data:`ROC_GRID` per row (the ROC curve read at fixed false positive rates)."""
    # From the highest score down: the curve's points as the threshold is lowered.
    tp = np.cumsum(pos[:, ::-1], axis=1)
    fp = np.cumsum(neg[:, ::-1], axis=1)
    out = np.full((len(pos), len(ROC_GRID)), math.nan)
    for r in range(len(pos)):
        if tp[r, -1] <= 0 or fp[r, -1] <= 0:
            continue
        fpr = np.r_[0.0, fp[r] / fp[r, -1]]
        tpr = np.r_[0.0, tp[r] / tp[r, -1]]
        out[r] = tpr[np.searchsorted(fpr, ROC_GRID, side="right") - 1]
    return out


def _roc_rows(sorted_units: _SortedUnits, weights: np.ndarray) -> np.ndarray:
    """TPR at :data:`ROC_GRID` per row of ``weights`` (blocks x units, original order)."""
    return _roc_from(*_per_score(sorted_units, weights[:, sorted_units.order]))


def cluster_draw_blocks(
    n_clusters: int, n_resamples: int, seed: int, salt: str
) -> Iterator[np.ndarray]:
    """How often each cluster is drawn in each resample, in blocks of resamples (each block
    resamples x clusters, int32, at most about :data:`_BLOCK_ELEMENTS` counts), so that no
    caller holds all resamples x clusters at once (1,000 resamples of 5 million single-frame
    patients would be 20 GB).

    Seeded by ``seed`` and ``salt`` (level and subgroup), so a subgroup's interval does not
    depend on which other subgroups were evaluated before it.
    """
    rng = np.random.default_rng([seed, zlib.crc32(salt.encode("utf-8"))])
    step = max(1, _BLOCK_ELEMENTS // max(n_clusters, 1))
    for start in range(0, n_resamples, step):
        rows = min(n_resamples, start + step) - start
        picked = rng.integers(0, n_clusters, size=(rows, n_clusters))
        offsets = np.arange(rows)[:, None] * n_clusters
        yield (
            np.bincount((picked + offsets).ravel(), minlength=rows * n_clusters)
            .reshape(rows, n_clusters)
            .astype(np.int32)
        )


def cluster_draws(n_clusters: int, n_resamples: int, seed: int, salt: str) -> np.ndarray:
    """All of :func:`cluster_draw_blocks` as one array (resamples x clusters, int32)."""
    blocks = list(cluster_draw_blocks(n_clusters, n_resamples, seed, salt))
    return np.concatenate(blocks) if blocks else np.empty((0, n_clusters), dtype=np.int32)


def bootstrap(
    score: np.ndarray,
    label: np.ndarray,
    cluster: np.ndarray,
    threshold: float,
    draws: np.ndarray | Iterable[np.ndarray],
    n_bins: int,
    roc: bool = False,
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Every metric per resample (``draws``: resamples x clusters from :func:`cluster_draws`,
    or its blocks from :func:`cluster_draw_blocks`, taken one block at a time), and with
    ``roc`` the TPR at :data:`ROC_GRID` per resample."""
    _, cluster = np.unique(cluster, return_inverse=True)
    cluster = cluster.ravel()
    blocks = [draws] if isinstance(draws, np.ndarray) else draws
    parts: list[tuple[dict[str, np.ndarray], np.ndarray | None]] = []
    sums = gap = n_per = None
    sorted_units = _SortedUnits(score, label)
    # Each unit's weight is its patient's draw count: one gather, already in score order.
    sorted_cluster = cluster[sorted_units.order]
    for block in blocks:
        if sums is None:
            sums, gap, n_per = _cluster_sums(
                score, label, cluster, threshold, n_bins, block.shape[1]
            )
        parts.append(
            _bootstrap_block(
                block, sums, gap, n_per, threshold, sorted_units, sorted_cluster, len(score), roc
            )
        )
    if not parts:
        return {}, None
    out = {k: np.concatenate([p[0][k] for p in parts]) for k in parts[0][0]}
    curves = [p[1] for p in parts if p[1] is not None]
    return out, (np.concatenate(curves) if roc and curves else None)


def _cluster_sums(
    score: np.ndarray,
    label: np.ndarray,
    cluster: np.ndarray,
    threshold: float,
    n_bins: int,
    n_clusters: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per cluster: tp, fp, fn, tn and squared error sums; the calibration gap per bin; the
    number of units."""
    y = label.astype(np.float64)
    called = score >= threshold
    ids = calibration_bin_ids(score, n_bins)
    columns = [
        called * y,
        called * (1 - y),
        ~called * y,
        ~called * (1 - y),
        (score - y) ** 2,
    ]
    sums = np.column_stack([np.bincount(cluster, weights=c, minlength=n_clusters) for c in columns])
    cell = cluster * n_bins + ids
    gap = np.bincount(cell, weights=score - y, minlength=n_clusters * n_bins).reshape(
        n_clusters, n_bins
    )
    n_per = np.bincount(cluster, minlength=n_clusters).astype(np.float64)
    return sums, gap, n_per


def _bootstrap_block(
    draws: np.ndarray,
    sums: np.ndarray,
    gap: np.ndarray,
    n_per: np.ndarray,
    threshold: float,
    sorted_units: _SortedUnits,
    sorted_cluster: np.ndarray,
    n_units: int,
    roc: bool,
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """:func:`bootstrap`'s figures for one block of resamples."""
    d = draws.astype(np.float64)
    totals = d @ sums
    n = d @ n_per
    out = threshold_figures(totals[:, 0], totals[:, 1], totals[:, 2], totals[:, 3])
    with np.errstate(invalid="ignore", divide="ignore"):
        out["brier"] = totals[:, 4] / n
        out["ece"] = np.abs(d @ gap).sum(axis=1) / n
    step = max(1, _BLOCK_ELEMENTS // max(n_units, 1))
    aucs, curves = [], []
    for start in range(0, len(d) if n_units else 0, step):
        pos, neg = _per_score(sorted_units, d[start : start + step][:, sorted_cluster])
        aucs.append(_auc_from(pos, neg))
        if roc:
            curves.append(_roc_from(pos, neg))
    out["auc"] = np.concatenate(aucs) if aucs else np.full(len(d), math.nan)
    return out, (np.concatenate(curves) if roc and curves else None)


def percentile_interval(
    values: np.ndarray, confidence: float
) -> tuple[float | None, float | None, str | None]:
    """The percentile interval of the resampled ``values``; (None, None, why) when more than
    5 % of the resamples left the metric undefined (no positive patient drawn, say)."""
    finite = values[np.isfinite(values)]
    if len(finite) < 0.95 * len(values) or not len(finite):
        return (
            None,
            None,
            f"undefined in {len(values) - len(finite)} of {len(values)} resamples",
        )
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), float(high), None


def evaluate_units(
    score: np.ndarray,
    label: np.ndarray,
    cluster: np.ndarray,
    threshold: float,
    spec: BootstrapSpec,
    salt: str,
    *,
    roc: bool = False,
    calibration: bool = True,
) -> LevelResult:
    """Metric rows (value, interval, note, n, n_positive, threshold), the calibration bins
    and, with ``roc``, the ROC band of one set of units."""
    score = np.asarray(score, dtype=np.float64)
    label = np.asarray(label, dtype=bool)
    n, n_pos = len(score), int(label.sum())
    n_clusters = len(np.unique(cluster))
    point = point_figures(score, label, threshold, spec.calibration_bins)
    result = LevelResult()
    resampled: dict[str, np.ndarray] = {}
    curves = None
    too_few = None
    if n_clusters < spec.min_patients:
        too_few = (
            f"{n_clusters} patient(s): too few for an interval "
            f"(evaluation.min_patients {spec.min_patients})"
        )
    elif spec.n_resamples:
        draws = cluster_draw_blocks(n_clusters, spec.n_resamples, spec.seed, salt)
        resampled, curves = bootstrap(
            score, label, cluster, threshold, draws, spec.calibration_bins, roc
        )
    for metric in METRICS:
        value = point[metric]
        low = high = None
        note = too_few
        if not math.isfinite(value):
            note = _undefined(metric)
        elif metric in resampled:
            low, high, why = percentile_interval(resampled[metric], spec.confidence)
            note = why
        result.metrics.append(
            {
                "metric": metric,
                "value": value if math.isfinite(value) else None,
                "ci_low": low,
                "ci_high": high,
                "note": note,
                "n": n,
                "n_positive": n_pos,
                "n_patients": n_clusters,
                "threshold": threshold if metric in THRESHOLD_METRICS else None,
            }
        )
    if calibration:
        result.calibration = calibration_table(score, label, spec.calibration_bins)
    if roc and n_pos and n_pos < n:
        whole = _roc_rows(_SortedUnits(score, label), np.ones((1, n)))[0]
        band = None
        if curves is not None:
            tail = (1 - spec.confidence) / 2 * 100
            finite = curves[np.isfinite(curves[:, 0])]
            if len(finite) >= 0.95 * len(curves):
                band = np.percentile(finite, [tail, 100 - tail], axis=0)
        result.roc = [
            {
                "fpr": float(f),
                "tpr": float(whole[i]),
                "tpr_low": float(band[0, i]) if band is not None else None,
                "tpr_high": float(band[1, i]) if band is not None else None,
            }
            for i, f in enumerate(ROC_GRID)
        ]
    return result


def _undefined(metric: str) -> str:
    """Why a point figure cannot be computed."""
    return {
        "auc": "needs positive and negative units",
        "sensitivity": "no positive units",
        "specificity": "no negative units",
        "ppv": "no unit called positive at this threshold",
        "npv": "no unit called negative at this threshold",
    }.get(metric, "no units")


def grouped_folds(groups: Sequence[Any], k: int, seed: int) -> list[np.ndarray]:
    """``k`` folds of unit indices such that no group (patient) is in two folds.

    Groups are shuffled (seeded) and dealt to the fold with the fewest units so far, largest
    groups first, so folds stay close in size however uneven the groups are.
    """
    names, inverse, counts = np.unique(
        np.asarray(groups, dtype=object).astype(str), return_inverse=True, return_counts=True
    )
    if k < 2 or k > len(names):
        raise ValueError(f"{k} folds need 2 to {len(names)} groups")
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(len(names))
    by_size = shuffled[np.argsort(-counts[shuffled], kind="stable")]
    fold_of = np.empty(len(names), dtype=np.int64)
    load = np.zeros(k, dtype=np.int64)
    for g in by_size:
        f = int(np.argmin(load))
        fold_of[g] = f
        load[f] += counts[g]
    unit_fold = fold_of[inverse.ravel()]
    return [np.flatnonzero(unit_fold == f) for f in range(k)]


#: The levels of ``model_evaluation``, finest first.
LEVELS = ("frame", "instance", "patient")


def age_in_years(value: str | None) -> float | None:
    """Patient's Age (0010,1010), an AS value such as ``045Y``, ``018M``, ``003W``, ``010D``."""
    if not value or len(value.strip()) < 2:
        return None
    text = value.strip().upper()
    per_year = {"Y": 1.0, "M": 12.0, "W": 52.1775, "D": 365.25}.get(text[-1])
    if per_year is None or not text[:-1].isdigit():
        return None
    return int(text[:-1]) / per_year


def age_band(value: str | None, edges: Sequence[int]) -> str | None:
    """The band of an AS age among ``edges`` (lower edges after the first): ``<18``,
    ``18-39``, ``40-64``, ``65+`` for [18, 40, 65]; None when the age is absent or malformed."""
    years = age_in_years(value)
    if years is None:
        return None
    bounds = list(edges)
    if years < bounds[0]:
        return f"<{bounds[0]}"
    for low, high in zip(bounds, bounds[1:], strict=False):
        if years < high:
            return f"{low}-{high - 1}"
    return f"{bounds[-1]}+"


@dataclass(frozen=True)
class EvaluationSettings:
    """What :func:`evaluate_frames` needs from ``evaluation`` (the config section)."""

    threshold_rule: ThresholdRule = "fixed"
    threshold: float = 0.5
    target_sensitivity: float = 0.9
    aggregation: Aggregation = "max"
    subgroups: tuple[str, ...] = ()
    spec: BootstrapSpec = field(default_factory=BootstrapSpec)


def evaluate_frames(
    columns: dict[str, np.ndarray], settings: EvaluationSettings
) -> dict[str, list[dict[str, Any]]]:
    """Every figure of ``model_evaluation``, ``model_calibration`` and ``model_roc``.

    ``columns``: one entry per labelled frame with a prediction: ``score`` (the positive
    class's probability), ``positive`` (the label), ``sop_instance_uid``, ``patient`` (None
    where the instance has no patient: it is then its own patient) and one array per subgroup
    column (None: not known for that frame, which is then in no subgroup of that column).
    Returns ``metrics``, ``calibration`` and ``roc`` rows, each with ``level`` (and the metric
    rows with ``subgroup``), and ``thresholds``: one row per level with the threshold chosen.
    """
    score = np.asarray(columns["score"], dtype=np.float64)
    label = np.asarray(columns["positive"], dtype=bool)
    sop = np.asarray(columns["sop_instance_uid"], dtype=object)
    patient = np.asarray(columns["patient"], dtype=object)
    patient = np.where(
        patient == None,  # noqa: E711 - elementwise comparison on an object array
        np.char.add("instance:", sop.astype(str)).astype(object),
        patient,
    )
    _, patient_code = np.unique(patient.astype(str), return_inverse=True)
    _, sop_code = np.unique(sop.astype(str), return_inverse=True)
    patient_code, sop_code = patient_code.ravel(), sop_code.ravel()
    masks: list[tuple[str, np.ndarray]] = [("all", np.ones(len(score), dtype=bool))]
    for column in settings.subgroups:
        values = np.asarray(columns[column], dtype=object)
        known = values != None  # noqa: E711
        for value in sorted({str(v) for v in values[known]}):
            masks.append((f"{column}={value}", known & (values.astype(str) == value)))
    out: dict[str, list[dict[str, Any]]] = {
        "metrics": [],
        "calibration": [],
        "roc": [],
        "thresholds": [],
    }
    for level in LEVELS:
        threshold = None
        for subgroup, mask in masks:
            s, y, c = score[mask], label[mask], patient_code[mask]
            if level != "frame":
                key = sop_code[mask] if level == "instance" else c
                s, y, c = group_units(s, y, c, key, settings.aggregation)
            if threshold is None:
                threshold, why = choose_threshold(
                    s,
                    y,
                    settings.threshold_rule,
                    settings.target_sensitivity
                    if settings.threshold_rule == "sensitivity"
                    else settings.threshold,
                )
                out["thresholds"].append({"level": level, "threshold": threshold, "note": why})
            whole = subgroup == "all"
            result = evaluate_units(
                s,
                y,
                c,
                threshold,
                settings.spec,
                f"{level}|{subgroup}",
                roc=whole,
                calibration=whole,
            )
            out["metrics"] += [{"level": level, "subgroup": subgroup, **r} for r in result.metrics]
            out["calibration"] += [{"level": level, **r} for r in result.calibration]
            out["roc"] += [{"level": level, "point": i, **r} for i, r in enumerate(result.roc)]
    return out
