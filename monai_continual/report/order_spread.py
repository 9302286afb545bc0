"""The spread of a strategy's results over the site orders it ran in."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["order_spread"]


def _std(values: Sequence[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def order_spread(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean and standard deviation (ddof 1) of the weighted Dice and the BWT over runs in different site orders.

    Args:
        runs: per order ``{"order": [...], "weighted": float, "bwt": float}``.

    Example::

        >>> order_spread([{"order": ["a", "b"], "weighted": 0.7, "bwt": -0.1}, {"order": ["b", "a"], ...}])
    """
    weighted = [float(r["weighted"]) for r in runs]
    bwt = [float(r["bwt"]) for r in runs]
    return {"orders": [list(r["order"]) for r in runs], "weighted": weighted, "bwt": bwt,
            "weighted_mean": float(np.mean(weighted)), "weighted_std": _std(weighted),
            "bwt_mean": float(np.mean(bwt)), "bwt_std": _std(bwt)}
