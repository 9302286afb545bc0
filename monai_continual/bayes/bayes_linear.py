"""Bayesian (FFG) twin of ``torch.nn.Linear``."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from monai_continual.bayes.bayes_conv import _BayesConvBase
from monai_continual.bayes.config import BayesConfig

__all__ = ["BayesLinear"]


class BayesLinear(_BayesConvBase):
    """FFG twin of ``torch.nn.Linear``; see :class:`~monai_continual.bayes.base.BayesianModule`.

    Example::

        >>> layer = BayesLinear(16, 4)
        >>> y = layer(torch.randn(8, 16))
    """

    _torch_cls = nn.Linear
    _hparams = ("in_features", "out_features")

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device: Any = None,
        dtype: Any = None,
        *,
        std_init: float = BayesConfig.std_init,
        prior_mean: float | torch.Tensor = BayesConfig.prior_mean,
        prior_std: float | torch.Tensor = BayesConfig.prior_std,
        weight_norm: bool = BayesConfig.weight_norm,
        bound_std: bool = BayesConfig.bound_std,
        sample_mode: str = BayesConfig.sample_mode,
    ) -> None:
        super().__init__()
        self._setup(
            nn.Linear(in_features, out_features, bias, device, dtype),
            std_init=std_init,
            prior_mean=prior_mean,
            prior_std=prior_std,
            weight_norm=weight_norm,
            bound_std=bound_std,
            sample_mode=sample_mode,
        )

    def _op(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return F.linear(x, weight, bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias_shape is not None}"
