"""Small ignite handlers the site-aware trainer attaches to every stage: seeding, checkpoints, plateau, progress."""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from monai.utils import IgniteInfo, min_version, optional_import
from torch import nn
from tqdm.auto import tqdm

from monai_continual.utils.atomic import atomic_write

if TYPE_CHECKING:
    from ignite.engine import Engine, Events
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")
    Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")

__all__ = ["seed_everything", "EpochSeeder", "EpochCheckpoint", "PlateauStopper", "ProgressBar"]


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class EpochSeeder:
    """At every epoch start, seed the global generators (and a Randomizable transform) from (seed, epoch).

    Everything random in an epoch (Bayesian noise, augmentation) then depends only on the epoch number, so a run
    resumed at an epoch boundary repeats what an uninterrupted run would have done.
    """

    def __init__(self, seed: int, transform: Any = None) -> None:
        self.seed = int(seed)
        self.transform = transform

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        epoch_seed = self.seed * 1_000_003 + engine.state.epoch
        seed_everything(epoch_seed)
        if hasattr(self.transform, "set_random_state"):
            self.transform.set_random_state(seed=epoch_seed % 2**32)


class PlateauStopper:
    """Stop when a validation score has not improved for ``patience`` epochs and restore the best weights.

    Args:
        score_fn: returns the validation score of the current network (higher is better).
        network: the network to snapshot and restore.
        patience: epochs without improvement before stopping.
        min_delta: smallest change that counts as an improvement.
    """

    def __init__(self, score_fn: Callable[[], float], network: nn.Module, patience: int, min_delta: float = 1e-4) -> None:
        if patience < 1:
            raise ValueError(f"PlateauStopper: patience must be >= 1, got {patience}.")
        self.score_fn = score_fn
        self.network = network
        self.patience = patience
        self.min_delta = min_delta
        self.best = -float("inf")
        self.bad_epochs = 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.history: list[float] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)
        engine.add_event_handler(Events.COMPLETED, self.restore_best)

    def __call__(self, engine: Engine) -> None:
        score = float(self.score_fn())
        self.history.append(score)
        if score > self.best + self.min_delta:
            self.best, self.bad_epochs = score, 0
            self.best_state = {k: v.detach().clone() for k, v in self.network.state_dict().items()}
        else:
            self.bad_epochs += 1
            if self.bad_epochs >= self.patience:
                engine.logger.info(f"validation plateau after epoch {engine.state.epoch} (best {self.best:.4f})")
                engine.terminate()

    def restore_best(self, engine: Engine | None = None) -> None:
        if self.best_state is not None:
            self.network.load_state_dict(self.best_state)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad_epochs": self.bad_epochs, "best_state": self.best_state, "history": self.history}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.bad_epochs = float(state["best"]), int(state["bad_epochs"])
        self.best_state, self.history = state.get("best_state"), list(state.get("history", []))


class EpochCheckpoint:
    """Save network, optimizer, epoch and extra handler state at every epoch end (atomically, site-local)."""

    def __init__(self, path: str | os.PathLike, network: nn.Module, optimizer: torch.optim.Optimizer, extra: dict[str, Any] | None = None) -> None:
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


class ProgressBar:
    """A tqdm bar over a stage's iterations with the running loss."""

    def __init__(self, description: str, disable: bool = False) -> None:
        self.description = description
        self.disable = disable
        self.bar: tqdm | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._step)
        engine.add_event_handler(Events.COMPLETED, self._close)
        engine.add_event_handler(Events.TERMINATE, self._close)

    def _start(self, engine: Engine) -> None:
        total = engine.state.max_epochs * engine.state.epoch_length
        self.bar = tqdm(total=total, initial=engine.state.iteration, desc=self.description, leave=False, disable=self.disable)

    def _step(self, engine: Engine) -> None:
        if self.bar is not None:
            self.bar.update(1)
            loss = engine.state.output
            loss = loss[0].get("loss") if isinstance(loss, list) and loss and isinstance(loss[0], dict) else (loss.get("loss") if isinstance(loss, dict) else None)
            if loss is not None:
                self.bar.set_postfix(loss=f"{float(torch.as_tensor(loss).detach()):.4f}", epoch=engine.state.epoch)

    def _close(self, engine: Engine) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
