"""Evaluates the network on every site's test set when a stage ends and adds the row to the R matrix."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from monai.inferers import Inferer
from monai.utils import IgniteInfo, min_version, optional_import
from torch import nn

from monai_continual.handlers._events import resolve_event
from monai_continual.metrics.continual_matrix import ContinualMatrix
from monai_continual.metrics.site_evaluation import evaluate_sites
from monai_continual.utils.atomic import atomic_write_text

if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")

__all__ = ["ContinualEvaluationHandler"]


class ContinualEvaluationHandler:
    """At ``event`` (default: training completed) score ``network`` on every site's test items into the R matrix.

    Args:
        network: the network being trained.
        site_items: site -> test datalist items (every site of the matrix, held-out ones included).
        transform: MONAI transform producing ``image`` and ``label`` tensors from an item.
        num_classes: classes, background included.
        trained_on: the site(s) this stage trains on (recorded with the row).
        matrix: a :class:`ContinualMatrix` to add to, or a JSON path (loaded when it exists, written after).
        inferer: inferer for prediction (``MCInferer`` for Bayesian networks).
        label: the stage's label in the matrix.
        scores_file: optional JSON path for the per-volume Dice of this stage (for paired tests).
        device: where to evaluate.

    Example::

        >>> ContinualEvaluationHandler(net, test_items, eval_transform, 4, trained_on="hospital_b",
        ...                            matrix="R.json").attach(trainer)
    """

    def __init__(
        self,
        network: nn.Module,
        site_items: Mapping[str, Sequence[dict[str, Any]]],
        transform: Callable,
        num_classes: int,
        trained_on: str | Sequence[str] | None,
        matrix: ContinualMatrix | str | os.PathLike,
        inferer: Inferer | None = None,
        label: str | None = None,
        scores_file: str | os.PathLike | None = None,
        device: str = "cpu",
        event: Any = "COMPLETED",
    ) -> None:
        if not site_items:
            raise ValueError("ContinualEvaluationHandler: no sites to evaluate on.")
        empty = [s for s, items in site_items.items() if not items]
        if empty:
            raise ValueError(f"ContinualEvaluationHandler: sites {empty} have no test items.")
        self.network = network
        self.site_items = {s: list(v) for s, v in site_items.items()}
        self.transform = transform
        self.num_classes = num_classes
        self.trained_on = trained_on
        self.matrix_file: str | None = None
        if isinstance(matrix, ContinualMatrix):
            self.matrix = matrix
        else:
            self.matrix_file = str(matrix)
            path = Path(self.matrix_file)
            self.matrix = ContinualMatrix.load_json(path) if path.exists() else ContinualMatrix(list(site_items))
        self.inferer = inferer
        self.label = label
        self.scores_file = None if scores_file is None else str(scores_file)
        self.device = device
        self.event = resolve_event(event, "ContinualEvaluationHandler")
        self.last_scores: dict[str, list[float]] = {}

    def attach(self, engine: Engine) -> None:
        if not engine.has_event_handler(self, self.event):
            engine.add_event_handler(self.event, self)

    def __call__(self, engine: Engine | None = None) -> int:
        self.last_scores = evaluate_sites(
            self.network, self.site_items, self.transform, self.num_classes, self.inferer, self.device
        )
        means = {site: float(np.mean(v)) for site, v in self.last_scores.items()}
        stage = self.matrix.add_stage(self.trained_on, means, self.label)
        if self.matrix_file is not None:
            self.matrix.save_json(self.matrix_file)
        if self.scores_file is not None:
            atomic_write_text(self.scores_file, json.dumps(self.last_scores, indent=2) + "\n")
        if engine is not None:
            engine.logger.info(f"R matrix row {stage}: " + ", ".join(f"{s}={v:.3f}" for s, v in means.items()))
        return stage
