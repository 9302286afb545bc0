"""The NVFlare server workflow that walks any strategy's schedule with the sites as separate parties."""

from __future__ import annotations

import json
import time

from nvflare.app_common.abstract.fl_model import FLModel
from nvflare.app_common.workflows.model_controller import ModelController

from monai_continual.federated.boundary import BoundaryPolicy
from monai_continual.federated.nnunet_planning import FINGERPRINT_TASK, PLANS_TASK, Planning, plan_over_sites
from monai_continual.federated.payload import REPLY_KEYS, PayloadError, check_payload
from monai_continual.federated.result_filters import check_result_filters
from monai_continual.federated.server_run import run_on_server
from monai_continual.strategies import Strategy, strategy_of
from monai_continual.utils.choices import look_up_choice

__all__ = ["StrategyController", "refuse_data_transfer"]

#: the meta key that answers each planning task; a stage task's answer is ``published`` (or parameters, metrics)
_PLANNING_ANSWERS = {FINGERPRINT_TASK: "fingerprint", PLANS_TASK: "plans_sha256"}


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
        boundary: the bounds on a site's influence, :class:`~monai_continual.federated.boundary.BoundaryPolicy`'s
            fields as JSON (defaults: equal FedAvg weights, updates bounded to 2x the median norm, posteriors screened).
        result_filters: the task-result filters the job applies at the sites, as data
            (:mod:`~monai_continual.federated.result_filters`; full-weight transfer: ``ExcludeVars`` only).
        planning: nnU-Net sites only: ``"fingerprints"`` plans from the sites' fingerprints before the first stage
            (:mod:`~monai_continual.federated.nnunet_planning`); ``"shared"``: the sites were planned beforehand.
    """

    def __init__(self, strategy: str, options: dict, sites: list, eval_sites: list, run_dir: str, *,
                 settings: dict | None = None, epochs: int = 1, seed: int = 0, min_clients: int = 1,
                 task_timeout: int = 0, payload_log: str = "", allow_data_to_leave_sites: bool = False,
                 boundary: dict | None = None, result_filters: list | None = None,
                 planning: str = Planning.SHARED) -> None:
        super().__init__()
        self.planning = look_up_choice(planning, Planning, "StrategyController: planning")
        refuse_data_transfer(strategy, allow_data_to_leave_sites)
        check_result_filters(result_filters or [], weight_diff=False, strategy=strategy)  # full weights travel
        self.result_filters = list(result_filters or [])
        self.boundary = BoundaryPolicy.from_dict(boundary).to_dict()  # refused here, before the job runs
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
        stage = f" of stage {meta['stage'].get('number', 0)}" if "stage" in meta else ""  # planning tasks have none
        refusal = (reply.meta or {}).get("error")
        if isinstance(refusal, str) and not reply.params:  # a site's stated refusal (e.g. another network)
            self._audit("refused", task, site, {}, {}, {"reason": refusal})
            raise RuntimeError(f"site {site!r} refused the {task} task{stage}: {refusal[:2000]}")
        answer = _PLANNING_ANSWERS.get(task, "published")
        if not reply.params and not reply.metrics and not (reply.meta or {}).get(answer):
            raise RuntimeError(f"site {site!r} failed the {task} task{stage} (its own log has the error); "
                               "the run stops here and resumes when resubmitted.")
        reply_meta = {k: v for k, v in (reply.meta or {}).items() if k in REPLY_KEYS}
        reply_params, metrics = dict(reply.params or {}), dict(reply.metrics or {})
        try:  # checked before anything of it is written, the audit log included
            misplaced = sorted(k for k in set(_PLANNING_ANSWERS.values()) & set(reply_meta) if k != answer)
            if misplaced:  # a planning document is checked against its schema only as the answer to its task
                raise PayloadError(f"a reply to the {task} task may not carry {misplaced}.")
            check_payload(reply_meta, reply_params, metrics)
        except PayloadError as err:
            self._audit("refused", task, site, {}, {}, {"reason": str(err)})
            raise
        self._audit("received", task, site, reply_meta, reply_params, metrics)
        return reply_params, reply_meta, metrics

    def run(self) -> None:
        settings = self.settings
        try:
            if self.planning == Planning.FINGERPRINTS:
                plan_over_sites(self._send, self.sites, self.run_dir, self.settings, log=self.info,
                                held_out=[s for s in self.eval_sites if s not in self.sites])
                settings = {**settings, "planning": self.planning.value}  # part of the run's identity
            run_on_server(self.strategy, self.options, self.sites, self.eval_sites, self.run_dir, self._send,
                          settings=settings, epochs=self.epochs, seed=self.seed, min_clients=self.min_clients,
                          boundary=self.boundary, log=self.info, result_filters=self.result_filters)
        except (PayloadError, RuntimeError, ValueError) as err:
            self.error(f"federated {self.strategy} stopped: {err}")
            raise
        self.info(f"federated {self.strategy}: done; results in {self.run_dir}")
