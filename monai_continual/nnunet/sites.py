"""Continual strategies across sites' nnU-Net datasets: the nnU-Net backend of the strategy engine.

Every site is its own nnU-Net dataset, planned once and preprocessed with the shared plans
(:func:`~monai_continual.nnunet.planning.plan_and_preprocess_sites`). The schedule is the strategy core's
(:func:`~monai_continual.strategies.build_schedule`), walked by :func:`~monai_continual.strategies.run_stages`;
:class:`NnUNetStageExecutor` trains a stage with nnU-Net's own trainer, data loading and augmentation. What
crosses to the next stage is a safetensors file only (weights in a
:class:`~monai_continual.consolidation.DirectoryWeightStore`, or a posterior file), named by stage number, with its
content SHA-256 recorded. After every evaluated stage the published model is loaded into a freshly built network
and scored per volume on every site's test cases (``imagesTs``/``labelsTs``, or the validation fold's cases when a site
keeps no test labels), by label or, for region-based datasets, by region.

The whole state is kept in the run directory (``state.json``, the store, posteriors, ``R.json``); running the same
command again after the process was killed resumes exactly (the engine's invariant). A stage killed during training
continues from its ``checkpoint_latest.pth`` (every ``save_every`` epochs, bound to the stage's input hashes;
:mod:`~monai_continual.nnunet.stage_training`) and publishes what the uninterrupted stage would have.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from monai_continual.bayes import bayesianize
from monai_continual.bayes.laplace import std_summary
from monai_continual.consolidation.posterior import Posterior
from monai_continual.losses.ewc import running_fisher
from monai_continual.losses.proximal import proximal_anchor
from monai_continual.losses.quadratic import parameter_state
from monai_continual.metrics.continual_matrix import ContinualMatrix
from monai_continual.nnunet.bayesian_trainer import POSTERIOR_FILE, nnUNetTrainerBayesian
from monai_continual.nnunet.datasets import check_datasets_compatible
from monai_continual.nnunet.environment import nnunet_paths, results_folder
from monai_continual.nnunet.evaluation import SiteEvaluator
from monai_continual.nnunet.ewc_trainer import nnUNetTrainerEWC
from monai_continual.nnunet.launcher import build_trainer
from monai_continual.nnunet.names import SITE_STRATEGY_TRAINERS
from monai_continual.nnunet.planning import check_shared_plans, plans_file, preprocessed_data_folder
from monai_continual.nnunet.proximal_trainer import nnUNetTrainerFedProx
from monai_continual.nnunet.replay_trainer import replay_sources_for
from monai_continual.nnunet.settings import NnUNetSiteSettings
from monai_continual.nnunet.stage_training import StageCheckpoint, run_stage_training
from monai_continual.nnunet.trainers import find_trainer
from monai_continual.strategies import (
    BAYESIAN,
    Action,
    NetworkKind,
    RunState,
    Stage,
    StageOutput,
    Strategy,
    build_schedule,
    make_options,
    run_stages,
    strategy_of,
)
from monai_continual.strategies.base_executor import BaseStageExecutor
from monai_continual.strategies.executor import check_finite_weights
from monai_continual.utils.names import check_site_name
from monai_continual.utils.seeding import seed_everything

__all__ = ["SITE_STRATEGIES", "NnUNetStageExecutor", "NnUNetSiteSettings", "SiteEvaluator", "SitesResult", "run_sites"]

#: strategy -> the trainer of its stages (Bayesian stages of any strategy use ``nnUNetTrainerVCL``)
SITE_STRATEGIES = SITE_STRATEGY_TRAINERS
_MAP_TRAINER, _BAYES_TRAINER, _VCL_TRAINER = "nnUNetTrainer", "nnUNetTrainerVCL", "nnUNetTrainerVCLUnbounded"
_PROX_TRAINER, _EWC_TRAINER = "nnUNetTrainerFedProx", "nnUNetTrainerEWC"


@dataclass
class SitesResult:
    """What :func:`run_sites` produced: the R matrix, the stage records (hashes moved), the run directory."""

    strategy: str
    matrix: ContinualMatrix
    stages: list[dict[str, Any]]
    directory: Path


class NnUNetStageExecutor(BaseStageExecutor):
    """Runs the core's stages with nnU-Net's trainers, one nnU-Net dataset per site.

    Files by stage number (:class:`~monai_continual.strategies.layout.RunLayout`): weights and posteriors, a receipt
    per published stage, ``stages/stage####_<dataset>/`` (nnU-Net's results folder of a stage; a stage that did not
    publish continues from its checkpoint there, or is redone from scratch when it has none for the same inputs) and
    ``predictions/``.

    Args:
        run_dir: the run directory.
        stages: the schedule.
        evaluator: scores a network on a dataset.
        settings: the run's :class:`~monai_continual.nnunet.settings.NnUNetSiteSettings`.
        trainer: the strategy's trainer (or a subclass of it) for its deterministic or Bayesian stages.
        first: the dataset that builds the networks (default: the first stage's).

    Example::

        >>> executor = NnUNetStageExecutor("runs/cwt", stages, evaluator, NnUNetSiteSettings(), "nnUNetTrainer")
    """

    def __init__(self, run_dir: str | os.PathLike, stages: Sequence[Stage], evaluator: SiteEvaluator,
                 settings: NnUNetSiteSettings, trainer: str, *, first: str | None = None) -> None:
        super().__init__(run_dir, stages, seed=settings.seed)
        self.evaluator = evaluator
        self.settings = settings
        self.device = settings.torch_device()
        self.trainer = trainer
        self.first = first or next(s for s in stages if s.sites).sites[0]

    def _trainer_for(self, stage: Stage) -> str:
        bayes_main = issubclass(find_trainer(self.trainer), nnUNetTrainerBayesian)
        if stage.network == NetworkKind.BAYES:
            if self.trainer not in (_BAYES_TRAINER, _VCL_TRAINER) and bayes_main:
                return self.trainer  # the user's own Bayesian trainer
            return _BAYES_TRAINER if stage.bound_std else _VCL_TRAINER
        if stage.memory is not None or stage.remember:
            return self.trainer if not bayes_main else "nnUNetTrainerReplay"
        for needed, cls, name, what in (
            (stage.proximal_mu, nnUNetTrainerFedProx, _PROX_TRAINER, "proximal_mu"),
            (stage.ewc_gamma is not None or stage.fisher is not None, nnUNetTrainerEWC, _EWC_TRAINER, "ewc"),
        ):
            if not needed:
                continue
            if issubclass(find_trainer(self.trainer), cls):
                return self.trainer
            if self.trainer != _MAP_TRAINER:  # the user's own trainer would lose the term without a word
                raise ValueError(f"stage {stage.number}: {what} needs {name} or a subclass of it, not {self.trainer}.")
            return name
        return self.trainer if not bayes_main and self.trainer != "nnUNetTrainerReplay" else _MAP_TRAINER

    def _bayes_trainer(self) -> str:
        return self.trainer if issubclass(find_trainer(self.trainer), nnUNetTrainerBayesian) else _BAYES_TRAINER

    def initial_weights(self) -> dict[str, torch.Tensor]:
        seed_everything(self.seed)
        return self.evaluator.network(_MAP_TRAINER, self.first).state_dict()

    def model(self, number: int) -> torch.nn.Module:
        # the plans are shared: any dataset of the run builds the same network
        if self.artifacts.kind(number) == NetworkKind.BAYES:
            # prior = posterior: a fresh network's own prior (and, bounded, its std cap) must not clip what was
            # published
            network = self.evaluator.network(self._bayes_trainer(), self.first)
            return self.artifacts.posterior(number).to_prior(network, init_posterior=True)
        network = self.evaluator.network(_MAP_TRAINER, self.first)
        network.load_state_dict(self.artifacts.weights(number))
        return network

    def score(self, network: torch.nn.Module, stage: Stage, site: str) -> list[float]:
        bayes = self.artifacts.kind(stage.number) == NetworkKind.BAYES
        trainer = self._bayes_trainer() if bayes else _MAP_TRAINER
        return self.evaluator(network, trainer, site, self.layout.predictions_dir(stage.number))

    def evaluate(self, stage: Stage, site: str) -> list[float]:
        check_site_name(site, f"stage {stage.number}: evaluated site")  # names the predictions folder
        return super().evaluate(stage, site)

    def train(self, stage: Stage) -> StageOutput:
        if len(stage.sites) != 1:
            raise ValueError(f"stage {stage.number}: nnU-Net trains one dataset per stage, got {list(stage.sites)}.")
        # the dataset names the stage folder, which is removed when it exists: never a path outside the run
        dataset = check_site_name(stage.sites[0], f"stage {stage.number}: site")
        done = self.published(stage)
        if done is not None:  # published before an interruption: its count was recorded before publishing
            return StageOutput(done.published, done.loaded, done.num_examples, {**done.details, "redone": False})
        stage_dir = self.layout.stage_dir(stage.number, dataset)
        trainer_name = self._trainer_for(stage)
        # an interrupted stage continues from its last checkpoint when that was written for the same inputs, else it
        # starts again from its beginning
        checkpoint = StageCheckpoint({"inputs": self.artifacts.loaded(stage), "trainer": trainer_name,
                                      "epochs": stage.epochs, "patience": stage.patience},
                                     self.settings.save_every, stage.number)
        resumed = checkpoint.find(stage_dir)
        if resumed is None and stage_dir.exists():
            shutil.rmtree(stage_dir)
        seed = self.seed + stage.number
        seed_everything(seed)
        details: dict[str, Any] = {"trainer": trainer_name}
        with results_folder(stage_dir):
            instance = self._trainer(stage, dataset, trainer_name)
            details.update(run_stage_training(instance, seed, checkpoint, resumed, stage.patience or None))
            network = getattr(instance.network, "_orig_mod", instance.network)
            check_finite_weights(network.state_dict(), stage)
            num_examples = int(getattr(instance, "num_training_cases", 0) or len(instance.do_split()[0]))
            bayes = stage.network == NetworkKind.BAYES
            if bayes:
                details.update(
                    std=dict(instance.std_stats or {}, trained=std_summary(network)), elbo=instance.elbo_history
                )
            details["replay_items"] = int(getattr(instance, "num_replayed", 0))
            if stage.ewc_gamma is not None:  # the site's Fisher joins the running one, saved before the weights
                previous = None if stage.fisher is None else self.artifacts.fisher(stage.fisher)
                details["fisher"] = self.artifacts.save_fisher(
                    stage.number, running_fisher(previous, instance.fisher, stage.ewc_gamma))
            model: Any = (Posterior.load(Path(instance.output_folder) / POSTERIOR_FILE) if bayes
                          else network.state_dict())
            published = self.publish(stage, model, dataset, num_examples, details)
        return StageOutput(published, self.artifacts.loaded(stage), num_examples, details)

    def _trainer(self, stage: Stage, dataset: str, trainer_name: str) -> Any:
        """nnU-Net's trainer of ``stage``, initialized, with the stage's start weights (or prior) loaded."""
        s = self.settings
        instance = build_trainer(dataset, s.configuration, s.fold, trainer_name, s.plans, self.device, stage.epochs,
                                 s.iterations_per_epoch, s.val_iterations_per_epoch)
        bayes = stage.network == NetworkKind.BAYES
        if bayes:
            bayes_start = self.artifacts.kind(stage.start) == NetworkKind.BAYES
            instance.prior_file = str(self.layout.posterior_file(stage.start)) if bayes_start else None
        if stage.num_examples is not None:
            instance.kl_num_examples = float(stage.num_examples)
        if isinstance(instance, nnUNetTrainerFedProx):  # the stage's mu, 0 included; anchored when training starts
            instance.proximal_mu = float(stage.proximal_mu)
        if isinstance(instance, nnUNetTrainerEWC):  # anchored at the start weights when training starts
            instance.ewc_lambda = float(stage.ewc_lambda)
            instance.ewc_fisher = None if stage.fisher is None else self.artifacts.fisher(stage.fisher)
            instance.estimate_fisher = stage.ewc_gamma is not None
        if stage.memory is not None:
            earlier = [s.sites[0] for n, s in self.stages.items() if s.remember and n <= stage.memory]
            folders = [preprocessed_data_folder(plans_file(d, self.settings.plans).parent, self.settings.configuration,
                                                self.settings.plans) for d in earlier]
            instance.replay_sources = replay_sources_for(folders, self.settings.replay_capacity, seed=self.seed)
        instance.initialize()
        network = getattr(instance.network, "_orig_mod", instance.network)
        if self.artifacts.kind(stage.start) == NetworkKind.MAP:
            state = self.artifacts.weights(stage.start)
            if bayes:  # means from deterministic weights (DWC's MAP stage -> q0; VCL's first site)
                plain = self.evaluator.network(_MAP_TRAINER, dataset)
                plain.load_state_dict(state)
                state = bayesianize(plain, type(instance).bayes, inplace=True).state_dict()
            network.load_state_dict(state)
        if isinstance(instance, nnUNetTrainerFedProx):  # anchored at the start weights, also when resumed later
            instance.proximal_anchor = proximal_anchor(instance.network)
        if isinstance(instance, nnUNetTrainerEWC):
            instance.ewc_anchor = parameter_state(network)
        return instance

    def consolidate(self, stage: Stage, weights: Sequence[float]) -> StageOutput:
        if stage.action not in (Action.AVERAGE, Action.DWC):
            raise ValueError(f"stage {stage.number}: the nnU-Net backend does not run {stage.action} stages.")
        return super().consolidate(stage, weights)


def run_sites(
    datasets: Sequence[str],
    strategy: str,
    output_dir: str | os.PathLike,
    settings: NnUNetSiteSettings | None = None,
    *,
    epochs: int = 1,
    rounds: int = 2,
    order: str | Sequence[str] = "fixed",
    dwc_finetune: bool | None = None,
    eval_datasets: Sequence[str] = (),
    options: Mapping[str, Any] | None = None,
    **setting_values: Any,
) -> SitesResult:
    """Run one strategy over the sites' nnU-Net datasets (already planned and preprocessed with shared plans).

    The schedule is the strategy core's, with the same meaning as in the MONAI runner: ``single_weight_transfer``,
    ``cyclic_weight_transfer`` (``rounds`` cycles), ``fine_tuning``, ``replay`` (plus up to ``replay_capacity``
    cases of every earlier site), ``ewc`` (fine-tuning with ``nnUNetTrainerEWC``'s penalty), ``vcl``, ``dwc`` (MAP
    stage, q0 on the first site, every other site from q0, Eq. 17, ``rounds`` rounds, fine-tuning on the first site
    unless ``dwc_finetune=False``) and
    ``federated_averaging`` (``rounds`` rounds of ``epochs`` local epochs).

    Args:
        datasets: the sites' datasets, in their listed order (names or ids).
        strategy: one of :data:`SITE_STRATEGIES`.
        output_dir: the run directory (all state; rerun the same call to resume).
        settings: how stages train and are evaluated (:class:`~monai_continual.nnunet.settings.NnUNetSiteSettings`);
            its fields may also be given as keywords (``device="cpu"``, ``iterations_per_epoch=50``...).
        epochs: epochs per stage (per visit for cyclic transfer, per round for FedAvg).
        rounds: cycles of cyclic transfer, rounds of DWC and FedAvg.
        order: ``"fixed"``, ``"random"`` (once), ``"random_per_round"`` or a list of datasets.
        dwc_finetune: DWC's fine-tuning stage (``None``: the strategy's default, on).
        eval_datasets: more datasets evaluated after every stage but never trained on (held-out sites).
        options: further options of the strategy's options dataclass (e.g. ``{"skip": [...], "patience": 2}``).

    Returns:
        :class:`SitesResult`; ``R.json``, ``R.csv``, ``R.png`` and ``state.json`` are in ``output_dir``.

    Example::

        >>> result = run_sites(["Dataset501_site_a", "Dataset502_site_b"], "cyclic_weight_transfer", "runs/cwt",
        ...                    rounds=3, epochs=5, device="cpu")
        >>> result.matrix.as_array()
    """
    settings = dataclasses.replace(settings or NnUNetSiteSettings(), **setting_values)
    name = strategy_of(strategy)
    if name.value not in SITE_STRATEGIES:
        raise ValueError(
            f"strategy {name.value} does not run on nnU-Net sites; strategies are {sorted(SITE_STRATEGIES)}."
        )
    if epochs < 1 or rounds < 1:
        raise ValueError(f"epochs and rounds must be >= 1, got {epochs} and {rounds}.")
    paths = nnunet_paths()
    # labels and channels agree, before any work (held-out sites included)
    everything = list(check_datasets_compatible(paths["raw"], [*datasets, *eval_datasets]))
    names, held_out = everything[: len(datasets)], everything[len(datasets):]
    if len(set(everything)) != len(everything) or len(everything) != len(datasets) + len(eval_datasets):
        raise ValueError(f"a dataset is listed twice: {[*datasets, *eval_datasets]}.")
    opts = _options(name, rounds, order, names, datasets, settings.replay_capacity, dwc_finetune, options or {})
    stages = build_schedule(name, names, opts, epochs, settings.seed)
    check_shared_plans(names, settings.plans)
    trainer_name = settings.trainer or SITE_STRATEGIES[name.value]
    trainer_class, required = find_trainer(trainer_name), find_trainer(SITE_STRATEGIES[name.value])
    bayesian = issubclass(trainer_class, nnUNetTrainerBayesian)
    if not issubclass(trainer_class, required) or (bayesian and name not in BAYESIAN):
        raise ValueError(f"strategy {name.value} trains with {required.__name__} or a subclass of it"
                         f"{'' if name in BAYESIAN else ' that is not Bayesian'}; got {trainer_name}.")
    evaluator = SiteEvaluator(names + held_out, settings.configuration, settings.plans, settings.torch_device(),
                              settings.mirroring, settings.mc_samples, settings.fold)
    run_dir = Path(output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    identity = dict(settings.identity(), trainer=trainer_name)
    if name != Strategy.REPLAY:
        identity["replay_capacity"] = None
    config = {"strategy": name.value, "datasets": names, "eval_datasets": held_out,
              "stages": [s.to_dict() for s in stages], **identity}
    state = RunState.open(run_dir, name.value, config)
    executor = NnUNetStageExecutor(run_dir, stages, evaluator, settings, trainer_name)
    run_stages(stages, executor, state, names + held_out, log=print if settings.progress else None)
    matrix = executor.save_results(state, stages, names + held_out,
                                   f"{name.value}: Dice on every site's test cases after each stage")
    records = [dict(vars(r)) for r in state.stage_records()]
    return SitesResult(name.value, matrix, records, run_dir)


def _options(name: Strategy, rounds: int, order: Any, names: list[str], given: Sequence[str], capacity: int,
             finetune: bool | None, extra: Mapping[str, Any]) -> Any:
    """The strategy's options from :func:`run_sites`' arguments; an explicit order may name datasets by id."""
    if not isinstance(order, str):
        lookup = {str(g): n for g, n in zip(given, names)} | {n: n for n in names}
        order = [lookup.get(str(o), str(o)) for o in order]
    values: dict[str, Any] = {}
    if name != Strategy.FEDERATED_AVERAGING:
        values["order"] = order
    if name == Strategy.CYCLIC_WEIGHT_TRANSFER:
        values["cycles"] = rounds
    elif name in (Strategy.DWC, Strategy.FEDERATED_AVERAGING):
        values["rounds"] = rounds
    if name == Strategy.REPLAY:
        values["capacity_per_site"] = capacity
    if name == Strategy.DWC and finetune is not None:
        values["finetune"] = bool(finetune)
    values.update(extra)
    return make_options(name, **values)
