"""Stops training at a validation plateau and restores the best weights (single weight transfer).

Hand-written, not MONAI's ``EarlyStopHandler``: that only stops; it neither snapshots nor restores the best weights,
and its state (ignite's counter and best score) cannot carry them or the score history in an epoch checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from monai.utils import IgniteInfo, min_version, optional_import
from torch import nn

if TYPE_CHECKING:
    from ignite.engine import Engine, Events
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")
    Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")

__all__ = ["PlateauStopper"]


class PlateauStopper:
    """Stop when a validation score has not improved for ``patience`` epochs and restore the best weights.

    Args:
        score_fn: returns the validation score of the current network (higher is better).
        network: the network to snapshot and restore.
        patience: epochs without improvement before stopping.
        min_delta: smallest change that counts as an improvement.
    """

    def __init__(
        self, score_fn: Callable[[], float], network: nn.Module, patience: int, min_delta: float = 1e-4
    ) -> None:
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
        return {
            "best": self.best,
            "bad_epochs": self.bad_epochs,
            "best_state": self.best_state,
            "history": self.history,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.bad_epochs = float(state["best"]), int(state["bad_epochs"])
        self.best_state, self.history = state.get("best_state"), list(state.get("history", []))
