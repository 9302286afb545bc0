"""Averaging that no single site can take over: update-norm bounding and coordinate-wise robust aggregation.

FedAvg trusts every site's model and its reported example count. Across hospitals one broken or hostile site is
enough to replace the average (weights x100, random weights, a huge count). The standard defences are bounding each
site's update to k times the round's median update norm, and coordinate-wise trimmed means or medians instead of
the mean; both need the round's start model, from which every site trained.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from monai.utils import StrEnum, look_up_option

from monai_continual.consolidation.averaging import checked_weights
from monai_continual.utils.weights import normalized_weights

__all__ = ["Aggregation", "RobustReport", "robust_average", "update_norm"]


class Aggregation(StrEnum):
    """How site models are combined coordinate by coordinate."""

    MEAN = "mean"
    TRIMMED_MEAN = "trimmed_mean"
    MEDIAN = "median"


@dataclass
class RobustReport:
    """What :func:`robust_average` did: every site's update norm, the bound, and the sites it clipped.

    Attributes:
        norms: site -> L2 norm of its update (all floating entries together).
        bound: the norm bound of the round (``None`` when bounding is off).
        clipped: site -> factor its update was scaled by (only the clipped sites).
        method: the aggregation used.
        trimmed: how many values were dropped at each end of every coordinate (trimmed mean).
    """

    norms: dict[str, float] = field(default_factory=dict)
    bound: float | None = None
    clipped: dict[str, float] = field(default_factory=dict)
    method: str = Aggregation.MEAN.value
    trimmed: int = 0
    cosines: dict[str, float] = field(default_factory=dict)
    left_out: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"norms": self.norms, "bound": self.bound, "clipped": self.clipped, "method": self.method,
                "trimmed": self.trimmed, "cosines": self.cosines, "left_out": self.left_out}


def update_norm(state: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor]) -> float:
    """L2 norm of ``state - reference`` over every floating-point entry, accumulated in float64.

    Example::

        >>> update_norm(site_model.state_dict(), global_model.state_dict())
    """
    total = 0.0
    for key, value in reference.items():
        if value.is_floating_point():
            total += float((state[key].to(torch.float64) - value.to(torch.float64)).pow(2).sum())
    return math.sqrt(total)


def robust_average(
    states: Sequence[Mapping[str, torch.Tensor]],
    reference: Mapping[str, torch.Tensor],
    weights: Sequence[float] | None = None,
    names: Sequence[str] | None = None,
    *,
    norm_bound: float | None = None,
    method: str = Aggregation.MEAN,
    trim_fraction: float = 0.2,
    min_cosine: float | None = None,
) -> tuple[dict[str, torch.Tensor], RobustReport]:
    """Average site models after bounding their updates, by the (weighted) mean, trimmed mean or median.

    Each site's update ``u_s = state_s - reference`` is scaled by ``min(1, norm_bound * median_s ||u_s|| / ||u_s||)``
    when ``norm_bound`` is set (with three or more sites, one site cannot move the median far). The bounded models
    ``reference + u_s`` are then combined per coordinate: ``"mean"`` weighted by ``weights`` (FedAvg),
    ``"trimmed_mean"`` drops the ``floor(trim_fraction * S)`` smallest and largest values and averages the rest
    (unweighted), ``"median"`` takes the median (unweighted). Integer entries (``num_batches_tracked``) take the
    lower median across sites, not any one site's value. Inputs are checked by :func:`checked_weights`.

    Args:
        states: each site's ``state_dict()``.
        reference: the round's start model, from which every site trained.
        weights: positive weights for ``"mean"`` (``None``: equal).
        names: the sites, for errors and the report.
        norm_bound: k of the bound ``k x median norm`` (``None``: no bounding).
        method: ``"mean"``, ``"trimmed_mean"`` or ``"median"``.
        trim_fraction: the fraction trimmed at each end by ``"trimmed_mean"``, in [0, 0.5).
        min_cosine: leave out a site whose update's cosine similarity with the round's coordinate-wise median update
            is below this (an update pointing elsewhere than the sites' consensus: random or reversed weights);
            needs three or more sites; ``None``: off.

    Returns:
        The averaged state and a :class:`RobustReport`.

    Example::

        >>> merged, report = robust_average([a, b, c], start, names=["a", "b", "c"], norm_bound=3.0, method="median")
        >>> report.clipped  # {"c": 0.012}
    """
    method = look_up_option(method, Aggregation)
    if norm_bound is not None and not (math.isfinite(norm_bound) and norm_bound > 0):
        raise ValueError(f"robust_average: norm_bound must be a positive number or None, got {norm_bound!r}.")
    if not 0 <= trim_fraction < 0.5:
        raise ValueError(f"robust_average: trim_fraction must be in [0, 0.5), got {trim_fraction!r}.")
    names = list(names) if names is not None else [f"state {i}" for i in range(len(states))]
    # keys, shapes and finiteness of every state, and the weights, naming the site at fault
    checked_weights([reference, *states], None if weights is None else [1.0, *weights], ["reference", *names],
                    "robust_average")
    report = RobustReport(method=method.value)
    report.cosines = _median_cosines(states, reference, names)
    if min_cosine is not None and len(states) >= 3:
        keep = [i for i, n in enumerate(names) if report.cosines[n] >= min_cosine]
        if not keep:  # no consensus to measure against (a zero median update, or updates at right angles)
            keep = list(range(len(states)))
        report.left_out = {names[i]: report.cosines[names[i]] for i in range(len(states)) if i not in keep}
        states, names = [states[i] for i in keep], [names[i] for i in keep]
        weights = None if weights is None else [weights[i] for i in keep]
    norms = [update_norm(s, reference) for s in states]
    report.norms = dict(zip(names, norms))
    scales = [1.0] * len(states)
    if norm_bound is not None:
        report.bound = norm_bound * statistics.median(norms)
        for i, norm in enumerate(norms):
            if norm > report.bound:
                scales[i] = report.bound / norm
                report.clipped[names[i]] = scales[i]
    w = normalized_weights(weights, len(states), "robust_average weights")
    trim = int(math.floor(trim_fraction * len(states))) if method == Aggregation.TRIMMED_MEAN else 0
    report.trimmed = trim
    out: dict[str, torch.Tensor] = {}
    for key, ref in reference.items():
        if not ref.is_floating_point():
            stacked = torch.stack([s[key] for s in states])
            out[key] = stacked.median(dim=0).values.clone()  # the lower median for an even count: still an integer
            continue
        base = ref.to(torch.float64)
        bounded = [base + scale * (s[key].to(torch.float64) - base) for s, scale in zip(states, scales)]
        if method == Aggregation.MEAN:
            merged = sum(weight * b for weight, b in zip(w, bounded))
        else:
            ordered = torch.stack(bounded).sort(dim=0).values
            count = len(states)
            if method == Aggregation.MEDIAN:
                merged = (ordered[(count - 1) // 2] + ordered[count // 2]) / 2
            else:
                merged = ordered[trim:count - trim].mean(dim=0)
        out[key] = merged.to(ref.dtype)
    return out, report


def _median_cosines(states: Sequence[Mapping[str, torch.Tensor]], reference: Mapping[str, torch.Tensor],
                    names: Sequence[str]) -> dict[str, float]:
    """Cosine similarity of each site's update with the coordinate-wise median update (all floating entries)."""
    dots, squares, median_square = [0.0] * len(states), [0.0] * len(states), 0.0
    for key, ref in reference.items():
        if not ref.is_floating_point():
            continue
        base = ref.to(torch.float64)
        updates = torch.stack([s[key].to(torch.float64) - base for s in states])
        ordered = updates.sort(dim=0).values
        median = (ordered[(len(states) - 1) // 2] + ordered[len(states) // 2]) / 2
        median_square += float(median.pow(2).sum())
        for i in range(len(states)):
            dots[i] += float((updates[i] * median).sum())
            squares[i] += float(updates[i].pow(2).sum())
    scale = math.sqrt(median_square)
    return {n: (d / (math.sqrt(q) * scale) if q > 0 and scale > 0 else 0.0) for n, d, q in zip(names, dots, squares)}
