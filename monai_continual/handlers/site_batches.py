"""A site's training ``(image, label)`` batches, one item at a time, for the Laplace std of a Bayesian stage."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from monai.data import DataLoader, list_data_collate
from torch import nn

__all__ = ["site_batches"]


def site_batches(dataset: Any, network: nn.Module) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Every item of ``dataset`` as an ``(image, label)`` batch on ``network``'s device (an item of several patches,
    e.g. from ``RandCropByPosNegLabeld``, is one batch of them).

    Example::

        >>> calibrate_posterior_std(bnet, lambda: site_batches(train_ds, bnet))
    """
    device = next(network.parameters()).device
    for batch in DataLoader(dataset, batch_size=1, num_workers=0, collate_fn=list_data_collate):
        yield batch["image"].to(device), batch["label"].to(device)
