"""Fault injection for recovery tests: exit the process hard at a named step of a named stage."""

from __future__ import annotations

import os

__all__ = ["CRASH_ENV", "STEPS", "crash_point"]

#: ``STEP:STAGE`` (e.g. ``after_publish:3``) makes the process exit at that step of that stage, as a SIGKILL would
CRASH_ENV = "MONAI_CONTINUAL_CRASH_AT"
#: the step boundaries a run can be interrupted at
STEPS = (
    "mid_training", "before_publish", "after_publish", "during_evaluation", "before_state_save", "mid_consolidation"
)
_EXIT_CODE = 86


def crash_point(step: str, stage: int) -> None:
    """Exit with ``os._exit`` (no cleanup, no ``finally``) when :data:`CRASH_ENV` names this step and stage.

    Recovery tests set the variable in a subprocess and rerun it without; nothing else should set it.
    """
    wanted = os.environ.get(CRASH_ENV)
    if wanted and wanted == f"{step}:{stage}":
        os._exit(_EXIT_CODE)
