"""Adds a site's training items to a replay buffer when training there completes, and saves the buffer."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from monai.utils import IgniteInfo, min_version, optional_import

from monai_continual.data.replay_buffer import ReplayBuffer, ReplayPolicy
from monai_continual.handlers._events import resolve_event
from monai_continual.utils.names import check_site_name

if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")

__all__ = ["ReplayBufferHandler"]


class ReplayBufferHandler:
    """When training at ``site`` completes, offer the site's items to ``buffer`` (up to K kept) and save it.

    Works in any MONAI ``SupervisedTrainer``: the trainer needs to know nothing of sites.

    Args:
        buffer: the replay buffer (or a directory holding a saved one, loaded on attach; a new buffer is made when
            the directory has none).
        site: the name of the site being trained on (``^[A-Za-z0-9_-]+$``: an exported buffer has a folder per site).
        items: the site's training datalist items.
        directory: where to save the buffer afterwards (the site's own disk); ``None`` keeps it in memory only.
        event: the ignite event that triggers it.
        capacity_per_site, policy, seed: used when a new buffer is made from a directory.

    Example::

        >>> ReplayBufferHandler(buffer, site="hospital_b", items=train_items, directory="replay/").attach(trainer)
    """

    def __init__(
        self,
        buffer: ReplayBuffer | str | os.PathLike,
        site: str,
        items: Sequence[dict[str, Any]],
        directory: str | os.PathLike | None = None,
        event: Any = "COMPLETED",
        capacity_per_site: int = 20,
        policy: ReplayPolicy | str = ReplayPolicy.RANDOM,
        seed: int = 0,
    ) -> None:
        site = check_site_name(site, "ReplayBufferHandler: site")
        if isinstance(buffer, ReplayBuffer):
            self.buffer = buffer
        else:
            directory = directory if directory is not None else buffer
            manifest = os.path.join(str(buffer), "replay_manifest.json")
            self.buffer = (
                ReplayBuffer.load(buffer) if os.path.exists(manifest) else ReplayBuffer(capacity_per_site, policy, seed)
            )
        if not items:
            raise ValueError(f"ReplayBufferHandler: site {site!r} has no training items to remember.")
        self.site = str(site)
        self.items = [dict(i) for i in items]
        self.directory = directory
        self.event = resolve_event(event, "ReplayBufferHandler")

    def attach(self, engine: Engine) -> None:
        if not engine.has_event_handler(self, self.event):
            engine.add_event_handler(self.event, self)

    def __call__(self, engine: Engine) -> None:
        self.buffer.add_site(self.site, self.items)
        if self.directory is not None:
            self.buffer.save(self.directory)
        engine.logger.info(f"replay buffer: kept {len(self.buffer.site_items(self.site))} items of site {self.site!r}")

    def state_dict(self) -> dict[str, Any]:
        return self.buffer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.buffer.load_state_dict(state)
