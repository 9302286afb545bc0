"""Whether a training loss has settled: the convergence criterion the main job reports per stage."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["loss_plateaued"]


def loss_plateaued(losses: Sequence[float], window: int = 3, tolerance: float = 0.05) -> bool | None:
    """Whether a training loss oscillates around a stable value (McClure et al.'s stopping rule).

    True when the mean loss of the last ``window`` epochs is within ``tolerance`` (relative) of the mean of the
    ``window`` epochs before them, or below it by less than that: the loss has stopped falling.

    Args:
        losses: mean training loss per epoch, in order.
        window: epochs per window.
        tolerance: the largest relative fall between the two windows that still counts as a plateau.

    Returns:
        ``None`` when there are fewer than ``2 * window`` epochs (nothing can be said), else the verdict.

    Example::

        >>> loss_plateaued([1.0, 0.6, 0.5, 0.42, 0.41, 0.42, 0.41, 0.41, 0.42])  # True
    """
    if window < 1 or tolerance < 0:
        raise ValueError(f"loss_plateaued: window must be >= 1 and tolerance >= 0, got {window} and {tolerance}.")
    values = np.asarray(list(losses), dtype=float)
    if values.size < 2 * window or not np.isfinite(values).all():
        return None
    before, last = values[-2 * window:-window].mean(), values[-window:].mean()
    return bool(before - last <= tolerance * abs(before))
