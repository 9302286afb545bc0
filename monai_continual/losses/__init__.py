"""Training losses for Bayesian networks."""

from __future__ import annotations

from monai_continual.losses.elbo import ELBOLoss

__all__ = ["ELBOLoss"]
