"""Continual-learning and segmentation metrics: the R matrix, BWT/FWT/forgetting, Dice, volumes, paired tests,
calibration and uncertainty."""

from __future__ import annotations

from monai_continual.metrics.calibration import (
    CALIBRATION_BINS,
    error_detection_auroc,
    pool_calibration,
    volume_calibration,
)
from monai_continual.metrics.continual_matrix import ContinualMatrix
from monai_continual.metrics.convergence import loss_plateaued
from monai_continual.metrics.paired_tests import Alternative, PairedTestResult, paired_tests
from monai_continual.metrics.segmentation import mean_dice, segmentation_volume, volume_correlation, weighted_average
from monai_continual.metrics.site_evaluation import evaluate_sites
from monai_continual.metrics.transfer import backward_transfer, forgetting, forward_transfer

__all__ = [
    "CALIBRATION_BINS",
    "Alternative",
    "ContinualMatrix",
    "PairedTestResult",
    "backward_transfer",
    "error_detection_auroc",
    "evaluate_sites",
    "forgetting",
    "forward_transfer",
    "loss_plateaued",
    "mean_dice",
    "paired_tests",
    "pool_calibration",
    "segmentation_volume",
    "volume_calibration",
    "volume_correlation",
    "weighted_average",
]
