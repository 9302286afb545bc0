"""Combining what sites learned: posteriors and weight files, DWC, FedAvg and ensembles (plain PyTorch)."""

from __future__ import annotations

from monai_continual.consolidation.averaging import weighted_average
from monai_continual.consolidation.dwc import FALLBACKS, ExcessStd, Fallback, SitePolicy, consolidate_dwc
from monai_continual.consolidation.ensemble import EnsembleModel, EnsembleOutput
from monai_continual.consolidation.posterior import FORMAT_NAME, FORMAT_VERSION, Posterior, PosteriorFileError
from monai_continual.consolidation.weight_store import (
    WEIGHTS_FORMAT,
    DirectoryWeightStore,
    WeightEntry,
    WeightStore,
    load_weights,
    save_weights,
)

__all__ = [
    "FALLBACKS",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "WEIGHTS_FORMAT",
    "DirectoryWeightStore",
    "EnsembleModel",
    "EnsembleOutput",
    "ExcessStd",
    "Fallback",
    "SitePolicy",
    "Posterior",
    "PosteriorFileError",
    "WeightEntry",
    "WeightStore",
    "consolidate_dwc",
    "load_weights",
    "save_weights",
    "weighted_average",
]
