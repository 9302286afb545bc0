"""How far a site posterior moved from the prior it trained from, in the prior's own units.

A site trained from prior N(mu_0, sigma_0^2) on its own data moves a mean by a few prior stds where its data
constrain the weight and hardly at all elsewhere. A posterior whose means moved many prior stds on a large
fraction of weights did not come from training on data (a hostile or broken site): consolidating it would move the
shared model where no site's data put it, and in VCL it would become the next site's prior.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from monai_continual.consolidation.posterior import Posterior

__all__ = ["PosteriorShift", "posterior_shift"]


@dataclass(frozen=True)
class PosteriorShift:
    """Per-weight statistics of a posterior relative to its prior.

    Attributes:
        fraction: fraction of weights whose mean moved more than ``k`` prior stds.
        max_shift: the largest ``|mu - mu_0| / sigma_0``.
        max_precision_ratio: the largest ``sigma_0^2 / sigma^2`` (precision claimed relative to the prior's).
        weights: number of Bayesian weights compared.
    """

    fraction: float
    max_shift: float
    max_precision_ratio: float
    weights: int

    def to_dict(self) -> dict:
        return {"fraction": self.fraction, "max_shift": self.max_shift, "max_precision_ratio": self.max_precision_ratio,
                "weights": self.weights}


def posterior_shift(prior: Posterior, posterior: Posterior, k: float) -> PosteriorShift:
    """The shift of ``posterior``'s means from ``prior``'s in prior stds, and the precision it claims.

    Args:
        prior: the prior the site trained from.
        posterior: the site's posterior (same parameters; checked).
        k: the shift, in prior stds, above which a weight counts as moved far.

    Example::

        >>> shift = posterior_shift(q0, Posterior.load("site_b.safetensors"), k=5.0)
        >>> shift.fraction  # 0.0004 for an honest site; 1.0 for means moved 10 prior stds
    """
    prior.check_compatible(posterior)
    far, total, max_shift, max_ratio = 0, 0, 0.0, 0.0
    for name, prior_mean in prior.mean.items():
        prior_std = prior.std[name].to(torch.float64)
        shift = (posterior.mean[name].to(torch.float64) - prior_mean.to(torch.float64)).abs() / prior_std
        ratio = (prior_std / posterior.std[name].to(torch.float64)).pow(2)
        far += int((shift > k).sum())
        total += shift.numel()
        if shift.numel():
            max_shift = max(max_shift, float(shift.max()))
            max_ratio = max(max_ratio, float(ratio.max()))
    return PosteriorShift(far / total if total else 0.0, max_shift, max_ratio, total)
