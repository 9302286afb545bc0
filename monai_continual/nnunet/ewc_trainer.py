"""``nnUNetTrainerEWC``: nnU-Net's trainer with online elastic weight consolidation.

Every training step adds ``ewc_lambda/2 * sum_i F_i (w_i - w*_i)^2`` to the loss (``F``: the running Fisher of the
earlier sites, ``w*``: the weights training starts from); after the last epoch the trainer estimates its own site's
diagonal Fisher at the trained weights (:func:`~monai_continual.bayes.laplace.parameter_fisher`) on as many random
training patches as the site has cases. The nnU-Net executor sets the attributes from the stage and folds the
site's Fisher into the running one; the term is added in ``train_step`` only, so the validation loss stays the
data loss.
"""

from __future__ import annotations

from typing import Any

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from monai_continual.bayes.laplace import parameter_fisher
from monai_continual.losses.ewc import EWCLoss
from monai_continual.losses.quadratic import parameter_state
from monai_continual.nnunet.penalized_step import PenalizedStep
from monai_continual.nnunet.training_batches import training_batches

__all__ = ["nnUNetTrainerEWC"]


class nnUNetTrainerEWC(PenalizedStep, nnUNetTrainer):
    """nnUNetTrainer minimizing ``loss + ewc_lambda/2 * sum_i F_i (w_i - w*_i)^2`` in every training step.

    Attributes:
        ewc_lambda: the penalty's weight (class default 1; the nnU-Net executor sets the stage's). 0, or no
            ``ewc_fisher``, trains exactly as ``nnUNetTrainer``.
        ewc_fisher: the running Fisher of the earlier sites by parameter name (``None``: no penalty, a first site).
        ewc_anchor: ``w*`` by parameter name, taken at ``on_train_start`` unless set before.
        estimate_fisher: estimate this site's Fisher at the end of training, into ``fisher``.
        fisher: this site's Fisher after training (``None`` before).

    Example::

        >>> trainer = build_trainer("Dataset502_b", "3d_fullres", "all", "nnUNetTrainerEWC", "nnUNetPlans", device)
        >>> trainer.ewc_fisher = running_fisher_of_site_a
    """

    ewc_lambda: float = 1.0

    # nnU-Net records the constructor's named arguments (to rebuild a trainer from a checkpoint): no *args
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")) -> None:
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.ewc_lambda = float(type(self).ewc_lambda)
        self.ewc_fisher: dict | None = None
        self.ewc_anchor: dict | None = None
        self.estimate_fisher = True
        self.fisher: dict | None = None

    def _unwrapped(self) -> Any:
        return getattr(self.network, "_orig_mod", self.network)

    def on_train_start(self) -> None:
        super().on_train_start()
        if self.ewc_lambda and self.ewc_fisher is not None:
            network = self._unwrapped()
            if self.ewc_anchor is None:
                self.ewc_anchor = parameter_state(network)
            self.step_loss = EWCLoss(self.loss, network, self.ewc_anchor, self.ewc_fisher, self.ewc_lambda)

    def on_train_end(self) -> None:
        if self.estimate_fisher:  # before nnU-Net shuts its training loader down
            batches, _ = training_batches(self, len(self.do_split()[0]))
            self.fisher = {k: v.cpu() for k, v in parameter_fisher(self._unwrapped(), batches).items()}
        super().on_train_end()
