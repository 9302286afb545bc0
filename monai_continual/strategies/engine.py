"""The strategy engine: walks a schedule, drives an executor through it, and keeps the run's state.

The invariant every backend keeps, and that makes any interruption harmless:

    A stage's inputs (start weights, prior, optimizer state, replay memory) are named by stage numbers, never as
    "the latest". A stage's model is published as its last step; publishing is its commit. After a crash at any
    point (during training, after publishing, during evaluation, before the state is saved, inside a
    consolidation) the rerun finds the stage unrecorded, asks the executor for it again, and gets either the same
    training redone from exactly the same inputs or the already published model; evaluation is seeded by stage and
    site. So a resumed run ends with the uninterrupted run's R matrix.

The engine knows nothing of MONAI engines, nnU-Net or NVFlare: backends implement
:class:`~monai_continual.strategies.executor.StageExecutor`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from monai_continual.strategies.executor import StageExecutor
from monai_continual.strategies.faults import crash_point
from monai_continual.strategies.run_state import RunState, StageRecord
from monai_continual.strategies.stage import Action, Stage

__all__ = ["run_stages", "INITIAL_STAGE"]

INITIAL_STAGE = 0


def run_stages(
    stages: Sequence[Stage],
    executor: StageExecutor,
    state: RunState,
    eval_sites: Sequence[str],
    log: Callable[[str], None] | None = print,
    on_stage: Callable[[RunState, StageRecord], None] | None = None,
) -> RunState:
    """Run (or resume) ``stages`` with ``executor``; return the state with every stage recorded.

    Args:
        stages: a schedule from :func:`~monai_continual.strategies.schedule.build_schedule`.
        executor: the backend.
        state: the run's state (:meth:`RunState.open`); finished stages are skipped.
        eval_sites: sites whose test data score every evaluated stage (held-out sites included).
        log: where a line per finished stage goes (``None``: quiet).
        on_stage: called with the state and the record of every stage once it is saved (live tracking: what a
            killed run had finished is logged).

    Example::

        >>> state = run_stages(build_schedule("vcl", sites), executor, RunState.open(run_dir, "vcl", config), sites)
        >>> state.matrix(stages, sites).as_array()
    """
    _check_numbers(stages)
    if not state.done(INITIAL_STAGE):
        output = executor.initialize(stages[0].network)
        state.complete(StageRecord(INITIAL_STAGE, "init", [], "init", {}, output.published, 0))
    for stage in stages:
        if state.done(stage.number):
            continue
        started = time.time()
        if stage.action == Action.TRAIN:
            output = executor.train(stage)
        else:
            weights = [float(state.records[i].num_examples) for i in stage.inputs]
            output = executor.consolidate(stage, weights)
        crash_point("after_publish", stage.number)
        scores = None
        if stage.evaluate:
            scores = {}
            for index, site in enumerate(eval_sites):
                scores[site] = [float(x) for x in executor.evaluate(stage, site)]
                if index == 0:
                    crash_point("during_evaluation", stage.number)
        crash_point("before_state_save", stage.number)
        details = dict(output.details, seconds=round(time.time() - started, 2))
        record = StageRecord(stage.number, stage.label, list(stage.sites), str(stage.action), output.loaded,
                             output.published, int(output.num_examples), scores, details)
        state.complete(record)
        if on_stage is not None:
            on_stage(state, record)
        if log is not None:
            line = f"[{state.strategy}] stage {stage.number}/{len(stages)} {stage.label}"
            if scores:
                line += ": " + ", ".join(f"{s} {sum(v) / len(v):.3f}" for s, v in scores.items() if v)
            log(line + f" ({details['seconds']} s)")
    return state


def _check_numbers(stages: Sequence[Stage]) -> None:
    if not stages:
        raise ValueError("run_stages: the schedule is empty.")
    for expected, stage in enumerate(stages, 1):
        if stage.number != expected:
            raise ValueError(f"run_stages: stage {stage.label!r} has number {stage.number}, expected {expected}.")
        named = (stage.start, stage.prior, stage.previous_visit, stage.memory, stage.fisher, *stage.inputs)
        refs = [r for r in named if r is not None]
        if any(r >= stage.number for r in refs):
            raise ValueError(f"run_stages: stage {stage.number} ({stage.label}) depends on a later stage: {refs}.")
