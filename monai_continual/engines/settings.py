"""One frozen settings object for a MONAI run: network, transforms, loss, optimizers, Bayesian and compute settings."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from monai.inferers import Inferer, SimpleInferer
from monai.losses import DiceCELoss
from monai.utils import StrEnum, look_up_option
from torch import nn

from monai_continual.bayes import BayesConfig, MCInferer, StdInit, bayesianize
from monai_continual.losses import ElboExamples

__all__ = ["MonaiSettings", "OptimizerState"]


class OptimizerState(StrEnum):
    """What happens to the optimizer's state between a site's stages.

    - ``fresh``: a new optimizer at every visit.
    - ``site``: each site keeps its own across its visits (on its own disk).
    - ``transfer``: it travels with the weights as a safetensors file (which leaks more than the weights).
    """

    FRESH = "fresh"
    SITE = "site"
    TRANSFER = "transfer"


_REQUIRED = ("network", "train_transform", "eval_transform", "num_classes")


def _choice(name: str, value: Any, choices: type[StrEnum]) -> Any:
    try:
        return look_up_option(value, choices)
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from None


def _adam(params: Any) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=1e-3)


@dataclass(frozen=True)
class MonaiSettings:
    """How every stage of a MONAI run trains and is evaluated; built once, read by the executor.

    Args:
        network: the deterministic network every strategy starts from (copied to the CPU; its weights are the run's
            initial weights); Bayesian stages convert it with :func:`~monai_continual.bayes.bayesianize`.
        train_transform: MONAI transform of training items.
        eval_transform: MONAI transform of test items (no randomness).
        num_classes: classes, background included.
        loss: data loss; ``DiceCELoss(to_onehot_y=True, softmax=True)`` by default.
        optimizer: ``params -> Optimizer``; Adam with lr 1e-3 by default (McClure et al.).
        bayes_optimizer: optimizer of Bayesian stages (default: ``optimizer``).
        epochs: epochs per site stage.
        batch_size: mini-batch size.
        inferer: prediction inferer (e.g. ``SlidingWindowInferer``); Bayesian models wrap it in ``MCInferer``.
        mc_samples: Monte Carlo samples of Bayesian models at evaluation.
        bayes: how Bayesian stages convert the network (:class:`~monai_continual.bayes.BayesConfig`; default
            :meth:`~monai_continual.bayes.BayesConfig.calibrated`: stds from the site's data, He-scaled prior).
        elbo_examples: what the ELBO's N counts (:class:`~monai_continual.losses.ElboExamples`).
        optimizer_state: :class:`OptimizerState`.
        device: training device.
        seed: the seed of everything.
        progress: show progress bars.

    Example::

        >>> settings = MonaiSettings(MeshNet(3, 1, 4, channels=16), train_transform, eval_transform, num_classes=4)
        >>> settings.new_network(bayesian=True)
    """

    network: nn.Module
    train_transform: Callable
    eval_transform: Callable
    num_classes: int
    loss: Callable | None = None
    optimizer: Callable[[Any], torch.optim.Optimizer] | None = None
    bayes_optimizer: Callable[[Any], torch.optim.Optimizer] | None = None
    epochs: int = 2
    batch_size: int = 2
    inferer: Inferer | None = None
    mc_samples: int = 10
    bayes: BayesConfig = field(default_factory=BayesConfig.calibrated)
    elbo_examples: ElboExamples | str = ElboExamples.VOXELS
    optimizer_state: OptimizerState | str = OptimizerState.FRESH
    device: torch.device | str = "cpu"
    seed: int = 0
    progress: bool = True
    init_state: dict[str, torch.Tensor] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        if isinstance(self.epochs, bool) or int(self.epochs) < 1 or int(self.batch_size) < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {self.epochs} and {self.batch_size}.")
        if not isinstance(self.bayes, BayesConfig):
            raise TypeError(f"bayes must be a BayesConfig, got {type(self.bayes).__name__}.")
        put("optimizer_state", _choice("optimizer_state", self.optimizer_state, OptimizerState))
        put("elbo_examples", _choice("elbo_examples", self.elbo_examples, ElboExamples))
        template = copy.deepcopy(self.network).cpu()
        put("network", template)
        put("init_state", {k: v.detach().clone() for k, v in template.state_dict().items()})
        put("num_classes", int(self.num_classes))
        put("epochs", int(self.epochs))
        put("batch_size", int(self.batch_size))
        put("mc_samples", int(self.mc_samples))
        put("seed", int(self.seed))
        put("device", torch.device(self.device))
        put("loss", self.loss if self.loss is not None else DiceCELoss(to_onehot_y=True, softmax=True))
        put("optimizer", self.optimizer if self.optimizer is not None else _adam)
        put("bayes_optimizer", self.bayes_optimizer if self.bayes_optimizer is not None else self.optimizer)
        put("inferer", self.inferer if self.inferer is not None else SimpleInferer())

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        """The settings with defaults (what a runner takes as keywords)."""
        return tuple(f.name for f in fields(cls) if f.init and f.name not in _REQUIRED)

    @property
    def laplace(self) -> bool:
        """Whether a Bayesian stage's initial stds are computed from the site's data."""
        return self.bayes.std_init == StdInit.LAPLACE

    def plain_network(self) -> nn.Module:
        """A fresh copy of the deterministic network with the run's initial weights, on the CPU."""
        network = copy.deepcopy(self.network)
        network.load_state_dict(self.init_state)
        return network

    def bayesian(self, plain: nn.Module, bound_std: bool = False) -> nn.Module:
        """``plain`` converted in place to its Bayesian twin with the run's settings."""
        return bayesianize(plain, self.bayes, bound_std=bound_std, inplace=True)

    def new_network(self, bayesian: bool = False, bound_std: bool = False) -> nn.Module:
        """A fresh network with the run's initial weights on the run's device (Bayesian: converted)."""
        network = self.plain_network()
        return (self.bayesian(network, bound_std) if bayesian else network).to(self.device)

    def inferer_for(self, bayesian: bool) -> Inferer:
        """The evaluation inferer: Monte Carlo over ``mc_samples`` passes for Bayesian models."""
        return MCInferer(self.mc_samples, self.inferer) if bayesian else self.inferer

    def identity(self) -> dict[str, Any]:
        """The settings that make a run directory's results what they are (a run with others is refused)."""
        return {
            "batch_size": self.batch_size,
            "seed": self.seed,
            "bayes": dict(self.bayes.to_dict(), elbo_examples=str(self.elbo_examples)),
            "optimizer_state": str(self.optimizer_state),
            "mc_samples": self.mc_samples,
            "network": {k: list(v.shape) for k, v in self.init_state.items()},
        }
