"""The main multi-site experiment: every strategy, a Table-2-like summary, the papers' comparisons."""

from __future__ import annotations

from monai_continual.experiment.comparisons import PAPER_COMPARISONS, run_comparisons
from monai_continual.experiment.inference import load_weights, mc_segment_files
from monai_continual.experiment.multisite_experiment import ROW_ORDER, SEQUENTIAL_STRATEGIES, MultiSiteExperiment

__all__ = [
    "PAPER_COMPARISONS",
    "ROW_ORDER",
    "SEQUENTIAL_STRATEGIES",
    "MultiSiteExperiment",
    "load_weights",
    "mc_segment_files",
    "run_comparisons",
]
