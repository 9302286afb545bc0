"""Distributed weight consolidation (McClure et al. 2018, Eq. 10-11 and 16-17)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Union

import torch
from tqdm.auto import tqdm

from monai_continual.consolidation.posterior import Posterior, PosteriorFileError
from monai_continual.utils.weights import normalized_weights

__all__ = ["consolidate_dwc", "FALLBACKS"]

PosteriorLike = Union[Posterior, str, os.PathLike]
#: What to do where the consolidated precision is not positive.
FALLBACKS = ("raise", "prior")


def _as_posterior(item: PosteriorLike) -> Posterior:
    return item if isinstance(item, Posterior) else Posterior.load(item)


def consolidate_dwc(
    prior: PosteriorLike,
    site_posteriors: Sequence[PosteriorLike] | Iterable[PosteriorLike],
    fallback: str = "raise",
    progress: bool = False,
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

    Returns:
        The consolidated ``Posterior``; metadata holds ``method``, ``num_sites``, ``sites``, ``num_examples`` (sum over
        sites, when known) and ``fallback_weights``.

    Example::

        >>> q0 = Posterior.prior_of(net)
        >>> merged = consolidate_dwc(q0, ["site_a.safetensors", "site_b.safetensors", "site_c.safetensors"])
        >>> merged.to_prior(net, init_posterior=True)  # the next round starts from it
    """
    if fallback not in FALLBACKS:
        raise ValueError(f"consolidate_dwc: fallback must be one of {FALLBACKS}, got {fallback!r}.")
    prior = _as_posterior(prior)
    items = list(site_posteriors)
    if not items:
        raise ValueError("consolidate_dwc: no site posteriors given.")

    precision = {k: torch.zeros(v.shape, dtype=torch.float64) for k, v in prior.mean.items()}
    weighted_mean = {k: torch.zeros(v.shape, dtype=torch.float64) for k, v in prior.mean.items()}
    det_sum: dict[str, torch.Tensor] = {}
    det_first: dict[str, torch.Tensor] = {}
    sizes: list[float | None] = []
    sites: list[str | None] = []
    for index, item in enumerate(tqdm(items, desc="consolidating sites", disable=not progress)):
        post = _as_posterior(item)
        prior.check_compatible(post)
        if index == 0:
            det_first = {k: v.clone() for k, v in post.deterministic.items()}
        elif set(post.deterministic) != set(det_first):
            diff = sorted(set(post.deterministic) ^ set(det_first))
            raise PosteriorFileError(f"site posterior {index} ({post.site or item!r}): deterministic values {diff} differ from the first site's.")
        size = post.num_examples
        for name, value in post.deterministic.items():
            if value.shape != det_first[name].shape:
                raise PosteriorFileError(
                    f"site posterior {index} ({post.site or item!r}): deterministic value {name!r} has shape "
                    f"{tuple(value.shape)}, the first site's is {tuple(det_first[name].shape)}."
                )
            if value.is_floating_point():
                contribution = value.to(torch.float64) * (1.0 if size is None else size)
                det_sum[name] = contribution if name not in det_sum else det_sum[name] + contribution
        for name in precision:
            site_precision = post.std[name].to(torch.float64).pow(-2)
            precision[name] += site_precision
            weighted_mean[name] += post.mean[name].to(torch.float64) * site_precision
        sizes.append(size)
        sites.append(post.site)
        del post

    num_sites = len(items)
    known = [s for s in sizes if s is not None]
    if known and len(known) != num_sites:
        missing = [i for i, s in enumerate(sizes) if s is None]
        raise ValueError(f"consolidate_dwc: site posteriors {missing} lack metadata 'num_examples' while others have it.")
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
            if fallback == "raise":
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
    }
    return Posterior(mean_out, std_out, deterministic, metadata)
