"""A training dataset whose random transforms are seeded through one transform chain, whatever caching sits below."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from monai.data.utils import set_rnd
from torch.utils.data import Dataset

__all__ = ["ChainSeededDataset"]


class ChainSeededDataset(Dataset):
    """``dataset``'s items, with ``chain`` as the one randomizable thing a MONAI ``DataLoader`` worker seeds.

    MONAI's ``DataLoader`` seeds every randomizable attribute it finds in a dataset, one seed after another
    (``monai.data.utils.set_rnd``), and stops at an object that has ``set_random_state``. A cache under the chain
    (``CacheDataset``, ``PersistentDataset``, a replay dataset's caches) holds the chain's transforms again, so the
    walk would give them other seeds than an uncached dataset's, and a cache would change what the workers draw. This
    wrapper is seeded as a whole: it seeds ``chain`` once, exactly as an uncached ``Dataset(items, chain)`` is.

    Args:
        dataset: the items (any map-style dataset: cached, replayed or plain).
        chain: the transform chain whose random transforms ``dataset`` applies (the same transform objects).

    Example::

        >>> train = ChainSeededDataset(CacheDataset(items, transform=chain), chain)
        >>> loader = monai.data.DataLoader(train, batch_size=2, num_workers=4)
    """

    def __init__(self, dataset: Sequence[Any], chain: Any) -> None:
        self.dataset = dataset
        self.chain = chain

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        return self.dataset[index]

    def set_random_state(
        self, seed: int | None = None, state: np.random.RandomState | None = None
    ) -> ChainSeededDataset:
        if hasattr(self.chain, "set_random_state"):
            self.chain.set_random_state(seed=seed, state=state)
        elif seed is not None:  # a chain that is not Randomizable itself: MONAI's walk through its attributes
            set_rnd(self.chain, seed)
        return self
