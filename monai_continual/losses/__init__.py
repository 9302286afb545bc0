"""Training losses: the ELBO of Bayesian networks and FedProx's proximal term."""

from __future__ import annotations

from monai_continual.losses.elbo import ElboExamples, ELBOLoss, voxels_per_item
from monai_continual.losses.proximal import ProximalLoss, proximal_anchor, proximal_term

__all__ = ["ELBOLoss", "ElboExamples", "voxels_per_item", "ProximalLoss", "proximal_anchor", "proximal_term"]
