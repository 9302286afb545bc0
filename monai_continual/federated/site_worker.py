"""A site's side of a federated run: it trains or evaluates one stage at a time on its own data only.

What arrives is a stage (numbers and kinds) and the models it names; the worker puts those models into its own
run directory under their stage numbers and runs the stage with the in-process executor, so a federated stage is
the same computation as an in-process one. What leaves is the published model, its hash and counts, or the
per-volume scores of this site's test cases: no paths, no case names, no other site's anything.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from monai_continual.consolidation.weight_store import DirectoryWeightStore
from monai_continual.federated.boundary import BoundaryPolicy, check_fisher
from monai_continual.federated.payload import (
    PayloadError,
    check_payload,
    fisher_to_params,
    model_to_params,
    params_to_fisher,
    params_to_posterior,
    params_to_weights,
    split_params,
    stage_from_meta,
)
from monai_continual.strategies.stage import Action, NetworkKind, Stage
from monai_continual.utils.atomic import atomic_write_text
from monai_continual.utils.names import check_site_name

__all__ = ["SiteWorker", "serve", "TRANSPORT_KEYS"]

logger = logging.getLogger(__name__)
_RUN_ID = re.compile(r"[0-9a-f]{64}")
#: what NVFlare's Client API adds to every task's meta itself
TRANSPORT_KEYS = frozenset({"job_id", "site_name"})


class SiteWorker:
    """Runs the stages a server sends to this site with an in-process executor (MONAI's or nnU-Net's).

    Every task carries the run's identity (the server's config hash); the worker keeps each run's stages in its own
    directory ``workdir/runs/<run id>``, so a stage output of another job is never returned for this one. Models that
    arrive are checked in memory against the hashes the server sent before they are stored.

    Args:
        make_executor: ``(stages, run_dir) -> executor`` over this site's data only, keeping its stage files (received
            models, checkpoints, optimizer state) in ``run_dir``, e.g. ``lambda stages, run_dir:
            runner.executor(run_dir, stages)``.
        site: this site's name.
        workdir: this site's own working directory.
        accept_margin: the checked weight transfer: before a deterministic stage trains from a model it received,
            the site scores that model on its own validation cases and refuses it when the score is not finite or
            more than this below the last model it accepted, training from that one instead (the refusal is reported
            as ``details["refused_start"]``, the model only by its hash). ``None``: off. Needs an executor with
            ``validation_score`` (the MONAI executor).

    Example::

        >>> worker = SiteWorker(lambda stages, d: runner.executor(d, stages), "site_b", "/data/site_b/fl")
        >>> params, meta, metrics = worker.handle("train", meta, params)
    """

    def __init__(self, make_executor: Callable[[list[Stage], Path], Any], site: str, workdir: str | Path,
                 accept_margin: float | None = None) -> None:
        self.make_executor = make_executor
        self.site = site
        self.workdir = Path(workdir)
        self.accept_margin = None if accept_margin is None else float(accept_margin)

    def run_dir(self, meta: Mapping[str, Any]) -> Path:
        """This site's directory for the run named in a task (a 64-digit hex config hash; anything else refused)."""
        run = meta.get("run")
        if not isinstance(run, str) or not _RUN_ID.fullmatch(run):
            raise PayloadError(f"site {self.site!r}: the task names no valid run identity (got {run!r}).")
        return self.workdir / "runs" / run[:16]

    def handle(self, task: str, meta: Mapping[str, Any], params: Mapping[str, Any] | None) -> tuple[dict, dict, dict]:
        """One task (``"initialize"``, ``"train"`` or ``"evaluate"``); returns ``(params, meta, metrics)``."""
        check_payload(meta, params, None)
        run_dir = self.run_dir(meta)
        if task == "initialize":  # the run's initial weights (stage 0), made the way this site's executor makes them
            executor = self.make_executor([], run_dir)
            output = executor.initialize(NetworkKind.MAP)
            out_meta = {"published": output.published}
            out_params = model_to_params("published", executor.artifacts.weights(0))
            check_payload(out_meta, out_params, {})
            return out_params, out_meta, {}
        stage, kinds = stage_from_meta(meta)
        stages = _stand_ins(stage, kinds)
        executor = self.make_executor(stages, run_dir)
        self._receive(executor, meta, params or {}, kinds)
        if task == "train":
            if self.site not in stage.sites:
                raise PayloadError(
                    f"site {self.site!r} was sent stage {stage.number}, which trains at {list(stage.sites)}."
                )
            stage, refused = self._checked_start(executor, stage)
            output = executor.train(stage)
            self._accept_own(executor, stage, output.published)
            published: Any = (executor.artifacts.posterior(stage.number) if stage.network == NetworkKind.BAYES
                              else executor.artifacts.weights(stage.number))
            out_meta = {"published": output.published, "num_examples": int(output.num_examples),
                        "details": {k: v for k, v in output.details.items() if isinstance(v, (int, float, bool))}}
            if refused:
                out_meta["details"]["refused_start"] = True
            if stage.network == NetworkKind.BAYES:
                out_meta["metadata"] = dict(published.metadata)
            out_params, metrics = model_to_params("published", published), {}
            if stage.ewc_gamma is not None:  # the running Fisher after this site: a summary of its parameters
                out_params.update(fisher_to_params("fisher", executor.artifacts.fisher(stage.number)))
                out_meta["fisher"] = executor.artifacts.fisher_sha(stage.number)
        elif task == "evaluate":
            scores = [float(x) for x in executor.evaluate(stage, self.site)]
            out_params, out_meta, metrics = {}, {}, {"scores": scores}
        else:
            raise PayloadError(f"unknown task {task!r}; tasks are 'initialize', 'train' and 'evaluate'.")
        check_payload(out_meta, out_params, metrics)
        return out_params, out_meta, metrics

    def _checked_start(self, executor: Any, stage: Stage) -> tuple[Stage, bool]:
        """The stage to train: as sent, or from the last model this site accepted (a received start that passed the
        check, or its own published model) when the received one fails the check (see ``accept_margin``).

        The decision is recorded under the stage's number with the received model's hash, so the same stage sent
        again is decided the same way, and another model sent under the same number is checked again."""
        artifacts = executor.artifacts
        if (self.accept_margin is None or stage.start is None or stage.network != NetworkKind.MAP
                or artifacts.kind(stage.start) != NetworkKind.MAP):
            return stage, False
        if not hasattr(executor, "validation_score"):
            raise ValueError(f"site {self.site!r}: accept_margin needs an executor that scores validation cases "
                             f"(the MONAI executor), not {type(executor).__name__}.")
        path = artifacts.check_file(stage.number)
        received = artifacts.published_sha(stage.start)
        decision = json.loads(path.read_text(encoding="utf-8")) if path.exists() else None
        if decision is None or decision["received"] != received:  # another model under that number: decide again
            last = self._last_accepted(artifacts, stage.number)
            score = executor.validation_score(stage.start, self.site)
            refused = last is not None and (not math.isfinite(score) or score < last[1] - self.accept_margin)
            if not refused and not math.isfinite(score):
                raise PayloadError(f"site {self.site!r}, stage {stage.number}: the received model's output is not "
                                   "finite and this site has accepted no model before to train from instead.")
            if refused:
                logger.warning(f"site {self.site!r}, stage {stage.number}: the received model scores {score:.3f} on "
                               f"this site's validation cases, the last accepted {last[1]:.3f}; "
                               "training from that one.")
            decision = {"received": received, "start": last[0] if refused else stage.start, "refused": refused,
                        "accepted": [] if refused else [[stage.start, score, received]]}
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps(decision))
        if decision["refused"]:
            return dataclasses.replace(stage, start=int(decision["start"])), True
        return stage, False

    def _accept_own(self, executor: Any, stage: Stage, published: str) -> None:
        """A site trusts what it published itself: it becomes the last accepted model."""
        path = executor.artifacts.check_file(stage.number)
        if self.accept_margin is None or stage.network != NetworkKind.MAP or not path.exists():
            return
        decision = json.loads(path.read_text(encoding="utf-8"))
        received = [] if decision["refused"] else decision["accepted"][:1]  # the received start, when it was accepted
        own = [stage.number, executor.validation_score(stage.number, self.site), published]
        decision["accepted"] = [*received, own]
        atomic_write_text(path, json.dumps(decision))

    @staticmethod
    def _last_accepted(artifacts: Any, number: int) -> tuple[int, float] | None:
        """The model accepted last before stage ``number`` (its stage and validation score) that this site still
        holds unchanged, or ``None``."""
        for earlier in range(number - 1, 0, -1):
            path = artifacts.check_file(earlier)
            if not path.exists():
                continue
            for stage_number, score, sha in reversed(json.loads(path.read_text(encoding="utf-8"))["accepted"]):
                if artifacts.published_sha(int(stage_number)) == sha:  # still the very model that was accepted
                    return int(stage_number), float(score)
        return None

    def _receive(
        self, executor: Any, meta: Mapping[str, Any], params: Mapping[str, Any], kinds: Mapping[int, NetworkKind]
    ) -> None:
        """Check the models that came with the task against the server's hashes in memory, then store them under
        their stage numbers (skipped when already there)."""
        roles = dict(meta.get("roles", {}))
        stage = dict(meta["stage"])
        if meta.get("task") == "train":  # a training stage receives its start, prior and Fisher, never its own number
            named = {"start": stage.get("start"), "prior": stage.get("prior"), "fisher": stage.get("fisher")}
        else:
            named = {"model": stage.get("number"), **{f"input{i}": n for i, n in enumerate(stage.get("inputs", []))}}
        # the Fisher last: it is checked against the start weights received with it
        for role, tensors in sorted(split_params(params).items(), key=lambda item: item[0] == "fisher"):
            if role not in roles or roles[role].get("stage") != named.get(role) or named[role] is None:
                raise PayloadError(
                    f"site {self.site!r}: a model arrived under role {role!r} for stage "
                    f"{roles.get(role, {}).get('stage')!r}, which the task does not name."
                )
            number = int(roles[role]["stage"])
            expected = roles[role].get("sha256")  # the content hash the server sent
            what = f"site {self.site!r}: the {role} model (stage {number})"
            if role == "fisher":
                self._receive_fisher(executor, tensors, number, expected, what)
            elif kinds.get(number, NetworkKind.MAP) == NetworkKind.BAYES:
                try:
                    posterior = params_to_posterior(tensors, roles[role].get("metadata", {}))
                except ValueError as err:
                    raise PayloadError(f"{what}: {err}") from err
                if posterior.sha256() != expected:
                    raise PayloadError(f"{what} does not match the hash the server sent; nothing was stored.")
                if hasattr(executor, "check_posterior"):  # e.g. a bundle site: its network made Bayesian
                    executor.check_posterior(posterior, f"the received {role} (stage {number})")
                path = executor.artifacts.posterior_file(number)
                if not path.exists() or executor.artifacts.posterior(number).sha256() != expected:
                    posterior.save(path)
            else:
                store: DirectoryWeightStore = executor.artifacts.store
                weights = params_to_weights(tensors)
                if hasattr(executor, "check_weights"):  # e.g. a bundle site: its network's names and shapes
                    executor.check_weights(weights, f"the received {role} (stage {number})")
                publisher = check_site_name(roles[role].get("site", "server"), f"{what}: publisher")
                metadata = dict(roles[role].get("metadata", {}))
                if store.content_sha256(weights, publisher, number, **metadata) != expected:
                    raise PayloadError(f"{what} does not match the hash the server sent; nothing was stored.")
                entry = store.entry(number)
                if entry is None or entry.sha256 != expected:
                    store.publish(weights, publisher, number, **metadata)

    @staticmethod
    def _receive_fisher(executor: Any, tensors: Mapping[str, Any], number: int, expected: str | None,
                        what: str) -> None:
        """Check a running Fisher that came with a task (entries of the start weights received with it, finite,
        >= 0, the server's hash) in memory, then store it under its stage number (skipped when already there)."""
        artifacts = executor.artifacts
        fisher = params_to_fisher(tensors)
        start = artifacts.weights(number) if artifacts.store.entry(number) is not None else None
        check_fisher(fisher, start, what, BoundaryPolicy())
        if artifacts.fisher_content_sha256(fisher, number) != expected:
            raise PayloadError(f"{what} does not match the hash the server sent; nothing was stored.")
        if artifacts.fisher_sha(number) != expected:
            artifacts.save_fisher(number, fisher)


def _stand_ins(stage: Stage, kinds: Mapping[int, NetworkKind]) -> list[Stage]:
    """The stage plus placeholders for the stages it names, carrying only their kinds."""
    others = [
        Stage(n, Action.TRAIN, network=k, start=None, evaluate=False)
        for n, k in kinds.items()
        if n not in (0, stage.number)
    ]
    return sorted([stage, *others], key=lambda s: s.number)


def serve(worker: Any) -> None:
    """Answer the server's tasks through NVFlare's Client API until the job ends (after ``flare.init()``).

    ``worker``: a :class:`SiteWorker`, or what answers more tasks in front of one (``handle(task, meta, params)``).
    """
    import nvflare.client as flare

    while flare.is_running():
        model = flare.receive()
        if model is None:
            break
        meta = {k: v for k, v in (model.meta or {}).items() if k not in TRANSPORT_KEYS}
        params, meta, metrics = worker.handle(flare.get_task_name(), meta, model.params)
        flare.send(flare.FLModel(params=params, meta=meta, metrics=metrics))
