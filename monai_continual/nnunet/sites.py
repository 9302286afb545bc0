"""Continual strategies across sites' nnU-Net datasets: the nnU-Net backend of the strategy engine.

Every site is its own nnU-Net dataset, planned once and preprocessed with the shared plans
(:func:`~monai_continual.nnunet.planning.plan_and_preprocess_sites`). The schedule is the strategy core's
(:func:`~monai_continual.strategies.build_schedule`), walked by :func:`~monai_continual.strategies.run_stages`;
:class:`NnUNetStageExecutor` trains a stage with nnU-Net's own trainer, data loading and augmentation. What
crosses to the next stage is a safetensors file only (weights in a
:class:`~monai_continual.consolidation.DirectoryWeightStore`, or a posterior file), named by stage number, with its
content SHA-256 recorded. After every evaluated stage the published model is loaded into a freshly built network
and scored per volume on every site's test cases (``imagesTs``/``labelsTs``).

The whole state is kept in the run directory (``state.json``, the store, posteriors, ``R.json``); running the same
command again after the process was killed resumes exactly (the engine's invariant).
"""

from __future__ import annotations

import json
import os
import shutil
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from monai_continual.bayes import bayesianize
from monai_continual.bayes.laplace import std_summary
from monai_continual.consolidation.averaging import weighted_average
from monai_continual.consolidation.dwc import consolidate_dwc
from monai_continual.consolidation.posterior import Posterior
from monai_continual.metrics.continual_matrix import ContinualMatrix
from monai_continual.metrics.segmentation import mean_dice
from monai_continual.nnunet.bayesian_trainer import POSTERIOR_FILE, nnUNetTrainerBayesian
from monai_continual.nnunet.datasets import check_datasets_compatible, raw_dataset_folder
from monai_continual.nnunet.environment import nnunet_paths, results_folder
from monai_continual.nnunet.launcher import build_trainer, default_device
from monai_continual.nnunet.planning import plans_file, preprocessed_data_folder, shared_plans
from monai_continual.nnunet.plateau import run_training_to_plateau
from monai_continual.nnunet.replay_trainer import replay_sources_for
from monai_continual.nnunet.trainers import find_trainer
from monai_continual.strategies import (
    INITIAL_STAGE,
    Action,
    NetworkKind,
    NonFiniteTrainingError,
    RunState,
    Stage,
    StageOutput,
    Strategy,
    build_schedule,
    crash_point,
    make_options,
    run_stages,
    strategy_of,
)
from monai_continual.strategies.artifacts import StageArtifacts
from monai_continual.utils.atomic import atomic_copy
from monai_continual.utils.names import check_site_name
from monai_continual.utils.seeding import seed_everything

__all__ = ["SITE_STRATEGIES", "NnUNetStageExecutor", "SitesResult", "run_sites"]

#: strategy -> the trainer of its stages (Bayesian stages of any strategy use ``nnUNetTrainerVCL``)
SITE_STRATEGIES = {
    "single_weight_transfer": "nnUNetTrainer",
    "cyclic_weight_transfer": "nnUNetTrainer",
    "fine_tuning": "nnUNetTrainer",
    "replay": "nnUNetTrainerReplay",
    "vcl": "nnUNetTrainerVCL",
    "dwc": "nnUNetTrainerVCL",
    "federated_averaging": "nnUNetTrainer",
}
_MAP_TRAINER, _BAYES_TRAINER, _VCL_TRAINER = "nnUNetTrainer", "nnUNetTrainerVCL", "nnUNetTrainerVCLUnbounded"


@dataclass
class SitesResult:
    """What :func:`run_sites` produced: the R matrix, the stage records (hashes moved), the run directory."""

    strategy: str
    matrix: ContinualMatrix
    stages: list[dict[str, Any]]
    directory: Path


class _Evaluator:
    """Predicts every site's test images with a published model and scores them against ``labelsTs``."""

    def __init__(self, datasets: list[str], configuration: str, plans: str, device: torch.device, mirroring: bool,
                 mc_samples: int) -> None:
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        self.device, self.mirroring, self.mc_samples = device, mirroring, mc_samples
        raw = nnunet_paths(("raw",))["raw"]
        self.folders = {d: raw_dataset_folder(raw, d) for d in datasets}
        # per dataset, read once: plans manager, configuration, dataset.json
        self.setup: dict[str, tuple[Any, Any, dict[str, Any]]] = {}
        for dataset, folder in self.folders.items():
            if not any((folder / "imagesTs").glob("*_0000*")) or not (folder / "labelsTs").is_dir():
                raise FileNotFoundError(
                    f"dataset {dataset}: needs test cases in imagesTs/ and labelsTs/ to be evaluated."
                )
            # a held-out site has no training cases, hence no plans of its own: its images are preprocessed on the
            # fly with the shared plans of the first site (the same ones every trained site uses)
            own = plans_file(dataset, plans)
            manager = PlansManager(str(own if own.is_file() else plans_file(datasets[0], plans)))
            dataset_json = json.loads((folder / "dataset.json").read_text())
            self.setup[dataset] = (manager, manager.get_configuration(configuration), dataset_json)

    def network(self, trainer: str, dataset: str) -> torch.nn.Module:
        from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

        plans_manager, config, dataset_json = self.setup[dataset]
        heads = plans_manager.get_label_manager(dataset_json).num_segmentation_heads
        channels = determine_num_input_channels(plans_manager, config, dataset_json)
        return find_trainer(trainer).build_network_architecture(plans_manager, config, channels, heads, False)

    def __call__(self, network: torch.nn.Module, trainer: str, dataset: str, output: Path) -> list[float]:
        """Per-volume Dice (class average) of ``network`` on ``dataset``'s test cases."""
        import nibabel as nib

        from monai_continual.nnunet.mc_predictor import MCnnUNetPredictor

        folder = self.folders[dataset]
        plans_manager, config, dataset_json = self.setup[dataset]
        output = output / check_site_name(dataset, "nnU-Net dataset")
        predictor = MCnnUNetPredictor(mc_samples=self.mc_samples, use_mirroring=self.mirroring, device=self.device)
        axes = tuple(range(len(config.patch_size)))
        predictor.manual_initialization(network.to(self.device).eval(), plans_manager, config, [network.state_dict()],
                                        dataset_json, trainer, axes)
        written = predictor.predict_files(folder / "imagesTs", output, uncertainty=False, progress=False)
        num_classes = max(int(v) for v in dataset_json["labels"].values()) + 1
        dice = []
        for path in written:
            reference = folder / "labelsTs" / path.name
            pred = torch.as_tensor(np.asarray(nib.load(path).dataobj))[None, None]
            label = torch.as_tensor(np.asarray(nib.load(reference).dataobj))[None, None]
            dice.append(float(mean_dice(pred, label, num_classes)[0]))
        return dice


class NnUNetStageExecutor:
    """Runs the core's stages with nnU-Net's trainers, one nnU-Net dataset per site.

    Layout of ``run_dir``: ``store/`` (weights of deterministic stages by stage number), ``posteriors/`` (posterior
    of every Bayesian stage), ``stages/<number>_<dataset>/`` (nnU-Net's results folder of a stage, redone from
    scratch when the stage did not publish), ``predictions/``.

    Args:
        run_dir: the run directory.
        stages: the schedule.
        evaluator: scores a network on a dataset.
        configuration, fold, plans: nnU-Net's.
        device: training device.
        epochs_kwargs: ``iterations_per_epoch`` and ``val_iterations_per_epoch`` for :func:`build_trainer`.
        trainer: the strategy's trainer (or a subclass of it) for its deterministic or Bayesian stages.
        replay_capacity: K per earlier site.
        seed: seeds every stage.
        first: the dataset that builds the networks (default: the first stage's).
    """

    def __init__(self, run_dir: Path, stages: Sequence[Stage], evaluator: _Evaluator, configuration: str, fold: Any,
                 plans: str, device: torch.device, iterations: Mapping[str, int | None], trainer: str,
                 replay_capacity: int, seed: int, first: str | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.stages = {s.number: s for s in stages}
        self.evaluator = evaluator
        self.configuration, self.fold, self.plans, self.device = configuration, fold, plans, device
        self.iterations = dict(iterations)
        self.trainer = trainer
        self.replay_capacity = replay_capacity
        self.seed = seed
        self.artifacts = StageArtifacts(run_dir, stages)
        self.store = self.artifacts.store
        self.posterior_file = self.artifacts.posterior_file
        self._kind = self.artifacts.kind
        self._published_sha = self.artifacts.published_sha
        self._loaded = self.artifacts.loaded
        self.first = first or next(s for s in stages if s.sites).sites[0]
        self._model_cache: tuple[int, torch.nn.Module] | None = None

    def _trainer_for(self, stage: Stage) -> str:
        bayes_main = issubclass(find_trainer(self.trainer), nnUNetTrainerBayesian)
        if stage.network == NetworkKind.BAYES:
            if self.trainer not in (_BAYES_TRAINER, _VCL_TRAINER) and bayes_main:
                return self.trainer  # the user's own Bayesian trainer
            return _BAYES_TRAINER if stage.bound_std else _VCL_TRAINER
        if stage.memory is not None or stage.remember:
            return self.trainer if not bayes_main else "nnUNetTrainerReplay"
        return self.trainer if not bayes_main and self.trainer != "nnUNetTrainerReplay" else _MAP_TRAINER

    def _network(self, trainer: str, dataset: str) -> torch.nn.Module:
        return self.evaluator.network(trainer, dataset)

    def model(self, number: int) -> torch.nn.Module:
        """Stage ``number``'s published model in a freshly built network: exactly what the next site receives."""
        # the plans are shared: any dataset of the run builds the same network
        if self._kind(number) == NetworkKind.BAYES:
            # prior = posterior: a fresh network's own prior (and, bounded, its std cap) must not clip what was
            # published
            return Posterior.load(self.posterior_file(number)).to_prior(
                self._network(self._bayes_trainer(), self.first), init_posterior=True
            )
        network = self._network(_MAP_TRAINER, self.first)
        network.load_state_dict(self.store.load(self.store.entry(number)))
        return network

    def _bayes_trainer(self) -> str:
        return self.trainer if issubclass(find_trainer(self.trainer), nnUNetTrainerBayesian) else _BAYES_TRAINER

    def initialize(self, network: NetworkKind) -> StageOutput:
        entry = self.store.entry(INITIAL_STAGE)
        if entry is None:
            seed_everything(self.seed)
            entry = self.store.publish(self._network(_MAP_TRAINER, self.first).state_dict(), "init", INITIAL_STAGE)
        return StageOutput(entry.sha256)

    def train(self, stage: Stage) -> StageOutput:
        if len(stage.sites) != 1:
            raise ValueError(f"stage {stage.number}: nnU-Net trains one dataset per stage, got {list(stage.sites)}.")
        # the dataset names the stage folder, which is removed when it exists: never a path outside the run
        dataset = check_site_name(stage.sites[0], f"stage {stage.number}: site")
        published = self._published_sha(stage.number)
        if published is not None:  # published before an interruption: its count was recorded before publishing
            receipt = self.artifacts.receipt(stage.number, published)
            return StageOutput(published, self._loaded(stage), int(receipt.get("num_examples", 0)),
                               {**receipt.get("details", {}), "redone": False})
        stage_dir = self.run_dir / "stages" / f"{stage.number:03d}_{dataset}"
        if stage_dir.exists():  # an interrupted stage starts again from its beginning
            shutil.rmtree(stage_dir)
        seed_everything(self.seed + stage.number)
        trainer_name = self._trainer_for(stage)
        details: dict[str, Any] = {"trainer": trainer_name}
        with results_folder(stage_dir):
            instance = build_trainer(dataset, self.configuration, self.fold, trainer_name, self.plans, self.device,
                                     stage.epochs, self.iterations.get("iterations_per_epoch"),
                                     self.iterations.get("val_iterations_per_epoch"))
            bayes = stage.network == NetworkKind.BAYES
            if bayes and self._kind(stage.start) == NetworkKind.BAYES:
                instance.prior_file = str(self.posterior_file(stage.start))
            elif bayes:
                instance.prior_file = None
            if stage.num_examples is not None:
                instance.kl_num_examples = float(stage.num_examples)
            if stage.memory is not None:
                earlier = [s.sites[0] for n, s in self.stages.items() if s.remember and n <= stage.memory]
                folders = [preprocessed_data_folder(plans_file(d, self.plans).parent, self.configuration, self.plans)
                           for d in earlier]
                instance.replay_sources = replay_sources_for(folders, self.replay_capacity, seed=self.seed)
            instance.initialize()
            network = getattr(instance.network, "_orig_mod", instance.network)
            if self._kind(stage.start) == NetworkKind.MAP:
                state = self.store.load(self.store.entry(stage.start))
                if bayes:  # means from deterministic weights (DWC's MAP stage -> q0; VCL's first site)
                    plain = self._network(_MAP_TRAINER, dataset)
                    plain.load_state_dict(state)
                    trainer_class = type(instance)
                    state = bayesianize(plain, inplace=True, **trainer_class.bayes_kwargs()).state_dict()
                network.load_state_dict(state)
            if stage.patience:
                details.update(run_training_to_plateau(instance, stage.patience))
            else:
                instance.run_training()
            crash_point("mid_training", stage.number)
            network = getattr(instance.network, "_orig_mod", instance.network)
            bad = [
                k
                for k, v in network.state_dict().items()
                if v.is_floating_point() and not bool(torch.isfinite(v).all())
            ]
            if bad:
                raise NonFiniteTrainingError(f"site {dataset!r}, stage {stage.number} ({stage.label}): non-finite "
                                             f"weights in {bad[:5]}; nothing was published.")
            num_examples = int(getattr(instance, "num_training_cases", 0) or len(instance.do_split()[0]))
            if bayes:
                details.update(
                    std=dict(instance.std_stats or {}, trained=std_summary(network)), elbo=instance.elbo_history
                )
            details["replay_items"] = int(getattr(instance, "num_replayed", 0))
            if bayes:
                posterior = Posterior.load(Path(instance.output_folder) / POSTERIOR_FILE)
                self.artifacts.write_receipt(
                    stage.number, posterior.sha256(), num_examples=num_examples, details=details
                )
                atomic_copy(Path(instance.output_folder) / POSTERIOR_FILE, self.posterior_file(stage.number))
                published = posterior.sha256()
            else:
                state = network.state_dict()
                sha = self.store.content_sha256(state, dataset, stage.number)
                self.artifacts.write_receipt(stage.number, sha, num_examples=num_examples, details=details)
                published = self.store.publish(state, dataset, stage.number).sha256
        return StageOutput(published, self._loaded(stage), num_examples, details)

    def consolidate(self, stage: Stage, weights: Sequence[float]) -> StageOutput:
        loaded = self._loaded(stage)
        if stage.action == Action.AVERAGE:
            states = [self.store.load(self.store.entry(i)) for i in stage.inputs]
            crash_point("mid_consolidation", stage.number)
            entry = self.store.publish(
                weighted_average(states, weights, [self.stages[i].site for i in stage.inputs]),
                "average",
                stage.number,
                weights=list(weights),
            )
            return StageOutput(entry.sha256, loaded, int(sum(weights)))
        if stage.action != Action.DWC:
            raise ValueError(f"stage {stage.number}: the nnU-Net backend does not run {stage.action} stages.")
        merged = consolidate_dwc(self.posterior_file(stage.prior), [self.posterior_file(i) for i in stage.inputs])
        crash_point("mid_consolidation", stage.number)
        merged.save(self.posterior_file(stage.number))
        return StageOutput(merged.sha256(), loaded, int(sum(weights)))

    def evaluate(self, stage: Stage, site: str) -> list[float]:
        check_site_name(site, f"stage {stage.number}: evaluated site")  # names the predictions folder
        if self._model_cache is None or self._model_cache[0] != stage.number:
            self._model_cache = (stage.number, self.model(stage.number))
        bayes = self._kind(stage.number) == NetworkKind.BAYES
        seed_everything(self.seed * 15_485_863 + stage.number * 7_919 + zlib.crc32(site.encode()))
        trainer = self._bayes_trainer() if bayes else _MAP_TRAINER
        return self.evaluator(self._model_cache[1], trainer, site, self.run_dir / "predictions" / f"{stage.number:03d}")


def run_sites(
    datasets: Sequence[str],
    strategy: str,
    output_dir: str | os.PathLike,
    configuration: str = "3d_fullres",
    fold: int | str = "all",
    plans: str = "nnUNetPlans",
    epochs: int = 1,
    iterations_per_epoch: int | None = None,
    val_iterations_per_epoch: int | None = None,
    rounds: int = 2,
    order: str | Sequence[str] = "fixed",
    replay_capacity: int = 5,
    dwc_finetune: bool | None = None,
    eval_datasets: Sequence[str] = (),
    trainer: str | None = None,
    device: str | None = None,
    mirroring: bool = True,
    mc_samples: int = 1,
    seed: int = 0,
    progress: bool = True,
    options: Mapping[str, Any] | None = None,
) -> SitesResult:
    """Run one strategy over the sites' nnU-Net datasets (already planned and preprocessed with shared plans).

    The schedule is the strategy core's, with the same meaning as in the MONAI runner: ``single_weight_transfer``,
    ``cyclic_weight_transfer`` (``rounds`` cycles), ``fine_tuning``, ``replay`` (plus up to ``replay_capacity``
    cases of every earlier site), ``vcl``, ``dwc`` (MAP stage, q0 on the first site, every other site from q0,
    Eq. 17, ``rounds`` rounds, fine-tuning on the first site unless ``dwc_finetune=False``) and
    ``federated_averaging`` (``rounds`` rounds of ``epochs`` local epochs).

    Args:
        datasets: the sites' datasets, in their listed order (names or ids).
        strategy: one of :data:`SITE_STRATEGIES`.
        output_dir: the run directory (all state; rerun the same call to resume).
        configuration, fold, plans: nnU-Net's; ``fold="all"`` trains on every training case of a site.
        epochs: epochs per stage (per visit for cyclic transfer, per round for FedAvg).
        iterations_per_epoch, val_iterations_per_epoch: nnU-Net's iterations (default: the trainer's own).
        rounds: cycles of cyclic transfer, rounds of DWC and FedAvg.
        order: ``"fixed"``, ``"random"`` (once), ``"random_per_round"`` or a list of datasets.
        replay_capacity: K, replayed cases per earlier site.
        dwc_finetune: DWC's fine-tuning stage (``None``: the strategy's default, on).
        eval_datasets: more datasets evaluated after every stage but never trained on (held-out sites).
        trainer: override the strategy's trainer (a subclass of it).
        device: ``"cuda"``, ``"cpu"``... (default: CUDA when available).
        mirroring: nnU-Net's mirroring at evaluation.
        mc_samples: Monte Carlo passes when evaluating Bayesian stages (1: the posterior mean).
        seed: seeds every stage and the choice of replayed cases.
        progress: print a line per stage.
        options: further options of the strategy's options dataclass (e.g. ``{"skip": [...], "patience": 2}``).

    Returns:
        :class:`SitesResult`; ``R.json``, ``R.csv``, ``R.png`` and ``state.json`` are in ``output_dir``.

    Example::

        >>> result = run_sites(["Dataset501_site_a", "Dataset502_site_b"], "cyclic_weight_transfer", "runs/cwt",
        ...                    rounds=3, epochs=5, device="cpu")
        >>> result.matrix.as_array()
    """
    name = strategy_of(strategy)
    if name.value not in SITE_STRATEGIES:
        raise ValueError(
            f"strategy {name.value} does not run on nnU-Net sites; strategies are {sorted(SITE_STRATEGIES)}."
        )
    if epochs < 1 or rounds < 1 or replay_capacity < 1:
        raise ValueError(f"epochs, rounds and replay_capacity must be >= 1, got {epochs}, {rounds}, {replay_capacity}.")
    paths = nnunet_paths()
    # labels and channels agree, before any work (held-out sites included)
    everything = list(check_datasets_compatible(paths["raw"], [*datasets, *eval_datasets]))
    names, held_out = everything[: len(datasets)], everything[len(datasets):]
    if len(set(everything)) != len(everything) or len(everything) != len(datasets) + len(eval_datasets):
        raise ValueError(f"a dataset is listed twice: {[*datasets, *eval_datasets]}.")
    opts = _options(name, rounds, order, names, datasets, replay_capacity, dwc_finetune, options or {})
    stages = build_schedule(name, names, opts, epochs, seed)
    missing = [n for n in names if not plans_file(n, plans).is_file()]
    if missing:
        raise FileNotFoundError(f"datasets {missing} have no {plans}.json; run plan_and_preprocess_sites first.")
    shared = {json.dumps(shared_plans(json.loads(plans_file(n, plans).read_text())), sort_keys=True) for n in names}
    if len(shared) != 1:
        raise ValueError(f"datasets {names} were preprocessed with different plans; plan once and move the plans "
                         "(plan_and_preprocess_sites) so that weights fit every site.")
    trainer_name = trainer or SITE_STRATEGIES[name.value]
    trainer_class, required = find_trainer(trainer_name), find_trainer(SITE_STRATEGIES[name.value])
    bayesian = issubclass(trainer_class, nnUNetTrainerBayesian)
    if not issubclass(trainer_class, required) or (bayesian and name.value not in ("vcl", "dwc")):
        raise ValueError(f"strategy {name.value} trains with {required.__name__} or a subclass of it"
                         f"{'' if name.value in ('vcl', 'dwc') else ' that is not Bayesian'}; got {trainer_name}.")
    device_ = torch.device(device or default_device())
    evaluator = _Evaluator(names + held_out, configuration, plans, device_, mirroring, mc_samples)
    run_dir = Path(output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config = {"strategy": name.value, "datasets": names, "stages": [s.to_dict() for s in stages],
              "configuration": configuration, "fold": str(fold), "plans": plans,
              "iterations_per_epoch": iterations_per_epoch, "val_iterations": val_iterations_per_epoch,
              "replay_capacity": replay_capacity if name == Strategy.REPLAY else None, "trainer": trainer_name,
              "seed": seed, "eval_datasets": held_out, "mc_samples": mc_samples, "mirroring": mirroring}
    state = RunState.open(run_dir, name.value, config)
    executor = NnUNetStageExecutor(run_dir, stages, evaluator, configuration, fold, plans, device_,
                                   {"iterations_per_epoch": iterations_per_epoch,
                                    "val_iterations_per_epoch": val_iterations_per_epoch},
                                   trainer_name, replay_capacity, seed)
    run_stages(stages, executor, state, names + held_out, log=print if progress else None)
    matrix = state.matrix(stages, names + held_out)
    matrix.save_json(run_dir / "R.json")
    matrix.save_csv(run_dir / "R.csv")
    try:
        matrix.plot(run_dir / "R.png", title=f"{name.value}: Dice on every site's test cases after each stage")
    except Exception as e:  # a missing plotting backend must not lose the results
        print(f"R matrix plot skipped: {e}")
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
