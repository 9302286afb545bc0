"""A shuffling sampler whose order depends only on the seed and the epoch, so a resumed run repeats it exactly."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

__all__ = ["EpochSampler"]


class EpochSampler(Sampler[int]):
    """Yields a permutation of ``range(n)`` drawn from ``(seed, epoch)``; every ``iter()`` is the next epoch.

    Setting :attr:`epoch` before a resumed run makes the order of every following epoch identical to an
    uninterrupted run's, whenever the data loader's iterator is created.

    Example::

        >>> sampler = EpochSampler(len(dataset), seed=3)
        >>> loader = DataLoader(dataset, batch_size=2, sampler=sampler)
    """

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True, epoch: int = 0) -> None:
        self.n = int(n)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        self.epoch += 1
        order = torch.randperm(self.n, generator=generator) if self.shuffle else torch.arange(self.n)
        return iter(order.tolist())

    def __len__(self) -> int:
        return self.n
