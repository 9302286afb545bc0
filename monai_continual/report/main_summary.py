"""The main job's summary: every strategy's row, the papers' comparisons and goals, the spread over site orders and
the training budget, from the finished runs and their states."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np

from monai_continual.metrics import backward_transfer
from monai_continual.report.calibration_summary import calibration_summary
from monai_continual.report.comparisons import run_comparisons
from monai_continual.report.finished_run import FinishedRun, RunVariant
from monai_continual.report.goals import check_goals, uncertainty_goals
from monai_continual.report.order_spread import order_spread
from monai_continual.report.paper_claims import SINGLE_SITE_MEAN
from monai_continual.report.summary_row import summary_row, weighted_dice
from monai_continual.report.training_budget import training_budget
from monai_continual.strategies import Action
from monai_continual.strategies.names import FEDPROX, ORDER_DEPENDENT, SUMMARY_ROWS, Strategy

__all__ = ["main_summary", "single_site_models"]

_SIZE_ORDERS = (RunVariant.INCREASING, RunVariant.DECREASING)


def single_site_models(run: FinishedRun) -> dict[str, dict[str, list[float]]]:
    """Training site -> per-volume scores on every site of that site's own model, from a ``single_site`` run's
    training stages (in the order the run trained them).

    Example::

        >>> single_site_models(run)["site_a"]["heldout_e"]
    """
    return {r.sites[0]: r.scores or {} for r in run.state.stage_records() if r.action == Action.TRAIN}


def _row_scores(run: FinishedRun) -> dict[str, dict[str, list[float]]]:
    """Summary row -> per-volume scores: a strategy with one row shows its final model, one with several (DWC) the
    run's named results that exist."""
    names = run.strategy.summary_rows
    if len(names) == 1:
        return {names[0]: run.result.scores}
    return {name: run.result.extra[name] for name in names if name in run.result.extra}


def _row_calibration(run: FinishedRun) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Summary row -> site -> per-volume calibration records, for the rows of :func:`_row_scores` that have them."""
    return {name: run.result.calibration[name] for name in run.strategy.summary_rows
            if run.result.calibration.get(name)}


def _describe(run: FinishedRun, test_sizes: Mapping[str, int]) -> dict[str, Any]:
    return {"order": list(run.order), "weighted": weighted_dice(run.result.scores, test_sizes),
            "bwt": float(backward_transfer(run.result.matrix)), "scores": run.result.scores}


def main_summary(
    runs: Sequence[FinishedRun],
    *,
    training_sites: Sequence[str],
    held_out_sites: Sequence[str],
    test_sizes: Mapping[str, int],
    seconds: float,
) -> dict[str, Any]:
    """The content of the main job's ``summary.json``.

    Args:
        runs: every finished run, in the order they ran (one ``main`` run per strategy).
        training_sites: the sites the strategies train on.
        held_out_sites: the sites only evaluated.
        test_sizes: site -> test-set size, every site.
        seconds: the wall time of the runs.

    Returns:
        ``training_sites``, ``held_out_sites``, ``test_sizes``, ``strategies`` (one row per summary row, see
        :func:`summary_row`), ``comparisons``, ``per_volume_dice``, ``seconds``, ``orders``, ``vcl_size_orders``,
        ``goals``, ``budget`` and ``calibration`` (:func:`~monai_continual.report.calibration_summary`; the
        uncertainty goals of :func:`~monai_continual.report.goals.uncertainty_goals` follow the papers' goals).

    Example::

        >>> summary = main_summary(runs, training_sites=["site_a", "site_b"], held_out_sites=["heldout_e"],
        ...                        test_sizes=sizes, seconds=120.0)
    """
    training, held_out = list(training_sites), list(held_out_sites)
    training_sizes = {s: test_sizes[s] for s in training}
    main = {run.strategy: run for run in runs if run.variant == RunVariant.MAIN}
    single = main.get(Strategy.SINGLE_SITE)
    members = single_site_models(single) if single is not None else {}
    found = {name: (scores, run) for run in main.values() for name, scores in _row_scores(run).items()}
    found.update({FEDPROX: (run.result.scores, run) for run in runs if run.variant == RunVariant.FEDPROX})
    strategies: dict[str, Any] = {}
    all_scores: dict[str, dict[str, list[float]]] = {}
    for name in (n for n in SUMMARY_ROWS if n in found):
        scores, run = found[name]
        held = None
        if run.strategy == Strategy.SINGLE_SITE:  # held-out: the mean over the single-site models
            held = {s: float(np.mean([np.mean(m[s]) for m in members.values()])) for s in held_out}
        strategies[name] = summary_row(scores, run.result.matrix, training_sites=training, held_out_sites=held_out,
                                       test_sizes=test_sizes, sequential=run.strategy.sequential,
                                       bayesian=run.strategy.bayesian, held_out=held)
        all_scores[name] = scores
    summary: dict[str, Any] = {
        "training_sites": training,
        "held_out_sites": held_out,
        "test_sizes": dict(test_sizes),
        "strategies": strategies,
        "comparisons": run_comparisons(all_scores, training, held_out),
        "per_volume_dice": all_scores,
        "seconds": seconds,
    }
    spreads = {}
    for strategy in ORDER_DEPENDENT:
        described = [_describe(r, training_sizes) for r in runs
                     if r.strategy == strategy and r.variant in (RunVariant.MAIN, RunVariant.ORDER)]
        if len(described) > 1:
            spreads[str(strategy)] = order_spread(described)
    sized = {str(r.variant): _describe(r, training_sizes) for v in _SIZE_ORDERS for r in runs
             if r.strategy == Strategy.VCL and r.variant == v}
    summary["orders"] = spreads
    summary["vcl_size_orders"] = {k: {kk: vv for kk, vv in v.items() if kk != "scores"} for k, v in sized.items()}
    goal_scores = dict(all_scores)
    if single is not None:
        goal_scores[SINGLE_SITE_MEAN] = {
            s: list(np.mean([m[s] for m in members.values()], axis=0)) for s in training
        }
    records = {name: r for run in main.values() for name, r in _row_calibration(run).items() if name in strategies}
    records.update({FEDPROX: cal for run in runs if run.variant == RunVariant.FEDPROX
                    if (cal := run.result.calibration.get(str(run.strategy)))})
    bayesian = {name: row["bayesian"] for name, row in strategies.items()}
    summary["goals"] = check_goals(goal_scores, training, spreads, sized) + uncertainty_goals(
        {name: records[name] for name in strategies if name in records and bayesian[name]}, training, held_out)
    summary["budget"] = {
        run.key: training_budget([asdict(r) for r in run.state.stage_records()], len(training))
        for run in runs if run.variant in (RunVariant.MAIN, RunVariant.FEDPROX)
    }
    summary["calibration"] = calibration_summary({name: records[name] for name in strategies if name in records},
                                                 training, held_out, bayesian)
    return summary
