"""One finished run of the main job, as the report reads it: what was planned, what the runner returned, its state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from monai.utils import StrEnum

from monai_continual.strategies import RunState
from monai_continual.strategies.names import Strategy

if TYPE_CHECKING:  # the report reads results; it needs no training engine to do so
    from monai_continual.engines import StrategyResult

__all__ = ["FinishedRun", "RunVariant"]


class RunVariant(StrEnum):
    """Why a run was made: ``main`` (the strategy's row of the table, in the datalist's order), ``order`` (another
    site order of an order-dependent strategy), ``increasing`` / ``decreasing`` (VCL in site-size order),
    ``fedprox`` (federated averaging with FedProx's proximal term, a row of its own)."""

    MAIN = "main"
    ORDER = "order"
    INCREASING = "increasing"
    DECREASING = "decreasing"
    FEDPROX = "fedprox"


@dataclass(frozen=True)
class FinishedRun:
    """A run of the main job after :meth:`~monai_continual.engines.ContinualRunner.run` returned.

    Attributes:
        key: the run's name in logs and in the summary's training budget (``fine_tuning``, ``fine_tuning@order2``).
        strategy: what ran.
        variant: why it ran.
        order: the training sites in the order the run first visited them.
        result: what the runner returned.
        state: the run's state (its stage records).

    Example::

        >>> run = FinishedRun("vcl", Strategy.VCL, RunVariant.MAIN, ("a", "b"), result, RunState.read(directory))
    """

    key: str
    strategy: Strategy
    variant: RunVariant
    order: tuple[str, ...]
    result: StrategyResult
    state: RunState
