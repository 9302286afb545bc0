"""The server's side of a federated run: the strategy engine's executor that runs stages at the sites.

Each training stage is sent to its site with the models it names (looked up on the server by stage number) and the
run's identity; what comes back is checked in memory (hash, entries against the stage's start model, finiteness,
size, counts; :mod:`~monai_continual.federated.boundary`) and only then published under the stage's number.
Consolidations (DWC, averaging) run on the server from the published files with the site influence bounded by the
run's :class:`~monai_continual.federated.boundary.BoundaryPolicy`. Evaluation asks each site for per-volume scores
of its own test data, refused unless finite, in [0, 1] and one per test case. Everything clipped, left out, flagged
or refused is listed under ``details["boundary"]`` of the stage's record.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from monai_continual.consolidation.dwc import consolidate_dwc
from monai_continual.consolidation.posterior import Posterior
from monai_continual.consolidation.robust import robust_average
from monai_continual.federated.boundary import (
    BoundaryPolicy,
    check_count,
    check_details,
    check_fisher,
    check_model,
    check_posterior,
    check_scores,
    screen_posterior,
)
from monai_continual.federated.payload import (
    PayloadError,
    check_payload,
    fisher_to_params,
    model_to_params,
    params_to_fisher,
    params_to_posterior,
    params_to_weights,
    posterior_weights,
    split_params,
    stage_to_meta,
)
from monai_continual.strategies import INITIAL_STAGE, Action, NetworkKind, Stage, StageOutput
from monai_continual.strategies.base_executor import BaseStageExecutor

__all__ = ["FederatedStageExecutor", "SiteUnavailable", "Send"]

#: ``send(task, site, params, meta) -> (params, meta, metrics)``, or ``None`` when the site did not answer in time
Send = Callable[[str, str, dict, dict], "tuple[dict, dict, dict] | None"]
logger = logging.getLogger(__name__)


class SiteUnavailable(RuntimeError):
    """A site did not answer a task in time."""


class FederatedStageExecutor(BaseStageExecutor):
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
        run_id: the run's identity (config hash), sent with every task: a site keys its stage outputs by it.
        policy: the bounds on a site's influence (default :class:`BoundaryPolicy`).
        test_sizes: site -> test cases, as known from earlier evaluations of this run (resume).
        excluded: whether a training result's variable (its name as sent, ``published|<group>/<name>``) is one the
            job's ``ExcludeVars`` filter keeps at the site (:func:`~monai_continual.federated.result_filters.
            excluded_names`): it is taken from the stage's start, as the site will receive it, and the stage's hash
            is the server's (the site's covers values it kept).
    """

    def __init__(self, run_dir: str | Path, stages: Sequence[Stage], send: Send, min_clients: int = 1, *,
                 run_id: str = "", policy: BoundaryPolicy | None = None,
                 test_sizes: dict[str, int] | None = None, excluded: Callable[[str], bool] | None = None) -> None:
        super().__init__(run_dir, stages)
        self.send = send
        self.min_clients = int(min_clients)
        self.run_id = str(run_id)
        self.policy = policy or BoundaryPolicy()
        self.test_sizes = {**dict(test_sizes or {}), **dict(self.policy.declared_test_sizes)}
        self.missing: set[int] = set()
        self.dead: set[str] = set()
        self.events: dict[int, list[dict[str, Any]]] = {}
        self.excluded = excluded

    def _event(self, number: int, **event: Any) -> None:
        logger.warning(f"stage {number}: {event}")
        self.events.setdefault(number, []).append(event)

    def _output(self, number: int, published: str | None, loaded: dict, num_examples: int = 0,
                details: dict | None = None) -> StageOutput:
        # the same list object: refusals during the stage's evaluation, which the engine records after it, join it
        return StageOutput(
            published, loaded, num_examples, {**(details or {}), "boundary": self.events.setdefault(number, [])}
        )

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
                roles[role].update(metadata=dict(posterior.metadata), sha256=posterior.sha256())
            else:
                entry = self.artifacts.store.entry(number)
                params.update(model_to_params(role, self.artifacts.weights(number)))
                roles[role].update(site=entry.site, sha256=entry.sha256, metadata=dict(entry.metadata))
        if task == "train" and stage.fisher is not None:  # EWC's running Fisher travels with the start weights
            params.update(fisher_to_params("fisher", self.artifacts.fisher(stage.fisher)))
            roles["fisher"] = {"stage": stage.fisher, "sha256": self.artifacts.fisher_sha(stage.fisher)}
        return params, roles, kinds

    def _request(self, task: str, stage: Stage, site: str) -> tuple[dict, dict, dict] | None:
        """Send a task; ``None`` when the site did not answer (it is then not asked again in this run)."""
        if site in self.dead:
            return None
        params, roles, kinds = self._roles(stage, task)
        meta = {"task": task, "run": self.run_id, "roles": roles, **stage_to_meta(stage, kinds)}
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
            answer = self.send("initialize", first, {}, {"task": "initialize", "run": self.run_id})
            if answer is None:
                raise SiteUnavailable(f"site {first!r} did not answer the request for the initial weights.")
            params, reply, _ = answer
            weights = params_to_weights(split_params(params).get("published", {}))
            what = f"site {first!r}, the initial weights"
            check_model(weights, None, what, self.policy)
            self._check_sha(self.artifacts.store.content_sha256(weights, "init", INITIAL_STAGE), reply, what)
            entry = self.artifacts.store.publish(weights, "init", INITIAL_STAGE)
        return StageOutput(entry.sha256)

    @staticmethod
    def _check_sha(sha: str, reply: dict, what: str) -> None:
        if sha != reply.get("published"):
            raise PayloadError(
                f"{what}: the model received does not match the hash the site reported; nothing was stored."
            )

    def train(self, stage: Stage) -> StageOutput:
        if len(stage.sites) != 1:
            raise ValueError(f"stage {stage.number} ({stage.label}) pools the data of {list(stage.sites)}: data would "
                             "have to leave the sites; the federated engine runs only one site per stage.")
        done = self.published(stage)
        if done is not None:  # published before an interruption: what arrived with it was recorded first
            return self._output(stage.number, done.published, done.loaded, done.num_examples, done.details)
        site = stage.sites[0]
        what = f"site {site!r}, stage {stage.number}"
        try:  # anything wrong with the answer refuses it: nothing of it is stored, the run goes on without it
            answer = self._request("train", stage, site)
            if answer is None:
                return self._skip(stage, site)
            params, meta, _ = answer
            parts = split_params(params)
            ewc = stage.ewc_gamma is not None
            if sorted(parts) != (["fisher", "published"] if ewc else ["published"]):
                want = "one 'published' model and its 'fisher'" if ewc else "one 'published' model"
                raise PayloadError(f"{what}: the answer carries models under {sorted(parts)}, not {want}.")
            count = check_count(meta.get("num_examples"), f"{what}: num_examples")
            details = check_details(meta.get("details", {}), what)
            tensors = parts["published"]
            if stage.network == NetworkKind.BAYES:
                model: Any = self._checked_posterior(stage, tensors, meta, what)
                if model is None:
                    return self._skip(stage, site, refused=True)
                sha = model.sha256()
            else:
                start = (self.artifacts.weights(stage.start)
                         if stage.start is not None and self.artifacts.kind(stage.start) == NetworkKind.MAP else None)
                tensors, kept = self._completed(stage, tensors, start and {f"weights/{k}": v for k, v in start.items()})
                model = params_to_weights(tensors)
                check_model(model, start, what, self.policy)
                sha = self.artifacts.store.content_sha256(model, site, stage.number)
                if not kept:
                    self._check_sha(sha, meta, what)
            fisher = self._checked_fisher(stage, parts["fisher"], model, meta) if ewc else None
        except PayloadError as err:  # the visit counts as skipped, the site as refused
            self._event(stage.number, site=site, model="refused", reason=str(err))
            return self._skip(stage, site, refused=True)
        if self.policy.max_examples is not None and count > self.policy.max_examples:
            self._event(stage.number, site=site, count="capped", reported=count, cap=self.policy.max_examples)
            count = self.policy.max_examples
        loaded = self.artifacts.loaded(stage)
        if details.get("refused_start"):
            self._event(stage.number, site=site, start="refused by the site", sha256=loaded.get("start"))
        if fisher is not None:  # a side output: stored before the weights are published
            details["fisher"] = self.artifacts.save_fisher(stage.number, fisher)
        self.publish(stage, model, site, count, details)
        return self._output(stage.number, sha, loaded, count, details)

    def _completed(self, stage: Stage, tensors: dict, start: dict | None) -> tuple[dict, list[str]]:
        """``tensors`` with the variables the job's ``ExcludeVars`` kept at the site taken from ``start`` (the same
        ``group/name`` keys), and those names; a missing variable the filter does not name stays missing."""
        if self.excluded is None:
            return tensors, []
        kept = sorted(k for k in (start or {}) if k not in tensors and self.excluded(f"published|{k}"))
        if kept:
            self._event(stage.number, site=stage.site, kept_at_site=len(kept), taken_from_stage=stage.start)
        return {**tensors, **{k: start[k] for k in kept}}, kept

    def _checked_fisher(self, stage: Stage, tensors: dict, weights: dict, meta: dict) -> dict:
        """The running Fisher that came with a stage's weights, after the checks (:func:`check_fisher`, hash)."""
        what = f"site {stage.site!r}, stage {stage.number} (Fisher)"
        fisher = params_to_fisher(tensors)
        check_fisher(fisher, weights, what, self.policy)
        if self.artifacts.fisher_content_sha256(fisher, stage.number) != meta.get("fisher"):
            raise PayloadError(f"{what}: the Fisher received does not match the hash the site reported; nothing was "
                               "stored.")
        return fisher

    def _reference(self, stage: Stage) -> tuple[int | None, Posterior | dict | None]:
        """What a stage's posterior must fit, and its stage number: its start's or prior's posterior, else its plain
        start model."""
        for number in (stage.start, stage.prior):
            if number is not None and self.artifacts.kind(number) == NetworkKind.BAYES:
                return number, self.artifacts.posterior(number)
        return stage.start, (self.artifacts.weights(stage.start) if stage.start is not None else None)

    def _checked_posterior(self, stage: Stage, tensors: dict, meta: dict, what: str) -> Posterior | None:
        """The received posterior after the integrity checks; ``None`` when the screening leaves it out."""
        metadata = meta.get("metadata", {})
        if not isinstance(metadata, dict) or len(metadata) > 32:
            raise PayloadError(f"{what}: posterior metadata must be a small dict, got {type(metadata).__name__}.")
        if "num_examples" in metadata:
            check_count(metadata["num_examples"], f"{what}: posterior metadata num_examples")
        number, reference = self._reference(stage)
        kept: list[str] = []
        if isinstance(reference, Posterior):
            tensors, kept = self._completed(stage, tensors, posterior_weights(reference))
        else:
            tensors, kept = self._completed(stage, tensors, None)
        try:
            posterior = params_to_posterior(tensors, metadata)
        except (TypeError, ValueError) as err:  # non-finite values, std <= 0, mismatched means and stds
            raise PayloadError(f"{what}: {err}") from err
        if not posterior.mean:
            raise PayloadError(f"{what}: the posterior has no Bayesian parameters.")
        check_posterior(posterior, reference, what, self.policy)
        if not kept:
            self._check_sha(posterior.sha256(), meta, what)
        if not isinstance(reference, Posterior):
            return posterior
        prior = reference if stage.prior in (None, number) else self.artifacts.posterior(stage.prior)
        event = screen_posterior(posterior, prior, self.policy, stage.bound_std, what)
        if event is not None:
            self._event(stage.number, site=stage.site, **event)
            if event["posterior"] == "left out":
                return None
        return posterior

    def _skip(self, stage: Stage, site: str, refused: bool = False) -> StageOutput:
        """Past a site that did not answer (or whose model was left out): the stage publishes its start unchanged and
        counts as missing for a consolidation."""
        if not refused:
            logger.warning(f"site {site!r} did not answer stage {stage.number} ({stage.label}); the visit is skipped.")
        self.missing.add(stage.number)
        if self.artifacts.kind(stage.start) != stage.network:
            cause = "whose model was refused" if refused else "which did not answer"
            raise SiteUnavailable(f"site {site!r}, {cause}, trains stage {stage.number} ({stage.label}), whose model "
                                  "kind differs from its start's: it cannot be skipped. Resubmit the job to continue.")
        details: dict[str, Any] = {"skipped": True, "refused": refused}
        if stage.ewc_gamma is not None:  # the running Fisher passes the skipped visit unchanged, as the weights do
            if stage.fisher is None:
                raise SiteUnavailable(f"site {site!r} trains stage {stage.number} ({stage.label}), the first of EWC's "
                                      "running Fisher: it cannot be skipped. Resubmit the job to continue.")
            details["fisher"] = self.artifacts.save_fisher(stage.number, self.artifacts.fisher(stage.fisher))
        if stage.network == NetworkKind.BAYES:
            sha = self.publish(stage, self.artifacts.posterior(stage.start), site, 0, details)
        else:
            sha = self.publish(stage, self.artifacts.weights(stage.start), site, 0, details, skipped=True)
        return self._output(stage.number, sha, self.artifacts.loaded(stage), 0, details)

    def consolidate(self, stage: Stage, weights: Sequence[float]) -> StageOutput:
        out = super().consolidate(stage, weights)
        return self._output(stage.number, out.published, out.loaded, out.num_examples, out.details)

    def consolidation_inputs(self, stage: Stage, counts: list[float]) -> tuple[list[int], list[float]]:
        # a skipped or left-out stage was recorded with no examples; every accepted one with a count > 0
        present = [(i, w) for i, w in zip(stage.inputs, counts) if i not in self.missing and w > 0]
        if len(present) < min(self.min_clients, len(stage.inputs)):
            raise SiteUnavailable(f"stage {stage.number} ({stage.label}): only {len(present)} of {len(stage.inputs)} "
                                  f"sites answered or were accepted, fewer than min_clients={self.min_clients}. "
                                  "Resubmit to continue.")
        return [i for i, _ in present], [w for _, w in present]

    def _sizes(self, inputs: Sequence[int], counts: Sequence[float]) -> list[float]:
        return self.policy.fedavg_weights([self.stages[i].site for i in inputs], list(counts))

    def average(self, stage: Stage, inputs: Sequence[int], counts: Sequence[float]) -> tuple[dict, list[float], dict]:
        names, sizes, policy = [self.stages[i].site for i in inputs], self._sizes(inputs, counts), self.policy
        states = [self.artifacts.weights(i) for i in inputs]
        reference = self.artifacts.weights(self.stages[inputs[0]].start)
        merged, report = robust_average(states, reference, sizes, names, norm_bound=policy.norm_bound,
                                        method=policy.aggregation, trim_fraction=policy.trim_fraction,
                                        min_cosine=policy.min_cosine)
        if len(states) < 3 and (policy.norm_bound is not None or policy.min_cosine is not None):
            self._event(stage.number, site="average", update="not bounded",
                        reason=f"{len(states)} sites: the median of fewer than three is not robust")
        for site, cosine in report.left_out.items():
            self._event(stage.number, site=site, update="left out", cosine=cosine, min_cosine=policy.min_cosine)
        for site, factor in report.clipped.items():
            self._event(stage.number, site=site, update="clipped", factor=factor, norm=report.norms[site],
                        bound=report.bound)
        return merged, sizes, {"weights": sizes, "aggregation": report.to_dict()}

    def combine_posteriors(self, stage: Stage, inputs: Sequence[int], counts: Sequence[float]) -> Posterior:
        return consolidate_dwc(self.layout.posterior_file(stage.prior), [self.layout.posterior_file(i) for i in inputs],
                               site_weights=self._sizes(inputs, counts), excess_std="clip", dominance="clip",
                               max_precision_ratio=self.policy.max_precision_ratio)

    def evaluate(self, stage: Stage, site: str) -> list[float]:
        what = f"site {site!r}, evaluation of stage {stage.number}"
        try:
            answer = self._request("evaluate", stage, site)
            if answer is None:
                logger.warning(f"{what}: no answer; its cell stays empty.")
                return []
            scores = check_scores(answer[2].get("scores"), self.test_sizes.get(site), what)
        except PayloadError as err:
            self._event(stage.number, site=site, scores="refused", reason=str(err))
            return []
        self.test_sizes.setdefault(site, len(scores))
        return scores
