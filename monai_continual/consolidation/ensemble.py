"""Ensembles of site models: the mean of the members' output probabilities."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.utils import StrEnum
from torch import nn

from monai_continual.bayes.mc_inferer import Activation
from monai_continual.utils.choices import look_up_choice

__all__ = ["EnsembleModel", "EnsembleOutput"]


class EnsembleOutput(StrEnum):
    """``probs``: the mean probabilities; ``log``: their log (for steps that expect logits)."""

    PROBS = "probs"
    LOG = "log"


class EnsembleModel(nn.Module):
    """Average the softmax (or sigmoid) probabilities of several networks (Chang et al.'s and McClure et al.'s
    ensemble baseline of single-site models).

    The output is the mean probability map, of the members' output shape. Where a downstream step expects logits
    (e.g. a loss, or MONAI post-transforms with ``softmax=True``), use ``output="log"``: the log of the mean
    probabilities, whose softmax is the mean probabilities again.

    Args:
        models: the member networks (same output shape).
        activation: ``"softmax"`` over channels or ``"sigmoid"``.
        output: ``"probs"`` or ``"log"``.

    Example::

        >>> ensemble = EnsembleModel([net_site_a, net_site_b, net_site_c]).eval()
        >>> probs = SlidingWindowInferer((64, 64, 64))(image, ensemble)
    """

    def __init__(
        self,
        models: Sequence[nn.Module],
        activation: Activation | str = Activation.SOFTMAX,
        output: EnsembleOutput | str = EnsembleOutput.PROBS,
    ) -> None:
        super().__init__()
        if len(models) == 0:
            raise ValueError("EnsembleModel: needs at least one model.")
        self.members = nn.ModuleList(models)
        self.activation = look_up_choice(activation, Activation, "EnsembleModel: activation")
        self.output = look_up_choice(output, EnsembleOutput, "EnsembleModel: output")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = None
        for index, member in enumerate(self.members):
            logits = member(x)
            probs = torch.softmax(logits, dim=1) if self.activation == Activation.SOFTMAX else torch.sigmoid(logits)
            if total is not None and probs.shape != total.shape:
                raise ValueError(
                    f"EnsembleModel: member {index} outputs shape {tuple(probs.shape)}, member 0 {tuple(total.shape)}."
                )
            total = probs if total is None else total + probs
        mean = total / len(self.members)
        return mean if self.output == EnsembleOutput.PROBS else torch.log(mean.clamp_min(1e-12))
