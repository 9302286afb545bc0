"""Combining what sites learned: posteriors and their files, DWC, FedAvg and ensembles (plain PyTorch)."""

from __future__ import annotations

from monai_continual.consolidation.averaging import weighted_average
from monai_continual.consolidation.dwc import FALLBACKS, consolidate_dwc
from monai_continual.consolidation.ensemble import EnsembleModel
from monai_continual.consolidation.posterior import FORMAT_NAME, FORMAT_VERSION, Posterior, PosteriorFileError

__all__ = [
    "FALLBACKS",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "EnsembleModel",
    "Posterior",
    "PosteriorFileError",
    "consolidate_dwc",
    "weighted_average",
]
