"""Stops a stage whose loss or weights turn non-finite, before its epoch checkpoint could save the damage.

Hand-written: ignite's ``TerminateOnNan`` ends the run quietly and lets the completion handlers run (which would
restore and publish); a diverged stage must raise and publish nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from monai.utils import IgniteInfo, min_version, optional_import

if TYPE_CHECKING:
    from ignite.engine import Engine, Events
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")
    Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")

import torch
from torch import nn

from monai_continual.strategies import NonFiniteTrainingError, Stage
from monai_continual.strategies.executor import check_finite_weights
from monai_continual.utils.distributed import on_every_rank

__all__ = ["FiniteGuard"]


class FiniteGuard:
    """Raises :class:`~monai_continual.strategies.NonFiniteTrainingError` at the first non-finite loss, and at an
    epoch's end when the network's weights are non-finite. Attach it before the epoch checkpoint.

    Args:
        stage: the stage being trained (named in the error).
        network: the network being trained.
        all_ranks: under DistributedDataParallel, stop every process when the loss of any is non-finite (a process
            stopping alone would leave the others waiting in the next gradient all-reduce); every process must then
            attach it.

    Example::

        >>> FiniteGuard(stage, network).attach(trainer)
    """

    def __init__(self, stage: Stage, network: nn.Module, all_ranks: bool = False) -> None:
        self.stage = stage
        self.network = network
        self.all_ranks = all_ranks

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.check_weights)

    def check_weights(self, engine: Engine | None = None) -> None:
        check_finite_weights(self.network.state_dict(), self.stage)

    def __call__(self, engine: Engine) -> None:
        output = engine.state.output
        loss = output.get("loss") if isinstance(output, dict) else None
        finite = loss is None or bool(torch.isfinite(torch.as_tensor(loss)).all())
        if not (on_every_rank(finite) if self.all_ranks else finite):
            value = "non-finite in another process" if finite else float(torch.as_tensor(loss).detach())
            raise NonFiniteTrainingError(
                f"site {self.stage.site!r}, stage {self.stage.number} ({self.stage.label}): the loss became "
                f"{value} at epoch {engine.state.epoch}, iteration "
                f"{engine.state.iteration}; nothing was published. Fix the cause (learning rate, data) and run again: "
                "the stage resumes from its last finished epoch."
            )
