"""A shuffling sampler whose order depends only on the seed and the epoch, so a resumed run repeats it exactly."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

__all__ = ["EpochSampler"]


class EpochSampler(Sampler[int]):
    """Yields a permutation of ``range(n)`` drawn from ``(seed, epoch)``; every ``iter()`` is the next epoch.

    Setting :attr:`epoch` before a resumed run makes the order of every following epoch identical to an
    uninterrupted run's, whenever the data loader's iterator is created.

    With ``world_size`` processes (DistributedDataParallel) every process draws the same permutation and takes every
    ``world_size``-th index from position ``rank``, as ``torch.utils.data.DistributedSampler`` does: the shares are
    disjoint and together cover the epoch. The permutation is first padded with its own beginning to a multiple of
    ``world_size``, so every process has ``ceil(n / world_size)`` indices, and so the same number of batches (a
    process with fewer would leave the others waiting in the gradient all-reduce).

    Args:
        n: the dataset's length.
        seed: the seed of every epoch's permutation.
        shuffle: ``False``: ``0 .. n-1`` in order.
        epoch: the next epoch.
        rank: this process's rank.
        world_size: the number of processes sharing the epoch.

    Example::

        >>> sampler = EpochSampler(len(dataset), seed=3)
        >>> loader = DataLoader(dataset, batch_size=2, sampler=sampler)
        >>> shares = [list(EpochSampler(5, seed=3, rank=r, world_size=2)) for r in (0, 1)]  # 3 indices each
    """

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True, epoch: int = 0, rank: int = 0,
                 world_size: int = 1) -> None:
        if not 0 <= int(rank) < int(world_size):
            raise ValueError(f"EpochSampler: rank must be in [0, world_size), got {rank} and {world_size}.")
        self.n = int(n)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.epoch = int(epoch)
        self.rank = int(rank)
        self.world_size = int(world_size)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        self.epoch += 1
        order = (torch.randperm(self.n, generator=generator) if self.shuffle else torch.arange(self.n)).tolist()
        if self.world_size > 1 and order:
            total = len(self) * self.world_size
            order = (order * math.ceil(total / self.n))[:total][self.rank :: self.world_size]
        return iter(order)

    def __len__(self) -> int:
        return math.ceil(self.n / self.world_size)
