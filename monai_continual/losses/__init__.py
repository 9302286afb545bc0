"""Training losses: the ELBO of Bayesian networks, FedProx's proximal term and elastic weight consolidation."""

from __future__ import annotations

from monai_continual.losses.elbo import ElboExamples, ELBOLoss, voxels_per_item
from monai_continual.losses.ewc import EWCLoss, ewc_penalty, running_fisher
from monai_continual.losses.proximal import ProximalLoss, proximal_anchor, proximal_term
from monai_continual.losses.quadratic import PenalizedLoss, anchored_quadratic, parameter_state

__all__ = ["ELBOLoss", "ElboExamples", "voxels_per_item", "ProximalLoss", "proximal_anchor", "proximal_term",
           "EWCLoss", "ewc_penalty", "running_fisher", "PenalizedLoss", "anchored_quadratic", "parameter_state"]
