"""A site's side of a federated run: it trains or evaluates one stage at a time on its own data only.

What arrives is a stage (numbers and kinds) and the models it names; the worker puts those models into its own
run directory under their stage numbers and runs the stage with the in-process executor, so a federated stage is
the same computation as an in-process one. What leaves is the published model, its hash and counts, or the
per-volume scores of this site's test cases: no paths, no case names, no other site's anything.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from monai_continual.consolidation.weight_store import DirectoryWeightStore
from monai_continual.federated.payload import (
    PayloadError,
    check_payload,
    model_to_params,
    params_to_posterior,
    params_to_weights,
    split_params,
    stage_from_meta,
)
from monai_continual.strategies.stage import Action, NetworkKind, Stage

__all__ = ["SiteWorker", "parse_settings", "serve"]


class SiteWorker:
    """Runs the stages a server sends to this site with an in-process executor (MONAI's or nnU-Net's).

    Args:
        make_executor: ``stages -> executor`` over this site's data only and its own working directory (received
            models, its checkpoints and optimizer state), e.g. ``lambda stages: MonaiStageExecutor(runner, dir,
            stages)``.
        site: this site's name.

    Example::

        >>> worker = SiteWorker(lambda stages: MonaiStageExecutor(runner, "/data/site_b/fl", stages), "site_b")
        >>> params, meta, metrics = worker.handle("train", meta, params)
    """

    def __init__(self, make_executor: Callable[[list[Stage]], Any], site: str) -> None:
        self.make_executor = make_executor
        self.site = site
        self.received: list[str] = []

    def handle(self, task: str, meta: Mapping[str, Any], params: Mapping[str, Any] | None) -> tuple[dict, dict, dict]:
        """One task (``"initialize"``, ``"train"`` or ``"evaluate"``); returns ``(params, meta, metrics)``."""
        if task == "initialize":  # the run's initial weights (stage 0), made the way this site's executor makes them
            executor = self.make_executor([])
            output = executor.initialize(NetworkKind.MAP)
            out_meta = {"published": output.published}
            out_params = model_to_params("published", executor.artifacts.weights(0))
            check_payload(out_meta, out_params, {})
            return out_params, out_meta, {}
        stage, kinds = stage_from_meta(meta)
        stages = _stand_ins(stage, kinds)
        executor = self.make_executor(stages)
        self._receive(executor, meta, params or {}, kinds)
        if task == "train":
            if self.site not in stage.sites:
                raise PayloadError(f"site {self.site!r} was sent stage {stage.number}, which trains at {list(stage.sites)}.")
            output = executor.train(stage)
            published: Any = (executor.artifacts.posterior(stage.number) if stage.network == NetworkKind.BAYES
                              else executor.artifacts.weights(stage.number))
            out_meta = {"published": output.published, "num_examples": int(output.num_examples),
                        "details": {k: v for k, v in output.details.items() if isinstance(v, (int, float, bool))}}
            if stage.network == NetworkKind.BAYES:
                out_meta["metadata"] = dict(published.metadata)
            out_params, metrics = model_to_params("published", published), {}
        elif task == "evaluate":
            scores = [float(x) for x in executor.evaluate(stage, self.site)]
            out_params, out_meta, metrics = {}, {}, {"scores": scores}
        else:
            raise PayloadError(f"unknown task {task!r}; tasks are 'initialize', 'train' and 'evaluate'.")
        check_payload(out_meta, out_params, metrics)
        return out_params, out_meta, metrics

    def _receive(self, executor: Any, meta: Mapping[str, Any], params: Mapping[str, Any], kinds: Mapping[int, NetworkKind]) -> None:
        """Store the models that came with the task under their stage numbers (skipped when already there)."""
        roles = dict(meta.get("roles", {}))
        for role, tensors in split_params(params).items():
            number = int(roles[role]["stage"])
            kind = kinds.get(number, NetworkKind.MAP)
            if kind == NetworkKind.BAYES:
                posterior = params_to_posterior(tensors, roles[role].get("metadata", {}))
                path = executor.artifacts.posterior_file(number)
                if not path.exists() or executor.artifacts.posterior(number).sha256() != posterior.sha256():
                    posterior.save(path)
            else:
                store: DirectoryWeightStore = executor.artifacts.store
                entry = store.entry(number)
                weights = params_to_weights(tensors)
                if entry is None or entry.sha256 != roles[role].get("sha256"):
                    store.publish(weights, roles[role].get("site", "server"), number)
            self.received.append(role)


def _stand_ins(stage: Stage, kinds: Mapping[int, NetworkKind]) -> list[Stage]:
    """The stage plus placeholders for the stages it names, carrying only their kinds."""
    others = [Stage(n, Action.TRAIN, network=k, start=None, evaluate=False) for n, k in kinds.items() if n not in (0, stage.number)]
    return sorted([stage, *others], key=lambda s: s.number)


def parse_settings(items: list[str]) -> dict[str, Any]:
    """``["key=<JSON>", ...]`` (a client script's ``--set`` arguments) as a dict."""
    return {key: json.loads(value) for key, _, value in (item.partition("=") for item in items)}


def serve(worker: SiteWorker) -> None:
    """Answer the server's tasks through NVFlare's Client API until the job ends (after ``flare.init()``)."""
    import nvflare.client as flare

    while flare.is_running():
        model = flare.receive()
        if model is None:
            break
        params, meta, metrics = worker.handle(flare.get_task_name(), dict(model.meta or {}), model.params)
        flare.send(flare.FLModel(params=params, meta=meta, metrics=metrics))
