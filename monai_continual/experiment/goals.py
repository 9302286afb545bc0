"""What the main job checks beyond the table: the papers' directions as goals with paired tests, the spread over
site orders, and each strategy's training budget with whether its stages converged."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

from monai_continual.metrics import loss_plateaued, paired_tests

__all__ = ["GOALS", "check_goals", "order_spread", "training_budget"]

#: (goal, paper, A, B, margin): A's per-volume Dice + margin is expected to exceed B's (paired, one-sided).
GOALS: tuple[tuple[str, str, str, str, float], ...] = (
    ("DWC (fine-tuned) beats the ensemble", "McClure et al. (Table 2)", "dwc_finetuned", "ensemble", 0.0),
    ("DWC (fine-tuned) beats the mean single-site model", "McClure et al. (Table 2)", "dwc_finetuned",
     "single_site_mean", 0.0),
    ("DWC (fine-tuned) within 4 Dice points of centrally hosted", "McClure et al. (2.8 points)", "dwc_finetuned",
     "centrally_hosted", 0.04),
    ("fine-tuning the consolidated model helps", "McClure et al. (Table 2)", "dwc_finetuned", "dwc", 0.0),
    ("VCL beats the mean single-site model", "McClure et al. (Table 2)", "vcl", "single_site_mean", 0.0),
    ("CWT within 2 Dice points of centrally hosted", "Chang et al. (Table 2)", "cyclic_weight_transfer",
     "centrally_hosted", 0.02),
)


def _volumes(scores: Mapping[str, Sequence[float]], sites: Sequence[str]) -> list[float]:
    return [v for s in sites for v in scores.get(s, [])]


def _row(goal: str, paper: str, a: str, b: str, mean_a: float, mean_b: float, margin: float, holds: bool,
         p_value: float, test: str) -> dict[str, Any]:
    return {"goal": goal, "paper": paper, "a": a, "b": b, "mean_a": mean_a, "mean_b": mean_b, "margin": margin,
            "holds": bool(holds), "p_value": float(p_value), "test": test}


def check_goals(
    scores: Mapping[str, Mapping[str, Sequence[float]]],
    training_sites: Sequence[str],
    orders: Mapping[str, Mapping[str, Any]] | None = None,
    size_orders: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Every goal whose strategies were run, with the direction, its one-sided paired p-value and the means.

    Args:
        scores: strategy -> site -> per-volume Dice (``single_site_mean``: the mean of the single-site models).
        training_sites: whose test volumes are compared (the same volumes on both sides).
        orders: :func:`order_spread` output, for the BWT goals (replay above fine-tuning, fine-tuning below 0).
        size_orders: ``{"increasing": {...}, "decreasing": {...}}`` VCL runs with ``scores``, for the order goal.

    Example::

        >>> rows = check_goals({"vcl": vcl, "single_site_mean": single}, ["site_a", "site_b"])
    """
    rows = []
    for goal, paper, a, b, margin in GOALS:
        if a not in scores or b not in scores:
            continue
        x, y = np.asarray(_volumes(scores[a], training_sites)), np.asarray(_volumes(scores[b], training_sites))
        if x.size != y.size or x.size < 2:
            continue
        test = paired_tests(x + margin, y, alternative="greater")
        rows.append(_row(goal, paper, a, b, float(x.mean()), float(y.mean()), margin, x.mean() + margin > y.mean(),
                         test.t_pvalue, "paired t-test over test volumes, one-sided"))
    if size_orders and {"increasing", "decreasing"} <= set(size_orders):
        inc, dec = size_orders["increasing"], size_orders["decreasing"]
        x, y = np.asarray(_volumes(inc["scores"], training_sites)), np.asarray(_volumes(dec["scores"], training_sites))
        test = paired_tests(x, y)
        rows.append(_row("VCL's increasing and decreasing site-size orders differ", "McClure et al. (Table 2)",
                         "vcl (increasing)", "vcl (decreasing)", float(x.mean()), float(y.mean()), 0.0,
                         test.t_pvalue < 0.05, test.t_pvalue, "paired t-test over test volumes, two-sided"))
    orders = orders or {}
    if "replay" in orders and "fine_tuning" in orders:
        x, y = np.asarray(orders["replay"]["bwt"]), np.asarray(orders["fine_tuning"]["bwt"])
        if x.size == y.size >= 2:
            p = paired_tests(x, y, alternative="greater").t_pvalue
            rows.append(_row("replay's BWT above fine-tuning's", "Karthik et al.", "replay", "fine_tuning",
                             float(x.mean()), float(y.mean()), 0.0, x.mean() > y.mean(), p,
                             f"paired t-test over {x.size} site orders, one-sided"))
    if "fine_tuning" in orders and len(orders["fine_tuning"]["bwt"]) >= 2:
        x = np.asarray(orders["fine_tuning"]["bwt"])
        p = float(stats.ttest_1samp(x, 0.0, alternative="less").pvalue) if np.ptp(x) > 0 else (0.0 if x[0] < 0 else 1.0)
        rows.append(_row("fine-tuning forgets (BWT < 0)", "Karthik et al.", "fine_tuning BWT", "0", float(x.mean()),
                         0.0, 0.0, x.mean() < 0, p, f"one-sample t-test over {x.size} site orders, one-sided"))
    return rows


def order_spread(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean and standard deviation (ddof 1) of the weighted Dice and the BWT over runs in different site orders.

    Args:
        runs: per order ``{"order": [...], "weighted": float, "bwt": float}``.

    Example::

        >>> order_spread([{"order": ["a", "b"], "weighted": 0.7, "bwt": -0.1}, {"order": ["b", "a"], ...}])
    """
    weighted = [float(r["weighted"]) for r in runs]
    bwt = [float(r["bwt"]) for r in runs]
    spread = lambda v: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0  # noqa: E731
    return {"orders": [list(r["order"]) for r in runs], "weighted": weighted, "bwt": bwt,
            "weighted_mean": float(np.mean(weighted)), "weighted_std": spread(weighted),
            "bwt_mean": float(np.mean(bwt)), "bwt_std": spread(bwt)}


def training_budget(stages: Sequence[Mapping[str, Any]], num_sites: int, window: int = 3,
                    tolerance: float = 0.05) -> dict[str, Any]:
    """Epochs a run spent per training site and whether its training losses plateaued.

    A stage with at least ``2 * window`` epochs is judged alone (:func:`~monai_continual.metrics.loss_plateaued`);
    shorter stages (cyclic visits, federated rounds) are judged per site over the concatenation of that site's
    consecutive stages of the same kind.

    Args:
        stages: the run's stage records (``sites``, ``details`` with ``loss`` per epoch and, Bayesian, ``elbo``).
        num_sites: training sites of the run.

    Example::

        >>> training_budget(state["stages"], 4)["epochs_per_site"]
    """
    site_epochs, verdicts, groups = 0, [], {}
    for record in stages:
        losses = (record.get("details") or {}).get("loss")
        if not losses:
            continue
        site_epochs += len(losses) * len(record["sites"])
        if len(losses) >= 2 * window:
            verdicts.append(loss_plateaued(losses, window, tolerance))
        else:
            groups.setdefault(("+".join(record["sites"]), "elbo" in record["details"]), []).extend(losses)
    verdicts += [loss_plateaued(v, window, tolerance) for v in groups.values()]
    judged = [v for v in verdicts if v is not None]
    return {"site_epochs": site_epochs, "epochs_per_site": site_epochs / max(num_sites, 1),
            "plateaued": sum(judged), "judged": len(judged), "unjudged": len(verdicts) - len(judged)}
