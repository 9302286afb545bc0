"""Bayesian (FFG) convolutions: drop-in twins of ``torch.nn.Conv1d/2d/3d`` and ``ConvTranspose1d/2d/3d``."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn
from torch.nn import functional as F

from monai_continual.bayes.base import BayesianModule
from monai_continual.bayes.config import BayesConfig

__all__ = [
    "BayesConv1d",
    "BayesConv2d",
    "BayesConv3d",
    "BayesConvTranspose1d",
    "BayesConvTranspose2d",
    "BayesConvTranspose3d",
]

_CONV_HPARAMS = (
    "in_channels",
    "out_channels",
    "kernel_size",
    "stride",
    "padding",
    "dilation",
    "groups",
    "padding_mode",
)


class _BayesConvBase(BayesianModule):
    """Shared construction: a template torch module validates the arguments and provides the initial means."""

    _torch_cls: type[nn.Module]
    _fn: Callable[..., torch.Tensor]
    _hparams: tuple[str, ...] = _CONV_HPARAMS

    def _setup(self, template: nn.Module, **bayes_kwargs: Any) -> None:
        for name in self._hparams:
            setattr(self, name, getattr(template, name))
        self._reversed_padding_repeated_twice = getattr(template, "_reversed_padding_repeated_twice", None)
        self._init_bayes(template.weight, template.bias, **_bayes_defaults(bayes_kwargs))

    @classmethod
    def from_module(cls, module: nn.Module, **bayes_kwargs: Any) -> _BayesConvBase:
        """Build the Bayesian twin of ``module`` with means equal to its weights (and bias).

        Args:
            module: an instance of the matching torch class (e.g. ``nn.Conv3d`` for ``BayesConv3d``).
            bayes_kwargs: ``std_init``, ``prior_mean``, ``prior_std``, ``weight_norm``, ``bound_std``, ``sample_mode``.
        """
        if type(module) is not cls._torch_cls:
            raise TypeError(
                f"{cls.__name__}.from_module expects a {cls._torch_cls.__name__}, got {type(module).__name__}."
            )
        layer = cls.__new__(cls)
        BayesianModule.__init__(layer)
        layer._setup(module, **bayes_kwargs)
        return layer

    def extra_repr(self) -> str:
        args = ", ".join(f"{name}={getattr(self, name)}" for name in self._hparams[2:])
        return f"{self.in_channels}, {self.out_channels}, {args}, bias={self.bias_shape is not None}, " + (
            super().extra_repr().lstrip(", ")
        )


def _bayes_defaults(kwargs: dict[str, Any]) -> dict[str, Any]:
    defaults = BayesConfig().to_dict()
    unknown = set(kwargs) - set(defaults)
    if unknown:
        raise TypeError(f"unknown Bayesian layer argument(s): {sorted(unknown)}; expected some of {sorted(defaults)}.")
    defaults.update(kwargs)
    return defaults


def _fused_mean_and_var(
    self: _BayesConvBase, x: torch.Tensor, weight_mean: torch.Tensor, weight_var: torch.Tensor,
    bias_mean: torch.Tensor | None, bias_var: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:meth:`BayesianModule._mean_and_var` of a convolution: on the CPU at batch 1, both as one convolution of
    [x, x^2] with [mu, sigma^2] in twice the groups. PyTorch runs a small batch-1 convolution with groups=1 in its slow
    native kernel (ConvParams::use_mkldnn) and a grouped one in oneDNN, 2-3x faster (benchmarks/bench_bayes_conv.py);
    at larger batches two convolutions are faster."""
    batched = x.dim() == weight_mean.dim()  # an unbatched (C, *spatial) input has no batch dimension to cat beside
    if x.device.type != "cpu" or not batched or x.shape[0] != 1:
        return BayesianModule._mean_and_var(self, x, weight_mean, weight_var, bias_mean, bias_var)
    bias = None if bias_mean is None else torch.cat([bias_mean, bias_var])
    out = self._op(torch.cat([x, x * x], 1), torch.cat([weight_mean, weight_var]), bias, 2 * self.groups)
    channels = out.shape[1] // 2
    return out.narrow(1, 0, channels), out.narrow(1, channels, channels)


class _BayesConvNd(_BayesConvBase):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, ...],
        stride: int | tuple[int, ...] = 1,
        padding: str | int | tuple[int, ...] = 0,
        dilation: int | tuple[int, ...] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
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
        template = self._torch_cls(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode, device, dtype
        )
        self._setup(
            template,
            std_init=std_init,
            prior_mean=prior_mean,
            prior_std=prior_std,
            weight_norm=weight_norm,
            bound_std=bound_std,
            sample_mode=sample_mode,
        )

    _mean_and_var = _fused_mean_and_var

    def _op(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
            groups: int | None = None) -> torch.Tensor:
        groups = self.groups if groups is None else groups
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return type(self)._fn(x, weight, bias, self.stride, 0, self.dilation, groups)
        return type(self)._fn(x, weight, bias, self.stride, self.padding, self.dilation, groups)


class BayesConv1d(_BayesConvNd):
    """FFG twin of ``torch.nn.Conv1d``; see :class:`~monai_continual.bayes.base.BayesianModule`.

    Example::

        >>> layer = BayesConv1d(1, 8, 3, padding=1, std_init=1e-3, prior_std=1.0)
        >>> y = layer(torch.randn(2, 1, 16))
    """

    _torch_cls = nn.Conv1d
    _fn = F.conv1d


class BayesConv2d(_BayesConvNd):
    """FFG twin of ``torch.nn.Conv2d``; see :class:`~monai_continual.bayes.base.BayesianModule`.

    Example::

        >>> layer = BayesConv2d(1, 8, 3, padding=2, dilation=2)
        >>> y = layer(torch.randn(2, 1, 16, 16))
    """

    _torch_cls = nn.Conv2d
    _fn = F.conv2d


class BayesConv3d(_BayesConvNd):
    """FFG twin of ``torch.nn.Conv3d`` (the layer of McClure et al.'s Bayesian MeshNet).

    Example::

        >>> layer = BayesConv3d(1, 8, 3, padding=2, dilation=2, weight_norm=True)
        >>> layer.train(); y = layer(torch.randn(2, 1, 16, 16, 16))  # local reparameterization
        >>> layer.eval(); y = layer(torch.randn(2, 1, 16, 16, 16))   # weight means, deterministic
    """

    _torch_cls = nn.Conv3d
    _fn = F.conv3d


class _BayesConvTransposeNd(_BayesConvBase):
    _hparams = _CONV_HPARAMS + ("output_padding",)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, ...],
        stride: int | tuple[int, ...] = 1,
        padding: int | tuple[int, ...] = 0,
        output_padding: int | tuple[int, ...] = 0,
        groups: int = 1,
        bias: bool = True,
        dilation: int | tuple[int, ...] = 1,
        padding_mode: str = "zeros",
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
        template = self._torch_cls(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            output_padding,
            groups,
            bias,
            dilation,
            padding_mode,
            device,
            dtype,
        )
        self._setup(
            template,
            std_init=std_init,
            prior_mean=prior_mean,
            prior_std=prior_std,
            weight_norm=weight_norm,
            bound_std=bound_std,
            sample_mode=sample_mode,
        )

    _mean_and_var = _fused_mean_and_var

    def _op(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
            groups: int | None = None) -> torch.Tensor:
        groups = self.groups if groups is None else groups
        return type(self)._fn(x, weight, bias, self.stride, self.padding, self.output_padding, groups, self.dilation)


class BayesConvTranspose1d(_BayesConvTransposeNd):
    """FFG twin of ``torch.nn.ConvTranspose1d``."""

    _torch_cls = nn.ConvTranspose1d
    _fn = F.conv_transpose1d


class BayesConvTranspose2d(_BayesConvTransposeNd):
    """FFG twin of ``torch.nn.ConvTranspose2d``."""

    _torch_cls = nn.ConvTranspose2d
    _fn = F.conv_transpose2d


class BayesConvTranspose3d(_BayesConvTransposeNd):
    """FFG twin of ``torch.nn.ConvTranspose3d`` (the up-sampling layer of U-Nets).

    Example::

        >>> up = BayesConvTranspose3d(8, 4, 2, stride=2)
        >>> y = up(torch.randn(1, 8, 4, 4, 4))  # (1, 4, 8, 8, 8)
    """

    _torch_cls = nn.ConvTranspose3d
    _fn = F.conv_transpose3d
