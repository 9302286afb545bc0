"""The NVFlare server workflow that walks any strategy's schedule with the sites as separate parties."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from nvflare.app_common.abstract.fl_model import FLModel
from nvflare.app_common.workflows.model_controller import ModelController

from monai_continual.federated.payload import PayloadError, check_payload
from monai_continual.federated.results import write_results
from monai_continual.federated.server_executor import FederatedStageExecutor
from monai_continual.strategies import RunState, Strategy, build_schedule, make_options, run_name, run_stages, strategy_of
from monai_continual.utils.atomic import atomic_write_text

__all__ = ["StrategyController", "refuse_data_transfer"]

_REPLY_KEYS = {"published", "num_examples", "details", "metadata"}


def refuse_data_transfer(strategy: str, allow_data_to_leave_sites: bool) -> None:
    """Strategies that move data between sites are refused unless the job explicitly allows it."""
    name = strategy_of(strategy)
    if name == Strategy.CENTRALLY_HOSTED:
        raise ValueError("centrally_hosted pools every site's data in one place; it has no federated form.")
    if name == Strategy.REPLAY and not allow_data_to_leave_sites:
        raise ValueError(
            "replay hands earlier sites' image-label cases to later sites, i.e. patient data leaves a site; the "
            "federated engine refuses it unless the job sets allow_data_to_leave_sites=True."
        )
    if name == Strategy.REPLAY:
        raise NotImplementedError("replay across federated sites (moving cases as tensors) is not supported yet.")


class StrategyController(ModelController):
    """Runs one strategy of :mod:`monai_continual.strategies` over NVFlare clients named after the sites.

    For each stage the server sends only what the stage needs (the stage's numbers and the models it names) to the
    stage's site and waits; consolidations run on the server; after every evaluated stage every site scores the
    published model on its own test data and returns per-volume scores only. No site receives another site's
    metrics. The run state is saved on the server after every stage (the core's format): submitting the same job
    again with the same ``run_dir`` continues after the last finished stage.

    Args:
        strategy: a strategy name.
        options: the strategy's options (its options dataclass's fields).
        sites: training sites (NVFlare client names), in their listed order.
        eval_sites: every site that evaluates (training and held-out sites).
        run_dir: the server's run directory.
        settings: what else determines the run's result (config overrides, nnU-Net options): part of its identity.
        epochs: default epochs of a site stage.
        seed: seeds schedules (random orders).
        min_clients: fewest answers a consolidation goes on with.
        task_timeout: seconds to wait for a site's answer (0: forever).
        payload_log: optional JSON-lines file recording the keys of every payload received (for audits).
        allow_data_to_leave_sites: must be set for strategies that move data (replay).
    """

    def __init__(self, strategy: str, options: dict, sites: list, eval_sites: list, run_dir: str,
                 settings: dict | None = None, epochs: int = 1, seed: int = 0, min_clients: int = 1, task_timeout: int = 0,
                 payload_log: str = "", allow_data_to_leave_sites: bool = False) -> None:
        super().__init__()
        refuse_data_transfer(strategy, allow_data_to_leave_sites)
        self.strategy = strategy
        self.options = dict(options or {})
        self.sites = list(sites)
        self.eval_sites = list(eval_sites)
        self.run_dir = str(run_dir)
        self.settings = dict(settings or {})
        self.epochs = int(epochs)
        self.seed = int(seed)
        self.min_clients = int(min_clients)
        self.task_timeout = int(task_timeout)
        self.payload_log = payload_log

    def _audit(self, direction: str, task: str, site: str, meta: dict, params: dict, metrics: dict) -> None:
        if self.payload_log:
            record = {"direction": direction, "task": task, "site": site, "meta": meta, "params": sorted(params),
                      "metrics": metrics, "time": time.time()}
            with open(self.payload_log, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record, default=str) + "\n")

    def _send(self, task: str, site: str, params: dict, meta: dict) -> tuple[dict, dict, dict] | None:
        self._audit("sent", task, site, meta, params, {})
        results = self.send_model_and_wait(task_name=task, data=FLModel(params=params, meta=meta), targets=[site],
                                           timeout=self.task_timeout)
        if not results:
            return None
        reply = results[0]
        if not reply.params and not reply.metrics and not (reply.meta or {}).get("published"):
            raise RuntimeError(f"site {site!r} failed the {task} task of stage {meta.get('stage', {}).get('number', 0)} "
                               "(its own log has the error); the run stops here and resumes when resubmitted.")
        reply_meta = {k: v for k, v in (reply.meta or {}).items() if k in _REPLY_KEYS}
        reply_params, metrics = dict(reply.params or {}), dict(reply.metrics or {})
        self._audit("received", task, site, reply_meta, reply_params, metrics)
        check_payload(reply_meta, reply_params, metrics)
        return reply_params, reply_meta, metrics

    def run(self) -> None:
        name = strategy_of(self.strategy)
        stages = build_schedule(name, self.sites, make_options(name, **self.options), self.epochs, self.seed)
        run_dir = Path(self.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        config = {"strategy": run_name(name), "stages": [s.to_dict() for s in stages], "sites": self.sites,
                  "eval_sites": self.eval_sites, "settings": self.settings, "engine": "federated"}
        state = RunState.open(run_dir, run_name(name), config)
        executor = FederatedStageExecutor(run_dir, stages, self._send, self.min_clients)
        try:
            run_stages(stages, executor, state, self.eval_sites, log=self.info)
        except (PayloadError, RuntimeError, ValueError) as err:
            self.error(f"federated {name.value} stopped: {err}")
            atomic_write_text(run_dir / "error.txt", f"{type(err).__name__}: {err}\n")
            raise
        (run_dir / "error.txt").unlink(missing_ok=True)
        write_results(run_dir, name.value, stages, state, self.sites, [s for s in self.eval_sites if s not in self.sites],
                      skipped=sorted(executor.missing))
        self.info(f"federated {name.value}: done; results in {os.fspath(run_dir)}")
