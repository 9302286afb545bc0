"""MONAI's federated client API (``ClientAlgo``) over a hospital's own bundle, with this package's site stages."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.fl.client import ClientAlgo
from monai.fl.utils.constants import ExtraItems, FlStatistics, WeightType
from monai.fl.utils.exchange_object import ExchangeObject

from monai_continual.consolidation.posterior import Posterior
from monai_continual.engines.bundle_executor import BundleStageExecutor, check_same_network
from monai_continual.engines.bundle_site import BundleSite
from monai_continual.federated.payload import PayloadError, params_to_posterior, posterior_weights
from monai_continual.strategies.stage import NetworkKind, Stage
from monai_continual.utils.flags import as_flag

__all__ = ["ContinualBundleAlgo", "posterior_weights", "weights_posterior", "StageExtra"]


_EVALUATED = 1  # the stage number a model to score is kept under, in its own directory


class StageExtra:
    """Keys of ``extra`` that make :meth:`ContinualBundleAlgo.train` a stage of this package's strategies.

    ``NETWORK``: ``"map"`` (default) or ``"bayes"``; ``EPOCHS``: the stage's epochs (default: ``local_epochs``);
    ``BOUND_STD``: a Bayesian stage's stds bounded by the prior's (DWC); ``PRIOR``: an ``ExchangeObject`` whose
    weights are a posterior, the prior of a Bayesian stage that starts from deterministic weights (otherwise a
    received posterior is both the start and the prior, and deterministic weights start under the network's own
    prior).
    """

    NETWORK = "continual_network"
    EPOCHS = "continual_epochs"
    BOUND_STD = "continual_bound_std"
    PRIOR = "continual_prior"


def weights_posterior(weights: Mapping[str, Any], site: str = "server") -> Posterior | None:
    """The posterior in an ``ExchangeObject``'s weights (:func:`posterior_weights`' keys), or ``None`` when they are
    plain weights.

    Raises:
        PayloadError: keys of both kinds, or a posterior that is not one (e.g. a std without its mean).
    """
    tagged = [str(k).partition("/")[0] in ("mean", "std", "deterministic") for k in weights]
    if not any(tagged):
        return None
    if not all(tagged):
        raise PayloadError("the received weights mix a posterior's mean/std keys with plain parameter names.")
    tensors = {str(k): torch.as_tensor(np.asarray(v)) if not isinstance(v, torch.Tensor) else v
               for k, v in weights.items()}
    try:
        return params_to_posterior(tensors, {"site": site})
    except ValueError as err:
        raise PayloadError(f"the received posterior is not valid: {err}") from err


class ContinualBundleAlgo(ClientAlgo):
    """A site of this package's strategies, or of any MONAI FL job, running a hospital's unmodified bundle.

    It reads the bundle as MONAI's ``MonaiAlgo`` does (``train#trainer``, ``train#dataset``,
    ``validate#evaluator``; ``configs/evaluate.json`` merged to score when present) and trains with the bundle's
    own network, transforms, loss, trainer settings and AMP. Each ``train`` call is one stage of
    :class:`~monai_continual.engines.bundle_executor.BundleStageExecutor`: the received model (full weights, or
    differences added to the last received model) is its start; ``extra`` (:class:`StageExtra`) makes it a
    Bayesian stage (VCL, DWC) with the prior it receives. ``get_weights`` returns the stage's model as full weights
    or as differences to the received ones (``send_weight_diff``); a posterior is returned whole, under the keys of
    :func:`posterior_weights`, with ``WeightType.WEIGHTS``. ``evaluate`` scores the received model on the site's
    own validation (or evaluation-config) data with the bundle's key metric. Received and trained models are kept
    as safetensors in ``workdir/<site>/client_algo`` by stage number (round ``r``: the received model ``3r``, a
    received prior ``3r + 1``, the trained model ``3r + 2``); a received model is checked (names, shapes,
    finiteness) before anything of it is stored or trained.

    Under this package's :class:`~monai_continual.federated.StrategyController` the same executor serves the
    controller's stages (:mod:`~monai_continual.federated.bundle_client`); under NVFlare's own FedAvg the client
    script drives this class.

    Args:
        bundle_root: the hospital's bundle.
        workdir: this site's working directory (its own disk).
        local_epochs: epochs of a ``train`` call unless ``extra`` says otherwise.
        send_weight_diff: ``get_weights`` returns differences to the received weights (``WeightType.WEIGHT_DIFF``).
        train_config, evaluate_config, overrides, mc_samples: see :class:`BundleSite`.
        seed: evaluation seeds.

    Example::

        >>> algo = ContinualBundleAlgo("/opt/spleen_ct_segmentation", "/data/fl", local_epochs=2)
        >>> algo.initialize({ExtraItems.CLIENT_NAME: "hospital_b"})
        >>> algo.train(ExchangeObject(weights=global_weights)); update = algo.get_weights()
    """

    def __init__(self, bundle_root: str | os.PathLike, workdir: str | os.PathLike, *, local_epochs: int = 1,
                 send_weight_diff: bool = False, train_config: str | Sequence[str] = "configs/train.json",
                 evaluate_config: str | Sequence[str] | None = None, overrides: Mapping[str, Any] | None = None,
                 mc_samples: int = 3, seed: int = 0) -> None:
        if isinstance(local_epochs, bool) or int(local_epochs) < 1:
            raise ValueError(f"ContinualBundleAlgo: local_epochs must be >= 1, got {local_epochs!r}.")
        self.bundle_root = str(bundle_root)
        self.workdir = Path(workdir)
        self.local_epochs = int(local_epochs)
        self.send_weight_diff = as_flag(send_weight_diff, "ContinualBundleAlgo: send_weight_diff")
        self.train_config, self.evaluate_config = train_config, evaluate_config
        self.overrides = dict(overrides or {})
        self.mc_samples, self.seed = int(mc_samples), int(seed)
        self.bundle: BundleSite | None = None
        self.stages: dict[int, Stage] = {}
        self.evaluated = Stage(_EVALUATED, evaluate=False)
        self.round = 0
        self.received: dict[str, torch.Tensor] | None = None
        self.trained: int | None = None
        self.aborted = False
        self._running: BundleStageExecutor | None = None

    # ------------------------------------------------------------------------------------------------ set up

    def initialize(self, extra: dict | None = None) -> None:
        site = (extra or {}).get(ExtraItems.CLIENT_NAME)
        if not site:
            raise ValueError("ContinualBundleAlgo.initialize: extra must name the site (ExtraItems.CLIENT_NAME).")
        self.bundle = BundleSite(self.bundle_root, site, self.train_config, self.evaluate_config, self.overrides,
                                 mc_samples=self.mc_samples)
        self.aborted = False

    @property
    def site(self) -> str:
        if self.bundle is None:
            raise RuntimeError("ContinualBundleAlgo: call initialize() first.")
        return self.bundle.site

    def executor(self, stages: Sequence[Stage], run_dir: str | os.PathLike) -> BundleStageExecutor:
        """The site's stage executor over ``run_dir`` (what the controller's stages run with)."""
        if self.bundle is None:
            raise RuntimeError("ContinualBundleAlgo: call initialize() first.")
        return BundleStageExecutor(self.bundle, run_dir, stages, seed=self.seed)

    def _local(self, evaluation: bool = False) -> BundleStageExecutor:
        """The executor of this algorithm's own stages (training), or of the models it was asked to score."""
        if evaluation:
            return self.executor([self.evaluated], self.workdir / self.site / "client_algo_evaluation")
        return self.executor(list(self.stages.values()), self.workdir / self.site / "client_algo")

    # ------------------------------------------------------------------------------------------------ models in

    def _receive(self, data: ExchangeObject, number: int, evaluation: bool = False) -> NetworkKind | None:
        """Check the received model in memory against the bundle's network, then store it as stage ``number``;
        ``None`` when nothing was received (the bundle's own initial weights are the start)."""
        if not isinstance(data, ExchangeObject):
            raise ValueError(f"site {self.site!r}: expected an ExchangeObject, got {type(data).__name__}.")
        weights = dict(data.weights or {})
        if not weights:
            return None
        posterior = weights_posterior(weights)
        kind = NetworkKind.MAP if posterior is None else NetworkKind.BAYES
        stage = Stage(number, sites=(self.site,), network=kind, start=None, evaluate=False)
        if evaluation:
            self.evaluated = stage
        else:
            self.stages[number] = stage
        executor = self._local(evaluation)
        if posterior is not None:
            executor.check_posterior(posterior, "the received posterior")
            posterior.save(executor.layout.posterior_file(number))
            return kind
        state = {k: torch.as_tensor(np.asarray(v)) if not isinstance(v, torch.Tensor) else v
                 for k, v in weights.items()}
        if data.weight_type == WeightType.WEIGHT_DIFF and evaluation:
            raise PayloadError(f"site {self.site!r}: a model to score must come as full weights.")
        if data.weight_type == WeightType.WEIGHT_DIFF:
            if self.received is None:
                raise PayloadError(f"site {self.site!r}: weight differences arrived before any full weights.")
            check_same_network(state, self.received, self.site, "the received weight differences")
            state = {k: self.received[k] + v for k, v in state.items()}
        executor.check_weights(state, "the received model")
        if any(v.is_floating_point() and not bool(torch.isfinite(v).all()) for v in state.values()):
            raise PayloadError(f"site {self.site!r}: the received model has values that are not finite.")
        state = {k: v.detach().cpu().clone() for k, v in state.items()}
        if not evaluation:
            self.received = state
        executor.store.publish(state, "server", number)
        return kind

    # ------------------------------------------------------------------------------------------------ ClientAlgo

    def train(self, data: ExchangeObject, extra: dict | None = None) -> None:
        """One stage from the received model (see :class:`StageExtra` for a Bayesian stage)."""
        extra = dict(extra or {})
        self.round += 1
        received, prior_number, trained = 3 * self.round, 3 * self.round + 1, 3 * self.round + 2
        kind = self._receive(data, received)
        network = NetworkKind(extra.get(StageExtra.NETWORK, NetworkKind.MAP))
        prior = None
        if kind == NetworkKind.BAYES:
            prior = received
        elif StageExtra.PRIOR in extra and network == NetworkKind.BAYES:
            posterior = weights_posterior(dict(extra[StageExtra.PRIOR].weights or {}))
            if posterior is None:
                raise PayloadError(f"site {self.site!r}: the prior that came with the stage is not a posterior.")
            self.stages[prior_number] = Stage(prior_number, sites=(self.site,), network=NetworkKind.BAYES, start=None,
                                              evaluate=False)
            executor = self._local()
            executor.check_posterior(posterior, "the prior that came with the stage")
            posterior.save(executor.layout.posterior_file(prior_number))
            prior = prior_number
        if kind == NetworkKind.BAYES and network != NetworkKind.BAYES:
            raise ValueError(f"site {self.site!r}: a posterior arrived for a deterministic stage; set "
                             f"extra[{StageExtra.NETWORK!r}] = 'bayes'.")
        epochs = int(extra.get(StageExtra.EPOCHS, self.local_epochs))
        stage = Stage(trained, sites=(self.site,), network=network, epochs=epochs,
                      start=received if kind is not None else None, prior=prior,
                      bound_std=as_flag(extra.get(StageExtra.BOUND_STD, False), "bound_std"), evaluate=False)
        self.stages[trained] = stage
        executor = self._local()
        if kind is None:  # nothing received: the bundle's own initial weights
            executor.initialize(NetworkKind.MAP)
            stage = Stage(trained, sites=(self.site,), network=network, epochs=epochs, start=0, prior=prior,
                          bound_std=stage.bound_std, evaluate=False)
            self.stages[trained] = stage
            self.received = executor.artifacts.weights(0)
            executor = self._local()
        self._running = executor
        try:
            self.output = executor.train(stage)
        finally:
            self._running = None
        self.trained = trained

    def get_weights(self, extra: dict | None = None) -> ExchangeObject:
        """The last stage's model: full weights, their differences to the received ones (``send_weight_diff``, unless
        ``extra["weight_type"]`` asks for ``WeightType.WEIGHTS``), or a posterior (always whole); ``statistics`` holds
        the number of training cases."""
        if self.trained is None:
            raise RuntimeError(f"site {self.site!r}: get_weights before any train().")
        executor = self._local()
        stats = {FlStatistics.NUM_EXECUTED_ITERATIONS: int(self.output.num_examples),
                 "num_examples": int(self.output.num_examples)}
        if self.stages[self.trained].network == NetworkKind.BAYES:
            posterior = executor.artifacts.posterior(self.trained)
            return ExchangeObject(weights=posterior_weights(posterior), weight_type=WeightType.WEIGHTS,
                                  statistics=stats)
        weights = executor.artifacts.weights(self.trained)
        if self.send_weight_diff and (extra or {}).get("weight_type", WeightType.WEIGHT_DIFF) == WeightType.WEIGHT_DIFF:
            diff = {k: v - self.received[k] for k, v in weights.items()}
            return ExchangeObject(weights=diff, weight_type=WeightType.WEIGHT_DIFF, statistics=stats)
        return ExchangeObject(weights=weights, weight_type=WeightType.WEIGHTS, statistics=stats)

    def evaluate(self, data: ExchangeObject, extra: dict | None = None) -> ExchangeObject:
        """The received model scored per volume on the site's own evaluation data with the bundle's evaluator;
        ``metrics`` holds the key metric's mean under its name and the per-volume scores under ``"scores"``."""
        if self._receive(data, _EVALUATED, evaluation=True) is None:
            raise PayloadError(f"site {self.site!r}: evaluate() received no model.")
        executor = self._local(evaluation=True)
        scores = executor.evaluate(self.evaluated, self.site)
        return ExchangeObject(metrics={executor.metric_name: float(np.mean(scores)),
                                       "scores": [float(s) for s in scores]})

    def abort(self, extra: dict | None = None) -> None:
        """Interrupt the stage in progress: it publishes nothing and trains again from its inputs when resent."""
        self.aborted = True
        if self._running is not None:
            self._running.abort()

    def finalize(self, extra: dict | None = None) -> None:
        self.bundle = None
