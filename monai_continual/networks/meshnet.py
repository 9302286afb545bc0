"""MeshNet: the dilated fully convolutional segmentation network of McClure et al. (Table 1)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from monai_continual.bayes.bayes_conv import BayesConv1d, BayesConv2d, BayesConv3d

__all__ = ["MeshNet"]

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_BAYES_CONV = {1: BayesConv1d, 2: BayesConv2d, 3: BayesConv3d}
_DROPOUT = {1: nn.Dropout1d, 2: nn.Dropout2d, 3: nn.Dropout3d}


class MeshNet(nn.Module):
    """Stack of 3^d dilated convolutions with ReLU, then a 1^d classifier; spatial size is kept throughout.

    With the defaults this is Table 1 of McClure et al. (2018): seven 96-channel 3x3x3 convolutions with dilations
    1, 1, 1, 2, 4, 8, 1 (padding equal to the dilation) and a 1x1x1 classifier. With ``bayesian=True`` every
    convolution, the classifier included, is an FFG layer (weight-normalized means, std initialized to 1e-3 and a
    N(0, 1) prior unless told otherwise), trained with local reparameterization.

    Args:
        spatial_dims: 1, 2 or 3.
        in_channels: input channels.
        out_channels: classes (logits are returned; apply softmax outside).
        channels: filters per hidden layer (96 in the paper; smaller is fine on a CPU).
        dilations: one dilation per hidden layer.
        bayesian: build the Bayesian twin.
        dropout: channel dropout after each hidden ReLU (0 disables it).
        std_init: initial posterior std of the Bayesian layers.
        prior_std: prior std of the Bayesian layers (prior mean 0).
        weight_norm: weight-normalize the means of the Bayesian layers.
        bound_std: keep std <= prior std by construction (for DWC site training).

    Example::

        >>> net = MeshNet(3, in_channels=1, out_channels=4, channels=16, bayesian=True)
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
        std_init: float = 1e-3,
        prior_std: float = 1.0,
        weight_norm: bool = True,
        bound_std: bool = False,
    ) -> None:
        super().__init__()
        if spatial_dims not in _CONV:
            raise ValueError(f"MeshNet: spatial_dims must be 1, 2 or 3, got {spatial_dims}.")
        if not dilations or any(int(d) < 1 for d in dilations):
            raise ValueError(f"MeshNet: dilations must be a non-empty sequence of positive ints, got {dilations}.")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"MeshNet: dropout must be in [0, 1), got {dropout}.")
        self.spatial_dims = spatial_dims
        self.bayesian = bayesian

        def conv(c_in: int, c_out: int, kernel: int, dilation: int) -> nn.Module:
            if bayesian:
                return _BAYES_CONV[spatial_dims](
                    c_in,
                    c_out,
                    kernel,
                    padding=dilation * (kernel // 2),
                    dilation=dilation,
                    std_init=std_init,
                    prior_std=prior_std,
                    weight_norm=weight_norm,
                    bound_std=bound_std,
                )
            return _CONV[spatial_dims](c_in, c_out, kernel, padding=dilation * (kernel // 2), dilation=dilation)

        layers: list[nn.Module] = []
        c_in = in_channels
        for dilation in dilations:
            layers += [conv(c_in, channels, 3, int(dilation)), nn.ReLU(inplace=True)]
            if dropout > 0:
                layers.append(_DROPOUT[spatial_dims](dropout))
            c_in = channels
        layers.append(conv(c_in, out_channels, 1, 1))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
