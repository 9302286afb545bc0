"""One options dataclass per strategy: documented, validated fields instead of keyword arguments popped by hand."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, Union

from monai.utils import StrEnum, look_up_option

from monai_continual.strategies.names import Strategy, strategy_of
from monai_continual.strategies.order import SiteOrder
from monai_continual.utils.choices import look_up_choice
from monai_continual.utils.flags import as_flag

__all__ = [
    "StrategyOptions",
    "SingleSiteOptions",
    "CentrallyHostedOptions",
    "SingleWeightTransferOptions",
    "CyclicWeightTransferOptions",
    "CycleEvaluation",
    "FineTuningOptions",
    "ReplayOptions",
    "EWCOptions",
    "VCLOptions",
    "DWCOptions",
    "FederatedAveragingOptions",
    "OPTIONS",
    "make_options",
]

Order = Union[str, Sequence[str]]


def _at_least(name: str, value: Any, low: float, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < low:
        raise ValueError(f"option {name} must be a number >= {low}, got {value!r}.")
    if not math.isfinite(value):  # NaN compares False with anything
        raise ValueError(f"option {name} must be a finite number >= {low}, got {value!r}.")


@dataclass
class StrategyOptions:
    """Options every strategy has.

    Attributes:
        epochs: epochs of a site stage; ``None`` takes the backend's default.
        skip: sites left out of the run.
    """

    epochs: int | None = None
    skip: Sequence[str] = ()

    def __post_init__(self) -> None:
        _at_least("epochs", self.epochs, 1, optional=True)
        for f in fields(self):  # on/off options as a command line gives them ("false" is not true)
            if f.type in (bool, "bool"):
                setattr(self, f.name, as_flag(getattr(self, f.name), f.name))
        if isinstance(self.skip, str):
            self.skip = [self.skip]
        self.skip = list(self.skip)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class _Ordered(StrategyOptions):
    """Options of strategies that visit sites in an order.

    Attributes:
        order: ``"fixed"``, ``"random"`` (one seeded permutation), ``"random_per_round"`` (a new one every round) or
            a list of site names (see :class:`~monai_continual.strategies.order.SiteOrder`).
    """

    order: Order = "fixed"

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.order, str):
            self.order = look_up_option(self.order, SiteOrder).value
        else:
            self.order = list(self.order)


@dataclass
class SingleSiteOptions(StrategyOptions):
    """``single_site`` and ``ensemble``: one model per site from the same initial weights (and their ensemble)."""


@dataclass
class CentrallyHostedOptions(StrategyOptions):
    """``centrally_hosted``: one model on every site's training data pooled (the data-sharing upper bound)."""


@dataclass
class SingleWeightTransferOptions(_Ordered):
    """``single_weight_transfer``: each site once, training there until its validation score plateaus.

    Attributes:
        patience: epochs without validation improvement before moving on (``epochs`` caps the visit); ``None``
            trains every visit for ``epochs``.
    """

    patience: int | None = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        _at_least("patience", self.patience, 1, optional=True)


class CycleEvaluation(StrEnum):
    """Which visits of cyclic weight transfer score their model on every site's test data: ``every_visit`` (an
    R-matrix row per visit, the learning curve over cycles) or ``last_cycle`` (the last cycle's visits only: the
    final model and each site's last visit, all that BWT and the summary use, for a ``cycles``-th of the scoring).
    Forward transfer needs each site's first visit, so it is only reported with ``every_visit``."""

    EVERY_VISIT = "every_visit"
    LAST_CYCLE = "last_cycle"


@dataclass
class CyclicWeightTransferOptions(_Ordered):
    """``cyclic_weight_transfer``: every site ``cycles`` times, moving every ``epochs_per_visit`` epochs.

    Attributes:
        cycles: passes over the sites; ``None``: ``epochs // epochs_per_visit`` (at least 1), i.e. every site gets
            the epochs of a one-visit strategy's stage.
        epochs_per_visit: epochs per visit (Remedios et al.: 1; Chang et al. found 1-4 better than 5-20).
        iterations_per_visit: if set, a visit is this many iterations instead of whole epochs.
        evaluate: which visits are scored, ``"every_visit"`` or ``"last_cycle"`` (:class:`CycleEvaluation`).

    Example::

        >>> make_options("cyclic_weight_transfer", cycles=10, epochs_per_visit=3, evaluate="last_cycle")
    """

    cycles: int | None = None
    epochs_per_visit: int = 1
    iterations_per_visit: int | None = None
    evaluate: str = CycleEvaluation.EVERY_VISIT.value

    def __post_init__(self) -> None:
        super().__post_init__()
        self.evaluate = look_up_choice(self.evaluate, CycleEvaluation, "option evaluate").value
        _at_least("cycles", self.cycles, 1, optional=True)
        _at_least("epochs_per_visit", self.epochs_per_visit, 1)
        _at_least("iterations_per_visit", self.iterations_per_visit, 1, optional=True)


@dataclass
class FineTuningOptions(_Ordered):
    """``fine_tuning``: each site once, from the previous site's weights, with no memory of earlier sites."""


@dataclass
class ReplayOptions(_Ordered):
    """``replay``: fine-tuning plus a memory of up to ``capacity_per_site`` cases of every earlier site (Karthik).

    Attributes:
        capacity_per_site: K, the cases kept per site (Karthik et al.: 20).
        policy: which cases are kept, ``"random"`` (reservoir) or ``"first"``.
        replay_fraction: share of replayed cases per epoch; ``None`` mixes the whole memory in.
    """

    capacity_per_site: int = 20
    policy: str = "random"
    replay_fraction: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        _at_least("capacity_per_site", self.capacity_per_site, 1)
        if self.replay_fraction is not None and not 0.0 <= float(self.replay_fraction) < 1.0:
            raise ValueError(f"option replay_fraction must be in [0, 1), got {self.replay_fraction!r}.")


@dataclass
class EWCOptions(_Ordered):
    """``ewc``: fine-tuning with online elastic weight consolidation (Kirkpatrick et al. 2017; Schwarz et al. 2018).

    Every site after the first trains on ``loss + ewc_lambda/2 * sum_i F_i (w_i - w*_i)^2``, ``w*`` the previous
    site's weights and ``F`` the running diagonal Fisher: after a site trains, it estimates the Fisher of its own
    training data at its final weights (the mean over its training voxels of the squared gradient of their
    cross-entropy, :func:`~monai_continual.bayes.laplace.parameter_fisher`) and the running Fisher becomes
    ``gamma * F_previous + F_site``. ``F`` is a summary of parameters, published next to the weights.

    Attributes:
        ewc_lambda: the penalty's weight (>= 0). With a per-voxel mean Fisher, 1 weighs every earlier site's
            quadratic approximation like the current site's mean data loss; 0 is ``fine_tuning``.
        gamma: the running Fisher's decay in (0, 1] (1: every earlier site counts fully; online EWC's gamma).

    Example::

        >>> make_options("ewc", ewc_lambda=10.0, gamma=0.9, order="random")
    """

    ewc_lambda: float = 1.0
    gamma: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _at_least("ewc_lambda", self.ewc_lambda, 0)
        _at_least("gamma", self.gamma, 0)
        if not 0 < self.gamma <= 1:
            raise ValueError(f"option gamma must be a number in (0, 1], got {self.gamma!r}.")


@dataclass
class VCLOptions(_Ordered):
    """``vcl``: Bayesian networks; each site's posterior is the next site's prior (McClure et al. Eq. 8).

    Attributes:
        map_stage: train a deterministic (MAP) network on the first site first and start the first posterior's means
            from it. A posterior std calibrated from the data (``std_init="laplace"``) needs a mode to be computed
            at: at untrained weights the curvature is near zero and the std would be the prior's.
    """

    map_stage: bool = True


@dataclass
class DWCOptions(_Ordered):
    """``dwc``: distributed weight consolidation (McClure et al. Sec. 3.1.5-3.1.6).

    The first site of the order trains the shared prior q0 (after a MAP network when ``map_stage``); every other
    site trains from q0 in parallel with its std bounded by q0's; the site posteriors are consolidated by Eq. 17
    into the next round's q0.

    Attributes:
        rounds: consolidation rounds.
        map_stage: train a deterministic network on the first site first and start q0's means from it.
        finetune: fine-tune the consolidated posterior on the first site with its data weighted as one example
            (the paper's "DWC" row).
    """

    rounds: int = 1
    map_stage: bool = True
    finetune: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        _at_least("rounds", self.rounds, 1)


@dataclass
class FederatedAveragingOptions(StrategyOptions):
    """``federated_averaging`` (FedAvg): every site trains ``local_epochs`` from the same weights in parallel; the
    results are averaged weighted by training-set size; ``rounds`` times. With ``proximal_mu > 0`` it is FedProx
    (Li et al. 2020): every local step minimizes ``F(w) + proximal_mu/2 ||w - w^t||^2``, ``w^t`` the round's start.

    Attributes:
        rounds: communication rounds.
        local_epochs: epochs at each site per round.
        proximal_mu: FedProx's mu (0: FedAvg; Li et al. tried 0.001 to 1).

    Example::

        >>> make_options("federated_averaging", rounds=5, proximal_mu=0.01)
    """

    rounds: int = 2
    local_epochs: int = 1
    proximal_mu: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _at_least("rounds", self.rounds, 1)
        _at_least("local_epochs", self.local_epochs, 1)
        _at_least("proximal_mu", self.proximal_mu, 0)


#: strategy -> its options class
OPTIONS: dict[Strategy, type[StrategyOptions]] = {
    Strategy.SINGLE_SITE: SingleSiteOptions,
    Strategy.ENSEMBLE: SingleSiteOptions,
    Strategy.CENTRALLY_HOSTED: CentrallyHostedOptions,
    Strategy.SINGLE_WEIGHT_TRANSFER: SingleWeightTransferOptions,
    Strategy.CYCLIC_WEIGHT_TRANSFER: CyclicWeightTransferOptions,
    Strategy.FINE_TUNING: FineTuningOptions,
    Strategy.REPLAY: ReplayOptions,
    Strategy.EWC: EWCOptions,
    Strategy.VCL: VCLOptions,
    Strategy.DWC: DWCOptions,
    Strategy.FEDERATED_AVERAGING: FederatedAveragingOptions,
}


def make_options(strategy: str | Strategy, options: StrategyOptions | None = None, **kwargs: Any) -> StrategyOptions:
    """The options of ``strategy`` from keyword arguments (or checked, when an options object is given).

    Raises:
        ValueError: an unknown strategy (the valid names are listed) or an invalid value (the option is named).
        TypeError: an option the strategy does not have (its options are listed).

    Example::

        >>> make_options("cyclic_weight_transfer", cycles=4, epochs_per_visit=2, order="random_per_round")
    """
    name = strategy_of(strategy)
    cls = OPTIONS[name]
    if options is not None:
        if not isinstance(options, cls):
            raise TypeError(f"strategy {name.value} takes {cls.__name__}, got {type(options).__name__}.")
        if kwargs:
            raise TypeError("give either an options object or keyword options, not both.")
        return options
    valid = [f.name for f in fields(cls)]
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise TypeError(f"strategy {name.value}: unexpected options {unknown}; its options are {valid}.")
    return cls(**kwargs)


