"""KL divergence of a whole model's Bayesian layers to their priors."""

from __future__ import annotations

import torch
from torch import nn

from monai_continual.bayes.base import BayesianModule

__all__ = ["kl_divergence"]


def kl_divergence(model: nn.Module) -> torch.Tensor:
    """Sum of KL(q || prior) over every Bayesian layer of ``model`` (every :class:`BayesianModule`).

    Args:
        model: any network; other modules contribute nothing.

    Returns:
        A scalar tensor on the model's device (0 when the model has no Bayesian layer).

    Example::

        >>> net = bayesianize(torch.nn.Conv2d(1, 4, 3))
        >>> kl_divergence(net).backward()
    """
    total: torch.Tensor | None = None
    for module in model.modules():
        if isinstance(module, BayesianModule):
            kl = module.kl()
            total = kl if total is None else total + kl
    if total is None:
        param = next(model.parameters(), None)
        return torch.zeros((), device=param.device if param is not None else None)
    return total
