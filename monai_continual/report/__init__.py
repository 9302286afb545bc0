"""Run results -> the text a person reads: ``summary.md`` and the table printed at the end of a run.

Shared by the main job (:class:`monai_continual.experiment.MultiSiteExperiment`) and the federated runs
(:mod:`monai_continual.federated`): both hand it the same summary dictionary (the content of ``summary.json``).
Pure formatting: plain Python, no PyTorch, MONAI, nnU-Net or NVFlare.
"""

from __future__ import annotations

from monai_continual.report.summary_markdown import summary_markdown
from monai_continual.report.summary_table import summary_table

__all__ = ["summary_markdown", "summary_table"]
