"""Names the nnU-Net command line lists in its help: our trainers and the strategies that run on nnU-Net sites.

This module imports nothing but the standard library, so that ``python -m monai_continual.nnunet --help`` can list
them without importing nnU-Net, torch or MONAI (which takes seconds). The classes themselves live in
:mod:`~monai_continual.nnunet.trainers` (``TRAINERS``) and the strategies' trainers in
:mod:`~monai_continual.nnunet.sites` (``SITE_STRATEGIES``); the tests check that the trainers match.

Example::

    >>> from monai_continual.nnunet.names import OUR_TRAINERS, SITE_STRATEGY_TRAINERS
    >>> "nnUNetTrainerBayesian" in OUR_TRAINERS
    True
    >>> SITE_STRATEGY_TRAINERS["vcl"]
    'nnUNetTrainerVCL'
"""

from __future__ import annotations

__all__ = ["NNUNET_TRAINER", "OUR_TRAINERS", "SITE_STRATEGY_TRAINERS", "SITE_STRATEGIES_WITH_ROUNDS"]

#: nnU-Net's own default trainer
NNUNET_TRAINER = "nnUNetTrainer"

#: the trainers this package registers with nnU-Net (``monai_continual.nnunet.trainers.TRAINERS``), in that order
OUR_TRAINERS: tuple[str, ...] = (
    "nnUNetTrainerBayesian",
    "nnUNetTrainerVCL",
    "nnUNetTrainerVCLUnbounded",
    "nnUNetTrainerReplay",
    "nnUNetTrainerFedProx",
    "nnUNetTrainerEWC",
    "nnUNetTrainerBayesian_short",
    "nnUNetTrainerVCL_short",
    "nnUNetTrainerReplay_short",
)

#: strategy that runs on nnU-Net sites -> the trainer of its stages (``nnunet.sites.SITE_STRATEGIES``)
SITE_STRATEGY_TRAINERS: dict[str, str] = {
    "single_weight_transfer": NNUNET_TRAINER,
    "cyclic_weight_transfer": NNUNET_TRAINER,
    "fine_tuning": NNUNET_TRAINER,
    "replay": "nnUNetTrainerReplay",
    "ewc": "nnUNetTrainerEWC",
    "vcl": "nnUNetTrainerVCL",
    "dwc": "nnUNetTrainerVCL",
    "federated_averaging": NNUNET_TRAINER,  # nnUNetTrainerFedProx for stages with a proximal_mu
}

#: the strategies for which ``--rounds`` counts something (cycles of cyclic transfer, rounds of DWC and FedAvg)
SITE_STRATEGIES_WITH_ROUNDS: tuple[str, ...] = ("cyclic_weight_transfer", "dwc", "federated_averaging")
