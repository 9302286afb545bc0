"""The server's whole run over any transport: the schedule, the run state, the checked stages, the results.

:class:`~monai_continual.federated.controller.StrategyController` calls it with NVFlare's task API as ``send``; the
same function over another transport (a test's in-process loopback to :class:`~monai_continual.federated.SiteWorker`
objects) computes the very same run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from monai_continual.federated.boundary import BoundaryPolicy
from monai_continual.federated.result_filters import excluded_names
from monai_continual.federated.results import write_results
from monai_continual.federated.server_executor import FederatedStageExecutor, Send
from monai_continual.strategies import RunState, build_schedule, make_options, run_name, run_stages, strategy_of
from monai_continual.utils.atomic import atomic_write_text

__all__ = ["run_on_server"]


def run_on_server(strategy: str, options: Mapping[str, Any], sites: Sequence[str], eval_sites: Sequence[str],
                  run_dir: str | Path, send: Send, *, settings: Mapping[str, Any] | None = None, epochs: int = 1,
                  seed: int = 0, min_clients: int = 1, boundary: Mapping[str, Any] | None = None,
                  log: Callable[[str], None] | None = print,
                  result_filters: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """Run (or resume) one strategy with the sites reached through ``send``; return the summary.

    Args:
        strategy, options: the strategy and its options.
        sites: training sites in their listed order; eval_sites: every site that evaluates.
        run_dir: the server's run directory (state, published models, results).
        send: ``send(task, site, params, meta) -> (params, meta, metrics) | None``.
        settings: what else determines the run's result (part of its identity).
        epochs, seed: default stage length and the schedule's seed.
        min_clients: fewest inputs a consolidation goes on with.
        boundary: :class:`BoundaryPolicy` fields.
        log: where a line per finished stage goes.
        result_filters: the task-result filters the sites apply (:mod:`~monai_continual.federated.result_filters`):
            variables an ``ExcludeVars`` keeps at a site are taken from the stage's start.

    Raises:
        Exception: whatever stops the run is written to ``error.txt`` first; run again to resume.

    Example::

        >>> run_on_server("federated_averaging", {"rounds": 2}, ["a", "b", "c"], ["a", "b", "c"], "out/fedavg", send)
    """
    name = strategy_of(strategy)
    stages = build_schedule(name, list(sites), make_options(name, **dict(options)), epochs, seed)
    policy = BoundaryPolicy.from_dict(boundary)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config = {"strategy": run_name(name), "stages": [s.to_dict() for s in stages], "sites": list(sites),
              "eval_sites": list(eval_sites), "settings": dict(settings or {}), "engine": "federated",
              "boundary": policy.to_dict(), **({"result_filters": list(result_filters)} if result_filters else {})}
    state = RunState.open(run_dir, run_name(name), config)
    test_sizes = {site: len(v) for r in state.stage_records() for site, v in (r.scores or {}).items() if v}
    executor = FederatedStageExecutor(run_dir, stages, send, min_clients, run_id=state.config_hash, policy=policy,
                                      test_sizes=test_sizes,
                                      excluded=excluded_names(result_filters) if result_filters else None)
    try:
        run_stages(stages, executor, state, list(eval_sites), log=log)
    except Exception as err:  # whatever stopped it, the next submission reads why
        atomic_write_text(run_dir / "error.txt", f"{type(err).__name__}: {err}\n")
        raise
    (run_dir / "error.txt").unlink(missing_ok=True)
    return write_results(run_dir, name.value, stages, state, list(sites), [s for s in eval_sites if s not in sites],
                         skipped=sorted(executor.missing))
