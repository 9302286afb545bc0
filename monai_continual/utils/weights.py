"""Validation and normalization of averaging weights (FedAvg, test-set-size-weighted scores)."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["normalized_weights"]


def normalized_weights(weights: Sequence[float] | None, count: int, what: str = "weights") -> list[float]:
    """Return ``weights / sum(weights)`` after checking them; ``None`` means equal weights.

    Args:
        weights: non-negative finite numbers with a positive sum, one per item, or ``None``.
        count: the number of items being averaged.
        what: how to name the weights in error messages.

    Example::

        >>> normalized_weights([30, 10], 2)  # [0.75, 0.25]
    """
    if count < 1:
        raise ValueError(f"nothing to average: got 0 items for {what}.")
    if weights is None:
        return [1.0 / count] * count
    values = [float(w) for w in weights]
    if len(values) != count:
        raise ValueError(f"{what}: got {len(values)} weights for {count} items.")
    bad = [i for i, w in enumerate(values) if not math.isfinite(w) or w < 0]
    if bad:
        raise ValueError(f"{what}: weights must be finite and >= 0; items {bad} are not ({[values[i] for i in bad]}).")
    total = sum(values)
    if not math.isfinite(total):  # finite weights whose sum overflows (1e308 + 1e308): scale them first
        largest = max(values)
        values = [w / largest for w in values]
        total = sum(values)
    if total <= 0:
        raise ValueError(f"{what}: weights sum to {total}; at least one must be positive.")
    return [w / total for w in values]
