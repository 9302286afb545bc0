"""The server's side of a federated run: the strategy engine's executor that runs stages at the sites.

Each training stage is sent to its site with the models it names (looked up on the server by stage number); what
comes back is published on the server under the stage's number after its hash is checked. Consolidations (DWC,
weighted averaging) run on the server from the published files, one site's model in memory at a time. Evaluation
asks each site for per-volume scores of its own test data.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from monai_continual.consolidation.averaging import weighted_average
from monai_continual.consolidation.dwc import consolidate_dwc
from monai_continual.federated.payload import (
    PayloadError,
    check_payload,
    model_to_params,
    params_to_posterior,
    params_to_weights,
    split_params,
    stage_to_meta,
)
from monai_continual.strategies import INITIAL_STAGE, Action, NetworkKind, Stage, StageOutput, crash_point
from monai_continual.strategies.artifacts import StageArtifacts

__all__ = ["FederatedStageExecutor", "SiteUnavailable", "Send"]

#: ``send(task, site, params, meta) -> (params, meta, metrics)``, or ``None`` when the site did not answer in time
Send = Callable[[str, str, dict, dict], "tuple[dict, dict, dict] | None"]
logger = logging.getLogger(__name__)


class SiteUnavailable(RuntimeError):
    """A site did not answer a task in time."""


class FederatedStageExecutor:
    """Runs the core's stages across sites through ``send`` (the controller's task API).

    A site that does not answer: for weight transfer the visit is skipped and recorded (the stage publishes the
    model it started from unchanged); a consolidation goes on with the inputs that arrived when at least
    ``min_clients`` did, otherwise the run stops with :class:`SiteUnavailable` (resubmit to continue).

    The initial weights (stage 0) are made by the first training site, the way its executor makes them (the server
    needs neither the network's code nor nnU-Net's plans).

    Args:
        run_dir: the server's run directory.
        stages: the schedule.
        send: the transport.
        min_clients: fewest inputs a consolidation goes on with.
    """

    def __init__(self, run_dir: str | Path, stages: Sequence[Stage], send: Send, min_clients: int = 1) -> None:
        self.artifacts = StageArtifacts(run_dir, stages)
        self.stages = self.artifacts.stages
        self.send = send
        self.min_clients = int(min_clients)
        self.missing: set[int] = set()
        self.dead: set[str] = set()

    # ------------------------------------------------------------------------------------------------ what is sent

    def _roles(self, stage: Stage, task: str) -> tuple[dict[str, Any], dict[str, Any], dict[int, str]]:
        """The models a task needs (training: the stage's start and prior; evaluation: the stage's own model, or an
        ensemble's members), as params, their role descriptions, and the kinds of every named stage."""
        numbers: dict[str, int] = {}
        if task == "train":
            numbers["start"] = stage.start
            if stage.prior is not None and stage.prior != stage.start:
                numbers["prior"] = stage.prior
        elif stage.action == Action.ENSEMBLE:
            numbers.update({f"input{i}": n for i, n in enumerate(stage.inputs)})
        else:
            numbers["model"] = stage.number
        params: dict[str, Any] = {}
        roles: dict[str, Any] = {}
        kinds = {n: str(self.artifacts.kind(n)) for n in numbers.values()}
        kinds.update({n: str(self.artifacts.kind(n)) for n in (stage.previous_visit,) if n is not None})
        for role, number in numbers.items():
            roles[role] = {"stage": number}
            if self.artifacts.kind(number) == NetworkKind.BAYES:
                posterior = self.artifacts.posterior(number)
                params.update(model_to_params(role, posterior))
                roles[role]["metadata"] = dict(posterior.metadata)
            else:
                entry = self.artifacts.store.entry(number)
                params.update(model_to_params(role, self.artifacts.weights(number)))
                roles[role].update(site=entry.site, sha256=entry.sha256)
        return params, roles, kinds

    def _request(self, task: str, stage: Stage, site: str) -> tuple[dict, dict, dict] | None:
        """Send a task; ``None`` when the site did not answer (it is then not asked again in this run)."""
        if site in self.dead:
            return None
        params, roles, kinds = self._roles(stage, task)
        meta = {"task": task, "roles": roles, **stage_to_meta(stage, kinds)}
        check_payload(meta, params, None)
        answer = self.send(task, site, params, meta)
        if answer is None:
            self.dead.add(site)
        return answer

    # ------------------------------------------------------------------------------------------------ protocol

    def initialize(self, network: NetworkKind) -> StageOutput:
        entry = self.artifacts.store.entry(INITIAL_STAGE)
        if entry is None:
            first = next(s for s in self.stages.values() if s.sites).sites[0]
            meta = {"task": "initialize"}
            answer = self.send("initialize", first, {}, meta)
            if answer is None:
                raise SiteUnavailable(f"site {first!r} did not answer the request for the initial weights.")
            params, reply, _ = answer
            entry = self.artifacts.store.publish(params_to_weights(split_params(params)["published"]), "init", INITIAL_STAGE)
            if entry.sha256 != reply.get("published"):
                raise PayloadError(f"site {first!r}: the initial weights received do not match the hash it reported.")
        return StageOutput(entry.sha256)

    def train(self, stage: Stage) -> StageOutput:
        if len(stage.sites) != 1:
            raise ValueError(f"stage {stage.number} ({stage.label}) pools the data of {list(stage.sites)}: data would "
                             "have to leave the sites; the federated engine runs only one site per stage.")
        published = self.artifacts.published_sha(stage.number)
        if published is not None:
            return StageOutput(published, self.artifacts.loaded(stage))
        site = stage.sites[0]
        answer = self._request("train", stage, site)
        if answer is None:
            return self._skip(stage, site)
        params, meta, _ = answer
        tensors = split_params(params).get("published", {})
        if stage.network == NetworkKind.BAYES:
            posterior = params_to_posterior(tensors, meta.get("metadata", {}))
            if posterior.sha256() != meta.get("published"):
                raise PayloadError(f"site {site!r}, stage {stage.number}: the posterior received does not match the hash it reported.")
            posterior.save(self.artifacts.posterior_file(stage.number))
            sha = posterior.sha256()
        else:
            entry = self.artifacts.store.publish(params_to_weights(tensors), site, stage.number)
            if entry.sha256 != meta.get("published"):
                raise PayloadError(f"site {site!r}, stage {stage.number}: the weights received do not match the hash it reported.")
            sha = entry.sha256
        return StageOutput(sha, self.artifacts.loaded(stage), int(meta.get("num_examples", 0)), dict(meta.get("details", {})))

    def _skip(self, stage: Stage, site: str) -> StageOutput:
        """Weight transfer past a site that did not answer: the stage publishes its start unchanged."""
        logger.warning(f"site {site!r} did not answer stage {stage.number} ({stage.label}); the visit is skipped.")
        self.missing.add(stage.number)
        if self.artifacts.kind(stage.start) != stage.network:
            raise SiteUnavailable(f"site {site!r} did not answer stage {stage.number} ({stage.label}), whose model kind "
                                  "differs from its start's: it cannot be skipped. Resubmit the job to continue.")
        if stage.network == NetworkKind.BAYES:
            posterior = self.artifacts.posterior(stage.start)
            posterior.save(self.artifacts.posterior_file(stage.number))
            sha = posterior.sha256()
        else:
            sha = self.artifacts.store.publish(self.artifacts.weights(stage.start), site, stage.number, skipped=True).sha256
        return StageOutput(sha, self.artifacts.loaded(stage), 0, {"skipped": True})

    def consolidate(self, stage: Stage, weights: Sequence[float]) -> StageOutput:
        loaded = self.artifacts.loaded(stage)
        if stage.action == Action.ENSEMBLE:
            return StageOutput(None, loaded)
        present = [(i, w) for i, w in zip(stage.inputs, weights) if i not in self.missing and w > 0]
        if len(present) < min(self.min_clients, len(stage.inputs)):
            raise SiteUnavailable(f"stage {stage.number} ({stage.label}): only {len(present)} of {len(stage.inputs)} "
                                  f"sites answered, fewer than min_clients={self.min_clients}. Resubmit to continue.")
        inputs, sizes = [i for i, _ in present], [w for _, w in present]
        names = [self.stages[i].site for i in inputs]
        if stage.action == Action.AVERAGE:
            states = [self.artifacts.weights(i) for i in inputs]
            crash_point("mid_consolidation", stage.number)
            entry = self.artifacts.store.publish(weighted_average(states, sizes, names), "average", stage.number, weights=sizes)
            return StageOutput(entry.sha256, loaded, int(sum(sizes)), {"inputs_used": inputs})
        merged = consolidate_dwc(self.artifacts.posterior_file(stage.prior), [self.artifacts.posterior_file(i) for i in inputs])
        crash_point("mid_consolidation", stage.number)
        merged.save(self.artifacts.posterior_file(stage.number))
        return StageOutput(merged.sha256(), loaded, int(sum(sizes)), {"inputs_used": inputs})

    def evaluate(self, stage: Stage, site: str) -> list[float]:
        answer = self._request("evaluate", stage, site)
        if answer is None:
            logger.warning(f"site {site!r} did not answer the evaluation of stage {stage.number}; its cell stays empty.")
            return []
        scores = answer[2].get("scores")
        if not isinstance(scores, list):
            raise PayloadError(f"site {site!r} answered the evaluation of stage {stage.number} without scores.")
        return [float(s) for s in scores]
