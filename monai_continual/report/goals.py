"""The papers' directions as goals with paired tests: what the main job checks beyond the table."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

from monai_continual.metrics.paired_tests import MeanInterval, mean_interval, paired_tests
from monai_continual.report.comparisons import site_volumes
from monai_continual.report.finished_run import RunVariant
from monai_continual.report.paper_claims import PAPER_CLAIMS, Check, Claim

__all__ = ["check_goals"]


def _row(claim: Claim, x: np.ndarray, y: np.ndarray | None, holds: bool, p_value: float,
         test: str) -> dict[str, Any]:
    """One goal: A's values ``x`` against B's paired values ``y`` (``None``: against zero); ``difference`` is
    mean(A - B), the margin not added, with its 95% confidence interval and effect size d_z = mean / sd."""
    a, b = claim.labels
    interval: MeanInterval = mean_interval(x - y if y is not None else x)
    return {"goal": claim.text, "paper": claim.paper, "a": a, "b": b, "mean_a": float(x.mean()),
            "mean_b": float(y.mean()) if y is not None else 0.0, "margin": claim.margin, "holds": bool(holds),
            "p_value": float(p_value), "test": test, "n": int(x.size), "difference": interval.mean,
            "ci_low": interval.low, "ci_high": interval.high, "effect_size": interval.effect_size}


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
