"""Short-schedule variants of every trainer (nnU-Net's naming: ``<trainer>_short``) for tests and demos.

Two epochs of ten iterations and two validation iterations, with ``checkpoint_latest.pth`` written after every epoch
(so ``train --c`` resumes them); the launcher's ``--num-epochs`` and ``--iterations-per-epoch`` shorten (or lengthen)
any trainer the same way.
"""

from __future__ import annotations

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from monai_continual.nnunet.bayesian_trainer import nnUNetTrainerBayesian, nnUNetTrainerVCL
from monai_continual.nnunet.replay_trainer import nnUNetTrainerReplay

__all__ = [
    "SHORT_SCHEDULE",
    "shorten",
    "nnUNetTrainerBayesian_short",
    "nnUNetTrainerVCL_short",
    "nnUNetTrainerReplay_short",
]

SHORT_SCHEDULE = {"num_epochs": 2, "num_iterations_per_epoch": 10, "num_val_iterations_per_epoch": 2, "save_every": 1}


def shorten(trainer: nnUNetTrainer, num_epochs: int | None = None, iterations_per_epoch: int | None = None,
            val_iterations_per_epoch: int | None = None, save_every: int | None = None) -> nnUNetTrainer:
    """Change a trainer's schedule before it is initialized (the learning-rate schedule is built from it).

    nnU-Net writes ``checkpoint_latest.pth`` every ``save_every`` epochs (its own default: 50); a schedule shorter
    than that gets ``save_every`` capped at its epochs, so that it too leaves a checkpoint to resume from (nnU-Net
    skips the one after the last epoch, which ``checkpoint_final.pth`` replaces).

    Example::

        >>> shorten(trainer, num_epochs=5, iterations_per_epoch=20, save_every=1)
    """
    if trainer.was_initialized:
        raise RuntimeError(f"{type(trainer).__name__}: the schedule must be set before initialize().")
    for attribute, value in (("num_epochs", num_epochs), ("num_iterations_per_epoch", iterations_per_epoch),
                             ("num_val_iterations_per_epoch", val_iterations_per_epoch), ("save_every", save_every)):
        if value is not None:
            if int(value) < 1:
                raise ValueError(f"{type(trainer).__name__}: {attribute} must be >= 1, got {value}.")
            setattr(trainer, attribute, int(value))
    trainer.save_every = max(1, min(trainer.save_every, trainer.num_epochs - 1))
    return trainer


class _Short:
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")) -> None:
        super().__init__(plans, configuration, fold, dataset_json, device)
        shorten(self, SHORT_SCHEDULE["num_epochs"], SHORT_SCHEDULE["num_iterations_per_epoch"],
                SHORT_SCHEDULE["num_val_iterations_per_epoch"], SHORT_SCHEDULE["save_every"])


class nnUNetTrainerBayesian_short(_Short, nnUNetTrainerBayesian):
    """nnUNetTrainerBayesian on the short schedule."""


class nnUNetTrainerVCL_short(_Short, nnUNetTrainerVCL):
    """nnUNetTrainerVCL on the short schedule."""


class nnUNetTrainerReplay_short(_Short, nnUNetTrainerReplay):
    """nnUNetTrainerReplay on the short schedule."""
