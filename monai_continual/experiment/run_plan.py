"""Running the main job's plan: one :meth:`ContinualRunner.run` per planned run, each logged as it finishes."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from monai_continual.engines import ContinualRunner
from monai_continual.experiment.plan import PlannedRun
from monai_continual.experiment.tracking import RunTracker
from monai_continual.report import FinishedRun, RunVariant
from monai_continual.strategies import RunState
from monai_continual.strategies.names import Strategy
from monai_continual.utils.distributed import is_main_rank

__all__ = ["run_plan"]


def run_plan(
    runner: ContinualRunner,
    plan: Sequence[PlannedRun],
    *,
    tracker: RunTracker | None = None,
    test_sizes: Mapping[str, int] | None = None,
    start: float | None = None,
) -> list[FinishedRun]:
    """Run (or resume) every planned run in order.

    Args:
        runner: runs each strategy.
        plan: from :func:`~monai_continual.experiment.plan.plan_runs`.
        tracker: logs every stage as it is saved and every run as it finishes (``None``: no tracking).
        test_sizes: training site -> test-set size (the tracker's weighted Dice).
        start: when the job started (``time.time()``), for the progress lines.

    Example::

        >>> runs = run_plan(runner, plan_runs(PlanSettings((Strategy.VCL,)), runner.sites, sizes))
    """
    start = time.time() if start is None else start
    finished: list[FinishedRun] = []
    for number, planned in enumerate(plan, start=1):
        if is_main_rank():
            print(f"[{number}/{len(plan)}] {planned.key} ({time.time() - start:.0f} s so far)", flush=True)
        on_stage = None if tracker is None else tracker.stage_logger(planned.key)
        result = runner.run(planned.strategy, directory=planned.directory, on_stage=on_stage, **planned.options)
        run = FinishedRun(planned.key, planned.strategy, planned.variant, planned.order, result,
                          RunState.read(result.directory))
        finished.append(run)
        if tracker is not None:
            single = next((r for r in finished
                           if r.strategy == Strategy.SINGLE_SITE and r.variant == RunVariant.MAIN), None)
            tracker.log_finished(run, test_sizes or {}, single)
    return finished
