"""The stage schedule of every strategy, built once and walked by every backend."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from monai_continual.strategies.names import Strategy, strategy_of
from monai_continual.strategies.options import CycleEvaluation, StrategyOptions, make_options
from monai_continual.strategies.order import round_orders
from monai_continual.strategies.stage import Action, NetworkKind, Stage

__all__ = ["build_schedule", "run_name"]


def run_name(strategy: str | Strategy) -> str:
    """The run a strategy's results live in: ``ensemble`` is the last stage of the ``single_site`` run."""
    name = strategy_of(strategy)
    return Strategy.SINGLE_SITE.value if name == Strategy.ENSEMBLE else name.value


def build_schedule(
    strategy: str | Strategy,
    sites: Sequence[str],
    options: StrategyOptions | None = None,
    default_epochs: int = 1,
    seed: int = 0,
) -> list[Stage]:
    """The stages of ``strategy`` over ``sites``.

    Args:
        strategy: a :class:`Strategy` or its name.
        sites: the training sites in their listed order.
        options: the strategy's options (:func:`make_options`); ``None``: its defaults.
        default_epochs: epochs of a site stage when the options do not say.
        seed: seeds random site orders.

    Returns:
        The stages, numbered from 1; every input is a stage number (0: the initial weights).

    Example::

        >>> [s.label for s in build_schedule("fine_tuning", ["a", "b"])]
        ['1:a', '2:b']
    """
    name = strategy_of(strategy)
    options = make_options(name, options)
    _check_epochs(default_epochs)
    epochs = options.epochs or default_epochs
    sites = list(sites)
    if not sites:
        raise ValueError("a schedule needs at least one training site.")
    unknown = [s for s in options.skip if s not in sites]
    if unknown:
        raise ValueError(f"skip names unknown site(s) {unknown}; sites are {sites}.")
    builder = _BUILDERS[run_name(name)]
    stages = builder(sites, options, epochs, seed)
    return _with_previous_visits(stages)


def _check_epochs(epochs: int) -> None:
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"default_epochs must be an integer >= 1, got {epochs!r}.")


def _kept(sites: list[str], options: StrategyOptions) -> list[str]:
    kept = [s for s in sites if s not in options.skip]
    if not kept:
        raise ValueError(f"no site left to train on after skipping {list(options.skip)}.")
    return kept


def _single_site(sites, options, epochs, seed) -> list[Stage]:
    kept = _kept(sites, options)
    stages = [
        Stage(i, sites=(s,), epochs=epochs, start=0, label=s, result=f"single_site[{s}]") for i, s in enumerate(kept, 1)
    ]
    stages.append(
        Stage(len(kept) + 1, Action.ENSEMBLE, tuple(kept), start=None, inputs=tuple(range(1, len(kept) + 1)),
              label="ensemble", result="ensemble")
    )
    return stages


def _centrally_hosted(sites, options, epochs, seed) -> list[Stage]:
    return [Stage(1, sites=tuple(_kept(sites, options)), epochs=epochs, start=0, label="pooled")]


def _sequential(sites, options, epochs, seed, offset: int = 0, **kwargs) -> list[Stage]:
    """One stage per site in order, each from the previous; numbered after ``offset`` earlier stages."""
    order = round_orders(sites, options.order, 1, seed, options.skip)[0]
    return [
        Stage(offset + i, sites=(s,), epochs=epochs, start=offset + i - 1, label=f"{i}:{s}", **kwargs)
        for i, s in enumerate(order, 1)
    ]


def _single_weight_transfer(sites, options, epochs, seed) -> list[Stage]:
    return _sequential(sites, options, epochs, seed, patience=options.patience)


def _fine_tuning(sites, options, epochs, seed) -> list[Stage]:
    return _sequential(sites, options, epochs, seed)


def _replay(sites, options, epochs, seed) -> list[Stage]:
    stages = _sequential(sites, options, epochs, seed, remember=True)
    return [dataclasses.replace(s, memory=s.number - 1 if s.number > 1 else None) for s in stages]


def _ewc(sites, options, epochs, seed) -> list[Stage]:
    stages = _sequential(sites, options, epochs, seed, ewc_gamma=float(options.gamma))
    # every site after the first is held near its start by the running Fisher its start published
    return [stages[0]] + [dataclasses.replace(s, fisher=s.start, ewc_lambda=float(options.ewc_lambda))
                          for s in stages[1:]]


def _vcl(sites, options, epochs, seed) -> list[Stage]:
    offset = 1 if options.map_stage else 0
    stages = _sequential(sites, options, epochs, seed, offset=offset, network=NetworkKind.BAYES)
    # every posterior is the next site's prior; the first Bayesian stage has the network's own prior
    stages = [dataclasses.replace(s, prior=s.start if i > 0 else None) for i, s in enumerate(stages)]
    if offset:
        first = stages[0].sites[0]
        stages.insert(0, Stage(1, sites=(first,), epochs=epochs, start=0, label=f"map:{first}"))
    return stages


def _cyclic(sites, options, epochs, seed) -> list[Stage]:
    cycles = options.cycles or max(1, epochs // options.epochs_per_visit)
    orders = round_orders(sites, options.order, cycles, seed, options.skip)
    visit_epochs = 1 if options.iterations_per_visit else options.epochs_per_visit
    every_visit = options.evaluate == CycleEvaluation.EVERY_VISIT
    stages, number = [], 0
    for cycle, order in enumerate(orders, 1):
        for site in order:
            number += 1
            stages.append(
                Stage(number, sites=(site,), epochs=visit_epochs, iterations=options.iterations_per_visit,
                      start=number - 1, label=f"c{cycle}:{site}", round=cycle,
                      evaluate=every_visit or cycle == len(orders))
            )
    return stages


def _dwc(sites, options, epochs, seed) -> list[Stage]:
    order = round_orders(sites, options.order, 1, seed, options.skip)[0]
    if len(order) < 2:
        raise ValueError(
            f"dwc needs at least two sites (one for the prior q0, one or more to consolidate), got {order}."
        )
    first, others = order[0], order[1:]
    stages: list[Stage] = []
    if options.map_stage:
        stages.append(Stage(1, sites=(first,), epochs=epochs, start=0, label=f"map:{first}"))
    q0 = len(stages) + 1
    stages.append(
        Stage(q0, sites=(first,), network=NetworkKind.BAYES, epochs=epochs, start=q0 - 1, label=f"q0:{first}")
    )
    prior = q0
    for r in range(1, options.rounds + 1):
        inputs = []
        for site in others:
            number = len(stages) + 1
            inputs.append(number)
            stages.append(
                Stage(number, sites=(site,), network=NetworkKind.BAYES, epochs=epochs, start=prior, prior=prior,
                      bound_std=True, label=f"r{r}:{site}", round=r)
            )
        number = len(stages) + 1
        stages.append(
            Stage(number, Action.DWC, tuple(others), NetworkKind.BAYES, start=None, prior=prior, inputs=tuple(inputs),
                  label=f"dwc r{r}", round=r, result="dwc" if r == options.rounds else None)
        )
        prior = number
    if options.finetune:
        number = len(stages) + 1
        stages.append(
            Stage(number, sites=(first,), network=NetworkKind.BAYES, epochs=epochs, start=prior, prior=prior,
                  num_examples=1.0, label=f"dwc+ft:{first}", result="dwc_finetuned")
        )
    return stages


def _federated_averaging(sites, options, epochs, seed) -> list[Stage]:
    kept = _kept(sites, options)
    if len(kept) < 2:
        raise ValueError(f"federated_averaging needs at least two sites, got {kept}.")
    stages: list[Stage] = []
    start = 0
    for r in range(1, options.rounds + 1):
        inputs = []
        for site in kept:
            number = len(stages) + 1
            inputs.append(number)
            stages.append(
                Stage(number, sites=(site,), epochs=options.local_epochs, start=start, evaluate=False,
                      label=f"r{r}:{site}", round=r, proximal_mu=float(options.proximal_mu))
            )
        number = len(stages) + 1
        stages.append(
            Stage(number, Action.AVERAGE, tuple(kept), start=None, inputs=tuple(inputs), label=f"avg r{r}", round=r)
        )
        start = number
    return stages


def _with_previous_visits(stages: list[Stage]) -> list[Stage]:
    last: dict[tuple[str, str], int] = {}
    out = []
    for stage in stages:
        if stage.is_training and len(stage.sites) == 1:
            key = (stage.sites[0], str(stage.network))
            stage = dataclasses.replace(stage, previous_visit=last.get(key))
            last[key] = stage.number
        out.append(stage)
    return out


_BUILDERS = {
    Strategy.SINGLE_SITE.value: _single_site,
    Strategy.CENTRALLY_HOSTED.value: _centrally_hosted,
    Strategy.SINGLE_WEIGHT_TRANSFER.value: _single_weight_transfer,
    Strategy.CYCLIC_WEIGHT_TRANSFER.value: _cyclic,
    Strategy.FINE_TUNING.value: _fine_tuning,
    Strategy.REPLAY.value: _replay,
    Strategy.EWC.value: _ewc,
    Strategy.VCL.value: _vcl,
    Strategy.DWC.value: _dwc,
    Strategy.FEDERATED_AVERAGING.value: _federated_averaging,
}
