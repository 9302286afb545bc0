"""The evidence lower bound (negated) as a training loss for Bayesian networks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Callable

import torch
from monai.utils import StrEnum
from torch import nn
from torch.nn.modules.loss import _Loss

from monai_continual.bayes.kl import kl_divergence

__all__ = ["ELBOLoss", "ElboExamples", "voxels_per_item"]


class ElboExamples(StrEnum):
    """What the ELBO's N counts: every labelled voxel (``voxels``: training cases x voxels per case as the loss sees
    them, the likelihood being a product over voxels), or whole ``volumes`` (training cases)."""

    VOXELS = "voxels"
    VOLUMES = "volumes"


class ELBOLoss(_Loss):
    """``loss = data_loss(input, target) + kl_weight * KL(q || prior) / num_examples``.

    This is the negative ELBO of McClure et al. Eq. 6-7 divided by the number of training examples N:
    ``-ELBO / N = -(1/M) sum_m log p(y_m | x_m, w_m) + KL / N`` for a mini-batch of M examples. So:

    - the data term is the usual **mean over the mini-batch** (what MONAI losses return with ``reduction="mean"``);
      do not multiply it by N;
    - the KL is **divided by N, the number of training examples at this site**, not by the batch size and not by
      the number of batches. Dividing by the number of batches, as some libraries do, weighs the prior N / (N / M) = M
      times more, i.e. by the batch size.
    - for segmentation the examples are **voxels** (the package's default everywhere): the categorical likelihood is
      a product over voxels and the data term averages over them, so N = training volumes x voxels per volume (per
      patch when training on patches). Counting volumes (N = tens) weighs the prior by the number of voxels more and
      pins every site to its prior; McClure et al. counted 32^3 patches.
    - to give the data the weight of a single example (the paper's DWC fine-tuning step), use ``num_examples=1``.
    - ``kl_weight`` scales the KL further (1 is the true ELBO; < 1 is a "cold posterior"/KL annealing).

    Args:
        data_loss: the per-example data loss with mean reduction, e.g. ``monai.losses.DiceCELoss(softmax=True)``.
        model: the Bayesian network whose layers' KL is added (held by reference, not registered as a submodule).
        num_examples: N, the number of training examples at the site (> 0).
        kl_weight: extra multiplier of the KL term (>= 0).

    Example::

        >>> net = MeshNet(3, 1, 4, channels=16, bayesian=True)
        >>> voxels = len(train_ds) * voxels_per_item(train_ds[0])  # N counts voxels (see above)
        >>> loss_fn = ELBOLoss(torch.nn.CrossEntropyLoss(), net, num_examples=voxels)
        >>> loss = loss_fn(net(images), labels)
    """

    def __init__(
        self,
        data_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        model: nn.Module,
        num_examples: int | float,
        kl_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if not num_examples or float(num_examples) <= 0:
            raise ValueError(
                f"ELBOLoss: num_examples must be > 0 (the training examples at the site), got {num_examples}."
            )
        if float(kl_weight) < 0:
            raise ValueError(f"ELBOLoss: kl_weight must be >= 0, got {kl_weight}.")
        self.data_loss = data_loss
        object.__setattr__(self, "_model", model)  # not a submodule: the network's parameters stay its own
        self.num_examples = float(num_examples)
        self.kl_weight = float(kl_weight)
        self.last_data_loss: torch.Tensor | None = None
        self.last_kl: torch.Tensor | None = None

    @property
    def model(self) -> nn.Module:
        return self._model

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        data = self.data_loss(input, target)
        kl = kl_divergence(self._model)
        self.last_data_loss, self.last_kl = data.detach(), kl.detach()
        return data + self.kl_weight * kl / self.num_examples


def voxels_per_item(sample: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> int:
    """Voxels one training item contributes to the data term: its label's spatial size, times the crops when a
    transform returns several (e.g. ``RandCropByPosNegLabeld``). N of the ELBO counting voxels is the training items
    times this.

    Example::

        >>> voxels_per_item(train_transform(items[0]))  # e.g. 16 * 20 * 16
    """
    crops = sample if isinstance(sample, (list, tuple)) else [sample]
    return int(crops[0]["label"].shape[1:].numel()) * len(crops)
