"""Site-aware training: the multi-site strategies of the papers as MONAI ``SupervisedTrainer`` runs."""

from __future__ import annotations

from monai_continual.engines.continual_runner import OPTIMIZER_STATE_POLICIES, ContinualRunner, StrategyResult
from monai_continual.engines.epoch_sampler import EpochSampler
from monai_continual.engines.monai_executor import MonaiStageExecutor
from monai_continual.engines.settings import DatasetCache, MonaiSettings, OptimizerState
from monai_continual.strategies import Stage, Strategy

#: the strategy names (:class:`~monai_continual.strategies.Strategy`)
STRATEGIES = tuple(s.value for s in Strategy)

__all__ = [
    "OPTIMIZER_STATE_POLICIES",
    "STRATEGIES",
    "ContinualRunner",
    "DatasetCache",
    "EpochSampler",
    "MonaiSettings",
    "MonaiStageExecutor",
    "OptimizerState",
    "Stage",
    "StrategyResult",
]
