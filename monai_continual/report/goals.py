"""The papers' directions as goals with paired tests: what the main job checks beyond the table."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

from monai_continual.metrics.paired_tests import MeanInterval, effect_size, mean_interval, paired_tests
from monai_continual.report.comparisons import site_volumes
from monai_continual.report.finished_run import RunVariant
from monai_continual.report.paper_claims import PAPER_CLAIMS, Check, Claim

__all__ = ["check_goals", "uncertainty_goals"]


def _row(claim: Claim, x: np.ndarray, y: np.ndarray | None, holds: bool, p_value: float,
         test: str) -> dict[str, Any]:
    """One goal: A's values ``x`` against B's paired values ``y`` (``None``: against zero); ``difference`` is
    mean(A - B), the margin not added, with its 95% confidence interval and effect size d_z = mean / sd."""
    a, b = claim.labels
    return {"goal": claim.text, "paper": claim.paper, "a": a, "b": b, "mean_a": float(x.mean()),
            "mean_b": float(y.mean()) if y is not None else 0.0, "margin": claim.margin, "holds": bool(holds),
            "p_value": float(p_value), "test": test,
            **_effect(mean_interval(x - y if y is not None else x), x.size)}


def _effect(interval: MeanInterval, n: int) -> dict[str, Any]:
    """A goal's ``n``, ``difference`` (mean A - B), its 95% interval ``ci_low``/``ci_high`` and ``effect_size``."""
    return {"n": int(n), "difference": interval.mean, "ci_low": interval.low, "ci_high": interval.high,
            "effect_size": interval.effect_size}


def _welch_interval(a: np.ndarray, b: np.ndarray) -> MeanInterval:
    """mean(a) - mean(b) with Welch's 95% interval, and Cohen's d over the two groups' mean variance."""
    ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    spread = float(np.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2))
    difference = float(a.mean() - b.mean())
    return MeanInterval(difference, float(ci.low), float(ci.high), effect_size(difference, spread))


def _volumes_goal(claim: Claim, scores: Mapping[str, Mapping[str, Sequence[float]]],
                  sites: Sequence[str]) -> dict[str, Any] | None:
    if claim.a not in scores or claim.b not in scores:
        return None
    x, y = np.asarray(site_volumes(scores[claim.a], sites)), np.asarray(site_volumes(scores[claim.b], sites))
    if x.size != y.size or x.size < 2:
        return None
    test = paired_tests(x + claim.margin, y, alternative="greater")
    return _row(claim, x, y, x.mean() + claim.margin > y.mean(), test.t_pvalue,
                "paired t-test over test volumes, one-sided")


def _size_orders_goal(claim: Claim, size_orders: Mapping[str, Mapping[str, Any]],
                      sites: Sequence[str]) -> dict[str, Any] | None:
    if not {RunVariant.INCREASING, RunVariant.DECREASING} <= set(size_orders):
        return None
    x = np.asarray(site_volumes(size_orders[RunVariant.INCREASING]["scores"], sites))
    y = np.asarray(site_volumes(size_orders[RunVariant.DECREASING]["scores"], sites))
    test = paired_tests(x, y)
    return _row(claim, x, y, test.t_pvalue < 0.05, test.t_pvalue, "paired t-test over test volumes, two-sided")


def _orders_bwt_goal(claim: Claim, orders: Mapping[str, Mapping[str, Any]]) -> dict[str, Any] | None:
    if claim.a not in orders or claim.b not in orders:
        return None
    x, y = np.asarray(orders[claim.a]["bwt"]), np.asarray(orders[claim.b]["bwt"])
    if not x.size == y.size >= 2:
        return None
    p = paired_tests(x, y, alternative="greater").t_pvalue
    return _row(claim, x, y, x.mean() > y.mean(), p, f"paired t-test over {x.size} site orders, one-sided")


def _bwt_below_zero_goal(claim: Claim, orders: Mapping[str, Mapping[str, Any]]) -> dict[str, Any] | None:
    if claim.a not in orders or len(orders[claim.a]["bwt"]) < 2:
        return None
    x = np.asarray(orders[claim.a]["bwt"])
    # a constant BWT has no spread for the t-test: it is below zero or it is not
    p = float(stats.ttest_1samp(x, 0.0, alternative="less").pvalue) if np.ptp(x) > 0 else (0.0 if x[0] < 0 else 1.0)
    return _row(claim, x, None, x.mean() < 0, p, f"one-sample t-test over {x.size} site orders, one-sided")


def check_goals(
    scores: Mapping[str, Mapping[str, Sequence[float]]],
    training_sites: Sequence[str],
    orders: Mapping[str, Mapping[str, Any]] | None = None,
    size_orders: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Every goal of :data:`~monai_continual.report.paper_claims.PAPER_CLAIMS` whose runs were made, with the
    direction, the stated test's p-value and the means.

    Args:
        scores: strategy -> site -> per-volume Dice (``single_site_mean``: the mean of the single-site models).
        training_sites: whose test volumes are compared (the same volumes on both sides).
        orders: :func:`~monai_continual.report.order_spread` output per strategy, for the BWT goals.
        size_orders: ``{"increasing": {...}, "decreasing": {...}}`` VCL runs with ``scores``, for the order goal.

    Example::

        >>> rows = check_goals({"vcl": vcl, "single_site_mean": single}, ["site_a", "site_b"])
    """
    orders, size_orders = orders or {}, size_orders or {}
    rows = []
    for claim in PAPER_CLAIMS:
        if claim.check == Check.VOLUMES:
            row = _volumes_goal(claim, scores, training_sites)
        elif claim.check == Check.SIZE_ORDERS:
            row = _size_orders_goal(claim, size_orders, training_sites)
        elif claim.check == Check.ORDERS_BWT:
            row = _orders_bwt_goal(claim, orders)
        elif claim.check == Check.BWT_BELOW_ZERO:
            row = _bwt_below_zero_goal(claim, orders)
        else:
            continue
        if row is not None:
            rows.append(row)
    return rows


#: where the uncertainty goals come from: the mutual information of Monte Carlo samples as epistemic uncertainty
_UNCERTAINTY_SOURCE = "MC uncertainty (Gal & Ghahramani)"


def _record_values(records: Mapping[str, Sequence[Mapping[str, Any]]], sites: Sequence[str], key: str) -> np.ndarray:
    """One value per volume of ``sites`` where ``key`` is defined (an AUROC is not, on a volume without errors)."""
    values = [r.get(key) for s in sites for r in records.get(s, [])]
    return np.asarray([v for v in values if v is not None and v == v], dtype=float)


def uncertainty_goals(
    calibration: Mapping[str, Mapping[str, Sequence[Mapping[str, Any]]]],
    training_sites: Sequence[str],
    held_out_sites: Sequence[str],
) -> list[dict[str, Any]]:
    """Two goals per Bayesian summary row (one whose records have the mutual information), rows shaped like
    :func:`check_goals`'s:

    - its uncertainty is higher at the held-out sites: mean MI per held-out volume against mean MI per training
      volume, Welch's t-test, one-sided (different volumes: nothing to pair);
    - its MI detects the held-out sites' errors better than chance: the per-volume AUROC against 0.5, one-sided,
      with :func:`~monai_continual.metrics.paired_tests` against the constant 0.5 (a one-sample t-test).

    Args:
        calibration: summary row -> site -> per-volume calibration records
            (:func:`~monai_continual.metrics.volume_calibration`).
        training_sites: the sites whose volumes are "training".
        held_out_sites: the sites whose volumes are "held out".

    Example::

        >>> rows = uncertainty_goals({"vcl": records}, ["site_a", "site_b"], ["heldout_e"])
    """
    rows = []
    for name, records in calibration.items():
        held, train = (_record_values(records, sites, "mean_mi") for sites in (held_out_sites, training_sites))
        if held.size >= 2 and train.size >= 2:
            p = float(stats.ttest_ind(held, train, equal_var=False, alternative="greater").pvalue)
            rows.append({"goal": "uncertainty (mean MI) higher at the held-out sites", "paper": _UNCERTAINTY_SOURCE,
                         "a": f"{name} (held out)", "b": f"{name} (training)", "mean_a": float(held.mean()),
                         "mean_b": float(train.mean()), "margin": 0.0, "holds": bool(held.mean() > train.mean()),
                         "p_value": p if p == p else 1.0, "test": "Welch's t-test over volumes, one-sided",
                         **_effect(_welch_interval(held, train), held.size + train.size)})
        auroc = _record_values(records, held_out_sites, "auroc_mi")
        if auroc.size >= 2:
            test = paired_tests(auroc, np.full_like(auroc, 0.5), alternative="greater")
            rows.append({"goal": "MI detects the held-out sites' errors better than chance (AUROC)",
                         "paper": _UNCERTAINTY_SOURCE, "a": name, "b": "chance", "mean_a": float(auroc.mean()),
                         "mean_b": 0.5, "margin": 0.0, "holds": bool(auroc.mean() > 0.5), "p_value": test.t_pvalue,
                         "test": "one-sample t-test over held-out volumes, one-sided",
                         **_effect(test.interval, auroc.size)})
    return rows
