"""One frozen settings object for a MONAI run: network, transforms, loss, optimizers, Bayesian and compute settings."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from monai.inferers import Inferer, SimpleInferer, SlidingWindowInferer
from monai.losses import DiceCELoss
from monai.transforms import Compose
from monai.utils import StrEnum
from torch import nn

from monai_continual.bayes import BayesConfig, MCInferer, StdInit, bayesianize
from monai_continual.data.scan_transforms import patch_transforms
from monai_continual.losses import ElboExamples
from monai_continual.recommended import RECOMMENDED
from monai_continual.utils.choices import look_up_choice
from monai_continual.utils.distributed import get_world_size, rank_device
from monai_continual.utils.flags import as_flag

__all__ = ["MonaiSettings", "OptimizerState", "DatasetCache"]


class OptimizerState(StrEnum):
    """What happens to the optimizer's state between a site's stages.

    - ``fresh``: a new optimizer at every visit.
    - ``site``: each site keeps its own across its visits (on its own disk).
    - ``transfer``: it travels with the weights as a safetensors file (which leaks more than the weights).
    """

    FRESH = "fresh"
    SITE = "site"
    TRANSFER = "transfer"


class DatasetCache(StrEnum):
    """Where the deterministic part of the training chain (the user's ``train_transform`` up to its first random
    transform) is kept between epochs; the random patch crop always runs after it.

    - ``none``: every item is transformed at every epoch.
    - ``memory``: MONAI's ``CacheDataset``.
    - ``disk``: MONAI's ``PersistentDataset`` under the run's ``cache`` folder
      (:attr:`~monai_continual.strategies.layout.RunLayout.cache_dir`).
    """

    NONE = "none"
    MEMORY = "memory"
    DISK = "disk"


_REQUIRED = ("network", "train_transform", "eval_transform", "num_classes")


def _spatial(name: str, value: Sequence[int] | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        size = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a sequence of positive integers, got {value!r}.") from None
    if not size or any(v < 1 for v in size) or any(v != float(w) for v, w in zip(size, value)):
        raise ValueError(f"{name} must be a sequence of positive integers, got {value!r}.")
    return size


def _adam(params: Any) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=RECOMMENDED.learning_rate)


@dataclass(frozen=True)
class MonaiSettings:
    """How every stage of a MONAI run trains and is evaluated; built once, read by the executor.

    ``epochs``, ``batch_size``, the optimizer's learning rate, ``mc_samples``, ``optimizer_state``, ``seed`` and
    ``cache`` default to the package's recommended settings (:data:`~monai_continual.recommended.RECOMMENDED`), the
    same as the bundle's configs.

    Args:
        network: the deterministic network every strategy starts from (copied to the CPU; its weights are the run's
            initial weights); Bayesian stages convert it with :func:`~monai_continual.bayes.bayesianize`.
        train_transform: MONAI transform of training items.
        eval_transform: MONAI transform of test items (no randomness).
        num_classes: classes, background included.
        loss: data loss; ``DiceCELoss(to_onehot_y=True, softmax=True)`` by default.
        optimizer: ``params -> Optimizer``; Adam at ``RECOMMENDED.learning_rate`` by default (McClure et al.: 1e-3).
        bayes_optimizer: optimizer of Bayesian stages (default: ``optimizer``).
        epochs: epochs per site stage.
        batch_size: mini-batch size (of each process, under DistributedDataParallel).
        inferer: prediction inferer of every evaluation (test scores, validation plateaus, checks of a received
            model); Bayesian models wrap it in ``MCInferer``. Default: a ``SlidingWindowInferer`` when ``sw_roi_size``
            or ``patch_size`` is set, else ``SimpleInferer`` (whole volumes). A given inferer wins.
        mc_samples: Monte Carlo samples of Bayesian models at evaluation.
        bayes: how Bayesian stages convert the network (:class:`~monai_continual.bayes.BayesConfig`; default
            :meth:`~monai_continual.bayes.BayesConfig.calibrated`: stds from the site's data, He-scaled prior).
        elbo_examples: what the ELBO's N counts (:class:`~monai_continual.losses.ElboExamples`).
        optimizer_state: :class:`OptimizerState`.
        device: training device (a bare ``"cuda"`` in a process group of several processes: this process's GPU,
            ``cuda:<LOCAL_RANK>``).
        seed: the seed of everything.
        progress: show progress bars.
        patch_size: train on label-aware patches of this spatial size (``None``: whole volumes). The executor appends
            ``SpatialPadd`` (a smaller volume is padded) and ``RandCropByPosNegLabeld`` (pos/neg 1/1) to
            ``train_transform``; ``eval_transform`` is left as is (evaluation sees whole volumes). The ELBO's N then
            counts patch voxels.
        samples_per_volume: patches drawn from a volume per visit; they become items of the mini-batch (a batch has
            ``batch_size * samples_per_volume`` patches).
        sw_roi_size: the sliding window of evaluation (default: ``patch_size``).
        sw_batch_size: windows per forward pass of the sliding window.
        sw_overlap: overlap of neighbouring windows, in ``[0, 1)``.
        amp: mixed precision on CUDA (``SupervisedTrainer(amp=True)`` and evaluation under ``torch.autocast``); a
            no-op on the CPU.
        num_workers: worker processes of the training ``DataLoader``.
        cache: :class:`DatasetCache` of the training dataset (does not change results); ``memory`` by default,
            ``disk`` or ``none`` for a dataset larger than the memory.

    Example::

        >>> settings = MonaiSettings(MeshNet(3, 1, 4, channels=16), train_transform, eval_transform, num_classes=4)
        >>> settings.new_network(bayesian=True)
        >>> patches = MonaiSettings(net, train_transform, eval_transform, 4, patch_size=(96, 96, 96), amp=True)
        >>> patches.inferer  # SlidingWindowInferer(roi_size=(96, 96, 96), sw_batch_size=4, overlap=0.25)
    """

    network: nn.Module
    train_transform: Callable
    eval_transform: Callable
    num_classes: int
    loss: Callable | None = None
    optimizer: Callable[[Any], torch.optim.Optimizer] | None = None
    bayes_optimizer: Callable[[Any], torch.optim.Optimizer] | None = None
    epochs: int = RECOMMENDED.epochs
    batch_size: int = RECOMMENDED.batch_size
    inferer: Inferer | None = None
    mc_samples: int = RECOMMENDED.mc_samples
    bayes: BayesConfig = field(default_factory=BayesConfig.calibrated)
    elbo_examples: ElboExamples | str = ElboExamples.VOXELS
    optimizer_state: OptimizerState | str = RECOMMENDED.optimizer_state
    device: torch.device | str = "cpu"
    seed: int = RECOMMENDED.seed
    progress: bool = True
    patch_size: tuple[int, ...] | None = None
    samples_per_volume: int = 1
    sw_roi_size: tuple[int, ...] | None = None
    sw_batch_size: int = 4
    sw_overlap: float = 0.25
    amp: bool = False
    num_workers: int = 0
    cache: DatasetCache | str = RECOMMENDED.cache
    init_state: dict[str, torch.Tensor] = field(init=False, repr=False, compare=False)
    patch_transforms: tuple[Callable, ...] = field(init=False, repr=False, compare=False)
    train_chain: Callable = field(init=False, repr=False, compare=False)
    window: tuple[int, ...] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        if isinstance(self.epochs, bool) or int(self.epochs) < 1 or int(self.batch_size) < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {self.epochs} and {self.batch_size}.")
        if not isinstance(self.bayes, BayesConfig):
            raise TypeError(f"bayes must be a BayesConfig, got {type(self.bayes).__name__}.")
        for name in ("samples_per_volume", "sw_batch_size"):
            if isinstance(getattr(self, name), bool) or int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}.")
            put(name, int(getattr(self, name)))
        if isinstance(self.num_workers, bool) or int(self.num_workers) < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers!r}.")
        if not (isinstance(self.sw_overlap, (int, float)) and 0 <= float(self.sw_overlap) < 1):
            raise ValueError(f"sw_overlap must be in [0, 1), got {self.sw_overlap!r}.")
        put("amp", as_flag(self.amp, "amp"))
        put("num_workers", int(self.num_workers))
        put("sw_overlap", float(self.sw_overlap))
        put("patch_size", _spatial("patch_size", self.patch_size))
        put("sw_roi_size", _spatial("sw_roi_size", self.sw_roi_size))
        put("cache", look_up_choice(self.cache, DatasetCache, "cache"))
        put("optimizer_state", look_up_choice(self.optimizer_state, OptimizerState, "optimizer_state"))
        put("elbo_examples", look_up_choice(self.elbo_examples, ElboExamples, "elbo_examples"))
        template = copy.deepcopy(self.network).cpu()
        put("network", template)
        put("init_state", {k: v.detach().clone() for k, v in template.state_dict().items()})
        put("num_classes", int(self.num_classes))
        put("epochs", int(self.epochs))
        put("batch_size", int(self.batch_size))
        put("mc_samples", int(self.mc_samples))
        put("seed", int(self.seed))
        put("device", rank_device(self.device))
        put("loss", self.loss if self.loss is not None else DiceCELoss(to_onehot_y=True, softmax=True))
        put("optimizer", self.optimizer if self.optimizer is not None else _adam)
        put("bayes_optimizer", self.bayes_optimizer if self.bayes_optimizer is not None else self.optimizer)
        roi = self.sw_roi_size or self.patch_size
        put("window", roi if self.inferer is None else None)  # the sliding window these settings built, if any
        if self.inferer is not None:
            put("inferer", self.inferer)
        elif roi is not None:
            put("inferer", SlidingWindowInferer(roi, sw_batch_size=self.sw_batch_size, overlap=self.sw_overlap))
        else:
            put("inferer", SimpleInferer())
        crop = () if self.patch_size is None else patch_transforms(self.patch_size, self.samples_per_volume)
        put("patch_transforms", crop)
        # one Randomizable chain: seeding it (EpochSeeder) seeds the user's random transforms and the crop
        put("train_chain", Compose([self.train_transform, *crop]) if crop else self.train_transform)

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

    @property
    def in_channels(self) -> int | None:
        """The network's input channels: the first ``in_channels`` of its modules (the network's own, else its first
        convolution's); ``None`` when no module says."""
        for module in self.network.modules():
            value = getattr(module, "in_channels", None)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        return None

    @property
    def patch_voxels(self) -> int | None:
        """Voxels of one training patch (``None``: whole volumes)."""
        return None if self.patch_size is None else math.prod(self.patch_size)

    def identity(self) -> dict[str, Any]:
        """The settings that make a run directory's results what they are (a run with others is refused); the
        dataset cache does not change results and stays out. The data-loader workers are in: each worker reseeds
        the random transforms (MONAI's ``worker_init_fn``), so the drawn patches depend on their number; so does the
        number of training processes (``torchrun``), recorded when there are several: their shares of an epoch and
        the effective batch depend on it."""
        sw = self.window
        identity = {
            "batch_size": self.batch_size,
            "seed": self.seed,
            "bayes": dict(self.bayes.to_dict(), elbo_examples=str(self.elbo_examples)),
            "optimizer_state": str(self.optimizer_state),
            "mc_samples": self.mc_samples,
            "network": {k: list(v.shape) for k, v in self.init_state.items()},
            "patch_size": None if self.patch_size is None else list(self.patch_size),
            "samples_per_volume": self.samples_per_volume,
            "sliding_window": None if sw is None else {"roi_size": list(sw), "sw_batch_size": self.sw_batch_size,
                                                       "overlap": self.sw_overlap},
            "amp": self.amp,
            "num_workers": self.num_workers,
        }
        processes = get_world_size()
        if processes > 1:  # absent for one process: runs made before keep their identity
            identity["processes"] = processes
        return identity
