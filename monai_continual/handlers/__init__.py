"""Ignite handlers that bring continual and distributed learning into any MONAI training loop.

Each handler is a plain class with ``attach(engine)`` and ``__call__(engine)``; the trainer they are attached to
needs to know nothing of sites.
"""

from __future__ import annotations

from monai_continual.handlers.bayesian_site import BayesianSiteHandler, PosteriorEntry
from monai_continual.handlers.consolidation_handler import ConsolidationHandler
from monai_continual.handlers.continual_evaluation import ContinualEvaluationHandler
from monai_continual.handlers.epoch_checkpoint import EpochCheckpoint
from monai_continual.handlers.epoch_losses import EpochLosses
from monai_continual.handlers.epoch_seeder import EpochSeeder
from monai_continual.handlers.finite_guard import FiniteGuard
from monai_continual.handlers.plateau_stopper import PlateauStopper
from monai_continual.handlers.posterior_export import PosteriorExportHandler
from monai_continual.handlers.prior_handler import PriorHandler
from monai_continual.handlers.progress import ProgressBar
from monai_continual.handlers.replay_handler import ReplayBufferHandler
from monai_continual.handlers.site_score import SiteScoreRecorder, assemble_site_scores
from monai_continual.handlers.weight_transfer import WeightTransferHandler

__all__ = [
    "BayesianSiteHandler",
    "ConsolidationHandler",
    "ContinualEvaluationHandler",
    "EpochCheckpoint",
    "EpochLosses",
    "EpochSeeder",
    "FiniteGuard",
    "PlateauStopper",
    "PosteriorExportHandler",
    "ProgressBar",
    "PriorHandler",
    "PosteriorEntry",
    "ReplayBufferHandler",
    "SiteScoreRecorder",
    "WeightTransferHandler",
    "assemble_site_scores",
]
