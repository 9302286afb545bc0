"""``nnUNetTrainerFedProx``: nnU-Net's trainer whose every training step adds FedProx's proximal term.

FedProx (Li et al. 2020) trains a site's round on ``h(w) = F(w) + mu/2 ||w - w^t||^2``, ``w^t`` the weights the
round started from: here the network's weights when training starts (the start weights a federated or continual
stage loaded after ``initialize()``, or ``--init-weights``). The term is added to the loss of ``train_step`` only,
so nnU-Net's validation loss stays its data loss.
"""

from __future__ import annotations

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from monai_continual.losses.proximal import ProximalLoss, proximal_anchor
from monai_continual.nnunet.penalized_step import PenalizedStep

__all__ = ["nnUNetTrainerFedProx"]


class nnUNetTrainerFedProx(PenalizedStep, nnUNetTrainer):
    """nnUNetTrainer minimizing ``loss + proximal_mu/2 ||w - w_start||^2`` in every training step.

    Attributes:
        proximal_mu: FedProx's mu (class default 0.01; the nnU-Net executor sets the stage's). 0 trains exactly as
            ``nnUNetTrainer``.
        proximal_anchor: the start weights by parameter name, taken at ``on_train_start`` unless set before.

    Example::

        python -m monai_continual.nnunet train 502 3d_fullres all -tr nnUNetTrainerFedProx --init-weights global.st
    """

    proximal_mu: float = 0.01

    # nnU-Net records the constructor's named arguments (to rebuild a trainer from a checkpoint): no *args
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")) -> None:
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.proximal_mu = float(type(self).proximal_mu)
        self.proximal_anchor: dict | None = None

    def on_train_start(self) -> None:
        super().on_train_start()
        if self.proximal_mu:
            if self.proximal_anchor is None:
                self.proximal_anchor = proximal_anchor(self.network)
            self.step_loss = ProximalLoss(self.loss, self.network, self.proximal_anchor, self.proximal_mu)
