"""The stage executor of a hospital's own bundle: a strategy's site stages with the bundle's trainer and evaluator."""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from ignite.engine import Events
from torch import nn

from monai_continual.bayes.convert import bayesianize
from monai_continual.bayes.laplace import calibrate_posterior_std, parameter_fisher, std_summary
from monai_continual.bayes.mc_inferer import MCInferer
from monai_continual.consolidation.posterior import Posterior
from monai_continual.consolidation.weight_store import WeightEntry
from monai_continual.engines.bundle_site import BundleSite
from monai_continual.handlers.site_batches import site_batches
from monai_continual.handlers.site_score import SiteScoreRecorder
from monai_continual.losses import ELBOLoss, EWCLoss, ProximalLoss, proximal_anchor, running_fisher, voxels_per_item
from monai_continual.strategies.base_executor import BaseStageExecutor
from monai_continual.strategies.engine import INITIAL_STAGE
from monai_continual.strategies.executor import StageOutput, check_finite_weights
from monai_continual.strategies.stage import Action, NetworkKind, Stage

__all__ = ["BundleStageExecutor", "NetworkMismatchError", "check_same_network"]


class NetworkMismatchError(ValueError):
    """A model whose parameter names or shapes are not those of the site's network."""


def check_same_network(received: Mapping[str, torch.Tensor], network: nn.Module | Mapping[str, torch.Tensor],
                       site: str, what: str) -> None:
    """Refuse weights whose names or shapes are not ``network``'s (a module or its state dict), naming the site: a run
    never mixes networks."""
    state = network.state_dict() if isinstance(network, nn.Module) else network
    own = {k: tuple(v.shape) for k, v in state.items()}
    theirs = {k: tuple(v.shape) for k, v in received.items()}
    if own == theirs:
        return
    missing, extra = sorted(set(own) - set(theirs)), sorted(set(theirs) - set(own))
    shapes = sorted(k for k in set(own) & set(theirs) if own[k] != theirs[k])
    raise NetworkMismatchError(
        f"site {site!r}: {what} does not fit this site's bundle network (every site of a run must use the same "
        f"network): missing {missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected {extra[:5]}"
        f"{'...' if len(extra) > 5 else ''}, shapes (name, received, this site's) "
        f"{[(k, theirs[k], own[k]) for k in shapes[:5]]}."
    )


def _unwrapped(network: nn.Module) -> nn.Module:
    return getattr(network, "module", network)


class _Transfer:
    """What a :class:`~monai_continual.handlers.SiteScoreRecorder` reads: the model received and the one published."""

    def __init__(self, loaded: Any) -> None:
        self.loaded, self.published = loaded, None


class BundleStageExecutor(BaseStageExecutor):
    """Trains and scores a run's stages at one site with the site's own bundle (:class:`BundleSite`).

    A deterministic stage starts the bundle's trainer from the stage's ``start`` model and runs it for the stage's
    epochs; a Bayesian stage (VCL, DWC) first makes the bundle's network Bayesian, takes the ``start`` posterior (or
    the means from deterministic weights) and the ``prior``, sets the stds from the site's training data and wraps
    the bundle's loss in the ELBO with N the site's training voxels. The site's own score records
    (:class:`~monai_continual.handlers.SiteScoreRecorder`: the received and the published model on its validation
    data) stay in ``<run>/sites/<site>/``. A model is scored per volume with the bundle's evaluator and key metric
    (its ``metric_details``; the mean when the metric keeps none), Monte Carlo over ``mc_samples`` passes for a
    Bayesian model. A stage interrupted before it published trains again from its inputs.

    Args:
        bundle: the site's bundle.
        run_dir: the run directory (the site's own, in a federated run).
        stages: the schedule (or the stages a task names).
        seed: the run's seed (evaluation seeds; the bundle's own ``initialize`` seeds its training).

    Example::

        >>> executor = BundleStageExecutor(BundleSite("/opt/spleen", "hospital_b"), "runs/cwt", stages)
        >>> executor.initialize(NetworkKind.MAP); executor.train(stages[1])
    """

    def __init__(self, bundle: BundleSite, run_dir: str | os.PathLike, stages: Sequence[Stage], *,
                 seed: int = 0) -> None:
        super().__init__(run_dir, stages, seed=seed)
        self.bundle = bundle
        self.site = bundle.site
        self.metric_name: str | None = None
        self._shapes: dict[str, torch.Tensor] | None = None
        self._trainer: Any = None
        self._aborted = False

    def abort(self) -> None:
        """Interrupt the stage in training (from another thread): it returns without publishing."""
        self._aborted = True
        if self._trainer is not None:
            self._trainer.interrupt()

    # ------------------------------------------------------------------------------------------------ networks

    def initial_weights(self) -> dict[str, torch.Tensor]:
        """The bundle network's weights as its own ``initialize`` section makes them."""
        network = _unwrapped(self.bundle.workflow().parser.get_parsed_content("network"))
        return {k: v.detach().cpu() for k, v in network.state_dict().items()}

    def check_weights(self, weights: Mapping[str, torch.Tensor], what: str) -> None:
        """Refuse ``weights`` that are not this site's bundle network's (names and shapes), before they are stored.

        Raises:
            NetworkMismatchError: naming the site and the parameters that differ.
        """
        if self._shapes is None:
            network = _unwrapped(self.bundle.workflow().parser.get_parsed_content("network"))
            self._shapes = {k: v.to("meta") for k, v in network.state_dict().items()}
        check_same_network(weights, self._shapes, self.site, what)

    def check_posterior(self, posterior: Posterior, what: str) -> None:
        """Refuse a posterior that does not fit this site's bundle network made Bayesian, before it is stored.

        Raises:
            NetworkMismatchError: naming the site and what does not fit.
        """
        network = _unwrapped(self.bundle.workflow(bayesian=True).parser.get_parsed_content("network"))
        try:
            posterior.to_prior(network, init_posterior=True)
        except (KeyError, ValueError, RuntimeError) as err:
            raise NetworkMismatchError(f"site {self.site!r}: {what} does not fit this site's bundle network made "
                                       f"Bayesian (every site of a run must use the same network): {err}") from err

    def model(self, number: int) -> nn.Module:
        stage = self.stages.get(number)
        if stage is not None and stage.action == Action.ENSEMBLE:
            raise ValueError(f"site {self.site!r}: an ensemble is scored by the server from its members.")
        bayes = self.artifacts.kind(number) == NetworkKind.BAYES
        network = _unwrapped(self.bundle.workflow(bayesian=bayes).parser.get_parsed_content("network"))
        if bayes:
            self.artifacts.posterior(number).to_prior(network, init_posterior=True)
        else:
            weights = self.artifacts.weights(number)
            check_same_network(weights, network, self.site, f"stage {number}'s model")
            network.load_state_dict(weights)
        return network

    def start(self, stage: Stage, network: nn.Module, plain: nn.Module) -> None:
        """Load the stage's start (and prior) by stage number into ``network``; ``plain`` is the bundle's
        deterministic network (a Bayesian stage's means from deterministic weights go through it)."""
        if stage.start is None:
            return
        if self.artifacts.kind(stage.start) == NetworkKind.BAYES:
            if stage.prior not in (None, stage.start):
                raise ValueError(f"stage {stage.number}: a Bayesian start's prior must be the start itself.")
            self.artifacts.posterior(stage.start).to_prior(network, init_posterior=True)
            return
        weights = self.artifacts.weights(stage.start)
        what = f"stage {stage.start}'s model (the start of stage {stage.number})"
        check_same_network(weights, plain, self.site, what)
        if stage.network == NetworkKind.BAYES:  # means from deterministic weights (DWC's MAP -> q0, VCL's first)
            source = copy.deepcopy(plain)
            source.load_state_dict(weights)
            converted = bayesianize(source, self.bundle.bayes, bound_std=stage.bound_std)
            device = next(network.parameters()).device
            network.load_state_dict({k: v.to(device) for k, v in converted.state_dict().items()})
            if stage.prior is not None:  # a received prior (e.g. VCL's) instead of the network's own
                self.artifacts.posterior(stage.prior).to_prior(network)
        else:
            network.load_state_dict(weights)

    # ------------------------------------------------------------------------------------------------ training

    def train(self, stage: Stage) -> StageOutput:
        done = self.published(stage, strict=True)
        if done is not None:
            return done
        if stage.action != Action.TRAIN or len(stage.sites) != 1 or stage.sites[0] != self.site:
            raise ValueError(f"site {self.site!r}: stage {stage.number} ({stage.label}) is not a training stage of "
                             "this site; a bundle site trains on its own data only.")
        bayes = stage.network == NetworkKind.BAYES
        workflow = self.bundle.workflow(epochs=stage.epochs, bayesian=bayes, bound_std=stage.bound_std)
        parser = workflow.parser
        trainer = parser.get_parsed_content("train#trainer")
        dataset = parser.get_parsed_content("train#dataset")
        network = _unwrapped(trainer.network)
        plain = parser.get_parsed_content("network_def") if bayes else network
        self.start(stage, network, plain)
        details: dict[str, Any] = {"dataset_size": len(dataset)}
        if bayes:
            voxels = voxels_per_item(dataset[0])
            examples = stage.num_examples if stage.num_examples is not None else len(dataset)
            trainer.loss_function = ELBOLoss(trainer.loss_function, network, float(examples * voxels))
            seed = self.seed + stage.number
            details["std"] = calibrate_posterior_std(network, lambda: site_batches(dataset, network), seed=seed)
        if stage.proximal_mu or stage.ewc_lambda:  # FedProx and EWC: anchored at the start stage's weights
            anchor = self.artifacts.weights(stage.start)
            if stage.proximal_mu:
                trainer.loss_function = ProximalLoss(trainer.loss_function, network,
                                                     proximal_anchor(network, anchor), stage.proximal_mu)
            if stage.ewc_lambda:
                trainer.loss_function = EWCLoss(trainer.loss_function, network, anchor,
                                                self.artifacts.fisher(stage.fisher), stage.ewc_lambda)
        self._record_scores(stage, trainer, parser, network, len(dataset))
        self._trainer = trainer
        try:
            if not self._aborted:  # an abort during the set-up above: nothing trains
                trainer.run()
        finally:
            self._trainer = None
        if self._aborted:
            raise RuntimeError(f"site {self.site!r}: stage {stage.number} was aborted; nothing was published.")
        state = {k: v.detach().cpu() for k, v in network.state_dict().items()}
        check_finite_weights(state, stage)
        details["epochs_run"] = int(trainer.state.epoch)
        if stage.ewc_gamma is not None:  # the site's Fisher at its trained weights joins the running one
            seed = self.seed + stage.number
            own = parameter_fisher(network, site_batches(dataset, network), seed=seed)
            previous = None if stage.fisher is None else self.artifacts.fisher(stage.fisher)
            details["fisher"] = self.artifacts.save_fisher(stage.number, running_fisher(previous, own, stage.ewc_gamma))
        if bayes:
            details["std"] = dict(details.get("std", {}), trained=std_summary(network))
            model: Any = Posterior.from_model(network, site=self.site, num_examples=len(dataset))
        else:
            model = state
        published = self.publish(stage, model, self.site, len(dataset), details)
        return StageOutput(published, self.artifacts.loaded(stage), len(dataset), details)

    def _record_scores(self, stage: Stage, trainer: Any, parser: Any, network: nn.Module, examples: int) -> None:
        """The site's own record of the model it received (not the run's initial weights) and the one it publishes,
        scored by the bundle's validation evaluator as the score overlay does."""
        received = None
        if stage.start not in (None, INITIAL_STAGE):
            if self.artifacts.kind(stage.start) == NetworkKind.BAYES:
                publisher = self.artifacts.posterior(stage.start).site or "server"
            else:
                publisher = self.store.entry(stage.start).site
            received = WeightEntry("", publisher, stage.start, str(self.artifacts.published_sha(stage.start)), 0.0, {})
        transfer = _Transfer(received)

        def published(engine: Any) -> None:
            if stage.network == NetworkKind.BAYES:
                sha = Posterior.from_model(network, site=self.site, num_examples=examples).sha256()
            else:
                sha = self.store.content_sha256(network.state_dict(), self.site, stage.number)
            transfer.published = WeightEntry("", self.site, stage.number, sha, 0.0, {})

        trainer.add_event_handler(Events.COMPLETED, published)
        recorder = SiteScoreRecorder(parser.get_parsed_content("validate#evaluator"), self.layout.site_dir(self.site),
                                     self.site, transfer)
        recorder.attach(trainer)

    # ------------------------------------------------------------------------------------------------ scoring

    def score(self, network: nn.Module, stage: Stage, site: str) -> list[float]:
        if site != self.site:
            raise ValueError(f"site {self.site!r} scores models on its own data only, not on {site!r}'s.")
        bayes = self.artifacts.kind(stage.number) == NetworkKind.BAYES
        parser = self.bundle.workflow(evaluate=True).parser
        self.seed_evaluation(stage.number, site)  # the bundle's own initialize section has just seeded
        device = parser.get_parsed_content("device") if "device" in parser else torch.device("cpu")
        parser["network"] = network.to(device)
        evaluator = parser.get_parsed_content("validate#evaluator")
        if bayes:
            evaluator.inferer = MCInferer(self.bundle.mc_samples, evaluator.inferer)
        evaluator.run()
        name = self.metric_name = evaluator.state.key_metric_name
        details = getattr(evaluator.state, "metric_details", {}).get(name)
        if details is None:
            return [float(evaluator.state.metrics[name])]
        values = torch.as_tensor(details, dtype=torch.float64).reshape(len(details), -1)
        return [float(v) for v in np.nanmean(values.numpy(), axis=1)]
