"""MeshNet: the dilated fully convolutional segmentation network of McClure et al. (Table 1)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.layers.factories import Conv, Dropout
from torch import nn

from monai_continual.bayes.config import BayesConfig
from monai_continual.bayes.convert import bayesianize

__all__ = ["MeshNet"]


class MeshNet(nn.Module):
    """Stack of 3^d dilated convolutions with ReLU, then a 1^d classifier; spatial size is kept throughout.

    With the defaults this is Table 1 of McClure et al. (2018): seven 96-channel 3x3x3 convolutions with dilations
    1, 1, 1, 2, 4, 8, 1 (padding equal to the dilation) and a 1x1x1 classifier. With ``bayesian=True`` every
    convolution, the classifier included, is an FFG layer trained with local reparameterization, built as
    :func:`~monai_continual.bayes.bayesianize` builds it from the same plain network, with the settings of ``bayes``
    (:class:`~monai_continual.bayes.BayesConfig`; its defaults: std 1e-3, a N(0, 1) prior, means *without* weight
    normalization, as everywhere else in the package; the paper's weight-normalized means are ``weight_norm=True``).

    Args:
        spatial_dims: 1, 2 or 3.
        in_channels: input channels.
        out_channels: classes (logits are returned; apply softmax outside).
        channels: filters per hidden layer (96 in the paper; smaller is fine on a CPU).
        dilations: one dilation per hidden layer.
        bayesian: build the Bayesian twin.
        dropout: channel dropout after each hidden ReLU (0 disables it).
        std_init: overrides ``bayes.std_init``.
        prior_std: overrides ``bayes.prior_std``.
        weight_norm: overrides ``bayes.weight_norm``.
        bound_std: overrides ``bayes.bound_std``.
        bayes: the settings of the Bayesian layers (``None``: the defaults of ``BayesConfig``).

    Example::

        >>> net = MeshNet(3, 1, 4, channels=16, bayesian=True, bayes=BayesConfig(weight_norm=True))
        >>> logits = net(torch.randn(2, 1, 32, 32, 32))  # (2, 4, 32, 32, 32)
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        out_channels: int = 2,
        channels: int = 96,
        dilations: Sequence[int] = (1, 1, 1, 2, 4, 8, 1),
        bayesian: bool = False,
        dropout: float = 0.0,
        std_init: float | str | None = None,
        prior_std: float | str | None = None,
        weight_norm: bool | None = None,
        bound_std: bool | None = None,
        bayes: BayesConfig | None = None,
    ) -> None:
        super().__init__()
        if spatial_dims not in (1, 2, 3):
            raise ValueError(f"MeshNet: spatial_dims must be 1, 2 or 3, got {spatial_dims}.")
        if not dilations or any(int(d) < 1 for d in dilations):
            raise ValueError(f"MeshNet: dilations must be a non-empty sequence of positive ints, got {dilations}.")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"MeshNet: dropout must be in [0, 1), got {dropout}.")
        overrides = {"std_init": std_init, "prior_std": prior_std, "weight_norm": weight_norm, "bound_std": bound_std}
        self.bayes = (bayes if bayes is not None else BayesConfig()).replace(
            **{name: value for name, value in overrides.items() if value is not None}
        )
        self.spatial_dims = spatial_dims
        self.bayesian = bayesian
        conv = Conv[Conv.CONV, spatial_dims]
        # MONAI's 1-d dropout drops single elements; MeshNet drops whole channels in every dimension
        channel_dropout = nn.Dropout1d if spatial_dims == 1 else Dropout[Dropout.DROPOUT, spatial_dims]

        layers: list[nn.Module] = []
        c_in = in_channels
        for dilation in map(int, dilations):
            layers += [conv(c_in, channels, 3, padding=dilation, dilation=dilation), nn.ReLU(inplace=True)]
            if dropout > 0:
                layers.append(channel_dropout(dropout))
            c_in = channels
        layers.append(conv(c_in, out_channels, 1))
        self.layers = nn.Sequential(*layers)
        if bayesian:  # the Bayesian twin's means are the plain layers' initial weights
            bayesianize(self.layers, self.bayes, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
