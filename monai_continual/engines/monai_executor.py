"""The MONAI backend of the strategy engine: a stage is a ``SupervisedTrainer`` plus this package's handlers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from monai.data import CacheDataset, DataLoader, Dataset, PersistentDataset
from monai.data.utils import json_hashing, list_data_collate
from monai.engines import SupervisedTrainer
from monai.transforms import Compose
from monai.utils import IgniteInfo, min_version, optional_import
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from monai_continual.bayes.laplace import calibrate_posterior_std, parameter_fisher, std_summary
from monai_continual.consolidation import EnsembleModel, Posterior
from monai_continual.consolidation.weight_store import load_stage_weights
from monai_continual.data import ChainSeededDataset, MultiSiteDatalist, ReplayBuffer, ReplayDataset
from monai_continual.data.datalist import DatalistError
from monai_continual.engines.epoch_sampler import EpochSampler
from monai_continual.engines.settings import DatasetCache, MonaiSettings, OptimizerState
from monai_continual.handlers import EpochCheckpoint, EpochLosses, EpochSeeder, FiniteGuard, PlateauStopper, ProgressBar
from monai_continual.losses import (
    ElboExamples,
    ELBOLoss,
    EWCLoss,
    ProximalLoss,
    proximal_anchor,
    running_fisher,
    voxels_per_item,
)
from monai_continual.metrics import evaluate_sites
from monai_continual.strategies import (
    Action,
    NetworkKind,
    ReplayOptions,
    Stage,
    StageOutput,
    crash_point,
)
from monai_continual.strategies.base_executor import BaseStageExecutor
from monai_continual.strategies.executor import check_finite_weights
from monai_continual.utils.distributed import broadcast_module, get_rank, get_world_size, on_main_rank
from monai_continual.utils.optimizer_files import load_optimizer_state, save_optimizer_state
from monai_continual.utils.seeding import seed_everything

if TYPE_CHECKING:
    from ignite.engine import Events
else:
    Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")

__all__ = ["MonaiStageExecutor"]


@dataclass
class _Training:
    """What one stage trains with."""

    network: nn.Module
    optimizer: torch.optim.Optimizer
    loss: Any
    sampler: EpochSampler
    loader: DataLoader
    losses: EpochLosses
    checkpoint: EpochCheckpoint
    plateau: PlateauStopper | None


class MonaiStageExecutor(BaseStageExecutor):
    """Runs the stages of one run directory in this process with MONAI's ``SupervisedTrainer``.

    Files by stage number (:class:`~monai_continual.strategies.layout.RunLayout`): weights in the store, posteriors,
    a receipt per published stage (its count, what it recorded while training and the hashes of its inputs), the
    replay memory after a stage, and under ``sites/<site>/`` a stage's epoch checkpoint and, with
    ``optimizer_state="site"``, the site's optimizer state. Only safetensors files are read across stages; the epoch
    checkpoint is read back only by the site that wrote it.

    Several processes (``torchrun``; a process group of two or more, e.g. one process per GPU of a site): every stage
    trains in every process, the network wrapped in ``DistributedDataParallel`` and each process drawing its own
    share of every epoch (:class:`~monai_continual.engines.epoch_sampler.EpochSampler`); every process reads the
    stage's inputs and starts from rank 0's weights (broadcast, after rank 0 alone calibrated a Bayesian stage's
    stds). Only rank 0 writes (epoch checkpoints, the published stage) and evaluates, and only rank 0 consolidates;
    the others wait for its result. The run directory must be on a file system that every process sees.

    Args:
        settings: the run's :class:`~monai_continual.engines.settings.MonaiSettings`.
        data: the sites' datalist.
        run_dir: the run directory.
        stages: the run's schedule.
        replay: the replay options (capacity per site, policy, replayed fraction) of stages that remember.

    Example::

        >>> executor = MonaiStageExecutor(settings, datalist, Path("runs/vcl"), stages)
        >>> run_stages(stages, executor, RunState.open("runs/vcl", "vcl", config), datalist.site_names)
    """

    def __init__(self, settings: MonaiSettings, data: MultiSiteDatalist, run_dir: Any, stages: Sequence[Stage], *,
                 replay: ReplayOptions | None = None) -> None:
        super().__init__(run_dir, stages, seed=settings.seed)
        self.settings = settings
        self.data = data
        self.replay = replay or ReplayOptions()
        self.rank, self.world_size = get_rank(), get_world_size()

    # ------------------------------------------------------------------------------------------------ networks

    def initial_weights(self) -> dict[str, torch.Tensor]:
        return self.settings.plain_network().state_dict()

    def initialize(self, network: NetworkKind) -> StageOutput:
        return on_main_rank(partial(super().initialize, network))

    def consolidate(self, stage: Stage, weights: Sequence[float]) -> StageOutput:
        return on_main_rank(partial(super().consolidate, stage, weights))

    def evaluate(self, stage: Stage, site: str) -> list[float]:
        return on_main_rank(partial(super().evaluate, stage, site))

    def model(self, number: int) -> nn.Module:
        """The published model of stage ``number`` in a fresh network (what the next site would receive)."""
        stage = self.stages.get(number)
        if stage is not None and stage.action == Action.ENSEMBLE:
            return EnsembleModel([self.model(i) for i in stage.inputs], output="log").to(self.settings.device)
        network = self.settings.plain_network()
        if self.artifacts.kind(number) == NetworkKind.BAYES:
            network = self.settings.bayesian(network)
            self.artifacts.posterior(number).to_prior(network, init_posterior=True)
        else:
            load_stage_weights(self.store, number, network, "evaluation")
        return network.to(self.settings.device)

    def _start(self, stage: Stage, network: nn.Module) -> None:
        """Load the stage's start (and prior) by stage number."""
        if self.artifacts.kind(stage.start) == NetworkKind.BAYES:
            if stage.prior not in (None, stage.start):
                raise ValueError(f"stage {stage.number}: a Bayesian start's prior must be the start itself.")
            self.artifacts.posterior(stage.start).to_prior(network, init_posterior=True)
        elif stage.network == NetworkKind.BAYES:  # means from deterministic weights (DWC's MAP -> q0, VCL's first)
            plain = load_stage_weights(self.store, stage.start, self.settings.plain_network(), stage.site)
            converted = self.settings.bayesian(plain, stage.bound_std)
            network.load_state_dict({k: v.to(self.settings.device) for k, v in converted.state_dict().items()})
        else:
            load_stage_weights(self.store, stage.start, network, stage.site)

    # ------------------------------------------------------------------------------------------------ scoring

    def _score(self, network: nn.Module, items: dict[str, list[dict[str, Any]]], bayesian: bool,
               calibration: dict[str, list[dict[str, Any]]] | None = None) -> dict:
        s = self.settings
        return evaluate_sites(network, items, s.eval_transform, s.num_classes, s.inferer_for(bayesian), s.device,
                              amp=s.amp, calibration=calibration)

    def score(self, network: nn.Module, stage: Stage, site: str) -> list[float]:
        """Per-volume Dice on ``site``'s test data; for a model a summary row shows (:meth:`shown`), each volume's
        calibration and uncertainty, from the same probabilities, is kept beside it (:meth:`save_calibration`)."""
        bayesian = stage.network == NetworkKind.BAYES and stage.action != Action.ENSEMBLE
        calibration: dict[str, list[dict[str, Any]]] | None = {} if self.shown(stage) else None
        scores = self._score(network, {site: self.data.items(site, "test")}, bayesian, calibration)[site]
        if calibration is not None:
            self.save_calibration(stage.number, site, calibration[site])
        return scores

    def validation_score(self, number: int, site: str) -> float:
        """Mean Dice of stage ``number``'s published model on ``site``'s validation cases (NaN when its weights are
        not finite), seeded by stage and site: a site's check of a model it received before training from it."""
        items = self.data.items(site, "validation")
        if not items:
            raise DatalistError(f"site {site!r} has no validation cases to check a received model on.")
        network = self.model(number)
        if any(not bool(torch.isfinite(v).all()) for v in network.state_dict().values() if v.is_floating_point()):
            return float("nan")
        self.seed_evaluation(number, site)
        bayesian = self.artifacts.kind(number) == NetworkKind.BAYES
        return float(np.mean(self._score(network, {site: items}, bayesian)[site]))

    def _plateau_score(self, stage: Stage, network: nn.Module):
        items = {s: self.data.items(s, "validation") for s in stage.sites}
        if not any(items.values()):
            raise DatalistError(f"site(s) {list(stage.sites)} have no validation cases for the plateau criterion.")
        items = {k: v for k, v in items.items() if v}

        def score() -> float:
            values = self._score(network, items, stage.network == NetworkKind.BAYES)
            return float(np.mean([x for v in values.values() for x in v]))

        # rank 0's score on every rank: the processes must stop at the same epoch
        return lambda: on_main_rank(score)

    # ------------------------------------------------------------------------------------------------ training

    def _items(self, stage: Stage) -> list[dict[str, Any]]:
        return [dict(item, site=site) for site in stage.sites for item in self.data.items(site, "training")]

    def _memory(self, stage: Stage) -> ReplayBuffer | None:
        if stage.memory is not None:
            return ReplayBuffer.load(self.layout.replay_dir(stage.memory))
        if stage.remember:
            return ReplayBuffer(self.replay.capacity_per_site, self.replay.policy, self.settings.seed)
        return None

    def _optimizer_file(self, stage: Stage, number: int | None):
        policy = self.settings.optimizer_state
        if number is None or policy == OptimizerState.FRESH:
            return None
        if policy == OptimizerState.SITE:  # a site's optimizer stays on its disk
            return self.layout.optimizer_file(number, site=stage.site, kind=str(stage.network))
        return self.layout.optimizer_file(number)

    def train(self, stage: Stage) -> StageOutput:
        # published before an interruption from these very inputs: the stage is done (other inputs: train again)
        done = self.published(stage, strict=True)
        if done is not None:
            return done
        items = self._items(stage)
        memory = self._memory(stage)
        replayed = len(memory) if memory is not None and stage.memory is not None else 0
        details: dict[str, Any] = {"dataset_size": len(items) + replayed, "replay_items": replayed}
        run = self._build(stage, items, memory, replayed)
        trainer = self._run(stage, items, run)
        if run.plateau is not None:
            details.update(epochs_run=len(run.plateau.history), plateau=run.plateau.bad_epochs >= run.plateau.patience)
        check_finite_weights(run.network.state_dict(), stage)
        details["loss"] = [h[0] for h in run.losses.history]
        if stage.network == NetworkKind.BAYES:
            details.update(elbo=[h[1:] for h in run.losses.history],
                           std=dict(run.losses.std, trained=std_summary(run.network)))
        return on_main_rank(partial(self._publish, stage, items, memory, trainer, run, details))

    def _build(self, stage: Stage, items: list[dict[str, Any]], memory: ReplayBuffer | None,
               replayed: int) -> _Training:
        s = self.settings
        bayes = stage.network == NetworkKind.BAYES
        network = s.new_network(bayesian=bayes, bound_std=stage.bound_std)
        seed_everything(s.seed * 7919 + stage.number)
        if replayed:
            # kept in memory with cache="memory"; with "disk" a replay stage transforms its items at every epoch
            dataset: Any = ReplayDataset(items, memory, transform=s.train_chain, cache=s.cache == DatasetCache.MEMORY,
                                         replay_fraction=self.replay.replay_fraction, seed=s.seed + stage.number)
        else:
            dataset = self._dataset(items)
        # DataLoader workers seed the training chain itself, so that a cache does not change what they draw
        dataset = ChainSeededDataset(dataset, s.train_chain)
        sampler = EpochSampler(len(dataset), seed=s.seed * 31 + stage.number, rank=self.rank,
                               world_size=self.world_size)
        # a volume's patches (a list from the crop) become items of the mini-batch
        loader = DataLoader(dataset, batch_size=s.batch_size, sampler=sampler, num_workers=s.num_workers,
                            collate_fn=list_data_collate)
        n_elbo = (stage.num_examples if stage.num_examples is not None else len(dataset)) * self._voxels(items)
        loss = ELBOLoss(s.loss, network, n_elbo) if bayes else s.loss
        # FedProx and EWC: anchored at the start stage's published weights, also when resumed
        start = (load_stage_weights(self.store, stage.start, s.plain_network(), stage.site).state_dict()
                 if stage.proximal_mu or stage.ewc_lambda else None)
        if stage.proximal_mu:
            loss = ProximalLoss(loss, network, proximal_anchor(network, start), stage.proximal_mu)
        if stage.ewc_lambda:
            loss = EWCLoss(loss, network, start, self.artifacts.fisher(stage.fisher), stage.ewc_lambda)
        optimizer = (s.bayes_optimizer if bayes else s.optimizer)(network.parameters())
        plateau = PlateauStopper(self._plateau_score(stage, network), network, stage.patience) if stage.patience \
            else None
        losses = EpochLosses(loss, all_ranks=self.world_size > 1)
        extra = {k: v for k, v in (("plateau", plateau), ("losses", losses)) if v is not None}
        checkpoint = EpochCheckpoint(self.layout.checkpoint_file(stage.site, stage.number), network, optimizer, extra)
        return _Training(network, optimizer, loss, sampler, loader, losses, checkpoint, plateau)

    def _run(self, stage: Stage, items: list[dict[str, Any]], run: _Training) -> SupervisedTrainer:
        """Train from the stage's inputs, or resume from its last epoch checkpoint."""
        s = self.settings
        resumed = run.checkpoint.load()
        if resumed is None:
            self._start(stage, run.network)
            if stage.network == NetworkKind.BAYES and s.laplace:
                seed = s.seed + stage.number
                run.losses.std = on_main_rank(
                    lambda: calibrate_posterior_std(run.network, lambda: self._batches(items, seed), seed=seed))
            transfer = s.optimizer_state == OptimizerState.TRANSFER
            source = self._optimizer_file(stage, stage.start if transfer else stage.previous_visit)
            if source is not None and source.exists():
                run.optimizer.load_state_dict(load_optimizer_state(source))
        broadcast_module(run.network)  # rank 0's start (or checkpoint) and calibrated stds in every process
        main = self.rank == 0
        # the finiteness guard runs before the checkpoint, so a diverged epoch is never saved to resume from;
        # the epoch's losses are recorded before the checkpoint saves them. A rank other than 0 draws its own
        # augmentation and Bayesian noise (rank 0 keeps the single process's seeds).
        seeder = EpochSeeder(s.seed * 104_729 + stage.number + self.rank * 15_485_863, s.train_chain)
        handlers: list[Any] = [seeder, FiniteGuard(stage, run.network, self.world_size > 1), run.losses,
                               *([run.checkpoint] if main else []), _CrashAfterEpoch(stage.number)]
        if run.plateau is not None:
            handlers.append(run.plateau)  # restores the best weights on completion, before they are published
        handlers.append(ProgressBar(f"{stage.number}/{stage.label}", disable=not s.progress or not main))
        trainer = SupervisedTrainer(
            device=s.device, max_epochs=max(stage.epochs, 1), train_data_loader=run.loader,
            network=self._parallel(run.network),
            optimizer=run.optimizer, loss_function=run.loss, epoch_length=stage.iterations, train_handlers=handlers,
            decollate=False, amp=s.amp and s.device.type == "cuda",
        )
        if resumed is not None:
            trainer.state.epoch, trainer.state.iteration = int(resumed["epoch"]), int(resumed["iteration"])
            run.sampler.epoch = int(resumed["epoch"])
        if resumed is None or trainer.state.epoch < trainer.state.max_epochs:
            trainer.run()
        elif run.plateau is not None:
            run.plateau.restore_best()
        return trainer

    def _parallel(self, network: nn.Module) -> nn.Module:
        """``network`` in ``DistributedDataParallel`` when several processes train (its gradients averaged over
        them after every backward), else itself. An ELBO's KL term is computed on the unwrapped network: its
        gradient is the same in every process, so the average keeps it, and it reaches every parameter (as the data
        term does) in the same backward, so no parameter is unused."""
        if self.world_size == 1:
            return network
        device = self.settings.device
        return DistributedDataParallel(network, device_ids=[device.index] if device.type == "cuda" else None)

    def _publish(self, stage: Stage, items: list[dict[str, Any]], memory: ReplayBuffer | None,
                 trainer: SupervisedTrainer, run: _Training, details: dict[str, Any]) -> StageOutput:
        """Side outputs first, under this stage's number; the model last: publishing commits the stage."""
        target = self._optimizer_file(stage, stage.number)
        if target is not None:
            save_optimizer_state(target, run.optimizer.state_dict(), site=stage.site, stage=stage.number)
        if stage.remember:
            site = stage.sites[0]
            memory.add_site(site, self.data.items(site, "training"))
            memory.save(self.layout.replay_dir(stage.number))
            trainer.logger.info(f"replay buffer: kept {len(memory.site_items(site))} items of site {site!r}")
        if stage.ewc_gamma is not None:  # the site's Fisher at its trained weights joins the running one
            seed = self.settings.seed + stage.number
            own = parameter_fisher(run.network, self._batches(items, seed), seed=seed)
            previous = None if stage.fisher is None else self.artifacts.fisher(stage.fisher)
            details["fisher"] = self.artifacts.save_fisher(stage.number, running_fisher(previous, own, stage.ewc_gamma))
        if stage.network == NetworkKind.BAYES:
            model: Any = Posterior.from_model(run.network, site=stage.site, num_examples=len(items))
        else:
            model = {k: v.detach() for k, v in run.network.state_dict().items()}
        published = self.publish(stage, model, stage.site, len(items), details)
        run.checkpoint.path.unlink(missing_ok=True)
        return StageOutput(published, self.artifacts.loaded(stage), len(items), details)

    def _dataset(self, items: list[dict[str, Any]]) -> Dataset:
        """The training dataset: the training chain, its deterministic part cached with ``cache="memory"`` or
        ``"disk"`` (the user's ``train_transform`` up to its first random transform; the patch crop always runs on
        top, with the same transform objects, so the epoch seeding reaches it). Several processes: each caches every
        item in memory; on disk, rank 0 writes every item's cache file before the others read them."""
        s = self.settings
        if s.cache == DatasetCache.NONE:
            return Dataset(items, transform=s.train_chain)
        if s.cache == DatasetCache.MEMORY:
            cached: Dataset = CacheDataset(items, transform=s.train_transform, progress=False)
        else:
            def persistent() -> PersistentDataset:
                return PersistentDataset(items, transform=s.train_transform, cache_dir=self.layout.cache_dir,
                                         hash_transform=json_hashing)

            def fill() -> None:
                self.layout.cache_dir.mkdir(parents=True, exist_ok=True)
                if self.world_size > 1:
                    dataset = persistent()
                    for item in items:
                        dataset._cachecheck(item)  # MONAI's own cache filler (as its LMDBDataset uses it)

            on_main_rank(fill)
            cached = persistent()
        return Dataset(cached, transform=Compose(list(s.patch_transforms))) if s.patch_transforms else cached

    def _voxels(self, items: Sequence[dict[str, Any]]) -> int:
        """Voxels per training item when the ELBO counts voxels (the default: a patch's voxels times the patches per
        volume when training on patches, else the volume's), or 1 when it counts volumes."""
        s = self.settings
        if s.elbo_examples == ElboExamples.VOLUMES:
            return 1
        if s.patch_voxels is not None:
            return s.patch_voxels * s.samples_per_volume
        return voxels_per_item(s.train_transform(dict(items[0])))

    def _batches(self, items: Sequence[dict[str, Any]], seed: int):
        """The training batches of a Laplace calibration or a Fisher estimate: patches when training on patches,
        seeded by ``seed``."""
        s = self.settings
        # MONAI's DataLoader seeds the chain's random state from its generator (num_workers=0)
        loader = DataLoader(Dataset(items, transform=s.train_chain), batch_size=s.batch_size, num_workers=0,
                            collate_fn=list_data_collate, generator=torch.Generator().manual_seed(seed % 2**63))
        for batch in loader:
            yield batch["image"].to(s.device), batch["label"].to(s.device)


class _CrashAfterEpoch:
    """The ``mid_training`` fault point: after the first epoch's checkpoint is written."""

    def __init__(self, stage: int) -> None:
        self.stage = stage

    def attach(self, engine: Any) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Any) -> None:
        crash_point("mid_training", self.stage)
