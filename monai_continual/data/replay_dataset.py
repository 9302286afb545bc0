"""A dataset that mixes the current site's training items with the replay buffer (Karthik et al. Eq. 2)."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from typing import Any

from monai.data import CacheDataset, Dataset
from monai.transforms import apply_transform

from monai_continual.data.replay_buffer import ReplayBuffer

__all__ = ["ReplayDataset"]


class ReplayDataset(Dataset):
    """Current-site items plus replayed items of earlier sites, through the same MONAI transforms.

    With ``replay_fraction=None`` an epoch is every current item and every buffer item once (the loss of Karthik
    et al. Eq. 2 sums over both). With ``replay_fraction=r`` an epoch is every current item plus
    ``round(n_current * r / (1 - r))`` replayed items drawn without replacement from the buffer, cycling through it
    (re-drawn by :meth:`set_epoch`), so that a shuffled batch holds a fraction ``r`` of replay samples on average.
    Returned items carry ``"site"`` and ``"replay"`` (True for buffer items).

    Args:
        current: the current site's datalist items.
        buffer: a :class:`ReplayBuffer` (or a list of items) of earlier sites.
        transform: MONAI transforms applied to every item.
        replay_fraction: ``None`` or a fraction in [0, 1).
        site: the current site's name, for the ``"site"`` tag (``"current"`` when not given).
        cache: keep the transformed items, current and replayed, in memory (MONAI's ``CacheDataset``: up to the
            first random transform; the rest runs on every access).
        seed: seed of the replay draws.

    Example::

        >>> ds = ReplayDataset(data.items("hospital_b", "training"), buffer, transform=train_transforms)
        >>> loader = monai.data.DataLoader(ds, batch_size=2, shuffle=True)
    """

    def __init__(
        self,
        current: Sequence[dict[str, Any]],
        buffer: ReplayBuffer | Sequence[dict[str, Any]],
        transform: Callable | None = None,
        replay_fraction: float | None = None,
        site: str | None = None,
        cache: bool = False,
        seed: int = 0,
    ) -> None:
        if replay_fraction is not None and not 0.0 <= replay_fraction < 1.0:
            raise ValueError(f"ReplayDataset: replay_fraction must be in [0, 1) or None, got {replay_fraction}.")
        self.current = [dict(item, site=item.get("site", site or "current"), replay=False) for item in current]
        replay_items = buffer.items() if isinstance(buffer, ReplayBuffer) else [dict(i) for i in buffer]
        self.replay = [dict(item, replay=True) for item in replay_items]
        if not self.current:
            raise ValueError(f"ReplayDataset: the current site {site!r} has no training items.")
        self.transform = transform
        self.replay_fraction = replay_fraction
        self.seed = int(seed)
        cached = cache and transform is not None
        self._current_cache = CacheDataset(self.current, transform=transform, progress=False) if cached else None
        self._cache = CacheDataset(self.replay, transform=transform, progress=False) if cached and self.replay else None
        self._num_replay = self._replay_count()
        self.set_epoch(0)

    def _replay_count(self) -> int:
        if not self.replay:
            return 0
        if self.replay_fraction is None:
            return len(self.replay)
        r = self.replay_fraction
        return int(round(len(self.current) * r / (1 - r)))

    def set_epoch(self, epoch: int) -> None:
        """Re-draw which buffer items this epoch replays (only matters when ``replay_fraction`` is set)."""
        self._order: list[int] = []
        rng = random.Random(f"{self.seed}:{epoch}")
        rounds = math.ceil(self._num_replay / len(self.replay)) if self.replay else 0
        for _ in range(rounds):
            block = list(range(len(self.replay)))
            if self.replay_fraction is not None:
                rng.shuffle(block)
            self._order.extend(block)
        self._order = self._order[: self._num_replay]

    def __len__(self) -> int:
        return len(self.current) + self._num_replay

    def _transform(self, index: int) -> Any:
        if index < len(self.current):
            if self._current_cache is not None:
                return self._current_cache[index]
            item = self.current[index]
            return apply_transform(self.transform, item) if self.transform is not None else dict(item)
        replay_index = self._order[index - len(self.current)]
        if self._cache is not None:
            return self._cache[replay_index]
        item = self.replay[replay_index]
        return apply_transform(self.transform, item) if self.transform is not None else dict(item)
