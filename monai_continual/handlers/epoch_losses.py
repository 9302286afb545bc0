"""Per-epoch means of the training loss and of the ELBO's two terms, kept in the epoch checkpoint.

Hand-written: MONAI's ``MetricLogger`` keeps per-iteration losses, not the ELBO's data term and KL / N as epoch means
that a resumed stage must report unchanged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from monai.utils import IgniteInfo, min_version, optional_import

if TYPE_CHECKING:
    from ignite.engine import Engine, Events
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")
    Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")

import torch

from monai_continual.losses import ELBOLoss
from monai_continual.utils.distributed import mean_over_ranks

__all__ = ["EpochLosses"]


class EpochLosses:
    """Per epoch, the mean training loss and, for the ELBO, its mean data term and KL / N; and the std statistics of
    a Bayesian stage's start (``std``, set by whoever calibrates them). ``state_dict``/``load_state_dict`` let an
    epoch checkpoint keep them, so that a resumed stage reports the same.

    Args:
        loss: the trainer's loss function (an :class:`~monai_continual.losses.ELBOLoss` adds its two terms).
        all_ranks: under DistributedDataParallel, record the mean over every process's batches (each process has as
            many batches per epoch as the others, so the mean of their means); every process must then attach it.

    Example::

        >>> losses = EpochLosses(loss)
        >>> losses.attach(trainer); trainer.run(); losses.history  # [(loss, data term, KL / N), ...] per epoch
    """

    def __init__(self, loss: Any, all_ranks: bool = False) -> None:
        self.loss = loss
        self.all_ranks = all_ranks
        self.history: list[tuple[float, ...]] = []
        self.std: dict[str, Any] = {}
        self._sums: list[float] = []
        self._count = 0

    def state_dict(self) -> dict[str, Any]:
        return {"history": [list(h) for h in self.history], "std": self.std}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = [tuple(h) for h in state["history"]]
        self.std = dict(state["std"])

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.step)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch)

    def step(self, engine: Engine) -> None:
        output = engine.state.output
        values = [float(torch.as_tensor(output["loss"]).detach()) if isinstance(output, dict) else float("nan")]
        if isinstance(self.loss, ELBOLoss) and self.loss.last_data_loss is not None:
            values += [float(self.loss.last_data_loss), float(self.loss.last_kl) / self.loss.num_examples]
        self._sums = [a + b for a, b in zip(self._sums, values)] if self._sums else values
        self._count += 1

    def epoch(self, engine: Engine) -> None:
        if self._count:
            means = [v / self._count for v in self._sums]
            self.history.append(tuple(mean_over_ranks(means) if self.all_ranks else means))
        self._sums, self._count = [], 0
