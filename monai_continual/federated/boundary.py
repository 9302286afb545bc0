"""The server's checks of what a site sends, and the bounds on how much any one site can move the result.

NVFlare authenticates the parties; it does not check what an authenticated party sends. Everything a site returns
is checked here in memory, before anything is stored: the model against the stage's start model (keys, shapes,
dtypes), finiteness, size and value range; counts and scores against what a site could honestly claim. Then the
site's influence is bounded: FedAvg weights are the server's (equal, or declared per site), each update is bounded
to k times the round's median update norm and can be aggregated by a trimmed mean or median, a Bayesian site's
posterior whose means moved far from its prior on many weights is left out, and so is one claiming more precision
than a bound.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from monai.utils import StrEnum, look_up_option

from monai_continual.consolidation.dwc import STD_RTOL
from monai_continual.consolidation.posterior import Posterior
from monai_continual.consolidation.robust import Aggregation
from monai_continual.consolidation.screening import posterior_shift
from monai_continual.federated.payload import PayloadError

__all__ = ["BoundaryPolicy", "FedAvgWeighting", "PosteriorScreen", "check_model", "check_posterior", "check_count",
           "check_details", "screen_posterior",
           "check_scores", "payload_bytes"]


class FedAvgWeighting(StrEnum):
    """Where a site's FedAvg weight comes from."""

    EQUAL = "equal"  # every site the same: nothing a site says changes its weight
    DECLARED = "declared"  # the sizes the job declares per site (the coordinator's knowledge, not the site's claim)
    REPORTED = "reported"  # the example count each site reports, capped by ``max_examples`` (trusts the sites)


class PosteriorScreen(StrEnum):
    """What to do with a site posterior beyond the shift or precision bounds."""

    EXCLUDE = "exclude"  # leave it out of the consolidation (or skip the visit), listed in the run state
    FLAG = "flag"  # use it, listed in the run state
    OFF = "off"  # no screening


@dataclass(frozen=True)
class BoundaryPolicy:
    """The server's bounds on what one site can do to a federated run (JSON-able: a job carries it as data).

    Attributes:
        max_model_bytes: the largest model a site may send (bytes of its tensors).
        max_abs_value: the largest magnitude of any floating value in a site's model.
        weighting: FedAvg weights: ``"equal"`` (default), ``"declared"`` (``declared_sizes``) or ``"reported"``.
        declared_sizes: site -> training-set size, for ``weighting="declared"``.
        max_examples: cap on a reported count (a larger one is capped and listed); ``None``: no cap.
        norm_bound: k of the FedAvg update bound ``k x the round's median update norm`` (``None``: off).
        min_cosine: a FedAvg update whose cosine with the round's coordinate-wise median update is below this is left
            out (``None``: off). Both bounds need three or more sites.
        aggregation: ``"mean"``, ``"trimmed_mean"`` or ``"median"`` (coordinate-wise).
        trim_fraction: fraction trimmed at each end by the trimmed mean.
        max_mean_shift: k, in prior stds, beyond which a posterior mean counts as moved far.
        max_shift_fraction: fraction of weights moved far beyond which a site posterior is screened.
        max_precision_ratio: the largest precision relative to its prior's a site posterior may claim on any weight.
        screen_posteriors: ``"exclude"``, ``"flag"`` or ``"off"``.
        declared_test_sizes: site -> number of test cases; otherwise a site's first evaluation fixes its count.

    Example::

        >>> BoundaryPolicy.from_dict({"aggregation": "median", "declared_sizes": {"site_a": 120, "site_b": 40}})
    """

    max_model_bytes: int = 2**31
    max_abs_value: float = 1e6
    weighting: str = FedAvgWeighting.EQUAL
    declared_sizes: Mapping[str, int] = field(default_factory=dict)
    max_examples: int | None = 100_000
    norm_bound: float | None = 2.0
    min_cosine: float | None = 0.2
    aggregation: str = Aggregation.MEAN
    trim_fraction: float = 0.2
    max_mean_shift: float = 5.0
    max_shift_fraction: float = 0.001
    max_precision_ratio: float | None = 1e4
    screen_posteriors: str = PosteriorScreen.EXCLUDE
    declared_test_sizes: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "weighting", look_up_option(self.weighting, FedAvgWeighting))
        set_(self, "aggregation", look_up_option(self.aggregation, Aggregation))
        set_(self, "screen_posteriors", look_up_option(self.screen_posteriors, PosteriorScreen))
        for name in ("max_model_bytes", "max_abs_value", "max_mean_shift"):
            if not _positive(getattr(self, name)):
                raise ValueError(f"BoundaryPolicy: {name} must be a positive number, got {getattr(self, name)!r}.")
        if self.min_cosine is not None and not -1 <= self.min_cosine <= 1:
            raise ValueError(f"BoundaryPolicy: min_cosine must be in [-1, 1] or null, got {self.min_cosine!r}.")
        for name in ("max_examples", "norm_bound", "max_precision_ratio"):
            if getattr(self, name) is not None and not _positive(getattr(self, name)):
                raise ValueError(
                    f"BoundaryPolicy: {name} must be a positive number or null, got {getattr(self, name)!r}."
                )
        if not 0 <= self.max_shift_fraction <= 1 or not 0 <= self.trim_fraction < 0.5:
            raise ValueError("BoundaryPolicy: max_shift_fraction must be in [0, 1] and trim_fraction in [0, 0.5).")
        for name in ("declared_sizes", "declared_test_sizes"):
            sizes = dict(getattr(self, name))
            for site, size in sizes.items():
                check_count(size, f"BoundaryPolicy {name}[{site!r}]")
            set_(self, name, sizes)
        if self.weighting == FedAvgWeighting.DECLARED and not self.declared_sizes:
            raise ValueError("BoundaryPolicy: weighting='declared' needs declared_sizes (site -> training-set size).")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> BoundaryPolicy:
        """The policy from a job's JSON, unknown keys refused with the valid ones listed."""
        data = dict(data or {})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"BoundaryPolicy: unknown settings {unknown}; valid: {sorted(names)}.")
        return cls(**data)

    @classmethod
    def off(cls) -> BoundaryPolicy:
        """Every influence bound off (reported counts, plain mean, no screening): for comparisons only."""
        return cls(max_abs_value=1e300, weighting=FedAvgWeighting.REPORTED, max_examples=None, norm_bound=None,
                   min_cosine=None, max_precision_ratio=None, screen_posteriors=PosteriorScreen.OFF)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (str(v) if isinstance(v, StrEnum) else (dict(v) if isinstance(v, Mapping) else v))
                for f in dataclasses.fields(self) for v in (getattr(self, f.name),)}

    def fedavg_weights(self, sites: Sequence[str], reported: Sequence[float]) -> list[float]:
        """The FedAvg weight of each site under this policy."""
        if self.weighting == FedAvgWeighting.EQUAL:
            return [1.0] * len(sites)
        if self.weighting == FedAvgWeighting.DECLARED:
            missing = [s for s in sites if s not in self.declared_sizes]
            if missing:
                raise ValueError(f"BoundaryPolicy: no declared size for sites {missing}.")
            return [float(self.declared_sizes[s]) for s in sites]
        return [float(n) for n in reported]  # capped when they arrived


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except OverflowError:  # an int beyond any float
        return False


def check_count(value: Any, what: str) -> int:
    """``value`` as an int if it is a finite integer > 0 (a count a site may claim), else :class:`PayloadError`."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer)) or not _finite(value) \
            or float(value) != int(value) or int(value) <= 0:
        raise PayloadError(f"{what}: a count must be a finite integer > 0, got {value!r}.")
    return int(value)


def payload_bytes(tensors: Mapping[str, Any]) -> int:
    """Bytes of a payload's tensors (numpy arrays or torch tensors)."""
    total = 0
    for value in tensors.values():
        total += int(value.nbytes) if isinstance(value, np.ndarray) else int(value.numel() * value.element_size())
    return total


def check_model(tensors: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor] | None, what: str,
                policy: BoundaryPolicy, subset: bool = False) -> None:
    """Refuse a model that does not fit its reference, is not finite, is too large or has out-of-range values.

    Args:
        tensors: the received tensors.
        reference: the model the stage started from (keys, shapes and dtypes must match); ``None``: no reference.
        what: the site and stage, for errors.
        policy: the size and value bounds.
        subset: the reference is a larger model whose entries must include the received ones (a posterior's means
            against the plain network it was made from).

    Raises:
        PayloadError: naming the site, stage and entry at fault.
    """
    size = payload_bytes(tensors)
    if size > policy.max_model_bytes:
        raise PayloadError(f"{what}: the model is {size} bytes, above max_model_bytes={policy.max_model_bytes}.")
    if reference is not None:
        missing = [] if subset else sorted(set(reference) - set(tensors))
        extra = sorted(set(tensors) - set(reference))
        if missing or extra:
            raise PayloadError(f"{what}: the model's entries differ from the stage's start model (missing "
                               f"{missing[:5]}, extra {extra[:5]}).")
    for name, value in tensors.items():
        if reference is not None:
            ref = reference[name]
            if tuple(value.shape) != tuple(ref.shape) or value.dtype != ref.dtype:
                raise PayloadError(f"{what}: entry {name!r} has shape {tuple(value.shape)} and dtype {value.dtype}, "
                                   f"the start model's shape {tuple(ref.shape)} and dtype {ref.dtype}.")
        if value.is_floating_point():
            if not bool(torch.isfinite(value).all()):
                raise PayloadError(f"{what}: entry {name!r} has non-finite values.")
            if value.numel() and float(value.abs().max()) > policy.max_abs_value:
                raise PayloadError(f"{what}: entry {name!r} has values of magnitude {float(value.abs().max()):.3g}, "
                                   f"above max_abs_value={policy.max_abs_value:g}.")


def check_fisher(fisher: Mapping[str, torch.Tensor], weights: Mapping[str, torch.Tensor] | None, what: str,
                 policy: BoundaryPolicy) -> None:
    """:func:`check_model` for a running Fisher: not empty, entries of the model it came with (same shapes and
    dtypes), finite, within the value bound, and >= 0 (a diagonal Fisher is a sum of squares).

    Raises:
        PayloadError: naming the site, stage and entry at fault.
    """
    if not fisher:
        raise PayloadError(f"{what}: the Fisher has no entries.")
    check_model(fisher, weights, what, policy, subset=True)
    negative = [name for name, value in fisher.items() if not value.is_floating_point() or bool((value < 0).any())]
    if negative:
        raise PayloadError(f"{what}: entries {negative[:5]} are not non-negative floats.")


def check_posterior(posterior: Posterior, reference: Posterior | Mapping[str, torch.Tensor] | None, what: str,
                    policy: BoundaryPolicy) -> None:
    """:func:`check_model` for a posterior: against a reference posterior, or against a plain start model."""
    if isinstance(reference, Posterior):
        check_model(posterior.mean, reference.mean, f"{what} (means)", policy)
        check_model(posterior.std, reference.std, f"{what} (stds)", policy)
        check_model(posterior.deterministic, reference.deterministic, f"{what} (deterministic values)", policy)
        return
    check_model({**posterior.mean, **posterior.deterministic}, reference, what, policy, subset=True)
    check_model(posterior.std, None, f"{what} (stds)", policy)


def check_scores(scores: Any, expected: int | None, what: str) -> list[float]:
    """Per-volume scores as floats, refused unless a list of finite values in [0, 1] of the expected length."""
    if not isinstance(scores, list):
        raise PayloadError(f"{what}: scores must be a list, got {type(scores).__name__}.")
    values = []
    for value in scores:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not _finite(value) \
                or not 0.0 <= float(value) <= 1.0:
            raise PayloadError(f"{what}: every score must be a finite number in [0, 1], got {value!r}.")
        values.append(float(value))
    if expected is not None and len(values) != expected:
        raise PayloadError(f"{what}: {len(values)} scores sent, but the site has {expected} test cases.")
    return values


def check_details(details: Any, what: str, max_keys: int = 32) -> dict[str, Any]:
    """A site's stage details (recorded in the run state): a few numbers and flags, nothing else."""
    if not isinstance(details, dict) or len(details) > max_keys:
        raise PayloadError(f"{what}: details must be a dict of at most {max_keys} numbers or flags.")
    for key, value in details.items():
        if not isinstance(key, str) or len(key) > 64 or not isinstance(value, (int, float, bool)) \
                or (isinstance(value, float) and value != value):
            raise PayloadError(f"{what}: detail {key!r} must be a number or a flag, got {value!r}.")
    return dict(details)


def screen_posterior(posterior: Posterior, prior: Posterior, policy: BoundaryPolicy, bound_std: bool,
                     what: str) -> dict[str, Any] | None:
    """Screen a site's posterior against the prior it trained from.

    Raises :class:`PayloadError` when a bounded (DWC) site's std exceeds its prior's (McClure's sigma_s <= sigma_0,
    on which Eq. 17 rests: never stored when broken). Returns the event to record when the posterior moved or
    tightened beyond the policy's bounds (``event["posterior"]``: ``"left out"`` or ``"flagged"``), else ``None``.
    """
    if bound_std:
        over = sum(int((posterior.std[k] > prior.std[k] * (1 + STD_RTOL)).sum()) for k in prior.std)
        if over:
            raise PayloadError(f"{what}: the posterior's std exceeds its prior's on {over} weights "
                               "(a DWC site's std is bounded by the shared prior's).")
    if policy.screen_posteriors == PosteriorScreen.OFF:
        return None
    shift = posterior_shift(prior, posterior, policy.max_mean_shift)
    reasons = []
    if shift.fraction > policy.max_shift_fraction:
        reasons.append(f"{shift.fraction:.1%} of its means moved more than {policy.max_mean_shift:g} prior stds "
                       f"(bound {policy.max_shift_fraction:.1%})")
    if policy.max_precision_ratio is not None and shift.max_precision_ratio > policy.max_precision_ratio:
        reasons.append(f"it claims {shift.max_precision_ratio:.3g} times the prior's precision "
                       f"(bound {policy.max_precision_ratio:g})")
    if not reasons:
        return None
    action = "left out" if policy.screen_posteriors == PosteriorScreen.EXCLUDE else "flagged"
    return {"posterior": action, "reason": "; ".join(reasons), **shift.to_dict()}
