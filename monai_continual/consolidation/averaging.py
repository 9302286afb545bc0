"""Weighted averaging of plain state dicts (FedAvg), the baseline for non-Bayesian models."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from monai_continual.utils.weights import normalized_weights

__all__ = ["weighted_average", "checked_weights"]


def weighted_average(
    states: Sequence[Mapping[str, torch.Tensor]],
    weights: Sequence[float] | None = None,
    names: Sequence[str] | None = None,
) -> dict[str, torch.Tensor]:
    """``sum_s w_s * state_s / sum_s w_s`` per entry (FedAvg with ``w_s`` = number of training examples at site s).

    Floating-point entries are averaged in float64 and cast back; integer entries (e.g. ``num_batches_tracked``)
    are taken from the first state. Every state must have the same keys and shapes.

    Args:
        states: ``state_dict()`` of each site's model.
        weights: one positive weight per state (a site's training-set size); ``None`` for equal weights.
        names: the sites the states come from, for error messages.

    Raises:
        ValueError: naming the site, for a non-finite entry, a non-positive or non-finite weight, or a state whose
            keys or shapes differ from the first's.

    Example::

        >>> merged = weighted_average([net_a.state_dict(), net_b.state_dict()], weights=[120, 40])
        >>> net.load_state_dict(merged)
    """
    w = checked_weights(states, weights, names, "weighted_average")
    reference = states[0]
    out = {}
    for key, value in reference.items():
        if not value.is_floating_point():
            out[key] = value.clone()
            continue
        acc = torch.zeros(value.shape, dtype=torch.float64, device=value.device)
        for weight, state in zip(w, states):
            acc += weight * state[key].to(torch.float64)
        out[key] = acc.to(value.dtype)
    return out


def checked_weights(
    states: Sequence[Mapping[str, torch.Tensor]],
    weights: Sequence[float] | None,
    names: Sequence[str] | None = None,
    what: str = "weighted_average",
) -> list[float]:
    """Check site states for averaging (same keys and shapes as the first, finite) and their weights (finite,
    > 0); return the weights normalized (``None``: equal).

    Raises:
        ValueError: naming ``what`` and the site at fault.

    Example::

        >>> checked_weights([net_a.state_dict(), net_b.state_dict()], [120, 40], ["a", "b"])  # [0.75, 0.25]
    """
    if not states:
        raise ValueError(f"{what}: no states given.")
    labels = [
        f"state {i}" + (f" (site {names[i]!r})" if names is not None and i < len(names) else "")
        for i in range(len(states))
    ]
    if weights is not None:
        bad = [
            f"{labels[i]}: {float(w)}" for i, w in enumerate(weights) if not math.isfinite(float(w)) or float(w) <= 0
        ]
        if bad:
            raise ValueError(f"{what}: weights must be finite and > 0; got {bad}.")
    w = normalized_weights(weights, len(states), f"{what} weights")
    reference = states[0]
    for index, state in enumerate(states):
        missing, extra = sorted(set(reference) - set(state)), sorted(set(state) - set(reference))
        if missing or extra:
            raise ValueError(f"{what}: {labels[index]} has missing keys {missing} and extra keys {extra}.")
        for key, value in reference.items():
            if state[key].shape != value.shape:
                raise ValueError(
                    f"{what}: {labels[index]}, entry {key!r} has shape {tuple(state[key].shape)}, "
                    f"state 0 has {tuple(value.shape)}."
                )
            if state[key].is_floating_point() and not bool(torch.isfinite(state[key]).all()):
                raise ValueError(f"{what}: {labels[index]}, entry {key!r} has non-finite values.")
    return w
