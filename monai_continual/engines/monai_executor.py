"""The MONAI backend of the strategy engine: a stage is a ``SupervisedTrainer`` plus this package's handlers."""

from __future__ import annotations

import copy
import json
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedTrainer
from monai.utils import IgniteInfo, min_version, optional_import
from torch import nn

from monai_continual.bayes import bayesianize
from monai_continual.bayes.laplace import calibrate_posterior_std, std_summary
from monai_continual.consolidation import EnsembleModel, Posterior, consolidate_dwc, weighted_average
from monai_continual.data import ReplayBuffer, ReplayDataset
from monai_continual.data.datalist import DatalistError
from monai_continual.engines.epoch_sampler import EpochSampler
from monai_continual.handlers import (
    ConsolidationHandler,
    ContinualEvaluationHandler,
    EpochCheckpoint,
    EpochSeeder,
    PlateauStopper,
    PriorHandler,
    ProgressBar,
    ReplayBufferHandler,
    WeightTransferHandler,
)
from monai_continual.losses import ELBOLoss, voxels_per_item
from monai_continual.metrics import ContinualMatrix, evaluate_sites
from monai_continual.strategies import (
    INITIAL_STAGE,
    Action,
    NetworkKind,
    NonFiniteTrainingError,
    Stage,
    StageOutput,
    crash_point,
)
from monai_continual.strategies.artifacts import StageArtifacts
from monai_continual.utils.atomic import atomic_write_text
from monai_continual.utils.optimizer_files import load_optimizer_state, save_optimizer_state
from monai_continual.utils.seeding import seed_everything

if TYPE_CHECKING:
    from ignite.engine import Events

    from monai_continual.engines.continual_runner import ContinualRunner
else:
    Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")

__all__ = ["MonaiStageExecutor"]


class MonaiStageExecutor:
    """Runs the stages of one run directory in this process with MONAI's ``SupervisedTrainer``.

    Layout of ``run_dir``: ``store/`` (weights of deterministic stages, by stage number, with a hashed manifest),
    ``posteriors/stage####.safetensors`` (posteriors of Bayesian stages), ``sites/<site>/`` (a site's own files:
    epoch checkpoints and, with ``optimizer_state="site"``, its optimizer state per stage), ``replay/stage####/``
    (the replay memory after a stage). Only safetensors files are read across stages; the epoch checkpoint is
    read back only by the site that wrote it.

    Args:
        runner: the :class:`~monai_continual.engines.ContinualRunner` holding data, network and settings.
        run_dir: the run directory.
        stages: the run's schedule.

    Example::

        >>> executor = MonaiStageExecutor(runner, Path("runs/vcl"), build_schedule("vcl", runner.sites))
        >>> run_stages(stages, executor, RunState.open("runs/vcl", "vcl", config), runner.eval_sites)
    """

    def __init__(self, runner: ContinualRunner, run_dir: Path, stages: Sequence[Stage]) -> None:
        self.runner = runner
        self.run_dir = Path(run_dir)
        self.artifacts = StageArtifacts(run_dir, stages)
        self.stages = self.artifacts.stages
        self.store = self.artifacts.store
        self.posterior_file = self.artifacts.posterior_file
        self._kind = self.artifacts.kind
        self._published_sha = self.artifacts.published_sha
        self._loaded = self.artifacts.loaded
        self._weights = self.artifacts.weights
        self._model_cache: tuple[int, nn.Module] | None = None

    # ------------------------------------------------------------------------------------------------ files by number

    def _optimizer_file(self, stage: Stage, number: int | None) -> Path | None:
        policy = self.runner.optimizer_state
        if number is None or policy == "fresh":
            return None
        if policy == "site":  # a site's optimizer stays on its disk
            return self.run_dir / "sites" / stage.site / f"optimizer_{stage.network}_stage{number:04d}.safetensors"
        return self.run_dir / "store" / f"optimizer_stage{number:04d}.safetensors"

    # ------------------------------------------------------------------------------------------------ networks

    def _plain(self) -> nn.Module:
        network = copy.deepcopy(self.runner.template)
        network.load_state_dict(self.runner.init_state)
        return network

    def _bayesian(self, plain: nn.Module, bound_std: bool = False) -> nn.Module:
        return bayesianize(plain, bound_std=bound_std, inplace=True, **self.runner.bayes_kwargs)

    def model(self, number: int) -> nn.Module:
        """The published model of stage ``number`` in a fresh network (what the next site would receive)."""
        stage = self.stages.get(number)
        if stage is not None and stage.action == Action.ENSEMBLE:
            members = [self.model(i) for i in stage.inputs]
            return EnsembleModel(members, output="log").to(self.runner.device)
        if self._kind(number) == NetworkKind.BAYES:
            network = self._bayesian(self._plain())
            Posterior.load(self.posterior_file(number)).to_prior(network, init_posterior=True)
        else:
            network = self._plain()
            WeightTransferHandler(
                self.store, "evaluation", network, load=True, publish=False, source_stage=number
            ).load_weights()
        return network.to(self.runner.device)

    # ------------------------------------------------------------------------------------------------ protocol

    def initialize(self, network: NetworkKind) -> StageOutput:
        entry = self.store.entry(INITIAL_STAGE)
        if entry is None:
            entry = self.store.publish(self._plain().state_dict(), "init", INITIAL_STAGE)
        return StageOutput(entry.sha256)

    def _items(self, stage: Stage) -> list[dict[str, Any]]:
        return [dict(item, site=site) for site in stage.sites for item in self.runner.data.items(site, "training")]

    def _memory(self, stage: Stage) -> ReplayBuffer | None:
        if stage.memory is not None:
            return ReplayBuffer.load(self.run_dir / "replay" / f"stage{stage.memory:04d}")
        if stage.remember:
            opts = self.runner.replay_options
            return ReplayBuffer(opts.capacity_per_site, opts.policy, self.runner.seed)
        return None

    def train(self, stage: Stage) -> StageOutput:
        runner = self.runner
        items = self._items(stage)
        memory = self._memory(stage)
        replayed = len(memory) if memory is not None and stage.memory is not None else 0
        num_examples = len(items) + replayed
        details = {"dataset_size": num_examples, "replay_items": replayed}
        published = self._published_sha(stage.number)
        record = self.run_dir / "sites" / stage.site / f"details_stage{stage.number:04d}.json"
        loaded = self._loaded(stage)
        recorded = json.loads(record.read_text()) if published is not None and record.exists() else {}
        # published before an interruption from these very inputs: the stage is done (other inputs: train again)
        if published is not None and recorded.pop("inputs", None) == loaded:
            details.update(recorded)  # what it recorded while training (losses, ELBO terms, stds)
            return StageOutput(published, loaded, len(items), details)

        bayes = stage.network == NetworkKind.BAYES
        network = self._bayesian(self._plain(), stage.bound_std) if bayes else self._plain()
        network = network.to(runner.device)
        seed_everything(runner.seed * 7919 + stage.number)
        if replayed:
            opts = runner.replay_options
            dataset: Any = ReplayDataset(items, memory, transform=runner.train_transform,
                                         replay_fraction=opts.replay_fraction, seed=runner.seed + stage.number)
        else:
            dataset = Dataset(items, transform=runner.train_transform)
        sampler = EpochSampler(len(dataset), seed=runner.seed * 31 + stage.number)
        loader = DataLoader(dataset, batch_size=runner.batch_size, sampler=sampler, num_workers=0)
        n_elbo = (stage.num_examples if stage.num_examples is not None else len(dataset)) * self._voxels(items)
        loss = ELBOLoss(runner.loss, network, n_elbo) if bayes else runner.loss
        optimizer = (runner.bayes_optimizer_fn if bayes else runner.optimizer_fn)(network.parameters())
        site_dir = self.run_dir / "sites" / stage.site

        plateau = None
        if stage.patience:
            plateau = PlateauStopper(self._validation_score(stage, network), network, stage.patience)
        losses = _EpochLosses(loss)
        extra = {k: v for k, v in (("plateau", plateau), ("losses", losses)) if v is not None}
        checkpoint = EpochCheckpoint(site_dir / f"checkpoint_stage{stage.number:04d}.pt", network, optimizer, extra)
        resumed = checkpoint.load()
        if resumed is None:
            self._start(stage, network)
            if bayes and runner.std_init == "laplace":
                losses.std = calibrate_posterior_std(
                    network, lambda: self._batches(items), seed=runner.seed + stage.number
                )
            source = self._optimizer_file(
                stage, stage.start if runner.optimizer_state == "transfer" else stage.previous_visit
            )
            if source is not None and source.exists():
                optimizer.load_state_dict(load_optimizer_state(source))

        # the finiteness guard runs before the checkpoint, so a diverged epoch is never saved to resume from
        # the epoch's losses are recorded before the checkpoint saves them
        handlers: list[Any] = [EpochSeeder(runner.seed * 104_729 + stage.number, runner.train_transform),
                               _FiniteGuard(stage, network), losses, checkpoint, _CrashAfterEpoch(stage.number)]
        if plateau is not None:
            handlers.append(plateau)  # restores the best weights on completion, before they are published
        handlers.append(ProgressBar(f"{stage.number}/{stage.label}", disable=not runner.progress))
        trainer = SupervisedTrainer(
            device=runner.device, max_epochs=max(stage.epochs, 1), train_data_loader=loader, network=network,
            optimizer=optimizer, loss_function=loss, epoch_length=stage.iterations, train_handlers=handlers,
            decollate=False,
        )
        if resumed is not None:
            trainer.state.epoch, trainer.state.iteration = int(resumed["epoch"]), int(resumed["iteration"])
            sampler.epoch = int(resumed["epoch"])
        if resumed is None or trainer.state.epoch < trainer.state.max_epochs:
            trainer.run()
        elif plateau is not None:
            plateau.restore_best()
        if plateau is not None:
            details.update(epochs_run=len(plateau.history), plateau=plateau.bad_epochs >= plateau.patience)

        _check_finite_weights(network, stage)
        details["loss"] = [h[0] for h in losses.history]
        if bayes:
            details.update(elbo=[h[1:] for h in losses.history], std=dict(losses.std, trained=std_summary(network)))
        # side outputs first, under this stage's number; the model last: publishing commits the stage
        record.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(record, json.dumps({**details, "inputs": loaded}))
        target = self._optimizer_file(stage, stage.number)
        if target is not None:
            save_optimizer_state(target, optimizer.state_dict(), site=stage.site, stage=stage.number)
        if stage.remember:
            ReplayBufferHandler(memory, stage.sites[0], runner.data.items(stage.sites[0], "training"),
                                directory=self.run_dir / "replay" / f"stage{stage.number:04d}")(trainer)
        if bayes:
            export = ConsolidationHandler(network, "export", self.posterior_file(stage.number), site=stage.site,
                                          num_examples=len(items))
            published = export().sha256()
        else:
            transfer = WeightTransferHandler(self.store, stage.site, network, stage=stage.number, load=False)
            published = transfer.publish_weights().sha256
        checkpoint.path.unlink(missing_ok=True)
        return StageOutput(published, loaded, len(items), details)

    def _voxels(self, items: Sequence[dict[str, Any]]) -> int:
        """Voxels per training example when the ELBO counts voxels (the default), else 1."""
        if self.runner.elbo_examples == "volumes":
            return 1
        return voxels_per_item(self.runner.train_transform(dict(items[0])))

    def _batches(self, items: Sequence[dict[str, Any]]):
        loader = DataLoader(Dataset(items, transform=self.runner.train_transform), batch_size=self.runner.batch_size,
                            num_workers=0)
        for batch in loader:
            yield batch["image"].to(self.runner.device), batch["label"].to(self.runner.device)

    def _start(self, stage: Stage, network: nn.Module) -> None:
        """Load the stage's start (and prior) by stage number."""
        if self._kind(stage.start) == NetworkKind.BAYES:
            if stage.prior not in (None, stage.start):
                raise ValueError(f"stage {stage.number}: a Bayesian start's prior must be the start itself.")
            PriorHandler(self.posterior_file(stage.start), network, init_posterior=True)()
            return
        if stage.network == NetworkKind.BAYES:  # means from deterministic weights (DWC's MAP -> q0, VCL's first site)
            plain = self._plain()
            WeightTransferHandler(self.store, stage.site, plain, publish=False, source_stage=stage.start).load_weights()
            converted = self._bayesian(plain, stage.bound_std)
            network.load_state_dict({k: v.to(self.runner.device) for k, v in converted.state_dict().items()})
            return
        WeightTransferHandler(self.store, stage.site, network, publish=False, source_stage=stage.start).load_weights()

    def _validation_score(self, stage: Stage, network: nn.Module):
        runner = self.runner
        val_items = {s: runner.data.items(s, "validation") for s in stage.sites}
        if not any(val_items.values()):
            raise DatalistError(f"site(s) {list(stage.sites)} have no validation cases for the plateau criterion.")

        def score() -> float:
            values = evaluate_sites(network, {k: v for k, v in val_items.items() if v}, runner.eval_transform,
                                    runner.num_classes, runner.inferer_for(stage.network == NetworkKind.BAYES),
                                    runner.device)
            return float(np.mean([x for v in values.values() for x in v]))

        return score

    def _seed_evaluation(self, number: int, site: str) -> None:
        """Evaluation of stage ``number``'s model at ``site`` is seeded by both (Monte Carlo samples, dropout)."""
        seed_everything(self.runner.seed * 15_485_863 + number * 7_919 + zlib.crc32(site.encode()))

    def validation_score(self, number: int, site: str) -> float:
        """Mean Dice of stage ``number``'s published model on ``site``'s validation cases (NaN when its output is
        not finite), seeded by stage and site: a site's check of a model it received before training from it."""
        runner = self.runner
        items = runner.data.items(site, "validation")
        if not items:
            raise DatalistError(f"site {site!r} has no validation cases to check a received model on.")
        network = self.model(number)
        if any(not bool(torch.isfinite(v).all()) for v in network.state_dict().values() if v.is_floating_point()):
            return float("nan")
        self._seed_evaluation(number, site)
        values = evaluate_sites(network, {site: items}, runner.eval_transform, runner.num_classes,
                                runner.inferer_for(self._kind(number) == NetworkKind.BAYES), runner.device)
        return float(np.mean(values[site]))

    def consolidate(self, stage: Stage, weights: Sequence[float]) -> StageOutput:
        loaded = self._loaded(stage)
        if stage.action == Action.ENSEMBLE:
            return StageOutput(None, loaded)
        if stage.action == Action.AVERAGE:
            states = [self._weights(i) for i in stage.inputs]
            crash_point("mid_consolidation", stage.number)
            merged = weighted_average(states, weights, [self.stages[i].site for i in stage.inputs])
            entry = self.store.publish(merged, "average", stage.number, weights=list(weights))
            return StageOutput(entry.sha256, loaded, int(sum(weights)))
        merged = consolidate_dwc(self.posterior_file(stage.prior), [self.posterior_file(i) for i in stage.inputs],
                                 progress=False)
        crash_point("mid_consolidation", stage.number)
        merged.save(self.posterior_file(stage.number))
        return StageOutput(merged.sha256(), loaded, int(sum(weights)))

    def evaluate(self, stage: Stage, site: str) -> list[float]:
        runner = self.runner
        if self._model_cache is None or self._model_cache[0] != stage.number:
            self._model_cache = (stage.number, self.model(stage.number))
        network = self._model_cache[1]
        bayes = stage.network == NetworkKind.BAYES and stage.action != Action.ENSEMBLE
        self._seed_evaluation(stage.number, site)
        handler = ContinualEvaluationHandler(
            network, {site: runner.data.items(site, "test")}, runner.eval_transform, runner.num_classes,
            trained_on=None, matrix=ContinualMatrix([site]), inferer=runner.inferer_for(bayes),
            device=str(runner.device),
        )
        handler()
        return handler.last_scores[site]


class _EpochLosses:
    """Per epoch, the mean training loss and, for the ELBO, its mean data term and KL / N; and the std statistics of
    a Bayesian stage's start. Kept in the epoch checkpoint, so that a resumed stage reports the same."""

    def __init__(self, loss: Any) -> None:
        self.loss = loss
        self.history: list[tuple[float, ...]] = []
        self.std: dict[str, Any] = {}
        self._sums: list[float] = []
        self._count = 0

    def state_dict(self) -> dict[str, Any]:
        return {"history": [list(h) for h in self.history], "std": self.std}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = [tuple(h) for h in state["history"]]
        self.std = dict(state["std"])

    def attach(self, engine: Any) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._step)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch)

    def _step(self, engine: Any) -> None:
        output = engine.state.output
        values = [float(torch.as_tensor(output["loss"]).detach()) if isinstance(output, dict) else float("nan")]
        if isinstance(self.loss, ELBOLoss) and self.loss.last_data_loss is not None:
            values += [float(self.loss.last_data_loss), float(self.loss.last_kl) / self.loss.num_examples]
        self._sums = [a + b for a, b in zip(self._sums, values)] if self._sums else values
        self._count += 1

    def _epoch(self, engine: Any) -> None:
        if self._count:
            self.history.append(tuple(v / self._count for v in self._sums))
        self._sums, self._count = [], 0


class _CrashAfterEpoch:
    """The ``mid_training`` fault point: after the first epoch's checkpoint is written."""

    def __init__(self, stage: int) -> None:
        self.stage = stage

    def attach(self, engine: Any) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Any) -> None:
        crash_point("mid_training", self.stage)


class _FiniteGuard:
    """Stops a stage at the first non-finite loss, and at an epoch's end with non-finite weights, before the
    epoch's checkpoint could save the damage."""

    def __init__(self, stage: Stage, network: nn.Module) -> None:
        self.stage = stage
        self.network = network

    def attach(self, engine: Any) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        engine.add_event_handler(Events.EPOCH_COMPLETED, lambda _: _check_finite_weights(self.network, self.stage))

    def __call__(self, engine: Any) -> None:
        output = engine.state.output
        loss = output.get("loss") if isinstance(output, dict) else None
        if loss is not None and not bool(torch.isfinite(torch.as_tensor(loss)).all()):
            raise NonFiniteTrainingError(
                f"site {self.stage.site!r}, stage {self.stage.number} ({self.stage.label}): the loss became "
                f"{float(torch.as_tensor(loss).detach())} at epoch {engine.state.epoch}, iteration "
                f"{engine.state.iteration}; nothing was published. Fix the cause (learning rate, data) and run again: "
                "the stage resumes from its last finished epoch."
            )


def _check_finite_weights(network: nn.Module, stage: Stage) -> None:
    bad = [k for k, v in network.state_dict().items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise NonFiniteTrainingError(
            f"site {stage.site!r}, stage {stage.number} ({stage.label}): non-finite weights in {bad[:5]}"
            f"{' ...' if len(bad) > 5 else ''}; nothing was published."
        )
