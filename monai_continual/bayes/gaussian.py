"""Closed-form KL divergence between fully factorized Gaussians (the one place the formula lives)."""

from __future__ import annotations

import torch

__all__ = ["gaussian_kl"]


def gaussian_kl(mean_q: torch.Tensor, std_q: torch.Tensor, mean_p: torch.Tensor, std_p: torch.Tensor) -> torch.Tensor:
    """Sum over elements of KL( N(mean_q, std_q^2) || N(mean_p, std_p^2) ).

    Per element ``log(std_p / std_q) + (std_q^2 + (mean_q - mean_p)^2) / (2 std_p^2) - 1/2`` (McClure et al., Eq. 5
    with a per-weight Gaussian prior). This is the only place the formula is written.

    Args:
        mean_q: posterior means.
        std_q: posterior standard deviations (> 0).
        mean_p: prior means, broadcastable to ``mean_q``.
        std_p: prior standard deviations (> 0), broadcastable to ``mean_q``.

    Returns:
        A scalar tensor.

    Example::

        >>> kl = gaussian_kl(torch.zeros(3), torch.ones(3), torch.zeros(3), torch.ones(3))  # 0.0
    """
    var_ratio = (std_q / std_p) ** 2
    mahalanobis = ((mean_q - mean_p) / std_p) ** 2
    return 0.5 * (var_ratio + mahalanobis - 1.0 - torch.log(var_ratio)).sum()
