"""Which runs the main job makes: every strategy once in the datalist's order, order-dependent strategies in more
site orders, VCL in site-size order."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from monai_continual.report import RunVariant
from monai_continual.strategies import make_options, round_orders
from monai_continual.strategies.names import FEDPROX, Strategy

__all__ = ["PlanSettings", "PlannedRun", "plan_runs", "site_orders"]


@dataclass(frozen=True)
class PlanSettings:
    """What the plan covers.

    Attributes:
        strategies: the strategies to run (each runs in :class:`Strategy` order, whatever the order given).
        strategy_options: per strategy, the options for :meth:`~monai_continual.engines.ContinualRunner.run`.
        orders: K, the site orders of each order-dependent strategy: the datalist's and K - 1 seeded permutations;
            a strategy whose options fix an ``order`` runs once.
        size_orders: also run VCL with the sites in increasing and in decreasing training-set size.
        seed: seeds the permutations.
        fedprox: the options of a ``fedprox`` row, federated averaging with FedProx's proximal term: merged over
            ``federated_averaging``'s options, ``proximal_mu`` > 0 (``None``: no such row).

    Example::

        >>> PlanSettings((Strategy.FINE_TUNING, Strategy.VCL), orders=3)
        >>> PlanSettings((Strategy.FEDERATED_AVERAGING,), fedprox={"proximal_mu": 0.01})
    """

    strategies: tuple[Strategy, ...]
    strategy_options: Mapping[Strategy, Mapping[str, Any]] = field(default_factory=dict)
    orders: int = 3
    size_orders: bool = True
    seed: int = 0
    fedprox: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.orders, bool) or not isinstance(self.orders, int) or self.orders < 1:
            raise ValueError(f"orders must be an integer >= 1, got {self.orders!r}.")
        if self.fedprox is not None:
            mu = make_options(Strategy.FEDERATED_AVERAGING, **self.fedprox_options()).proximal_mu
            if not mu > 0:
                raise ValueError(f"the {FEDPROX} row needs proximal_mu > 0 in its options (0 is federated_averaging's "
                                 f"row), got {mu!r}.")

    def fedprox_options(self) -> dict[str, Any]:
        """The ``fedprox`` row's options: ``federated_averaging``'s, then the row's own."""
        return dict(self.options(Strategy.FEDERATED_AVERAGING), **(self.fedprox or {}))

    def options(self, strategy: Strategy) -> Mapping[str, Any]:
        return self.strategy_options.get(strategy, {})


@dataclass(frozen=True)
class PlannedRun:
    """One run of the plan.

    Attributes:
        key: the run's name in logs and in the summary's training budget.
        strategy: what runs.
        variant: why it runs (:class:`~monai_continual.report.RunVariant`).
        order: the training sites in the order the run first visits them.
        directory: its folder under the runner's output directory (``None``: the strategy's own).
        options: the strategy's options for :meth:`~monai_continual.engines.ContinualRunner.run`.

    Example::

        >>> PlannedRun("vcl@increasing", Strategy.VCL, RunVariant.INCREASING, ("b", "a"), "vcl@increasing", {...})
    """

    key: str
    strategy: Strategy
    variant: RunVariant
    order: tuple[str, ...]
    directory: str | None
    options: Mapping[str, Any]


def site_orders(sites: Sequence[str], count: int, seed: int) -> list[list[str]]:
    """The given order and ``count - 1`` seeded random permutations, distinct while there are enough.

    Example::

        >>> site_orders(["a", "b", "c"], 3, seed=7)[0]
        ['a', 'b', 'c']
    """
    rng = np.random.default_rng(seed)
    found = [list(sites)]
    for _ in range(100 * count):
        if len(found) >= count:
            break
        candidate = [sites[i] for i in rng.permutation(len(sites))]
        if candidate not in found or len(found) >= math.factorial(len(sites)):
            found.append(candidate)
    return found


def _visited(strategy: Strategy, sites: Sequence[str], options: Mapping[str, Any], seed: int) -> tuple[str, ...]:
    """The training sites in the order a run first visits them (its first round, skipped sites left out)."""
    opts = make_options(strategy, **options)
    if not hasattr(opts, "order"):  # no visiting order: every site at once, or each on its own
        return tuple(s for s in sites if s not in opts.skip)
    return tuple(round_orders(sites, opts.order, 1, seed, opts.skip)[0])


def plan_runs(settings: PlanSettings, sites: Sequence[str], training_sizes: Mapping[str, int], *,
              schedule_seed: int = 0) -> tuple[PlannedRun, ...]:
    """Every run of the main job, each strategy's ``main`` run first, then its other orders.

    A run of an order another run of the same strategy already has reuses that run's directory and options (and so
    its result).

    Args:
        settings: what to plan.
        sites: the training sites in the datalist's order.
        training_sizes: site -> training-set size (for VCL's size orders).
        schedule_seed: the runner's seed, which seeds a random visiting order of the schedule.

    Example::

        >>> plan = plan_runs(PlanSettings((Strategy.VCL,), orders=2), ["a", "b"], {"a": 10, "b": 4})
        >>> [run.key for run in plan]
        ['vcl', 'vcl@order2', 'vcl@increasing', 'vcl@decreasing']
    """
    orders = site_orders(sites, settings.orders, settings.seed)
    plan = []

    def add(key: str, strategy: Strategy, variant: RunVariant, directory: str | None,
            options: Mapping[str, Any]) -> None:
        visited = _visited(strategy, sites, options, schedule_seed)
        plan.append(PlannedRun(key, strategy, variant, visited, directory, options))

    for strategy in (s for s in Strategy if s in settings.strategies):
        options = MappingProxyType(dict(settings.options(strategy)))
        add(str(strategy), strategy, RunVariant.MAIN, None, options)
        if not strategy.order_dependent or "order" in options:
            continue
        variants = [(f"order{k}", RunVariant.ORDER, order) for k, order in enumerate(orders[1:], start=2)]
        if strategy == Strategy.VCL and settings.size_orders:
            for variant, reverse in ((RunVariant.INCREASING, False), (RunVariant.DECREASING, True)):
                order = sorted(sites, key=lambda s: (training_sizes[s], s), reverse=reverse)
                variants.append((str(variant), variant, order))
        # order -> (directory, options) of the run that has it: the same options, so that the run is found again
        runs = {tuple(orders[0]): (None, options)}
        for suffix, variant, order in variants:
            key = f"{strategy}@{suffix}"
            new = (key, MappingProxyType(dict(options, order=list(order))))
            add(key, strategy, variant, *runs.setdefault(tuple(order), new))
    if settings.fedprox is not None:
        add(FEDPROX, Strategy.FEDERATED_AVERAGING, RunVariant.FEDPROX, FEDPROX,
            MappingProxyType(settings.fedprox_options()))
    return tuple(plan)
