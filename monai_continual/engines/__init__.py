"""Site-aware training: the multi-site strategies of the papers as MONAI ``SupervisedTrainer`` runs."""

from __future__ import annotations

from monai_continual.engines.continual_runner import OPTIMIZER_STATE_POLICIES, ContinualRunner, StrategyResult
from monai_continual.engines.epoch_sampler import EpochSampler
from monai_continual.engines.schedules import STRATEGIES, Stage, cyclic_schedule, dwc_schedule, sequential_schedule, site_order

__all__ = [
    "OPTIMIZER_STATE_POLICIES",
    "STRATEGIES",
    "ContinualRunner",
    "EpochSampler",
    "Stage",
    "StrategyResult",
    "cyclic_schedule",
    "dwc_schedule",
    "sequential_schedule",
    "site_order",
]
