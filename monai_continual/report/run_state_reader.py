"""A finished run's state, read back for a report through :class:`~monai_continual.strategies.RunState`."""

from __future__ import annotations

import json
import os

from monai_continual.strategies import RunState, RunStateError

__all__ = ["read_run_state"]


def read_run_state(directory: str | os.PathLike) -> RunState:
    """The state of the run in ``directory``, opened with the configuration it was saved with.

    A report does not know the configuration a backend ran with; the state file names it, and
    :meth:`RunState.open` then checks the file against it (its hash and records) as for a resumed run.

    Args:
        directory: the run directory.

    Raises:
        RunStateError: the directory holds no run state, or a damaged one.

    Example::

        >>> state = read_run_state("outputs/experiment/runs/vcl")
        >>> [r.label for r in state.stage_records()]
    """
    path = RunState(directory, "", None).path
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        strategy, config = saved["strategy"], saved["config"]
    except FileNotFoundError as err:
        raise RunStateError(f"no run state in {str(directory)!r}.") from err
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise RunStateError(f"run state {str(path)!r} is damaged or of an older format: {err}") from err
    return RunState.open(directory, strategy, config)
