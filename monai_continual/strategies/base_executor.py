"""What every backend's executor shares: stage 0, publishing with a receipt, consolidation, seeded and cached
evaluation, and the run's result files. A backend adds how a stage trains and how a site is scored."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from monai_continual.consolidation.averaging import weighted_average
from monai_continual.consolidation.dwc import consolidate_dwc
from monai_continual.consolidation.posterior import Posterior
from monai_continual.metrics.continual_matrix import ContinualMatrix
from monai_continual.strategies.artifacts import StageArtifacts
from monai_continual.strategies.engine import INITIAL_STAGE
from monai_continual.strategies.executor import StageOutput, evaluation_seed
from monai_continual.strategies.faults import crash_point
from monai_continual.strategies.run_state import RunState
from monai_continual.strategies.stage import Action, NetworkKind, Stage
from monai_continual.utils.atomic import atomic_write_text
from monai_continual.utils.seeding import seed_everything

__all__ = ["BaseStageExecutor"]


class BaseStageExecutor:
    """The shared half of a :class:`~monai_continual.strategies.executor.StageExecutor`.

    A backend subclasses it and implements :meth:`initial_weights`, :meth:`train`, :meth:`model` (a published
    model in a fresh network) and :meth:`score` (per-volume scores of a network on a site's test data). Everything
    else is here, once: stage 0 is published from :meth:`initial_weights`; a stage's model is published after its
    receipt (:meth:`publish`), so a stage found published on resume returns its count (:meth:`published`);
    averaging and DWC consolidate the published files by stage number; evaluation caches the stage's model and is
    seeded by seed, stage and site (:func:`~monai_continual.strategies.executor.evaluation_seed`); the R matrix is
    written by :meth:`save_results`.

    Args:
        run_dir: the run directory (:class:`~monai_continual.strategies.layout.RunLayout`).
        stages: the schedule.
        seed: the run's seed.

    Example::

        >>> class MyExecutor(BaseStageExecutor):
        ...     def initial_weights(self): return self.network().state_dict()
        ...     def train(self, stage): ...
        ...     def model(self, number): ...
        ...     def score(self, network, stage, site): ...
        >>> run_stages(stages, MyExecutor("runs/cwt", stages, seed=0), state, sites)
    """

    def __init__(self, run_dir: str | os.PathLike, stages: Sequence[Stage], *, seed: int = 0) -> None:
        self.artifacts = StageArtifacts(run_dir, stages)
        self.layout = self.artifacts.layout
        self.run_dir = self.layout.root
        self.stages = self.artifacts.stages
        self.store = self.artifacts.store
        self.seed = int(seed)
        self._model_cache: tuple[int, nn.Module] | None = None

    # ------------------------------------------------------------------------------------------------ the backend's

    def initial_weights(self) -> Mapping[str, torch.Tensor]:
        """The network's initial weights (stage 0)."""
        raise NotImplementedError

    def train(self, stage: Stage) -> StageOutput:
        """Train ``stage`` from its inputs and publish its model (see the protocol)."""
        raise NotImplementedError

    def model(self, number: int) -> nn.Module:
        """Stage ``number``'s published model in a freshly built network: exactly what the next site receives."""
        raise NotImplementedError

    def score(self, network: nn.Module, stage: Stage, site: str) -> list[float]:
        """Per-volume scores of ``network`` (stage ``stage``'s model) on ``site``'s test data, already seeded."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------------ shared

    def initialize(self, network: NetworkKind) -> StageOutput:
        entry = self.store.entry(INITIAL_STAGE)
        if entry is None:
            entry = self.store.publish(self.initial_weights(), "init", INITIAL_STAGE)
        return StageOutput(entry.sha256)

    def published(self, stage: Stage, strict: bool = False) -> StageOutput | None:
        """The record of ``stage`` when its model was published before an interruption from the stage's current
        inputs (its count and details from the receipt written before publishing); ``None`` when it was not, or when
        its receipt names other inputs or another model (the stage trains again). ``strict``: a published model
        without any receipt also trains again (non-strict tolerates run directories from before receipts)."""
        sha = self.artifacts.published_sha(stage.number)
        if sha is None:
            return None
        receipt = self.artifacts.receipt(stage.number, sha)
        loaded = self.artifacts.loaded(stage)
        # a receipt of another model: a newer attempt wrote it and stopped before publishing, so train again
        other = not receipt and self.layout.receipt_file(stage.number).exists()
        if (strict and not receipt) or other or receipt.get("inputs", loaded) != loaded:
            return None
        return StageOutput(sha, loaded, int(receipt.get("num_examples", 0)), dict(receipt.get("details", {})))

    def publish(self, stage: Stage, model: Mapping[str, torch.Tensor] | Posterior, site: str, num_examples: int,
                details: Mapping[str, Any], **metadata: Any) -> str:
        """Write the receipt (count, details, the hashes of the stage's inputs), then publish ``model`` (weights to
        the store, a posterior to its file): publishing commits the stage. Returns the content SHA-256."""
        number = stage.number
        crash_point("before_publish", number)  # side outputs (optimizer state, replay memory, Fisher) are saved
        fields = {"num_examples": int(num_examples), "details": dict(details), "inputs": self.artifacts.loaded(stage)}
        if isinstance(model, Posterior):
            sha = model.sha256()
            self.artifacts.write_receipt(number, sha, **fields)
            model.save(self.layout.posterior_file(number))
            return sha
        sha = self.store.content_sha256(model, site, number, **metadata)
        self.artifacts.write_receipt(number, sha, **fields)
        return self.store.publish(model, site, number, **metadata).sha256

    def consolidate(self, stage: Stage, weights: Sequence[float]) -> StageOutput:
        """Average (FedAvg) or DWC (Eq. 17) of ``stage.inputs`` weighted by ``weights`` (their recorded counts); an
        ensemble publishes nothing (its members are the inputs)."""
        loaded = self.artifacts.loaded(stage)
        if stage.action == Action.ENSEMBLE:
            return StageOutput(None, loaded)
        if stage.action not in (Action.AVERAGE, Action.DWC):
            raise ValueError(f"stage {stage.number} ({stage.label}): {stage.action} is not a consolidation.")
        inputs, counts = self.consolidation_inputs(stage, [float(w) for w in weights])
        if stage.action == Action.AVERAGE:
            merged, used, details = self.average(stage, inputs, counts)
            crash_point("mid_consolidation", stage.number)
            entry = self.store.publish(merged, "average", stage.number, weights=used)
            return StageOutput(entry.sha256, loaded, int(sum(counts)), {"inputs_used": list(inputs), **details})
        posterior = self.combine_posteriors(stage, inputs, counts)
        crash_point("mid_consolidation", stage.number)
        posterior.save(self.layout.posterior_file(stage.number))
        return StageOutput(posterior.sha256(), loaded, int(sum(counts)), {"inputs_used": list(inputs)})

    def consolidation_inputs(self, stage: Stage, counts: list[float]) -> tuple[list[int], list[float]]:
        """The stages a consolidation combines and their counts (every input, by default)."""
        return list(stage.inputs), counts

    def average(self, stage: Stage, inputs: Sequence[int],
                counts: Sequence[float]) -> tuple[dict[str, torch.Tensor], list[float], dict[str, Any]]:
        """The average of the inputs' weights, the weights it used, and what to record (FedAvg: by counts)."""
        states = [self.artifacts.weights(i) for i in inputs]
        return weighted_average(states, counts, [self.stages[i].site for i in inputs]), list(counts), {}

    def combine_posteriors(self, stage: Stage, inputs: Sequence[int], counts: Sequence[float]) -> Posterior:
        """DWC (Eq. 17) of the inputs' posteriors with the stage's prior."""
        return consolidate_dwc(self.layout.posterior_file(stage.prior), [self.layout.posterior_file(i) for i in inputs])

    def cached_model(self, number: int) -> nn.Module:
        """:meth:`model`, kept while the sites of one stage are scored."""
        if self._model_cache is None or self._model_cache[0] != number:
            self._model_cache = (number, self.model(number))
        return self._model_cache[1]

    def seed_evaluation(self, number: int, site: str) -> None:
        seed_everything(evaluation_seed(self.seed, number, site))

    def evaluate(self, stage: Stage, site: str) -> list[float]:
        network = self.cached_model(stage.number)
        self.seed_evaluation(stage.number, site)
        return self.score(network, stage, site)

    def shown(self, stage: Stage) -> bool:
        """Whether a summary row shows ``stage``'s model: a named result, or the schedule's last evaluated stage
        (whose evaluation, and no other, records calibration)."""
        last = max((s.number for s in self.stages.values() if s.evaluate), default=None)
        return bool(stage.result) or stage.number == last

    def save_calibration(self, number: int, site: str, records: Sequence[Mapping[str, Any]]) -> None:
        """Keep stage ``number``'s per-volume calibration records on ``site`` (beside its scores in the state)."""
        atomic_write_text(self.layout.calibration_file(number, site), json.dumps(list(records)) + "\n")

    def calibration(self, number: int, sites: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
        """Stage ``number``'s per-volume calibration records of the ``sites`` that have them (none: a backend that
        does not record calibration, or a run scored before it did)."""
        files = {site: self.layout.calibration_file(number, site) for site in sites}
        return {site: json.loads(path.read_text(encoding="utf-8")) for site, path in files.items() if path.is_file()}

    def save_results(self, state: RunState, stages: Sequence[Stage], sites: Sequence[str],
                     title: str) -> ContinualMatrix:
        """The R matrix of ``stages`` on ``sites`` from the run state, written as ``R.json``/``R.csv``/``R.png``."""
        matrix = state.matrix(stages, sites)
        self.layout.save_matrix(matrix, title)
        return matrix
