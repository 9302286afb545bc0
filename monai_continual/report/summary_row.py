"""One strategy's row of a summary: mean Dice per site, the test-size-weighted average, held-out sites and BWT."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from monai_continual.metrics import ContinualMatrix, backward_transfer, weighted_average

__all__ = ["summary_row", "weighted_dice"]


def _site_means(scores: Mapping[str, Sequence[float]], sites: Sequence[str]) -> dict[str, float]:
    return {s: float(np.mean(scores[s])) for s in sites if scores.get(s)}


def weighted_dice(scores: Mapping[str, Sequence[float]], test_sizes: Mapping[str, int]) -> float:
    """The test-size-weighted mean Dice over the sites of ``test_sizes`` that have scores (NaN: none has).

    Example::

        >>> weighted_dice({"a": [0.8, 0.9], "b": [0.6]}, {"a": 2, "b": 1})  # (0.85 * 2 + 0.6) / 3
    """
    means = _site_means(scores, list(test_sizes))
    return weighted_average(means, {s: test_sizes[s] for s in means}) if means else float("nan")


def summary_row(
    scores: Mapping[str, Sequence[float]],
    matrix: ContinualMatrix,
    *,
    training_sites: Sequence[str],
    held_out_sites: Sequence[str],
    test_sizes: Mapping[str, int],
    sequential: bool,
    bayesian: bool,
    held_out: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """The row of ``summary["strategies"]`` for one strategy, shared by the main job and the federated runs.

    A site without scores (a dead federated client) is left out of the row; the weighted average is NaN when no
    training site has scores; a BWT that is not defined (fewer than two sites visited) is ``None``.

    Args:
        scores: site -> per-volume Dice of the row's model.
        matrix: the run's R matrix (for BWT).
        training_sites: the sites of the ``sites`` cells and of the weighted average.
        held_out_sites: the sites of the ``held_out`` cells.
        test_sizes: site -> test-set size, the weights of the average.
        sequential: whether backward transfer applies (:attr:`~monai_continual.strategies.names.Strategy.sequential`).
        bayesian: whether the row's model is Bayesian.
        held_out: the held-out cells when they are not the mean of ``scores`` (the single-site models: their mean).

    Example::

        >>> summary_row(result.scores, result.matrix, training_sites=["a", "b"], held_out_sites=["c"],
        ...             test_sizes={"a": 5, "b": 3, "c": 4}, sequential=True, bayesian=False)
    """
    means = _site_means(scores, training_sites)
    bwt = backward_transfer(matrix) if sequential else None
    return {
        "sites": means,
        "weighted_average": weighted_dice(scores, {s: test_sizes[s] for s in training_sites}),
        "held_out": dict(_site_means(scores, held_out_sites) if held_out is None else held_out),
        "bwt": None if bwt is None or bwt != bwt else float(bwt),
        "bayesian": bool(bayesian),
    }
