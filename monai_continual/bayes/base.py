"""Fully factorized Gaussian (FFG) layers: the parameterization, prior, KL and stochastic forward they share."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from monai_continual.bayes.config import SampleMode
from monai_continual.bayes.gaussian import gaussian_kl

__all__ = ["BayesianModule", "SAMPLE_MODES"]

SAMPLE_MODES = tuple(mode.value for mode in SampleMode)
# Added to the pre-activation variance before the square root, so that sqrt stays differentiable where the
# variance is exactly zero (e.g. zero padding with no bias); it adds noise of std 1e-8, far below float32 resolution
# of typical activations.
_VAR_EPS = 1e-16
# A bounded std is prior_std * sigmoid(rho); setting it exactly to the bound would need rho = inf, so the ratio is
# capped just below one when a std is written into the layer.
_MAX_BOUND_RATIO = 1.0 - 1e-6


def _inverse_softplus(x: torch.Tensor) -> torch.Tensor:
    # log(expm1(x)) written to stay finite for small and large x.
    return x + torch.log(-torch.expm1(-x))


class BayesianModule(nn.Module):
    """Base class of the FFG layers: every weight w ~ N(mu, sigma^2), independently, with a per-weight Gaussian prior.

    Subclasses provide ``_op(x, weight, bias)`` (the deterministic operation, e.g. a convolution) and the shapes.
    The posterior is held as trainable parameters:

    - means: ``weight_mu`` or, with ``weight_norm=True`` (Salimans & Kingma, the recipe of McClure et al.),
      ``weight_v`` and ``weight_g`` with mean ``g * v / ||v||`` (norm over every dim but the first);
    - standard deviations: ``weight_rho`` with ``std = softplus(rho)``, or, with ``bound_std=True``,
      ``std = prior_std * sigmoid(rho)``, so that ``std <= prior_std`` holds by construction (what distributed
      weight consolidation needs, McClure et al. Sec. 2.4.4);
    - the same for the bias when there is one (``bias_mu``, ``bias_rho``).

    The prior is held as buffers ``prior_mean``, ``prior_std`` (weight-shaped) and ``bias_prior_mean``,
    ``bias_prior_std``, so it is saved in and restored from ``state_dict()``.

    Forward: in ``train()`` mode, or in ``eval()`` mode inside :func:`monai_continual.bayes.sampling`, the output is
    stochastic. ``sample_mode="local"`` uses the local reparameterization trick (McClure et al. Eq. 12-15):
    ``mean = op(x, mu) + b_mu``, ``var = op(x^2, sigma^2) + b_sigma^2`` and ``out = mean + sqrt(var) * eps`` with one
    ``eps ~ N(0, 1)`` per output element (two operations per call, low-variance gradients).
    ``sample_mode="weights"`` draws one weight tensor per call and applies the operation once (half the cost, the
    whole mini-batch shares the draw: the cheaper choice for Monte Carlo inference). Otherwise the output is
    deterministic, computed with the weight means.
    """

    weight_shape: tuple[int, ...]
    bias_shape: tuple[int, ...] | None

    def _init_bayes(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        std_init: float,
        prior_mean: float | torch.Tensor,
        prior_std: float | torch.Tensor,
        weight_norm: bool,
        bound_std: bool,
        sample_mode: str,
    ) -> None:
        """Create the parameters and buffers with means taken from ``weight`` and ``bias``."""
        name = type(self).__name__
        if not (isinstance(std_init, (int, float)) and std_init > 0 and math.isfinite(std_init)):
            raise ValueError(f"{name}: std_init must be a positive finite number, got {std_init!r}.")
        if sample_mode not in SAMPLE_MODES:
            raise ValueError(f"{name}: sample_mode must be one of {SAMPLE_MODES}, got {sample_mode!r}.")
        self.weight_shape = tuple(weight.shape)
        self.bias_shape = None if bias is None else tuple(bias.shape)
        self.weight_norm = bool(weight_norm)
        self.bound_std = bool(bound_std)
        self.sample_mode = SampleMode(sample_mode).value  # a plain string: sampling() swaps it per call
        self.sampling = False
        self._mean_override: tuple[torch.Tensor, torch.Tensor | None] | None = None
        factory = {"device": weight.device, "dtype": weight.dtype}

        prior_w_mean, prior_w_std = self._prior_tensors(prior_mean, prior_std, self.weight_shape, "weight", **factory)
        self.register_buffer("prior_mean", prior_w_mean)
        self.register_buffer("prior_std", prior_w_std)
        if self.weight_norm:
            self.weight_v = nn.Parameter(torch.empty(self.weight_shape, **factory))
            self.weight_g = nn.Parameter(torch.empty((self.weight_shape[0],) + (1,) * (weight.dim() - 1), **factory))
        else:
            self.weight_mu = nn.Parameter(torch.empty(self.weight_shape, **factory))
        self.weight_rho = nn.Parameter(torch.empty(self.weight_shape, **factory))

        if bias is not None:
            prior_b_mean, prior_b_std = self._prior_tensors(prior_mean, prior_std, self.bias_shape, "bias", **factory)
            self.register_buffer("bias_prior_mean", prior_b_mean)
            self.register_buffer("bias_prior_std", prior_b_std)
            self.bias_mu = nn.Parameter(torch.empty(self.bias_shape, **factory))
            self.bias_rho = nn.Parameter(torch.empty(self.bias_shape, **factory))
        else:
            self.register_buffer("bias_prior_mean", None)
            self.register_buffer("bias_prior_std", None)
            self.register_parameter("bias_mu", None)
            self.register_parameter("bias_rho", None)

        if self.bound_std and bool((self.prior_std < std_init).any()):
            raise ValueError(
                f"{name}: bound_std=True needs std_init <= prior_std, got std_init={std_init} and a prior std of "
                f"{float(self.prior_std.min())}."
            )
        w_std = torch.full(self.weight_shape, float(std_init), **factory)
        b_std = None if bias is None else torch.full(self.bias_shape, float(std_init), **factory)
        self.set_posterior(weight.detach(), w_std, None if bias is None else bias.detach(), b_std)

    def _prior_tensors(
        self, mean: float | torch.Tensor, std: float | torch.Tensor, shape: tuple[int, ...], what: str, **factory: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        name = type(self).__name__
        out = []
        for label, value in (("prior_mean", mean), ("prior_std", std)):
            tensor = torch.as_tensor(value, **factory).detach().clone()
            if tensor.dim() == 0:
                tensor = tensor.expand(shape).clone()
            elif tuple(tensor.shape) != shape:
                raise ValueError(f"{name}: {label} for the {what} has shape {tuple(tensor.shape)}, expected {shape}.")
            if not bool(torch.isfinite(tensor).all()):
                raise ValueError(f"{name}: {label} for the {what} contains NaN or Inf.")
            out.append(tensor)
        if not bool((out[1] > 0).all()):
            raise ValueError(f"{name}: prior_std for the {what} must be > 0 everywhere, got min {float(out[1].min())}.")
        return out[0], out[1]

    # ----------------------------------------------------------------------------------------------------------------
    # effective posterior and prior values

    @property
    def weight_mean(self) -> torch.Tensor:
        """The weight means, whatever the parameterization (differentiable)."""
        if self.weight_norm:
            norm = self.weight_v.flatten(1).norm(dim=1).clamp_min(1e-12)
            return self.weight_v * (self.weight_g.flatten() / norm).view_as(self.weight_g)
        return self.weight_mu

    @property
    def weight_std(self) -> torch.Tensor:
        """The weight standard deviations, whatever the parameterization (differentiable)."""
        return self._std(self.weight_rho, self.prior_std)

    @property
    def bias_mean(self) -> torch.Tensor | None:
        return self.bias_mu

    @property
    def bias_std(self) -> torch.Tensor | None:
        return None if self.bias_rho is None else self._std(self.bias_rho, self.bias_prior_std)

    def _std(self, rho: torch.Tensor, prior_std: torch.Tensor) -> torch.Tensor:
        if self.bound_std:
            return prior_std * torch.sigmoid(rho)
        return F.softplus(rho)

    def _rho(self, std: torch.Tensor, prior_std: torch.Tensor) -> torch.Tensor:
        std = std.to(torch.float64)
        if self.bound_std:
            ratio = (std / prior_std.to(torch.float64)).clamp(max=_MAX_BOUND_RATIO)
            return torch.logit(ratio)
        return _inverse_softplus(std)

    def _check(self, what: str, value: torch.Tensor, shape: tuple[int, ...], positive: bool = False) -> torch.Tensor:
        name = type(self).__name__
        value = torch.as_tensor(value)
        if tuple(value.shape) != shape:
            raise ValueError(f"{name}: {what} has shape {tuple(value.shape)}, expected {shape}.")
        if not bool(torch.isfinite(value).all()):
            raise ValueError(f"{name}: {what} contains NaN or Inf.")
        if positive and not bool((value > 0).all()):
            raise ValueError(f"{name}: {what} must be > 0 everywhere, got min {float(value.min())}.")
        return value

    @torch.no_grad()
    def set_posterior(
        self,
        weight_mean: torch.Tensor,
        weight_std: torch.Tensor,
        bias_mean: torch.Tensor | None = None,
        bias_std: torch.Tensor | None = None,
    ) -> None:
        """Write posterior means and standard deviations into the parameters (inverting the parameterization).

        With ``bound_std=True`` a std above the prior std is an error: the bound must hold.
        """
        w_mean = self._check("weight mean", weight_mean, self.weight_shape)
        w_std = self._check("weight std", weight_std, self.weight_shape, positive=True)
        if self.bound_std and bool((w_std > self.prior_std * (1 + 1e-6)).any()):
            raise ValueError(f"{type(self).__name__}: weight std exceeds the prior std but bound_std=True.")
        if self.weight_norm:
            norm = w_mean.flatten(1).norm(dim=1).view_as(self.weight_g)
            self.weight_v.copy_(w_mean)
            self.weight_g.copy_(norm)
        else:
            self.weight_mu.copy_(w_mean)
        self.weight_rho.copy_(self._rho(w_std, self.prior_std))
        if self.bias_shape is None:
            if bias_mean is not None or bias_std is not None:
                raise ValueError(f"{type(self).__name__}: the layer has no bias, but a bias posterior was given.")
            return
        if bias_mean is None or bias_std is None:
            raise ValueError(f"{type(self).__name__}: the layer has a bias; give both bias_mean and bias_std.")
        b_std = self._check("bias std", bias_std, self.bias_shape, positive=True)
        if self.bound_std and bool((b_std > self.bias_prior_std * (1 + 1e-6)).any()):
            raise ValueError(f"{type(self).__name__}: bias std exceeds the prior std but bound_std=True.")
        self.bias_mu.copy_(self._check("bias mean", bias_mean, self.bias_shape))
        self.bias_rho.copy_(self._rho(b_std, self.bias_prior_std))

    @torch.no_grad()
    def set_prior(
        self,
        weight_mean: torch.Tensor,
        weight_std: torch.Tensor,
        bias_mean: torch.Tensor | None = None,
        bias_std: torch.Tensor | None = None,
    ) -> None:
        """Replace the prior. The posterior is kept; with ``bound_std=True`` its std is capped at the new prior std."""
        old = (self.weight_std.detach().clone(), None if self.bias_shape is None else self.bias_std.detach().clone())
        self.prior_mean.copy_(self._check("prior weight mean", weight_mean, self.weight_shape))
        self.prior_std.copy_(self._check("prior weight std", weight_std, self.weight_shape, positive=True))
        if self.bias_shape is not None:
            if bias_mean is None or bias_std is None:
                raise ValueError(f"{type(self).__name__}: the layer has a bias; give both prior bias mean and std.")
            self.bias_prior_mean.copy_(self._check("prior bias mean", bias_mean, self.bias_shape))
            self.bias_prior_std.copy_(self._check("prior bias std", bias_std, self.bias_shape, positive=True))
        elif bias_mean is not None or bias_std is not None:
            raise ValueError(f"{type(self).__name__}: the layer has no bias, but a bias prior was given.")
        if self.bound_std:
            self.weight_rho.copy_(self._rho(torch.minimum(old[0], self.prior_std), self.prior_std))
            if self.bias_shape is not None:
                self.bias_rho.copy_(self._rho(torch.minimum(old[1], self.bias_prior_std), self.bias_prior_std))

    @torch.no_grad()
    def posterior_to_prior(self) -> None:
        """Make the current posterior the prior (one step of variational continual learning, McClure Eq. 8)."""
        self.set_prior(
            self.weight_mean.detach().clone(),
            self.weight_std.detach().clone(),
            None if self.bias_shape is None else self.bias_mean.detach().clone(),
            None if self.bias_shape is None else self.bias_std.detach().clone(),
        )

    def kl(self) -> torch.Tensor:
        """KL(q || prior) of this layer, summed over its weights (and bias)."""
        kl = gaussian_kl(self.weight_mean, self.weight_std, self.prior_mean, self.prior_std)
        if self.bias_shape is not None:
            kl = kl + gaussian_kl(self.bias_mean, self.bias_std, self.bias_prior_mean, self.bias_prior_std)
        return kl

    # ----------------------------------------------------------------------------------------------------------------
    # forward

    def _op(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def _mean_and_var(
        self, x: torch.Tensor, weight_mean: torch.Tensor, weight_var: torch.Tensor, bias_mean: torch.Tensor | None,
        bias_var: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The pre-activation mean ``op(x, mu) + b_mu`` and variance ``op(x^2, sigma^2) + b_sigma^2``."""
        return self._op(x, weight_mean, bias_mean), self._op(x * x, weight_var, bias_var)

    @property
    def stochastic(self) -> bool:
        """Whether the next forward pass samples (training, or eval inside ``sampling``)."""
        return self.training or self.sampling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._mean_override is not None:  # leaf tensors standing in for the means (curvature estimates)
            return self._op(x, *self._mean_override)
        mean_w = self.weight_mean
        if not self.stochastic:
            return self._op(x, mean_w, self.bias_mu)
        std_w = self.weight_std
        if self.sample_mode == SampleMode.WEIGHTS:
            weight = mean_w + std_w * torch.randn_like(std_w)
            bias = None if self.bias_mu is None else self.bias_mu + self.bias_std * torch.randn_like(self.bias_mu)
            return self._op(x, weight, bias)
        bias_var = None if self.bias_rho is None else self.bias_std**2
        if torch.is_autocast_enabled(x.device.type):
            # mixed precision (nnU-Net on CUDA): in float16 sigma^2 x^2 and the epsilon flush to zero, where the
            # square root's gradient is infinite; the variance path runs in float32
            mean = self._op(x, mean_w, self.bias_mu)
            with torch.autocast(x.device.type, enabled=False):
                var = self._op(x.float() * x.float(), std_w * std_w, bias_var)
                return torch.addcmul(mean.float(), var.add_(_VAR_EPS).sqrt_(), torch.randn_like(var)).to(mean.dtype)
        mean, var = self._mean_and_var(x, mean_w, std_w * std_w, self.bias_mu, bias_var)
        # in place on the fresh conv output: saves two activation-sized temporaries per call
        return torch.addcmul(mean, var.add_(_VAR_EPS).sqrt_(), torch.randn_like(mean))

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, weight_norm={self.weight_norm}, bound_std={self.bound_std}, "
            f"sample_mode={self.sample_mode!r}"
        )
