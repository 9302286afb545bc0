"""Random training patches of a site from nnU-Net's own training loader, for curvature estimates."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["training_batches"]


def training_batches(trainer: Any, cases: int) -> tuple[list[tuple[torch.Tensor, Any]], int]:
    """At least ``cases`` patches (whole batches) drawn from ``trainer.dataloader_train``, on the trainer's device.

    Returns:
        ``(image, target)`` pairs (``target`` a list under deep supervision) and the number of patches drawn.

    Example::

        >>> batches, seen = training_batches(trainer, trainer.num_training_cases)
    """
    batches, seen = [], 0
    while seen < cases:
        batch = next(trainer.dataloader_train)
        target = batch["target"]
        target = [t.to(trainer.device) for t in target] if isinstance(target, list) else target.to(trainer.device)
        batches.append((batch["data"].to(trainer.device), target))
        seen += int(batch["data"].shape[0])
    return batches, seen
