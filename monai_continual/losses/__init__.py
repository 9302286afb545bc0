"""Training losses for Bayesian networks."""

from __future__ import annotations

from monai_continual.losses.elbo import ElboExamples, ELBOLoss, voxels_per_item

__all__ = ["ELBOLoss", "ElboExamples", "voxels_per_item"]
