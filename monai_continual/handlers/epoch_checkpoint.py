"""Atomic per-epoch checkpoints of a stage, kept on the site's own disk."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from monai.utils import IgniteInfo, min_version, optional_import
from torch import nn

if TYPE_CHECKING:
    from ignite.engine import Engine, Events
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")
    Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")

from monai_continual.utils.atomic import atomic_write

__all__ = ["EpochCheckpoint"]


class EpochCheckpoint:
    """Save network, optimizer, epoch and extra handler state at every epoch end (atomically, site-local).

    MONAI's ``CheckpointSaver`` writes with ``atomic=False``: a process killed mid-write leaves a truncated file
    that the next start cannot load. This handler writes a temporary file and renames it.

    Args:
        path: the checkpoint file (on the site's own disk; never sent to another site).
        network: the network.
        optimizer: its optimizer.
        extra: further handlers with ``state_dict``/``load_state_dict`` (e.g. a :class:`PlateauStopper`).

    Example::

        >>> checkpoint = EpochCheckpoint("site/checkpoint_stage0003.pt", net, optimizer)
        >>> resumed = checkpoint.load(); checkpoint.attach(trainer)
    """

    def __init__(
        self,
        path: str | os.PathLike,
        network: nn.Module,
        optimizer: torch.optim.Optimizer,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.path = Path(path)
        self.network = network
        self.optimizer = optimizer
        self.extra = extra or {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        state = {
            "network": self.network.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": engine.state.epoch,
            "iteration": engine.state.iteration,
            "extra": {k: v.state_dict() for k, v in self.extra.items()},
        }
        with atomic_write(self.path) as tmp:
            torch.save(state, tmp)

    def load(self) -> dict[str, Any] | None:
        """Restore from the checkpoint if it exists (only this site's own file, read with ``weights_only=True``)."""
        if not self.path.exists():
            return None
        state = torch.load(self.path, map_location="cpu", weights_only=True)
        self.network.load_state_dict(state["network"])
        self.optimizer.load_state_dict(state["optimizer"])
        for key, handler in self.extra.items():
            handler.load_state_dict(state["extra"][key])
        return state
