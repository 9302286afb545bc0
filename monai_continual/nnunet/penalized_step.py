"""A training step on the data loss plus a penalty, with nnU-Net's validation kept on its data loss alone."""

from __future__ import annotations

from typing import Any

__all__ = ["PenalizedStep"]


class PenalizedStep:
    """Mixin of an ``nnUNetTrainer`` subclass: while ``step_loss`` is set (e.g. a
    :class:`~monai_continual.losses.quadratic.PenalizedLoss` built in ``on_train_start``), ``train_step`` trains on it
    instead of ``self.loss``; ``validation_step`` and everything else see the data loss.

    Example::

        >>> class nnUNetTrainerMine(PenalizedStep, nnUNetTrainer): ...
    """

    step_loss: Any = None

    def train_step(self, batch: dict) -> dict:
        if self.step_loss is None:
            return super().train_step(batch)
        data_loss, self.loss = self.loss, self.step_loss
        try:
            return super().train_step(batch)
        finally:
            self.loss = data_loss
