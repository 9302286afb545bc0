"""Distributed weight consolidation (McClure et al. 2018, Eq. 10-11 and 16-17)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Union

import torch
from monai.utils import StrEnum
from tqdm.auto import tqdm

from monai_continual.consolidation.posterior import Posterior, PosteriorFileError
from monai_continual.consolidation.screening import posterior_shift
from monai_continual.utils.choices import look_up_choice
from monai_continual.utils.weights import normalized_weights

__all__ = [
    "consolidate_dwc",
    "Fallback",
    "ExcessStd",
    "SitePolicy",
    "FALLBACKS",
    "SITE_POLICIES",
    "MAX_PRECISION_RATIO",
    "STD_RTOL",
]

PosteriorLike = Union[Posterior, str, os.PathLike]


class Fallback(StrEnum):
    """Where the consolidated precision is not positive: ``raise`` an error, or keep the ``prior``'s mean and std."""

    RAISE = "raise"
    PRIOR = "prior"


class SitePolicy(StrEnum):
    """A site posterior that breaks a bound: ``raise`` (refuse it, naming the site), or ``clip`` it to the bound."""

    RAISE = "raise"
    CLIP = "clip"


class ExcessStd(StrEnum):
    """A site std above the shared prior's: ``raise``, ``clip`` it to the prior's, or ``allow`` it."""

    RAISE = "raise"
    CLIP = "clip"
    ALLOW = "allow"


FALLBACKS = tuple(choice.value for choice in Fallback)
SITE_POLICIES = tuple(choice.value for choice in SitePolicy)
#: Default largest precision a site may claim, relative to the shared prior's, per weight (std ratio 100). Honest
#: sites of the main job claimed at most 23 (129 at one Adam step on one case); a site at the bound holds
#: 1e4 / (1e4 + S - 1) of the consolidated mean's weight where the others' data say nothing.
MAX_PRECISION_RATIO = 1e4
#: Relative float tolerance of McClure's sigma_s <= sigma_0.
STD_RTOL = 1e-5


def _as_posterior(item: PosteriorLike) -> Posterior:
    return item if isinstance(item, Posterior) else Posterior.load(item)


def consolidate_dwc(
    prior: PosteriorLike,
    site_posteriors: Sequence[PosteriorLike] | Iterable[PosteriorLike],
    fallback: Fallback | str = Fallback.RAISE,
    progress: bool = False,
    excess_std: ExcessStd | str = ExcessStd.RAISE,
    max_precision_ratio: float | None = MAX_PRECISION_RATIO,
    dominance: SitePolicy | str = SitePolicy.RAISE,
    site_weights: Sequence[float] | None = None,
    max_mean_shift: float | None = None,
    max_shift_fraction: float = 0.001,
) -> Posterior:
    """Consolidate site posteriors trained from one shared prior into one posterior (McClure et al. Eq. 17).

    For S sites, every weight with site posteriors N(mu_s, sigma_s^2) and shared prior N(mu_0, sigma_0^2)::

        precision = sum_s 1/sigma_s^2 - (S-1)/sigma_0^2
        mean      = (sum_s mu_s/sigma_s^2 - (S-1) mu_0/sigma_0^2) / precision
        std       = precision^(-1/2)

    i.e. the product of the site posteriors divided by the prior S-1 times (each site's posterior contains the prior
    once; the consolidated one must too). Sums are accumulated in float64 and the result is cast to the prior's
    dtype. When every site's posterior is exact (Gaussian model, independent parameters) this is exactly the
    posterior of all sites' data pooled. Deterministic values (norm layers, buffers) are averaged weighted by each
    site's ``num_examples`` (equal weights when no site states it); integer buffers are taken from the first site.

    Inputs given as paths are streamed: one site file is in memory at a time, besides the running sums (two float64
    tensors per parameter) and the prior.

    Args:
        prior: the shared prior (``Posterior`` or file path) every site trained from.
        site_posteriors: one posterior (or file path) per site, in any order.
        fallback: where the precision is <= 0 (possible only if some sigma_s > sigma_0, which the bounded std of
            site training rules out): ``"raise"`` a ``ValueError`` naming the parameter and the number of weights,
            or ``"prior"``: keep the prior's mean and std for those weights (counted in the result's metadata).
        progress: show a progress bar over the sites.
        excess_std: a site std above the prior's (beyond :data:`STD_RTOL`) breaks sigma_s <= sigma_0, on which Eq. 17
            rests: ``"raise"`` a ``ValueError`` naming the site and the number of weights, or ``"clip"`` those stds
            to the prior's (counted in the result's ``clipped_std_weights``), or ``"allow"`` them (then ``fallback``
            decides where the precision is not positive).
        max_precision_ratio: the largest precision a site may claim per weight relative to the prior's
            (``1/sigma_s^2 <= ratio / sigma_0^2``; ``None``: no bound). A site claiming far more precision than its
            data could give (a wrong or hostile site: std 1e-30 everywhere) would otherwise dictate the consolidated
            mean alone. The default 1e4 allows a site std 100 times below the prior's.
        dominance: what to do beyond ``max_precision_ratio``: ``"raise"`` (naming the site and the number of
            weights) or ``"clip"`` the precision to the bound (counted in ``clipped_precision_weights``).
        site_weights: weights of the sites' deterministic values, one per site, instead of each posterior's own
            ``num_examples`` (a coordinator that does not let sites set their own influence passes them).
        max_mean_shift: refuse (naming the site) a site posterior whose means moved more than this many prior stds
            on more than ``max_shift_fraction`` of its weights (see
            :func:`~monai_continual.consolidation.screening.posterior_shift`): training on data from the prior does
            not do that (honest sites of the main job: at most 3.6 prior stds on any weight); a broken or hostile site
            does. ``None``: not checked.
        max_shift_fraction: see ``max_mean_shift``.

    Returns:
        The consolidated ``Posterior``; metadata holds ``method``, ``num_sites``, ``sites``, ``num_examples`` (sum over
        sites, when known) and ``fallback_weights``.

    Example::

        >>> q0 = Posterior.prior_of(net)
        >>> merged = consolidate_dwc(q0, ["site_a.safetensors", "site_b.safetensors", "site_c.safetensors"])
        >>> merged.to_prior(net, init_posterior=True)  # the next round starts from it
    """
    fallback = look_up_choice(fallback, Fallback, "consolidate_dwc: fallback")
    excess_std = look_up_choice(excess_std, ExcessStd, "consolidate_dwc: excess_std")
    dominance = look_up_choice(dominance, SitePolicy, "consolidate_dwc: dominance")
    if max_precision_ratio is not None and not max_precision_ratio >= 1:
        raise ValueError(f"consolidate_dwc: max_precision_ratio must be >= 1 or None, got {max_precision_ratio!r}.")
    clipped = {"std": 0, "precision": 0}
    prior = _as_posterior(prior)
    items = list(site_posteriors)
    if not items:
        raise ValueError("consolidate_dwc: no site posteriors given.")
    if site_weights is not None:
        site_weights = [float(w) for w in site_weights]
        normalized_weights(site_weights, len(items), "consolidate_dwc site_weights")

    precision = {k: torch.zeros(v.shape, dtype=torch.float64) for k, v in prior.mean.items()}
    weighted_mean = {k: torch.zeros(v.shape, dtype=torch.float64) for k, v in prior.mean.items()}
    det_sum: dict[str, torch.Tensor] = {}
    det_first: dict[str, torch.Tensor] = {}
    sizes: list[float | None] = []
    sites: list[str | None] = []
    for index, item in enumerate(tqdm(items, desc="consolidating sites", disable=not progress)):
        post = _as_posterior(item)
        prior.check_compatible(post)
        if max_mean_shift is not None:
            shift = posterior_shift(prior, post, max_mean_shift)
            if shift.fraction > max_shift_fraction:
                raise ValueError(
                    f"consolidate_dwc: site posterior {index} ({post.site or item!r}): {shift.fraction:.1%} of its "
                    f"means moved more than {max_mean_shift:g} prior stds from the shared prior (bound "
                    f"{max_shift_fraction:.1%} of the weights); it did not come from training from this prior. Refused."
                )
        if index == 0:
            det_first = {k: v.clone() for k, v in post.deterministic.items()}
        elif set(post.deterministic) != set(det_first):
            diff = sorted(set(post.deterministic) ^ set(det_first))
            raise PosteriorFileError(
                f"site posterior {index} ({post.site or item!r}): deterministic values {diff} differ from the "
                "first site's."
            )
        size = post.num_examples if site_weights is None else site_weights[index]
        for name, value in post.deterministic.items():
            if value.shape != det_first[name].shape:
                raise PosteriorFileError(
                    f"site posterior {index} ({post.site or item!r}): deterministic value {name!r} has shape "
                    f"{tuple(value.shape)}, the first site's is {tuple(det_first[name].shape)}."
                )
            if value.is_floating_point():
                contribution = value.to(torch.float64) * (1.0 if size is None else size)
                det_sum[name] = contribution if name not in det_sum else det_sum[name] + contribution
        who = f"site posterior {index} ({post.site or item!r})"
        for name in precision:
            site_precision = _checked_precision(post.std[name], prior.std[name], who, name, excess_std,
                                                max_precision_ratio, dominance, clipped)
            precision[name] += site_precision
            weighted_mean[name] += post.mean[name].to(torch.float64) * site_precision
        sizes.append(size)
        sites.append(post.site)
        del post

    num_sites = len(items)
    known = [s for s in sizes if s is not None]
    if known and len(known) != num_sites:
        missing = [i for i, s in enumerate(sizes) if s is None]
        raise ValueError(
            f"consolidate_dwc: site posteriors {missing} lack metadata 'num_examples' while others have it."
        )
    normalized_weights(known if known else None, num_sites, "site num_examples")  # validates the sizes
    total = sum(known) if known else None
    scale = total if known else float(num_sites)

    mean_out, std_out = {}, {}
    fallback_count = 0
    for name in list(prior.mean):
        prior_precision = prior.std[name].to(torch.float64).pow(-2)
        prior_mean = prior.mean[name].to(torch.float64)
        prec = precision.pop(name) - (num_sites - 1) * prior_precision
        mean = (weighted_mean.pop(name) - (num_sites - 1) * prior_mean * prior_precision) / prec
        bad = ~(prec > 0)
        if bool(bad.any()):
            if fallback == Fallback.RAISE:
                raise ValueError(
                    f"consolidate_dwc: consolidated precision is <= 0 for {int(bad.sum())} of {bad.numel()} weights of "
                    f"parameter {name!r} (some site std exceeds the prior std); train sites with bound_std=True or "
                    "pass fallback='prior'."
                )
            fallback_count += int(bad.sum())
            mean = torch.where(bad, prior_mean, mean)
            prec = torch.where(bad, prior_precision, prec)
        dtype = prior.mean[name].dtype
        mean_out[name] = mean.to(dtype)
        std_out[name] = prec.rsqrt().to(dtype)
    deterministic = {}
    for name, first in det_first.items():
        if first.is_floating_point():
            deterministic[name] = (det_sum[name] / scale).to(first.dtype)
        else:
            deterministic[name] = first
    metadata = {
        "method": "dwc",
        "num_sites": num_sites,
        "sites": sites,
        "num_examples": total,
        "fallback_weights": fallback_count,
        "clipped_std_weights": clipped["std"],
        "clipped_precision_weights": clipped["precision"],
    }
    return Posterior(mean_out, std_out, deterministic, metadata)


def _checked_precision(
    std: torch.Tensor, prior_std: torch.Tensor, who: str, name: str, excess_std: ExcessStd, max_ratio: float | None,
    dominance: SitePolicy, clipped: dict[str, int],
) -> torch.Tensor:
    """A site's precision 1/sigma_s^2 of one parameter after McClure's bound and the dominance bound."""
    std, prior_std = std.to(torch.float64), prior_std.to(torch.float64)
    if not bool(torch.isfinite(std).all()) or not bool((std > 0).all()):
        bad = int((~torch.isfinite(std) | ~(std > 0)).sum())
        raise ValueError(f"consolidate_dwc: {who}: {bad} std values of {name!r} are not finite and positive.")
    over = std > prior_std * (1 + STD_RTOL)
    if excess_std != ExcessStd.ALLOW and bool(over.any()):
        if excess_std == ExcessStd.RAISE:
            raise ValueError(
                f"consolidate_dwc: {who}: std exceeds the shared prior's for {int(over.sum())} of {over.numel()} "
                f"weights of {name!r} (sigma_s <= sigma_0 is what Eq. 17 rests on); train sites with bound_std=True, "
                "or pass excess_std='clip'."
            )
        clipped["std"] += int(over.sum())
        std = torch.where(over, prior_std, std)
    precision = std.pow(-2)
    if max_ratio is not None:
        bound = max_ratio * prior_std.pow(-2)
        dominant = precision > bound
        if bool(dominant.any()):
            if dominance == SitePolicy.RAISE:
                raise ValueError(
                    f"consolidate_dwc: {who} claims a precision above {max_ratio:g} times the prior's for "
                    f"{int(dominant.sum())} of {dominant.numel()} weights of {name!r} (std as small as "
                    f"{float(std.min()):.3g}); it would dictate the consolidated mean. Refused; pass dominance='clip' "
                    "or a larger max_precision_ratio if the site's data really supports it."
                )
            clipped["precision"] += int(dominant.sum())
            precision = torch.minimum(precision, bound)
    return precision
