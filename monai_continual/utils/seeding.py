"""Seeding every global generator at once.

Hand-written, not ``monai.utils.set_determinism``: that reduces the seed modulo 2**32 before seeding torch (our stage
seeds are larger, so every seeded stream would move) and switches cuDNN's benchmark mode off for the whole process.
"""

from __future__ import annotations

import random

import numpy as np
import torch

__all__ = ["seed_everything", "epoch_seed"]


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators.

    Example::

        >>> seed_everything(1234)
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch`` of a stage seeded with ``seed``: what a resumed stage reseeds with at each epoch.

    Example::

        >>> seed_everything(epoch_seed(7, 3))
    """
    return int(seed) * 1_000_003 + int(epoch)
