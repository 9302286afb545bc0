"""Run results -> what a person reads: ``summary.json``, ``summary.md``, the printed table and the figures.

Shared by the main job (:class:`monai_continual.experiment.MultiSiteExperiment`) and the federated runs
(:mod:`monai_continual.federated`): both build their strategies' rows with :func:`summary_row` and hand the formatting
the same summary dictionary (the content of ``summary.json``). The papers' claims the main job checks are one table,
:data:`PAPER_CLAIMS`.
"""

from __future__ import annotations

from monai_continual.report.calibration_summary import calibration_summary
from monai_continual.report.comparisons import run_comparisons
from monai_continual.report.figures import plot_predictions
from monai_continual.report.finished_run import FinishedRun, RunVariant
from monai_continual.report.goals import check_goals, uncertainty_goals
from monai_continual.report.main_summary import main_summary, single_site_models
from monai_continual.report.order_spread import order_spread
from monai_continual.report.paper_claims import PAPER_CLAIMS, SINGLE_SITE_MEAN, Check, Claim, Volumes
from monai_continual.report.reliability import RELIABILITY_FIGURE, plot_reliability
from monai_continual.report.summary_files import copy_heatmap, write_summary
from monai_continual.report.summary_markdown import summary_markdown
from monai_continual.report.summary_row import summary_row, weighted_dice
from monai_continual.report.summary_table import summary_table
from monai_continual.report.training_budget import training_budget

__all__ = [
    "PAPER_CLAIMS",
    "RELIABILITY_FIGURE",
    "SINGLE_SITE_MEAN",
    "Check",
    "Claim",
    "FinishedRun",
    "RunVariant",
    "Volumes",
    "calibration_summary",
    "check_goals",
    "copy_heatmap",
    "main_summary",
    "order_spread",
    "plot_predictions",
    "plot_reliability",
    "run_comparisons",
    "single_site_models",
    "summary_markdown",
    "summary_row",
    "summary_table",
    "training_budget",
    "uncertainty_goals",
    "weighted_dice",
    "write_summary",
]
