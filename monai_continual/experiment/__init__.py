"""The main multi-site experiment: plan the runs, run them, hand their states to :mod:`monai_continual.report`."""

from __future__ import annotations

from monai_continual.experiment.inference import load_weights, mc_segment_files
from monai_continual.experiment.multisite_experiment import MultiSiteExperiment
from monai_continual.experiment.plan import PlannedRun, PlanSettings, plan_runs, site_orders
from monai_continual.experiment.run_plan import run_plan
from monai_continual.experiment.tracking import RunTracker, Tracking

__all__ = [
    "MultiSiteExperiment",
    "PlanSettings",
    "PlannedRun",
    "RunTracker",
    "Tracking",
    "load_weights",
    "mc_segment_files",
    "plan_runs",
    "run_plan",
    "site_orders",
]
